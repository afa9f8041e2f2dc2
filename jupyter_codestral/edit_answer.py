"""What is kept of a model's edit: the replacement of the range, as it streams in.

Pure and incremental: :meth:`CodeAnswer.feed` takes the model's text as it comes and returns the
replacement's new text; :meth:`~CodeAnswer.finish` the rest, and :attr:`~CodeAnswer.replacement` is
the whole.  The streamed pieces always add up to the replacement, so the editor's inline diff can grow
line by line and end exactly where the done event says.

- A rewrite or a fix is the code of the model's first fenced block (or its text, when it writes no
  fence), its lines moved to the range's indentation, ending with a line end where the range did.
- A document edit never lets the model touch the code: its answer is the documentation's text only,
  placed by us as the docstring of the range's first function or class (replacing one it had), or as
  a comment block above plain statements.  The code stays byte-identical.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

from .edit_prompt import document_target

# The prompt's range markers as small models copy them: "<<<START>>>", and also ">>>START>>>", "<<START>>".
_START = re.compile(r"[<>]{2,3} ?START ?[<>]{2,3}")
_END = re.compile(r"[<>]{2,3} ?END ?[<>]{2,3}")
_FENCE = re.compile(r"^\s*(```|~~~)")
# An opening line of prose before the code ("Here is the fixed code:").
_PROSE = re.compile(r"^[A-Z][^=(){}\[\]#]*[:.]\s*$")


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def range_indent(source: str, start: int, end: int) -> str:
    """The indentation of the range's first line that holds code, as the cell has it."""
    line_start = source.rfind("\n", 0, start) + 1
    for line in source[line_start:end].split("\n"):
        if line.strip():
            return _indent(line)
    return _indent(source[line_start:].split("\n", 1)[0])


class _Lines:
    """The model's text in complete lines (the last, partial one held back until it ends)."""

    def __init__(self) -> None:
        self._partial = ""

    def feed(self, text: str) -> list[str]:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        return lines

    def rest(self) -> list[str]:
        rest, self._partial = self._partial, ""
        return [rest] if rest else []


class CodeAnswer:
    """The replacement for a rewrite or a fix of ``source[start:end]``."""

    def __init__(self, source: str, start: int, end: int) -> None:
        selected = source[start:end]
        self.at_line_start = start == 0 or source[start - 1] == "\n"
        self.indent = range_indent(source, start, end)
        self.ends_with_newline = selected.endswith("\n")
        self._cell_before = [line.rstrip() for line in source[: source.rfind("\n", 0, start) + 1].split("\n")[:-1]]
        self._lines = _Lines()
        self._mode: str | None = None  # "fenced", "plain" (no fence), or None until the first line says
        self._code: list[str] = []  # the answer's code lines as the model wrote them
        self._shown = 0  # of them, how many are in the replacement so far
        self._base: str | None = None  # the indentation of the answer's first code line
        self.finished = False  # the closing fence came: the rest of the model's text is not wanted
        self.replacement = ""

    def feed(self, text: str) -> str:
        if self.finished:
            return ""
        for line in self._lines.feed(text):
            if self._line(line):
                break
        return self._show()

    def finish(self) -> str:
        if not self.finished:
            for line in self._lines.rest():
                self._line(line)
            self.finished = True
        while self._code and not self._code[-1].strip():
            self._code.pop()  # blank lines the model ended with
        shown = self._show(final=True)
        if self.ends_with_newline and self._code:
            shown += "\n"
            self.replacement += "\n"
        return shown

    def _line(self, line: str) -> bool:
        """Take one complete line of the answer; whether it ended the answer."""
        if self._mode is None:
            if not line.strip():
                return False
            if _FENCE.match(line):
                self._mode = "fenced"
                return False
            if _PROSE.match(line.strip()):
                return False  # a sentence before the code: skipped
            self._mode = "plain"
        if _FENCE.match(line):
            self.finished = True  # the block's end (or, in plain text, the start of something else)
            return True
        # Small models copy the prompt's range markers: what they enclose is the answer.
        if _START.search(line):
            before, line = _START.split(line, maxsplit=1)
            if self._shown == 0:
                self._code.clear()  # the cell's text the model repeated before the range
            elif before.strip():
                self._code.append(before)
        if _END.search(line):
            line = _END.split(line, maxsplit=1)[0]
            if line.strip():
                self._code.append(line)
            self.finished = True
            return True
        self._code.append(line)
        return False

    def _show(self, final: bool = False) -> str:
        """The replacement's text for code lines not shown yet.  A blank line goes out once code follows it
        (or at the end), so that blank lines the model ends with never reach the editor."""
        coded = [i for i in range(self._shown, len(self._code)) if self._code[i].strip()]
        ready = len(self._code) if final else (coded[-1] + 1 if coded else self._shown)
        if not final and self._shown == 0 and self._repeats_cell(ready):
            ready = 0  # maybe the cell's text the model repeats before the range marker: held until it is clear
        out: list[str] = []
        for i in range(self._shown, ready):
            out.append(("\n" if i else "") + self._placed(self._code[i], first=i == 0))
        self._shown = ready
        text = "".join(out)
        self.replacement += text
        return text

    def _repeats_cell(self, lines: int) -> bool:
        """Whether the answer's first ``lines`` lines are the cell's own lines before the range."""
        before = self._cell_before
        return 0 < lines <= len(before) and [c.rstrip() for c in self._code[:lines]] == before[:lines]

    def _placed(self, line: str, first: bool) -> str:
        """``line`` moved from the answer's indentation to the range's."""
        if self._base is None:
            self._base = _indent(line)
        if not line.strip():
            return ""
        rest = line[len(self._base) :] if line.startswith(self._base) else line.lstrip()
        if first and not self.at_line_start:
            return rest  # the cell's own text before the range holds the line's indentation
        return self.indent + rest


def documentation_text(answer: str) -> str:
    """The documentation in a model's answer: the first fenced block's text (or the answer), without the
    quotes or comment signs the model may have wrapped it in."""
    written = _docstring_of_code(answer)
    if written is not None:
        return written
    lines = answer.strip().split("\n")
    fences = [i for i, line in enumerate(lines) if _FENCE.match(line)]
    if fences:
        end = fences[1] if len(fences) > 1 else len(lines)
        lines = lines[fences[0] + 1 : end]
    text = textwrap.dedent("\n".join(lines)).strip()
    for quote in ('"""', "'''"):
        if text.startswith(quote):
            text = text[3:]
            text = text[: text.find(quote)] if quote in text else text
    text = "\n".join(
        line.removeprefix("#").removeprefix(" ") if line.startswith("#") else line for line in text.split("\n")
    )
    return textwrap.dedent(text).strip().replace('"""', "'''")


def _docstring_of_code(answer: str) -> str | None:
    """The docstring of the first function or class in an answer that is code (a model that wrote the whole
    function again, documented): only its docstring is taken."""
    text = answer.strip()
    fenced = [line for line in text.split("\n") if not _FENCE.match(line)]
    try:
        tree = ast.parse(textwrap.dedent("\n".join(fenced)))
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            docstring = ast.get_docstring(node)
            return None if docstring is None else docstring.strip().replace('"""', "'''")
    return None


@dataclass(frozen=True)
class Placement:
    """Where documentation goes in the range: replacing ``range[start:end]`` with the block built from it."""

    start: int  # in the range's text
    end: int
    indent: str
    docstring: bool  # else a comment block


def place(code: str) -> Placement:
    """Where the documentation of ``code`` (the range, whole lines) goes: the docstring of its first function
    or class (replacing one it has), or a comment block before it."""
    lines = code.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    if document_target(code).name is not None:
        tree = ast.parse(textwrap.dedent(code))
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))
        first = node.body[0]
        if first.lineno > node.lineno:  # (a one-line definition gets a comment block instead)
            start = first.lineno - 1
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):  # a docstring already: replaced
                return Placement(offsets[start], offsets[first.end_lineno or first.lineno], _indent(lines[start]), True)
            return Placement(offsets[start], offsets[start], _indent(lines[start]), True)
    first_code = next((line for line in lines if line.strip()), "")
    return Placement(0, 0, _indent(first_code), False)


def documentation_block(text: str, placement: Placement) -> str:
    """``text`` as a docstring or a comment block at ``placement``'s indentation, ending with a line end."""
    indent = placement.indent
    if placement.docstring:
        body = text.split("\n")
        if len(body) == 1:
            return f'{indent}"""{body[0]}"""\n'
        inner = "\n".join(indent + line if line.strip() else "" for line in body[1:])
        return f'{indent}"""{body[0]}\n{inner}\n{indent}"""\n'
    return "".join(f"{indent}# {line}".rstrip() + "\n" for line in text.split("\n"))


def documented(code: str, answer: str) -> str:
    """``code`` with the documentation of the model's ``answer`` placed in it; the code itself unchanged
    (``code`` itself when the answer holds no documentation)."""
    text = documentation_text(answer)
    if not text:
        return code
    placement = place(code)
    return code[: placement.start] + documentation_block(text, placement) + code[placement.end :]
