"""Fill-in-the-middle prompt templates for the common code-model families.

Servers that take ``prefix``/``suffix`` fields (Mistral, llama.cpp ``/infill``,
Ollama) apply the template themselves; these are for servers that take a raw
prompt (vLLM or LM Studio ``/v1/completions``, the embedded model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .context import CELL_SEPARATOR, ContextBudget, FimContext, nearer

DEFAULT_BUDGET = ContextBudget()  # the embedded model's, for callers that have none of their own

# Where the later cells go.
# "inline": in the FIM suffix (the classic layout; for servers that read fast).
# "split": as a separate file before the FIM part, using the model's
#   repository-level tokens; a keystroke re-reads only the rest of its line,
#   but moving to another cell changes the start of the prompt.
# "stable": nowhere; the prompt is the notebook up to the cursor and the rest
#   of the cursor's line, so its start survives typing, cell moves and
#   executions, and a KV cache keeps what it has read.
# "adaptive": the stable prompt, and beside it the split prompt as a richer
#   one, for a backend that reads it in the background and answers from it
#   once read (the embedded model): the later cells help mid-notebook
#   (benchmarks/RESULTS.md), and reading them costs a second or two after a
#   cell move (the rest of the split prompt is the stable one's text, kept).
#   Backends that take one prompt use the stable one.
LAYOUTS = ("inline", "split", "stable", "adaptive")


@dataclass(frozen=True)
class PromptFormat:
    """How a raw prompt is laid out, for backends that take one (and llama.cpp's /infill)."""

    layout: str  # one of LAYOUTS
    template: str | None = None  # a FIM template's name; None: the one the model's name suggests
    kernel_file: bool = False  # the leading block of kernel variables as a file of its own

    def template_for(self, model: str, fallback: str | None = None) -> FimTemplate:
        return template_for_model(model, self.template or fallback)

    @property
    def answer_layout(self) -> str:
        """The layout of the prompt answered from at once (the adaptive layout's is the stable one)."""
        return "stable" if self.layout == "adaptive" else self.layout

    def render(self, template: FimTemplate, context: FimContext) -> str:
        """The prompt to answer from at once."""
        return render_prompt(template, context, self.answer_layout, self.kernel_file)

    def render_all(
        self,
        template: FimTemplate,
        context: FimContext,
        richer_context: FimContext | None = None,
        budget: ContextBudget = DEFAULT_BUDGET,
    ) -> tuple[list[str], str | None]:
        """Every prompt of a request, for a backend that reads some while the user thinks (the embedded
        model): in order of preference, the richer one (the adaptive layout's, from ``richer_context``:
        by default ``context``) and the one to answer from at once; and a nearer one (the cells nearest
        the cursor only, within ``budget``'s ``near_tokens``), answered from where the others would take long
        (nothing around the cursor read before)."""
        prompts = [self.render(template, context)]
        richer = self.render_richer(template, richer_context or context)
        if richer is not None:
            prompts.insert(0, richer)
        near = nearer(context, budget) if self.answer_layout == "stable" else None
        return prompts, None if near is None else self.render_nearer(template, near, budget)

    def render_nearer(self, template: FimTemplate, near: FimContext, budget: ContextBudget) -> str:
        """The nearer prompt: the stable layout's, or with its later cells the split one's."""
        later = budget.near_later_tokens > 0 and self.reads_richer(template)
        return render_prompt(template, near, "split", self.kernel_file) if later else self.render(template, near)

    def reads_richer(self, template: FimTemplate) -> bool:
        """Whether a richer prompt is read beside the one answered from: the adaptive layout's, with a
        template that has file tokens (its context is built only then: ``FimRequest.richer_context``)."""
        return self.layout == "adaptive" and template.supports_files

    def render_richer(self, template: FimTemplate, context: FimContext) -> str | None:
        """The adaptive layout's richer prompt, when it says more than :meth:`render`'s: the split one (the
        later cells as a file before the notebook)."""
        if not self.reads_richer(template):
            return None
        if not split_layout_parts(context)[2].strip():
            return None
        return render_prompt(template, context, "split", self.kernel_file)


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
                "<|endoftext|>",
                "<|fim_pad|>",
                "<|file_sep|>",
                "<|repo_name|>",
                "<|im_end|>",
                "<|fim_prefix|>",
                "<|fim_suffix|>",
                "<|fim_middle|>",
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


# In the split layout, how many lines after the cursor's line stay in the FIM
# suffix.  The suffix comes after the prefix, so it is read again on every
# keystroke; the rest of the cell goes to the cached file before the FIM part.
NEAR_SUFFIX_LINES = 0


def split_suffix(cell_suffix: str, lines: int = NEAR_SUFFIX_LINES) -> tuple[str, str]:
    """(the rest of the cursor's line and the next ``lines`` lines, everything after them)."""
    parts = cell_suffix.split("\n")
    if len(parts) <= lines + 1:
        return cell_suffix, ""
    return "\n".join(parts[: lines + 1]) + "\n", "\n".join(parts[lines + 1 :])


def split_layout_parts(context: FimContext) -> tuple[str, str, str]:
    """(near suffix, far part of the cell, the later file) of the split layout."""
    near, far = split_suffix(context.cell_suffix)
    later = (far.strip("\n") + "\n" if far.strip() else "") + context.after.lstrip("\n")
    return near, far, later


def _cell_end_marker(context: FimContext, far: str) -> str:
    """When the cell ends at the cursor's line, the next cell's marker line: a few
    tokens that tell the model where the current cell stops."""
    if far.strip() or not context.after.strip():
        return ""
    return context.after[: context.after.find("\n", len(CELL_SEPARATOR)) + 1]


def stable_suffix(context: FimContext) -> str:
    """The FIM suffix of the stable layout: the rest of the cursor's line (and where the cell ends)."""
    near, far = split_suffix(context.cell_suffix)
    return near + _cell_end_marker(context, far)


def render_prompt(template: FimTemplate, context: FimContext, layout: str = "inline", kernel_file: bool = False) -> str:
    """The raw prompt for ``context`` in the given layout (see :data:`LAYOUTS`).

    ``kernel_file``: give the kernel summary's leading block as a file of its
    own rather than as comment lines leading the notebook."""
    if layout == "inline" or (layout == "split" and not template.supports_files):
        return template.fim(context.prefix, context.suffix)
    files: list[tuple[str, str]] = []
    prefix = context.prefix
    if kernel_file and context.namespace and template.supports_files:
        files.append(("kernel_namespace.py", context.namespace))
        prefix = context.code_prefix
    near, far, later = split_layout_parts(context)
    if layout == "split" and later.strip():
        files.append(("later_cells.py", later))
        suffix = near + _cell_end_marker(context, far)
    elif layout == "split":
        suffix = context.suffix
    else:
        suffix = stable_suffix(context)
    return template.render(prefix, suffix, files=files) if files else template.fim(prefix, suffix)
