from __future__ import annotations

import pytest

from jupyter_codestral.config import ConfigError, resolve
from jupyter_codestral.context import ContextBudget, build_context
from jupyter_codestral.request import Cell, CompletionRequest
from jupyter_codestral.templates import TEMPLATES, render_prompt, template_for_model


def test_no_key_and_no_backend_means_the_embedded_model() -> None:
    settings, budget = resolve({}, {})
    assert settings.backend == "local" and settings.layout == "split"
    assert budget.prefix_tokens == 1024


def test_a_codestral_key_selects_mistral_on_codestral_host() -> None:
    settings, _ = resolve({}, {"CODESTRAL_API_KEY": "k1"})
    assert (settings.backend, settings.url, settings.api_key, settings.key_name) == (
        "mistral", "https://codestral.mistral.ai", "k1", "CODESTRAL_API_KEY")


def test_a_mistral_key_goes_to_api_mistral_ai() -> None:
    settings, _ = resolve({}, {"MISTRAL_API_KEY": "k2"})
    assert (settings.url, settings.api_key, settings.key_name) == ("https://api.mistral.ai", "k2", "MISTRAL_API_KEY")


def test_environment_overrides_traitlets() -> None:
    settings, _ = resolve(
        {"backend": "ollama", "url": "http://a:1", "model": "m1"},
        {"JUPYTER_CODESTRAL_BACKEND": "llamacpp", "JUPYTER_CODESTRAL_URL": "http://b:2/", "JUPYTER_CODESTRAL_MODEL": "m2"},
    )
    assert (settings.backend, settings.url, settings.model) == ("llamacpp", "http://b:2", "m2")


def test_traitlets_apply_without_environment() -> None:
    settings, budget = resolve({"backend": "openai", "url": "http://h:9", "prefix_tokens": 300, "suffix_tokens": 20}, {})
    assert (settings.backend, settings.url, budget.prefix_tokens, budget.suffix_tokens) == ("openai", "http://h:9", 300, 20)


@pytest.mark.parametrize("traits, env, fragment", [
    ({"backend": "gpt"}, {}, "Unknown backend"),
    ({"backend": "openai", "url": "ftp://x"}, {}, "http://"),
    ({"prompt_layout": "sideways"}, {}, "prompt_layout"),
])
def test_bad_configuration_is_explained(traits: dict[str, object], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        resolve(traits, env)


def test_the_key_is_not_in_the_settings_repr() -> None:
    settings, _ = resolve({}, {"CODESTRAL_API_KEY": "very-secret"})
    assert "very-secret" not in repr(settings)
    assert settings.redact("x very-secret y") == "x [key hidden] y"


@pytest.mark.parametrize("model, family", [
    ("codestral-latest", "codestral"), ("Qwen/Qwen2.5-Coder-7B", "qwen"), ("bigcode/starcoder2-15b", "starcoder2"),
    ("deepseek-coder-6.7b-base", "deepseek"), ("codellama/CodeLlama-7b-hf", "codellama"), ("mystery", "qwen"),
])
def test_template_chosen_from_the_model_name(model: str, family: str) -> None:
    assert template_for_model(model).name == family


def test_template_override_and_unknown_override() -> None:
    assert template_for_model("qwen", "deepseek").name == "deepseek"
    with pytest.raises(ValueError, match="Unknown FIM template"):
        template_for_model("qwen", "nope")


def test_template_shapes() -> None:
    assert TEMPLATES["codestral"].fim("P", "S") == "[SUFFIX]S[PREFIX]P"
    assert TEMPLATES["qwen"].fim("P", "S") == "<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>"
    assert TEMPLATES["starcoder2"].fim("P", "S") == "<fim_prefix>P<fim_suffix>S<fim_middle>"
    assert TEMPLATES["deepseek"].fim("P", "S") == "<｜fim▁begin｜>P<｜fim▁hole｜>S<｜fim▁end｜>"
    assert TEMPLATES["codellama"].fim("P", "S") == "<PRE> P <SUF>S <MID>"


def test_split_layout_puts_later_cells_in_a_file_before_the_fim_part() -> None:
    cells = (Cell("code", "a = 1"), Cell("code", "b = a"), Cell("code", "print(b)"))
    ctx = build_context(CompletionRequest(cells, 1, 3), ContextBudget())
    prompt = render_prompt(TEMPLATES["qwen"], ctx, "split")
    assert prompt.startswith("<|repo_name|>notebook\n<|file_sep|>later_cells.py\n# %%\nprint(b)\n")
    # The suffix keeps only the next cell's marker line, to show where the cell ends.
    assert prompt.endswith("<|fim_prefix|># %%\na = 1\n\n# %%\nb =<|fim_suffix|> a\n\n# %%\n<|fim_middle|>")
    inline = render_prompt(TEMPLATES["qwen"], ctx, "inline")
    assert inline.startswith("<|fim_prefix|>") and "print(b)" in inline.split("<|fim_suffix|>")[1]
    # A template without repository tokens falls back to the inline layout.
    assert render_prompt(TEMPLATES["deepseek"], ctx, "split") == render_prompt(TEMPLATES["deepseek"], ctx, "inline")


def test_split_layout_keeps_only_the_near_suffix_in_the_fim_part() -> None:
    source = "x = 1\ny = \nline_a()\nline_b()\nline_c()\nline_d()"
    cells = (Cell("code", "import os"), Cell("code", source), Cell("code", "print(y)"))
    ctx = build_context(CompletionRequest(cells, 1, source.index("\nline_a")), ContextBudget())
    prompt = render_prompt(TEMPLATES["qwen"], ctx, "split")
    later, fim = prompt.split("<|file_sep|>notebook.py\n")
    # Re-read on every keystroke: only the rest of the cursor's line.
    assert fim.split("<|fim_suffix|>")[1] == "\n<|fim_middle|>"
    # The rest of the cell and the later cells are in the cached file before it.
    assert "line_a()\nline_b()\nline_c()\nline_d()\n# %%\nprint(y)" in later


def test_the_kernel_summary_leads_the_prompt_or_is_a_file_of_its_own() -> None:
    cells = (Cell("code", "df = load()"), Cell("code", "df["), Cell("code", "print(1)"))
    ctx = build_context(CompletionRequest(cells, 1, 3), ContextBudget(), namespace="df: DataFrame, columns {'a': int64}")
    assert ctx.prefix == ("# Variables in the running kernel:\n"
                          "# df: DataFrame, columns {'a': int64}\n\n# %%\ndf = load()\n\n# %%\ndf[")
    as_comment = render_prompt(TEMPLATES["qwen"], ctx, "split")
    assert "<|fim_prefix|># Variables in the running kernel" in as_comment
    as_file = render_prompt(TEMPLATES["qwen"], ctx, "split", kernel_file=True)
    assert as_file.startswith("<|repo_name|>notebook\n<|file_sep|>kernel_namespace.py\n# Variables")
    assert "<|fim_prefix|># %%\ndf = load()\n\n# %%\ndf[<|fim_suffix|>" in as_file
