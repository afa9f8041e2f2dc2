"""What is kept of a model's edit: the replacement of the range, as it streams in.

Pure and incremental: :meth:`CodeAnswer.feed` takes the model's text as it comes and returns the
replacement's new text; :meth:`~CodeAnswer.finish` the rest, and :attr:`~CodeAnswer.replacement` is
the whole.  The streamed pieces always add up to the replacement, so the editor's inline diff can grow
line by line and end exactly where the done event says.

- A rewrite or a fix is the code of the model's first fenced block (or its text, when it writes no
  fence), its lines moved to the range's indentation, ending with a line end where the range did.
- A document edit never lets the model touch the code: its answer is the documentation's text only,
  placed by us as the docstring of the range's first function or class (replacing one it had), or as
  a comment block above plain statements (:class:`DocAnswer`, streamed the same way).  The code stays
  byte-identical.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

from .edit_prompt import document_target
from .edit_request import EditKind, EditRequest

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
        self.partial = ""  # the line being written

    def feed(self, text: str) -> list[str]:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        return lines

    def rest(self) -> list[str]:
        rest, self.partial = self.partial, ""
        return [rest] if rest else []


# Where a line being written may still turn into something that is not shown as it is: a range marker
# ("<<", ">>", or a "<" or ">" that ends the text so far), or the start of a triple quote.
_UNSETTLED_CODE = re.compile(r"[<>]{2}|[<>]$")
_UNSETTLED_DOC = re.compile(r'"""|\'\'\'|["\']{1,2}$')


def _settled(partial: str, unsettled: re.Pattern[str]) -> str:
    """The start of a line being written that no later text can change: up to the first place
    ``unsettled`` matches; nothing while the line may still become a fence."""
    if partial.lstrip()[:1] in ("`", "~"):
        return ""
    found = unsettled.search(partial)
    return partial[: found.start()] if found else partial


class _StreamedAnswer:
    """What both kinds of answer share: the model's text taken a line at a time (:meth:`_line`), what is
    settled shown (:meth:`_show`), then the settled start of the line being written (:meth:`_show_partial`)."""

    def __init__(self) -> None:
        self._lines = _Lines()
        self._shown = 0  # of the answer's lines, how many are in the replacement
        self._partial_shown = ""  # of the line being written, what is in the replacement already
        self.finished = False  # the answer ended (a fence, a marker, a quote): the rest is not wanted
        self.replacement = ""

    def feed(self, text: str) -> str:
        """The replacement's new text once the model wrote ``text`` more."""
        if self.finished:
            return ""
        for line in self._lines.feed(text):
            if self._line(line):
                break
        shown = self._show()
        return shown if self.finished else shown + self._show_partial()

    def _lines_out(self, out: list[str], ready: int) -> str:
        """Lines up to ``ready`` go out as ``out`` (the first without the start that went out as it was
        written)."""
        if out and self._partial_shown:
            out[0] = out[0].removeprefix(self._partial_shown)
            self._partial_shown = ""
        self._shown = ready
        text = "".join(out)
        self.replacement += text
        return text

    def _partial_out(self, blanks: str, placed: str, lines: int) -> str:
        """The line being written shows as ``placed`` (after the ``blanks`` before it): what is new of it."""
        text = blanks + placed.removeprefix(self._partial_shown)
        self._shown = lines
        self._partial_shown = placed
        self.replacement += text
        return text

    def _line(self, line: str) -> bool:
        raise NotImplementedError

    def _show(self, final: bool = False) -> str:
        raise NotImplementedError

    def _show_partial(self) -> str:
        raise NotImplementedError


class CodeAnswer(_StreamedAnswer):
    """The replacement for a rewrite or a fix of ``source[start:end]``."""

    def __init__(self, source: str, start: int, end: int) -> None:
        super().__init__()
        selected = source[start:end]
        self.at_line_start = start == 0 or source[start - 1] == "\n"
        self.indent = range_indent(source, start, end)
        self.ends_with_newline = selected.endswith("\n")
        self._cell_before = [line.rstrip() for line in source[: source.rfind("\n", 0, start) + 1].split("\n")[:-1]]
        self._mode: str | None = None  # "fenced", "plain" (no fence), or None until the first line says
        self._code: list[str] = []  # the answer's code lines as the model wrote them
        self._base: str | None = None  # the indentation of the answer's first code line

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
            if not self.replacement:
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
        if not final and not self.replacement and self._repeats_cell(ready):
            ready = 0  # maybe the cell's text the model repeats before the range marker: held until it is clear
        out: list[str] = []
        for i in range(self._shown, ready):
            out.append(("\n" if i else "") + self._placed(self._code[i], first=i == 0))
        return self._lines_out(out, ready)

    def _show_partial(self) -> str:
        """The settled start of the line being written, once it holds code and every line before it is shown
        (the blank lines between go with it: code follows them)."""
        lines = len(self._code)
        settled = _settled(self._lines.partial, _UNSETTLED_CODE)
        if self._mode is None or not settled.strip():
            return ""  # (the answer's first line may be prose or a fence)
        if any(line.strip() for line in self._code[self._shown :]):
            return ""  # a line held back (the cell's own text, maybe) waits, and so does this one
        if not self.replacement and self._could_repeat_cell(settled):
            return ""
        placed = ("\n" if lines else "") + self._placed(settled, first=lines == 0)
        blanks = "".join("\n" if i else "" for i in range(self._shown, lines))
        return self._partial_out(blanks, placed, lines)

    def _could_repeat_cell(self, settled: str) -> bool:
        """Whether the answer so far and the line being written may still be the cell's own lines before the
        range (which a copied range marker would drop)."""
        before = self._cell_before
        lines = len(self._code)
        return (
            lines < len(before)
            and [c.rstrip() for c in self._code] == before[:lines]
            and before[lines].startswith(settled.rstrip())
        )

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


_CODE_START = re.compile(r"^(async\s+def|def|class)\s|^@")
_CODE_WORDS = ("def ", "class ", "async ", "@")


def _may_be_code(text: str) -> bool:
    """Whether a line being written may still become the start of a definition."""
    text = text.lstrip()
    return any(word.startswith(text) or text.startswith(word) for word in _CODE_WORDS)


class DocAnswer(_StreamedAnswer):
    """The replacement of ``code`` (a document edit's range, whole lines) with the model's documentation
    placed in it, as it streams in: the code up to the docstring (or the comment block) goes out with the
    documentation's first words, then each line as it is written, and the code after it at the end.

    An answer that writes the code again up to the docstring and then opens it (as the embedded model
    does, its answer opened so: :func:`answer_opening`) streams the docstring and ends at its closing
    quote.  An answer that is other code (the whole function again) is held to the end, and only its
    docstring is taken."""

    def __init__(self, code: str) -> None:
        super().__init__()
        self.code = code
        self.placement = place(code)
        # The code's lines before the docstring: an answer that repeats them is opening the docstring.
        head = code[: self.placement.start].split("\n")[:-1] if self.placement.docstring else []
        self._head = [line.strip() for line in head if line.strip()]  # (blank lines are not compared)
        self._head_seen = 0  # of them, how many the answer repeated
        self._mode: str | None = None  # "fenced", "plain", "code" (held to the end), or None until a line says
        self._raw: list[str] = []  # the model's lines (for an answer that is code)
        self._prose: str | None = None  # a sentence that may introduce a fenced block, or be the documentation
        self._quote: str | None = None  # the triple quote the documentation opened with: its closing one ends it
        # The indentation of the documentation's first line, and of its first later line (the others' base,
        # as in inspect.cleandoc: a docstring the model wrote as it stands in code keeps only its own indents).
        self._base: str | None = None
        self._later_base: str | None = None
        self._doc: list[str] = []  # the documentation's lines, without indentation

    def finish(self) -> str:
        if not self.finished:
            for line in self._lines.rest():
                self._line(line)
            if self._mode is None and self._prose is not None:
                self._mode = "plain"
                self._doc_line(self._prose)
            self.finished = True
        if self._mode == "code":
            text = documentation_text("\n".join(self._raw))  # (nothing of it was shown)
            self._doc = text.split("\n") if text else []
        while self._doc and not self._doc[-1]:
            self._doc.pop()  # blank lines the model ended with (never shown)
        if not self._doc:
            self.replacement = self.code  # no documentation: the code as it was
            return self.code
        shown = self._show(final=True)
        placement = self.placement
        closing = ('"""' if len(self._doc) == 1 else f'\n{placement.indent}"""') + "\n" if placement.docstring else ""
        closing += self.code[placement.end :]
        self.replacement += closing
        return shown + closing

    def _line(self, line: str) -> bool:
        """Take one complete line of the answer; whether it ended the answer."""
        self._raw.append(line)
        if self._mode is None:
            if not line.strip():
                return False
            if _FENCE.match(line):
                self._mode, self._prose = "fenced", None  # (a sentence before the block is not documentation)
                return False
            if self._prose is None and _PROSE.match(line.strip()):
                self._prose = line
                return False
            self._mode = "plain"
            if self._prose is not None:
                self._doc_line(self._prose)
        if self._mode == "code":
            return False
        if _FENCE.match(line):
            self.finished = True
            return True
        if not self._doc and line.strip():
            head, seen = self._head, self._head_seen
            if seen < len(head) and line.strip() == head[seen]:
                self._head_seen += 1  # the code again, up to the docstring
                return False
            opens = line.lstrip()[:3] in ('"""', "'''")
            if (seen and not (seen == len(head) and opens)) or _CODE_START.match(line.strip()):
                self._mode = "code"
                return False
        return self._doc_line(line)

    def _doc_line(self, line: str) -> bool:
        """One line of the documentation; whether it closed the quote the documentation opened with."""
        if not self._doc:
            if not line.strip():
                return False  # blank lines before it
            stripped = line.lstrip()
            if stripped[:3] in ('"""', "'''"):
                self._quote = stripped[:3]
                line = _indent(line) + stripped[3:]
                if not line.strip():
                    return False
            self._base = _indent(line)
        elif self._later_base is None and line.strip():
            self._later_base = _indent(line)
        closed = bool(self._quote and self._quote in line)
        if closed:
            line = line[: line.index(self._quote or "")]
        self._doc.append(self._dedented(line, later=bool(self._doc)))
        if closed:
            self.finished = True
        return closed

    def _dedented(self, line: str, later: bool) -> str:
        """A line of the documentation without its indentation, comment sign or trailing spaces."""
        base = self._later_base if later else self._base
        base = _indent(line) if base is None else base
        text = line[len(base) :] if line.startswith(base) else line.lstrip()
        if text.startswith("#"):
            text = text.removeprefix("#").removeprefix(" ")
        return text.rstrip().replace('"""', "'''")

    def _line_text(self, i: int, text: str) -> str:
        """What documentation line ``i`` adds to the replacement (the first, with the code before it)."""
        placement = self.placement
        indent = placement.indent
        head = self.code[: placement.start] if i == 0 else ""
        if placement.docstring:
            return head + (f'{indent}"""{text}' if i == 0 else "\n" + (indent + text if text else ""))
        return head + f"{indent}# {text}".rstrip() + "\n"

    def _show(self, final: bool = False) -> str:
        """Documentation lines not shown yet; a blank one once text follows it."""
        texted = [i for i in range(self._shown, len(self._doc)) if self._doc[i]]
        ready = len(self._doc) if final else (texted[-1] + 1 if texted else self._shown)
        out = [self._line_text(i, self._doc[i]) for i in range(self._shown, ready)]
        return self._lines_out(out, ready)

    def _show_partial(self) -> str:
        """The settled start of the documentation line being written, once every line before it is shown."""
        if self._mode not in ("fenced", "plain") or any(self._doc[self._shown :]):
            return ""
        partial = self._lines.partial
        if not self._doc:
            stripped = partial.lstrip()
            seen, head = self._head_seen, self._head
            if _may_be_code(stripped) or 0 < seen < len(head) or (seen == 0 and head and head[0].startswith(stripped)):
                return ""  # (the model may be writing the function again)
            if seen and stripped[:3] not in ('"""', "'''"):
                return ""  # (the code again, after the lines before the docstring: held to the end)
            if stripped[:3] in ('"""', "'''"):
                partial = _indent(partial) + stripped[3:]
            elif stripped[:1] in ('"', "'"):
                return ""  # (a triple quote, maybe)
        settled = _settled(partial, _UNSETTLED_DOC)
        if not settled.strip():
            return ""
        lines = len(self._doc)
        placed = self._line_text(lines, self._dedented(settled, later=lines > 0))
        if not self.placement.docstring:
            placed = placed.removesuffix("\n")  # (a comment line's end goes out when the line ends)
        blanks = "".join(self._line_text(i, "") for i in range(self._shown, lines))
        return self._partial_out(blanks, placed, lines)


def answer_opening(request: EditRequest) -> str:
    """How the answer the system text asks for begins, for a backend that continues the assistant's turn
    from here (the embedded model): a fence (sparing the model three tokens, about 150 ms on a CPU, and
    keeping it from opening with prose), and for a docstring the code up to it and its opening quote,
    so that the model writes the docstring at once, and stops where it closes instead of writing the
    function again.  The opening is part of the answer, as if the model had written it."""
    fence = f"```{request.language}\n"
    if request.kind != EditKind.DOCUMENT:
        return fence
    placement = place(request.selected)
    if not placement.docstring:
        return "```text\n"
    return fence + request.selected[: placement.start] + placement.indent + '"""'


def documented(code: str, answer: str) -> str:
    """``code`` with the documentation of the model's whole ``answer`` placed in it; the code itself unchanged
    (``code`` itself when the answer holds no documentation)."""
    answer_of = DocAnswer(code)
    answer_of.feed(answer)
    answer_of.finish()
    return answer_of.replacement
