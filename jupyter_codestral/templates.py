"""Fill-in-the-middle prompt templates for the common code-model families.

Servers that take ``prefix``/``suffix`` fields (Mistral, llama.cpp ``/infill``,
Ollama) apply the template themselves; these are for servers that take a raw
prompt (vLLM or LM Studio ``/v1/completions``, the embedded model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .context import CELL_SEPARATOR, FimContext

# Where the later cells go.  "inline": in the FIM suffix (the classic layout).
# "split": as a separate file before the FIM part, using the model's
# repository-level tokens; it keeps the text re-read on each keystroke small
# and lets a KV cache reuse everything but the current cell.
LAYOUTS = ("inline", "split")


@dataclass(frozen=True)
class FimTemplate:
    name: str
    prefix_token: str
    suffix_token: str
    middle_token: str
    stop: tuple[str, ...]
    suffix_first: bool = False
    repo_token: str | None = None
    file_token: str | None = None
    spaced: bool = False  # CodeLlama puts spaces around the prefix

    @property
    def supports_files(self) -> bool:
        return self.file_token is not None

    def fim(self, prefix: str, suffix: str) -> str:
        if self.suffix_first:
            return f"{self.suffix_token}{suffix}{self.prefix_token}{prefix}{self.middle_token}"
        if self.spaced:
            return f"{self.prefix_token} {prefix} {self.suffix_token}{suffix} {self.middle_token}"
        return f"{self.prefix_token}{prefix}{self.suffix_token}{suffix}{self.middle_token}"

    def render(
        self,
        prefix: str,
        suffix: str,
        files: Sequence[tuple[str, str]] = (),
        current_file: str = "notebook.py",
        repo: str = "notebook",
    ) -> str:
        """The full prompt; ``files`` go before the FIM part as other files of a repo."""
        if not files or not self.supports_files:
            return self.fim(prefix, suffix)
        sep = self.file_token
        head = f"{self.repo_token}{repo}\n" if self.repo_token else ""
        parts = [f"{sep}{name}\n{text}" for name, text in files]
        return head + "".join(parts) + f"{sep}{current_file}\n" + self.fim(prefix, suffix)


TEMPLATES: dict[str, FimTemplate] = {
    t.name: t
    for t in (
        FimTemplate("codestral", "[PREFIX]", "[SUFFIX]", "", ("</s>",), suffix_first=True),
        FimTemplate(
            "qwen",
            "<|fim_prefix|>",
            "<|fim_suffix|>",
            "<|fim_middle|>",
            (
                "<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>",
                "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
            ),
            repo_token="<|repo_name|>",
            file_token="<|file_sep|>",
        ),
        FimTemplate(
            "starcoder2",
            "<fim_prefix>",
            "<fim_suffix>",
            "<fim_middle>",
            ("<|endoftext|>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
            repo_token="<repo_name>",
            file_token="<file_sep>",
        ),
        FimTemplate(
            "deepseek",
            "<｜fim▁begin｜>",
            "<｜fim▁hole｜>",
            "<｜fim▁end｜>",
            ("<｜end▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<|EOT|>"),
        ),
        FimTemplate("codellama", "<PRE>", "<SUF>", "<MID>", ("<EOT>", "</s>"), spaced=True),
    )
}

# Substrings of model names, checked in order.
_FAMILY_HINTS = (
    ("codestral", "codestral"),
    ("qwen", "qwen"),
    ("starcoder", "starcoder2"),
    ("deepseek", "deepseek"),
    ("codellama", "codellama"),
    ("code-llama", "codellama"),
    ("code_llama", "codellama"),
)


def template_for_model(model: str, override: str | None = None) -> FimTemplate:
    """The template named by ``override``, else the one the model name suggests (Qwen by default)."""
    if override:
        try:
            return TEMPLATES[override.lower()]
        except KeyError:
            raise ValueError(f"Unknown FIM template {override!r}; known: {', '.join(TEMPLATES)}") from None
    name = model.lower()
    for hint, family in _FAMILY_HINTS:
        if hint in name:
            return TEMPLATES[family]
    return TEMPLATES["qwen"]


def render_prompt(template: FimTemplate, context: FimContext, layout: str = "inline") -> str:
    """The raw prompt for ``context`` in the given layout (see :data:`LAYOUTS`)."""
    if layout == "split" and context.after.strip() and template.supports_files:
        later = context.after.lstrip("\n")
        # Keep the next cell's marker line in the suffix: a few tokens that
        # tell the model where the current cell ends.
        boundary = context.after[: context.after.find("\n", len(CELL_SEPARATOR)) + 1]
        return template.render(context.prefix, context.cell_suffix + boundary, files=[("later_cells.py", later)])
    return template.fim(context.prefix, context.suffix)
