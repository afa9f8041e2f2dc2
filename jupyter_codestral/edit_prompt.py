"""What the model reads for an edit: chat messages built from the notebook's context.

Pure functions.  The earlier and later cells and the kernel's variables come from the completion's
context builder (:func:`~jupyter_codestral.context.build_context` at the range's start), so an edit
sees the notebook as a completion does, within its route's budget.  The messages keep what changes
least first (the instructions, the earlier cells, the later ones) and the cell and the task last:
a backend that keeps its prompt's start (the embedded model, llama.cpp's server) reads only the end
again from one edit of a notebook to the next.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass

from .context import FimContext
from .edit_request import EditKind, EditRequest

# Where the range to change begins and ends, in the cell as the prompt shows it.
START_MARK = "<<<START>>>"
END_MARK = "<<<END>>>"
# The error's traceback in a `fix` prompt, at most (its end is kept).
TRACEBACK_CHARS = 2400

SYSTEM = (
    "You edit code in a Jupyter notebook. You are shown the notebook around one cell and a part of that "
    "cell to change. Answer with the new code for that part only, in one ```{language} block: no "
    "explanation before or after it, the same indentation as the part you replace, nothing of the cell "
    "outside that part, and not the markers."
)
SYSTEM_DOCUMENT = (
    "You document code in a Jupyter notebook. Answer with the documentation only, in one ```text block: "
    "no code, no explanation before or after it."
)


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system, user or assistant
    content: str

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class DocumentTarget:
    """What a `document` edit documents: the first function or class of the range, or its statements."""

    name: str | None  # the function's or class's name; None: plain statements (a comment block)
    kind: str  # "function", "class" or "statements"
    parameters: tuple[str, ...] = ()


def document_target(code: str) -> DocumentTarget:
    """The first function or class defined in ``code`` (its parameters, for the docstring to name)."""
    try:
        tree = ast.parse(textwrap.dedent(code))
    except SyntaxError:
        return DocumentTarget(None, "statements")
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args)]
            names += [f"*{args.vararg.arg}"] if args.vararg else []
            names += [a.arg for a in args.kwonlyargs]
            names += [f"**{args.kwarg.arg}"] if args.kwarg else []
            return DocumentTarget(node.name, "function", tuple(n for n in names if n not in ("self", "cls")))
        if isinstance(node, ast.ClassDef):
            return DocumentTarget(node.name, "class")
    return DocumentTarget(None, "statements")


def _block(language: str, text: str) -> str:
    return f"```{language}\n{text.rstrip()}\n```"


def _task(request: EditRequest) -> str:
    """The last paragraph of the user's message: what to do with the range."""
    if request.kind == EditKind.REWRITE:
        return f"Rewrite the part between {START_MARK} and {END_MARK} as asked: {request.instruction}"
    if request.kind == EditKind.FIX:
        asked = f" {request.instruction}" if request.instruction else ""
        if request.error is not None:
            error = request.error.text(TRACEBACK_CHARS)
            return (
                f"Running the cell raised this error:\n{_block('text', error)}\n"
                f"Fix the part between {START_MARK} and {END_MARK} so that it runs correctly.{asked}"
            )
        return f"The part between {START_MARK} and {END_MARK} has a bug. Fix it.{asked}"
    target = document_target(request.selected)
    asked = f" {request.instruction}" if request.instruction else ""
    if target.kind == "function":
        named = ", ".join(target.parameters)
        parameters = f" Describe each parameter ({named}) and what it returns." if named else " Say what it returns."
        where = f"between {START_MARK} and {END_MARK}"
        return f"Write the docstring of the function `{target.name}` {where}.{parameters}{asked}"
    if target.kind == "class":
        return f"Write the docstring of the class `{target.name}` between {START_MARK} and {END_MARK}.{asked}"
    return f"Explain in one to three short sentences what the code between {START_MARK} and {END_MARK} does.{asked}"


def edit_messages(request: EditRequest, context: FimContext) -> list[ChatMessage]:
    """The chat for ``request``; ``context``: the completion context at the range's start (its earlier
    and later cells, the kernel's variables)."""
    language = request.language
    parts: list[str] = []
    if context.namespace.strip():
        parts.append("Variables in the running kernel:\n" + _block(language, context.namespace))
    if context.before.strip():
        parts.append("The notebook's cells before this one:\n" + _block(language, context.before))
    if context.after.strip():
        parts.append("The cells after it:\n" + _block(language, context.after))
    source = request.source
    marked = f"{source[: request.start]}{START_MARK}{request.selected}{END_MARK}{source[request.end :]}"
    parts.append("The cell:\n" + _block(language, marked))
    parts.append(_task(request))
    system = SYSTEM_DOCUMENT if request.kind == EditKind.DOCUMENT else SYSTEM.format(language=language)
    return [ChatMessage("system", system), ChatMessage("user", "\n\n".join(parts))]


def render_chatml(messages: list[ChatMessage], opening: str = "") -> str:
    """``messages`` in the ChatML form of the Qwen2.5 Instruct models' chat template (the embedded model's),
    ready for the assistant's answer, which starts with ``opening``; it ends at the token ``<|im_end|>``."""
    turns = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n" + opening


CHATML_END = "<|im_end|>"
