"""Clean a model's raw completion into what the user should see.

:func:`clean` is the whole rule set as a pure function of the raw text.
:class:`CompletionFilter` applies it to a stream: it emits only text that no
later chunk can take back, and says when to stop the backend early (a
single-line completion reached its newline, the model began the next cell
or started repeating the suffix), so no tokens are paid for text we cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from .context import FimContext, cell_marker

FENCE = "```"
# An echoed line prefix shorter than this is as likely to be a real completion.
MIN_ECHO_CHARS = 4


@dataclass(frozen=True)
class PostprocessOptions:
    single_line: bool
    line_prefix: str  # the current line, left of the cursor
    line_suffix: str  # the current line, right of the cursor
    next_line: str  # the first non-blank line after the current line (stripped)
    cell_marker: str | None  # the marker that begins the next cell, in notebooks


def options_for(context: FimContext, single_line: bool = False) -> PostprocessOptions:
    marker = cell_marker(context.language) if context.is_notebook else None
    return PostprocessOptions(
        # Code right of the cursor means the user wants the gap on this line filled.
        single_line=single_line or context.mid_line,
        line_prefix=context.line_prefix,
        line_suffix=context.line_suffix.strip(),
        next_line=_next_line(context.suffix, marker),
        cell_marker=marker,
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


def clean(raw: str, opts: PostprocessOptions, final: bool = False) -> tuple[str, bool]:
    """Return ``(text, finished)``; ``finished`` means no further text is wanted.

    ``final`` says the raw text is complete (the stream ended).
    """
    text = _drop_fence(_drop_echo(raw, opts.line_prefix))
    finished = False

    if opts.single_line:
        if not (opts.line_prefix.strip() or opts.line_suffix):
            # On an empty line, blank lines before the code carry nothing.
            text = text.lstrip("\n")
        first, newline, _ = text.partition("\n")
        if newline:
            text, finished = first, True

    lines = text.split("\n")
    for i, line in enumerate(lines):
        complete = i < len(lines) - 1 or finished
        content = line.strip()
        stop_here = content.startswith(FENCE) and i > 0
        stop_here |= bool(opts.cell_marker) and i > 0 and content.startswith(opts.cell_marker or "")
        # A whole line equal to the line after the cursor: the model is
        # walking into the suffix.
        stop_here |= complete and i > 0 and bool(content) and content == opts.next_line
        if stop_here:
            text, finished = "\n".join(lines[:i]), True
            break

    if opts.line_suffix and (finished or final):
        first, sep, rest = text.partition("\n")
        if first.rstrip().endswith(opts.line_suffix):
            # "print(|)" completed as '"hi")': drop the repeated ")".
            first = first.rstrip()[: -len(opts.line_suffix)]
            text = first + sep + rest
    return text, finished


def _held_tail(text: str, opts: PostprocessOptions) -> int:
    """How many trailing characters might still be taken back by a later chunk."""
    held = len(text) - len(text.rstrip())  # trailing white space is trimmed at the end
    body = text.rstrip()
    last_line = body.rsplit("\n", 1)[-1]
    content = last_line.strip()
    if "\n" in body and content:
        patterns = [FENCE, opts.next_line] + ([opts.cell_marker] if opts.cell_marker else [])
        if any(p and p.startswith(content) for p in patterns):
            held = len(text) - len(body) + len(last_line) + 1  # with its newline
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
        text, self.finished = clean(self.raw, self.opts)
        if self.finished:
            return self._emit(text.rstrip())
        if self._undecided():
            return ""
        held = _held_tail(text, self.opts)
        return self._emit(text[: len(text) - held] if held else text)

    def finish(self) -> str:
        """The stream ended: release what was held back, trimmed."""
        text, _ = clean(self.raw, self.opts, final=True)
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
