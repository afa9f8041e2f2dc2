"""Clean a model's raw completion into what the user should see, and end it where the gap ends.

:func:`clean` is the whole rule set as a pure function of the raw text.
:class:`CompletionFilter` applies it to a stream: it emits only text that no
later chunk can take back, and says when to stop the backend early, so no
tokens are paid for text we cut.

Where a suggestion ends is decided from where the cursor is and what follows
it (``benchmarks/gap_completion.py`` measured each rule on gaps cut from real
cells; :data:`DEFAULT_RULES` are the ones that made what Tab accepts right
more often):

- a single line where code is right of the cursor, or when asked;
- ``next_line``: before a line that matches, or nearly matches, the first
  line of code below the cursor: the model is walking into the code below;
- ``dedent``: before a line indented less than the block the cursor is in,
  when the code below goes on at that level (the block has ended);
- ``statement``: after the first whole statement, when the cursor is in the
  middle of a block (the code below goes on at its level);
- ``prompt``: before a line only the prompt holds (what a run produced, the
  cell markers, the kernel's variables, file names): the model imitates the
  prompt's own notes, and they are never code to accept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from .context import FimContext, cell_marker
from .evaluation import edit_similarity, prefix_distances

FENCE = "```"
# An echoed line prefix shorter than this is as likely to be a real completion.
MIN_ECHO_CHARS = 4
# A line this similar to the first line of code below the cursor is that line (a variant of it).
NEAR_MATCH = 0.9


class Cut(StrEnum):
    """What ended a suggestion before the model did (the reply's ``cut``)."""

    LINE = "line"  # one line was wanted
    STATEMENT = "statement"
    DEDENT = "dedent"
    NEXT_LINE = "next_line"
    PROMPT = "prompt"
    FENCE = "fence"
    CONFIDENCE = "confidence"  # hidden: the model was unsure of it (min_confidence)


class Rule(StrEnum):
    """The rules that may end a suggestion (see the module's docstring)."""

    NEXT_LINE = "next_line"
    NEAR_NEXT_LINE = "near_next_line"  # next_line also for lines that nearly match
    DEDENT = "dedent"
    STATEMENT = "statement"
    PROMPT = "prompt"


# All of them: on the gaps of benchmarks/gap_completion.py (--rules) each one made what Tab accepts right
# more often, and together they bring a missing line, accepted whole, to its first line's exact match.
DEFAULT_RULES = frozenset({Rule.NEXT_LINE, Rule.NEAR_NEXT_LINE, Rule.DEDENT, Rule.STATEMENT, Rule.PROMPT})


@dataclass(frozen=True)
class PostprocessOptions:
    single_line: bool
    line_prefix: str  # the current line, left of the cursor
    line_suffix: str  # the current line, right of the cursor
    next_line: str  # the first non-blank line after the current line (stripped)
    cell_marker: str | None  # the marker that begins the next cell, in notebooks
    indent: int = 0  # how far the block the cursor is in is indented
    below_indent: int | None = None  # the indentation of the next line of code below in the cell (None: none)
    prompt_lines: frozenset[str] = frozenset()  # lines only the prompt holds (stripped)
    rules: frozenset[Rule] = DEFAULT_RULES

    @property
    def inside_block(self) -> bool:
        """Code below the cursor goes on in its block: the gap is in the middle of it."""
        return self.below_indent is not None and self.below_indent >= self.indent


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def options_for(
    context: FimContext, single_line: bool = False, rules: Iterable[Rule] = DEFAULT_RULES
) -> PostprocessOptions:
    marker = cell_marker(context.language) if context.is_notebook else None
    line_prefix = context.line_prefix
    # The block the cursor is in: the indentation typed on its line (an empty line's, up to the cursor).
    indent = len(line_prefix) if not line_prefix.strip() else _indent(line_prefix)
    below = next((line for line in context.cell_suffix.split("\n")[1:] if line.strip()), None)
    return PostprocessOptions(
        # Code right of the cursor means the user wants the gap on this line filled.
        single_line=single_line or context.mid_line,
        line_prefix=line_prefix,
        line_suffix=context.line_suffix.strip(),
        next_line=_next_line(context.suffix, marker),
        cell_marker=marker,
        indent=indent,
        below_indent=None if below is None else _indent(below),
        prompt_lines=context.prompt_lines,
        rules=frozenset(rules),
    )


def _next_line(suffix: str, marker: str | None) -> str:
    """The first line of code after the cursor's line, across cell markers (stripped)."""
    # Line by line from the cursor: the suffix can be long, and the line is usually near.
    end = suffix.find("\n")
    while end != -1:
        start, end = end + 1, suffix.find("\n", end + 1)
        line = suffix[start : end if end != -1 else len(suffix)].strip()
        if line and not (marker and line.startswith(marker)):
            return line
    return ""


def _drop_echo(text: str, line_prefix: str) -> str:
    for echo in (line_prefix, line_prefix.lstrip()):
        if len(echo.strip()) >= MIN_ECHO_CHARS and text.startswith(echo):
            return text[len(echo) :]
    return text


def _drop_fence(text: str) -> str:
    """Remove a markdown code fence the model wrapped its answer in."""
    if text.lstrip().startswith(FENCE):
        _, newline, rest = text.lstrip().partition("\n")
        return rest if newline else ""
    return text


class _Statement:
    """Where a Python statement ends, read character by character (brackets, strings, comments)."""

    def __init__(self) -> None:
        self.depth = 0
        self.quote = ""  # the open string's quote: ', ", ''' or """
        self.last = ""  # the last character of code (not blank, not a comment)

    def read(self, line: str) -> None:
        i = 0
        while i < len(line):
            ch = line[i]
            if self.quote:
                if ch == "\\":
                    i += 2
                    continue
                if line.startswith(self.quote, i):
                    i += len(self.quote)
                    self.quote, self.last = "", "'"
                    continue
                i += 1
                continue
            if ch == "#":
                break
            if ch in "\"'":
                self.quote = line[i : i + 3] if line.startswith(ch * 3, i) else ch
                i += len(self.quote)
                continue
            if ch in "([{":
                self.depth += 1
            elif ch in ")]}":
                self.depth = max(0, self.depth - 1)
            if not ch.isspace():
                self.last = ch
            i += 1
        if len(self.quote) == 1:
            self.quote = ""  # a one-quote string does not go on to the next line

    @property
    def complete(self) -> bool:
        return self.depth == 0 and not self.quote and self.last not in ("\\", ":", ",")

    @property
    def opens_block(self) -> bool:
        return self.depth == 0 and not self.quote and self.last == ":"


def _statement_end(lines: list[str], complete: int, opts: PostprocessOptions) -> int | None:
    """How many of ``lines`` (``complete`` of them whole) the first statement takes, once known."""
    statement = _Statement()
    statement.read(opts.line_prefix)
    in_body = False
    for i, line in enumerate(lines[:complete]):
        if in_body:
            if line.strip() and _indent(line) <= opts.indent:
                return i  # the body ended: the block's statement is whole
            continue
        statement.read(line)
        if statement.opens_block:
            in_body = True
        elif statement.complete and (line.strip() or i > 0):
            return i + 1
    return None


def _is_next_line(content: str, opts: PostprocessOptions) -> bool:
    """Whether a line (stripped) is the first line of code below the cursor, or nearly."""
    below = opts.next_line
    if not below:
        return False
    if content == below:
        return True
    near = Rule.NEAR_NEXT_LINE in opts.rules and min(len(content), len(below)) >= 8
    return near and edit_similarity(content, below) >= NEAR_MATCH


def _ends_before(line: str, i: int, opts: PostprocessOptions) -> Cut | None:
    """Whether the suggestion ends before its line ``i`` (whole, ``line``), and by which rule."""
    content = line.strip()
    rules = opts.rules
    at_start = i > 0 or not opts.line_prefix.strip()  # the line begins a line of its own
    if i > 0 and content.startswith(FENCE):
        return Cut.FENCE
    if at_start and content and opts.cell_marker and content.startswith(opts.cell_marker):
        return Cut.PROMPT
    if Rule.PROMPT in rules and at_start and content in opts.prompt_lines:
        return Cut.PROMPT
    if i > 0 and content and Rule.NEXT_LINE in rules and _is_next_line(content, opts):
        return Cut.NEXT_LINE
    if Rule.DEDENT in rules and i > 0 and content and opts.below_indent is not None and _indent(line) < opts.indent:
        return Cut.DEDENT
    return None


def clean(raw: str, opts: PostprocessOptions, final: bool = False) -> tuple[str, bool]:
    """Return ``(text, finished)``; ``finished`` means no further text is wanted.

    ``final`` says the raw text is complete (the stream ended)."""
    text, finished, _ = cleaned(raw, opts, final)
    return text, finished


def cleaned(raw: str, opts: PostprocessOptions, final: bool = False) -> tuple[str, bool, Cut | None]:
    """:func:`clean`, and which rule ended the text (None: none did)."""
    text = _drop_fence(_drop_echo(raw, opts.line_prefix))
    if opts.line_prefix and not opts.line_prefix.strip():
        # The cursor is after the line's indentation (the editor put it there): more of it is the model
        # misjudging the column, and would indent the line twice.
        text = text.lstrip(" \t")
    finished = False
    cut: Cut | None = None

    if opts.single_line:
        if not (opts.line_prefix.strip() or opts.line_suffix):
            # On an empty line, blank lines before the code carry nothing.
            text = text.lstrip("\n")
        first, newline, _ = text.partition("\n")
        if newline:
            text, finished, cut = first, True, Cut.LINE

    lines = text.split("\n")
    whole = len(lines) if (finished or final) else len(lines) - 1  # the last line may still grow
    for i, line in enumerate(lines[:whole]):
        ended = _ends_before(line, i, opts)
        if ended is not None:
            text, finished, cut = "\n".join(lines[:i]), True, ended
            lines = lines[:i]
            break
    if Rule.STATEMENT in opts.rules and opts.inside_block and not opts.single_line:
        end = _statement_end(lines, min(whole, len(lines)), opts)
        if end is not None and end < len(lines):  # more than the statement: the rest is the code below's
            text, finished, cut = "\n".join(lines[:end]), True, Cut.STATEMENT

    if opts.line_suffix and (finished or final):
        first, sep, rest = text.partition("\n")
        if first.rstrip().endswith(opts.line_suffix):
            # "print(|)" completed as '"hi")': drop the repeated ")".
            first = first.rstrip()[: -len(opts.line_suffix)]
            text = first + sep + rest
    return text, finished, cut


def _may_become_next_line(content: str, opts: PostprocessOptions) -> bool:
    """Whether a partial line (stripped) may still turn out to be, or nearly be, the first line below."""
    below = opts.next_line
    if not below or below.startswith(content):
        return bool(below)
    if Rule.NEAR_NEXT_LINE not in opts.rules:
        return False
    # The least edit distance from the partial line to any start of the line below only grows as the line
    # does; a near match needs it within a ninth of the line below's length (NEAR_MATCH 0.9, either longer).
    return min(prefix_distances(content, below)) <= len(below) * (1 - NEAR_MATCH) / NEAR_MATCH


def _undecided_line(text: str, line: str, i: int, opts: PostprocessOptions) -> bool:
    """Whether the partial last line ``line`` (line ``i`` of ``text``) may still be cut once it is whole.

    Only while it may: a line the rules can already judge streams as it comes (holding every line until
    whole made the first text of a suggestion that starts on a new line wait for its whole first line)."""
    if i == 0 and opts.line_prefix.strip():
        return False  # the rest of a line begun by the user: no rule judges it as a line of its own
    content = line.strip()
    if not content:
        return True  # its indentation, and what it is, are still unknown
    markers = [FENCE] if i > 0 else []
    if opts.cell_marker:
        markers.append(opts.cell_marker)
    if any(marker.startswith(content) or content.startswith(marker) for marker in markers):
        return True
    if Rule.PROMPT in opts.rules and any(note.startswith(content) for note in opts.prompt_lines):
        return True
    if i == 0:
        return False
    if Rule.NEXT_LINE in opts.rules and _may_become_next_line(content, opts):
        return True
    # Judged as if whole: what its indentation already decides (a dedent, the end of a block's body).
    judged, finished, _ = cleaned(text + "\n", opts)
    return finished and judged.rstrip() != text


def _held_tail(text: str, opts: PostprocessOptions) -> int:
    """How many trailing characters might still be taken back by a later chunk."""
    held = len(text) - len(text.rstrip())  # trailing white space is trimmed at the end
    body = text.rstrip()
    lines = body.split("\n")
    last_line = lines[-1]
    if _undecided_line(body, last_line, len(lines) - 1, opts):
        # With it the line breaks and blank lines before it: if it is cut, the suggestion ends before them.
        held = len(text) - len(body[: len(body) - len(last_line)].rstrip())
    if opts.line_suffix and "\n" not in body:
        for k in range(min(len(opts.line_suffix), len(body)), 0, -1):
            if body.endswith(opts.line_suffix[:k]):
                held = max(held, len(text) - len(body) + k)
                break
    return held


class CompletionFilter:
    """Incremental :func:`clean`: feed raw chunks, get the text safe to show."""

    def __init__(self, opts: PostprocessOptions) -> None:
        self.opts = opts
        self.raw = ""
        self.emitted = ""
        self.finished = False
        self.cut: Cut | None = None

    def _undecided(self) -> bool:
        """The raw text so far could still turn out to be an echo or a fence."""
        raw = self.raw
        echo = self.opts.line_prefix
        if len(echo.strip()) >= MIN_ECHO_CHARS and (echo.startswith(raw) or echo.lstrip().startswith(raw)):
            return True
        return FENCE.startswith(raw.lstrip()) or (raw.lstrip().startswith(FENCE) and "\n" not in raw)

    def feed(self, chunk: str) -> str:
        """Add a raw chunk; return the newly visible text."""
        if self.finished:
            return ""
        self.raw += chunk
        text, self.finished, self.cut = cleaned(self.raw, self.opts)
        if self.finished:
            return self._emit(text.rstrip())
        if self._undecided():
            return ""
        held = _held_tail(text, self.opts)
        return self._emit(text[: len(text) - held] if held else text)

    def finish(self) -> str:
        """The stream ended: release what was held back, trimmed."""
        text, _, cut = cleaned(self.raw, self.opts, final=True)
        self.cut = self.cut or cut
        self.finished = True
        return self._emit(text.rstrip())

    @property
    def text(self) -> str:
        return self.emitted

    def _emit(self, text: str) -> str:
        if not text.startswith(self.emitted):
            # Never take back what the user already saw.
            return ""
        delta = text[len(self.emitted) :]
        self.emitted = text
        return delta


class ConfidenceGate:
    """Hides a suggestion the model was unsure of: its first line (or all of it, if shorter) is held back
    until whole, then shown only if the mean log-probability of its tokens is at least ``threshold``."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.shown: bool | None = None  # None: not decided yet
        self._held = ""

    def feed(self, delta: str, logprob: float, tokens: int, final: bool) -> str:
        """The part of ``delta`` to show, given the log-probabilities of the tokens read so far."""
        if self.shown is not None:
            return delta if self.shown else ""
        self._held += delta
        if "\n" not in self._held and not final:
            return ""
        self.shown = tokens == 0 or logprob / tokens >= self.threshold  # (no figures: nothing to judge by)
        held, self._held = self._held, ""
        return held if self.shown else ""
