from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from traitlets.config import Config

from jupyter_codestral.app import CodestralExtension
from jupyter_codestral.backends import BackendSettings
from jupyter_codestral.assembly import assemble, backend_settings, context_budget
from jupyter_codestral.context import ContextBudget, FimContext, build_context
from jupyter_codestral.kernel_variables import KernelState, Snapshot, Variable
from jupyter_codestral.request import Cell, CompletionRequest
from jupyter_codestral.templates import TEMPLATES, PromptFormat, render_prompt, template_for_model

ENV = ("CODESTRAL_API_KEY", "MISTRAL_API_KEY", "JUPYTER_CODESTRAL_BACKEND", "JUPYTER_CODESTRAL_URL",
       "JUPYTER_CODESTRAL_MODEL", "JUPYTER_CODESTRAL_API_KEY", "JUPYTER_CODESTRAL_MODEL_PATH")


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[BackendSettings, ContextBudget, Any]]:
    """The extension's settings for a configuration (as in jupyter_server_config.py) and an environment."""

    def configure(traits: dict[str, Any], env: dict[str, str]) -> tuple[BackendSettings, ContextBudget, Any]:
        for name in ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        app = CodestralExtension(config=Config({"CodestralExtension": traits}))
        return backend_settings(app), context_budget(app), app

    return configure


def test_no_key_and_no_backend_means_the_embedded_model(configure: Any) -> None:
    settings, budget, _ = configure({}, {})
    assert settings.backend == "embedded" and settings.layout == "adaptive"
    assert budget.prefix_tokens == 1536


def test_a_codestral_key_selects_mistral_on_codestral_host(configure: Any) -> None:
    settings, _, _ = configure({}, {"CODESTRAL_API_KEY": "k1"})
    assert (settings.backend, settings.url, settings.api_key, settings.key_name) == (
        "mistral", "https://codestral.mistral.ai", "k1", "CODESTRAL_API_KEY")


def test_a_mistral_key_goes_to_api_mistral_ai(configure: Any) -> None:
    settings, _, _ = configure({}, {"MISTRAL_API_KEY": "k2"})
    assert (settings.url, settings.api_key, settings.key_name) == ("https://api.mistral.ai", "k2", "MISTRAL_API_KEY")


def test_the_environment_sets_what_the_configuration_does_not(configure: Any) -> None:
    env = {"JUPYTER_CODESTRAL_BACKEND": "llamacpp", "JUPYTER_CODESTRAL_URL": "http://b:2/", "JUPYTER_CODESTRAL_MODEL": "m2"}
    settings, _, _ = configure({}, env)
    assert (settings.backend, settings.url, settings.model) == ("llamacpp", "http://b:2", "m2")
    # A setting in the configuration (or on the command line) wins, as with jupyter_server's own variables.
    settings, _, _ = configure({"backend": "ollama", "url": "http://a:1", "model": "m1"}, env)
    assert (settings.backend, settings.url, settings.model) == ("ollama", "http://a:1", "m1")


def test_traitlets_apply_without_environment(configure: Any) -> None:
    settings, budget, _ = configure({"backend": "openai", "url": "http://h:9", "prefix_tokens": 300, "suffix_tokens": 20},
                                    {})
    assert (settings.backend, settings.url, budget.prefix_tokens, budget.suffix_tokens) == ("openai", "http://h:9", 300, 20)


@pytest.mark.parametrize("traits, env, fragments", [
    ({"backend": "gpt"}, {}, ["Unknown backend 'gpt'", "CodestralExtension.backend"]),
    ({}, {"JUPYTER_CODESTRAL_BACKEND": "gpt"}, ["Unknown backend 'gpt'", "JUPYTER_CODESTRAL_BACKEND"]),
    ({"backend": "openai", "url": "ftp://x"}, {}, ["http://", "CodestralExtension.url"]),
    ({"backend": "openai"}, {"JUPYTER_CODESTRAL_URL": "localhost:8080"}, ["http://", "JUPYTER_CODESTRAL_URL"]),
    ({"url": "localhost:8080"}, {"CODESTRAL_API_KEY": "k"}, ["'localhost:8080'", "CodestralExtension.url"]),
    ({"prompt_layout": "sideways"}, {}, ["prompt_layout"]),
    ({"prefix_tokens": "many"}, {}, ["CodestralExtension.prefix_tokens", "'many'"]),
])
def test_bad_configuration_is_explained(configure: Any, traits: dict[str, object], env: dict[str, str],
                                        fragments: list[str]) -> None:
    _, _, app = configure(traits, env)
    problem = assemble(app).config_error
    assert problem is not None and all(f in problem for f in fragments), problem


def test_the_key_is_not_in_the_settings_repr(configure: Any) -> None:
    settings, _, _ = configure({}, {"CODESTRAL_API_KEY": "very-secret"})
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


def test_the_adaptive_layout_answers_with_the_stable_prompt_and_offers_the_split_one() -> None:
    cells = (Cell("code", "a = 1"), Cell("code", "b = a"), Cell("code", "print(b)"))
    request = CompletionRequest(cells, 1, 3)
    ctx = build_context(request, ContextBudget())
    adaptive, qwen = PromptFormat("adaptive"), TEMPLATES["qwen"]
    assert adaptive.render(qwen, ctx) == render_prompt(qwen, ctx, "stable")
    # The richer prompt is the split one, of the same context (its notebook text is the stable prompt's).
    assert adaptive.render_richer(qwen, ctx) == render_prompt(qwen, ctx, "split")
    assert adaptive.render_all(qwen, ctx) == ([render_prompt(qwen, ctx, "split"), render_prompt(qwen, ctx, "stable")], None)
    # Nothing richer: no later cells, no repository tokens, or another layout.
    last = build_context(CompletionRequest(cells, 2, 5), ContextBudget())
    assert adaptive.render_richer(qwen, last) is None
    assert adaptive.render_richer(TEMPLATES["deepseek"], ctx) is None
    assert PromptFormat("stable").render_richer(qwen, ctx) is None


def test_the_kernel_summary_leads_the_prompt_or_is_a_file_of_its_own() -> None:
    cells = (Cell("code", "df = load()"), Cell("code", "df["), Cell("code", "print(1)"))
    state = KernelState((Snapshot(1, (Variable("df", "DataFrame", "DataFrame, columns {'a': int64}"),)),))
    ctx = build_context(CompletionRequest(cells, 1, 3), ContextBudget(), state)
    assert ctx.prefix == ("# %% [variables in the running kernel]\n"
                          "# df: DataFrame, columns {'a': int64}\n\n# %%\ndf = load()\n\n# %%\ndf[")
    as_comment = render_prompt(TEMPLATES["qwen"], ctx, "split")
    assert "<|fim_prefix|># %% [variables in the running kernel]" in as_comment
    as_file = render_prompt(TEMPLATES["qwen"], ctx, "split", kernel_file=True)
    assert as_file.startswith("<|repo_name|>notebook\n<|file_sep|>kernel_namespace.py\n# %% [variables")
    assert "<|fim_prefix|># %%\ndf = load()\n\n# %%\ndf[<|fim_suffix|>" in as_file
