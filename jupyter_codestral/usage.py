"""What completions cost: requests and tokens per backend, per day, and their price.

Every call to a backend is metered (:meth:`Backend.serve
<jupyter_codestral.backends.base.Backend.serve>` wraps its stream in
:func:`metered`).  The tokens are the backend's own figures where it reports
them (Mistral's and OpenAI's ``usage``, Ollama's eval counts, llama.cpp's
``tokens_evaluated``/``tokens_predicted``, the embedded worker's count);
otherwise they are estimated from the text's length, and the tally says how
many requests were estimated.

A call ends in one of three ways:

- ``served``: the backend finished, or we stopped reading once the completion
  was complete;
- ``cancelled``: a newer keystroke replaced it, the browser left, it lost a
  hedge, or it sent no text in time.  The prompt was sent, so its tokens
  count (remote APIs bill them);
- ``failed``: refused or unreachable; no tokens are counted.

Nothing is written to disk unless ``CodestralExtension.usage_file`` says where.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .acceptance import ACCEPTANCE_FIELDS, Acceptance, Row
from .context import ContextBudget, estimate_tokens
from .errors import CompletionError, ErrorKind
from .validation import is_non_negative, is_number

if TYPE_CHECKING:
    from .backends.base import BackendItem, FimRequest, Piece

log = logging.getLogger(__name__)

# How often a changed ledger is written to usage_file, at most.
SAVE_EVERY_S = 5.0


def _count(value: Any) -> int | None:
    """A token count as a server sent it (servers send null, or omit, what they do not know)."""
    return value if is_number(value, whole=True) and value >= 0 else None


@dataclass(frozen=True)
class Usage:
    """The tokens one call used, as its backend reported them (None: not reported); the last item
    of a backend's stream."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @classmethod
    def reported(cls, prompt_tokens: Any = None, completion_tokens: Any = None) -> Usage:
        return cls(_count(prompt_tokens), _count(completion_tokens))

    @classmethod
    def from_openai(cls, payload: Mapping[str, Any]) -> Usage | None:
        """An OpenAI-style event's ``usage`` object, when it carries one."""
        usage = payload.get("usage")
        if not isinstance(usage, dict):
            return None
        return cls.reported(usage.get("prompt_tokens"), usage.get("completion_tokens"))


@dataclass(frozen=True)
class Price:
    """Money per million tokens, in the currency the prices were given in."""

    input: float
    output: float

    @classmethod
    def parse(cls, value: Any, where: str) -> Price | None:
        """``{"input": 0.3, "output": 0.9}``; ValueError names ``where`` when it is not that."""
        if value is None:
            return None
        ok = isinstance(value, dict) and set(value) <= {"input", "output"} and value
        numbers = [value.get(k, 0) for k in ("input", "output")] if ok else []
        if not ok or not all(is_non_negative(n) for n in numbers):
            raise ValueError(f'{where} must be like {{"input": 0.3, "output": 0.9}} (money per million tokens).')
        return cls(float(numbers[0]), float(numbers[1]))

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


@dataclass
class Tally:
    """One backend's usage over one day."""

    requests: int = 0  # every call, prefetches and cancelled ones included
    prefetches: int = 0  # calls that only read a prompt into the backend's cache
    cancelled: int = 0
    failed: int = 0
    prompt_tokens: int = 0  # of every call that reached the model, cancelled ones included
    completion_tokens: int = 0
    cancelled_prompt_tokens: int = 0  # the part of the two above spent on cancelled calls
    cancelled_completion_tokens: int = 0
    estimated: int = 0  # calls whose tokens are estimates (the backend reported none)

    def add(self, other: Tally) -> None:
        for name in TALLY_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


TALLY_FIELDS = tuple(f.name for f in fields(Tally))


@dataclass(frozen=True)
class Call:
    """One finished call to one backend."""

    backend: str
    outcome: str  # served, cancelled, failed
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    prefetch: bool

    def add_to(self, tally: Tally) -> None:
        """Count this call in ``tally`` (tokens of failed calls are not counted)."""
        tally.requests += 1
        tally.prefetches += self.prefetch
        if self.outcome == "failed":
            tally.failed += 1
            return
        tally.prompt_tokens += self.prompt_tokens
        tally.completion_tokens += self.completion_tokens
        tally.estimated += self.estimated
        if self.outcome == "cancelled":
            tally.cancelled += 1
            tally.cancelled_prompt_tokens += self.prompt_tokens
            tally.cancelled_completion_tokens += self.completion_tokens


def today() -> str:
    """Today's local date (every completion asks: it is looked up once a second)."""
    return _date_at(int(time.time()))


@lru_cache(maxsize=1)
def _date_at(second: int) -> str:
    return datetime.date.fromtimestamp(second).isoformat()


class UsageLedger:
    """Usage per day and backend for the server's life (and in ``path``, when given)."""

    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        chars_per_token: float = ContextBudget.chars_per_token,
        path: str | Path | None = None,
        clock: Callable[[], str] = today,
    ) -> None:
        self.prices = dict(prices or {})
        self.chars_per_token = chars_per_token
        self.path = Path(path).expanduser() if path else None
        self.clock = clock
        self.days: dict[str, dict[str, Tally]] = {}
        # What users did with the suggestions: per day, backend and route.
        self.acceptance: dict[str, dict[str, dict[str, Acceptance]]] = {}
        self._dirty = False
        self._saver: asyncio.Task[None] | None = None
        if self.path is not None:
            self._load(self.path)

    def estimate(self, text: str) -> int:
        return estimate_tokens(text, self.chars_per_token)

    def record(self, call: Call) -> None:
        day = self.days.setdefault(self.clock(), {})
        tally = day.get(call.backend)
        if tally is None:
            tally = day[call.backend] = Tally()
        call.add_to(tally)
        self._changed()

    def record_acceptance(self, rows: list[Row]) -> None:
        """What the browser counted of the suggestions it showed."""
        day = self.acceptance.setdefault(self.clock(), {})
        for row in rows:
            day.setdefault(row.backend, {}).setdefault(row.route, Acceptance()).add(row.counts)
        self._changed()

    def _changed(self) -> None:
        self._dirty = True
        if self.path is not None and (self._saver is None or self._saver.done()):
            with contextlib.suppress(RuntimeError):  # no running loop (tools): saved on close
                self._saver = asyncio.get_running_loop().create_task(self._save_soon())

    # -- reading -------------------------------------------------------------
    def day(self, date: str | None = None) -> dict[str, Any]:
        """One day's table as JSON: per backend, and the total (costs only where prices are set)."""
        date = date or self.clock()
        rows = self.days.get(date, {})
        total = Tally()
        backends: dict[str, Any] = {}
        costs: list[float] = []
        for name, tally in sorted(rows.items()):
            total.add(tally)
            price = self.prices.get(name)
            cost = price.cost(tally.prompt_tokens, tally.completion_tokens) if price else None
            if cost is not None:
                costs.append(cost)
            backends[name] = {**asdict(tally), "cost": None if cost is None else round(cost, 6)}
        for name in self.prices:  # priced backends appear even before their first call
            backends.setdefault(name, {**asdict(Tally()), "cost": 0.0})
        return {
            "date": date,
            "backends": backends,
            "total": {**asdict(total), "cost": round(sum(costs), 6) if costs else None},
            "acceptance": self._acceptance_day(date),
            "prices": {name: asdict(price) for name, price in self.prices.items()},
            "estimate_note": f"estimated: about {self.chars_per_token:g} characters per token",
            "saved_to": str(self.path) if self.path is not None else None,
        }

    def _acceptance_day(self, date: str) -> dict[str, Any]:
        """One day's acceptance: per backend and route, and the total."""
        total = Acceptance()
        rows = []
        for backend, routes in sorted(self.acceptance.get(date, {}).items()):
            for route, counts in sorted(routes.items()):
                total.add(counts)
                rows.append({"backend": backend, "route": route, **counts.to_json()})
        return {"rows": rows, "total": total.to_json()}

    # -- persistence (only with a path) ------------------------------------------
    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            log.warning("jupyter_codestral: cannot read the usage file %s (%s); starting a new one", path, error)
            return
        names = set(TALLY_FIELDS)
        for date, rows in (data.get("days") or {}).items():
            self.days[date] = {
                backend: Tally(**{k: int(v) for k, v in row.items() if k in names})
                for backend, row in rows.items()
                if isinstance(row, dict)
            }
        counted = set(ACCEPTANCE_FIELDS)
        for date, backends in (data.get("acceptance") or {}).items():
            self.acceptance[date] = {
                backend: {
                    route: Acceptance(**{k: int(v) for k, v in row.items() if k in counted})
                    for route, row in routes.items()
                    if isinstance(row, dict)
                }
                for backend, routes in backends.items()
                if isinstance(routes, dict)
            }

    async def _save_soon(self) -> None:
        await asyncio.sleep(SAVE_EVERY_S)
        await self.save()

    async def save(self) -> None:
        """Write the ledger to its file (in a thread: the event loop never waits on the disk)."""
        if self.path is None or not self._dirty:
            return
        self._dirty = False
        data = {
            "days": {d: {b: asdict(t) for b, t in rows.items()} for d, rows in self.days.items()},
            "acceptance": {
                d: {b: {r: asdict(a) for r, a in routes.items()} for b, routes in backends.items()}
                for d, backends in self.acceptance.items()
            },
        }
        try:
            await asyncio.to_thread(_write_atomically, self.path, json.dumps(data, indent=1))
        except OSError as error:
            log.warning("jupyter_codestral: cannot write the usage file %s: %s", self.path, error)

    async def aclose(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
        await self.save()


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    partial.write_text(text)
    os.replace(partial, path)


async def metered(
    items: AsyncGenerator[BackendItem, None], request: FimRequest, backend: str
) -> AsyncGenerator[Piece, None]:
    """The text of a backend's stream; when it ends, the call is recorded in the request's ledger with the
    :class:`Usage` the stream ended with (else an estimate)."""
    ledger = request.ledger
    text: list[str] = []
    usage = Usage()
    outcome = "cancelled"  # unless it ends otherwise (CancelledError: superseded, or the client left)
    try:
        async for item in items:
            if type(item) is Usage:
                usage = item
                continue
            if ledger is not None:
                text.append(item if type(item) is str else item.text)  # type: ignore[union-attr]
            yield item  # type: ignore[misc]
        outcome = "served"
    except CompletionError as error:
        outcome = "cancelled" if error.kind == ErrorKind.CANCELLED else "failed"
        raise
    except GeneratorExit:
        # Closed by the reader: the completion was complete, or the router gave up waiting for it.
        outcome = "served" if text else "cancelled"
        raise
    finally:
        await items.aclose()
        if ledger is not None:
            estimated = usage.prompt_tokens is None or usage.completion_tokens is None
            context = request.context
            ledger.record(
                Call(
                    backend=backend,
                    outcome=outcome,
                    prompt_tokens=usage.prompt_tokens
                    if usage.prompt_tokens is not None
                    else ledger.estimate(context.prefix + context.suffix),
                    completion_tokens=usage.completion_tokens
                    if usage.completion_tokens is not None
                    else ledger.estimate("".join(text)),
                    estimated=estimated,
                    prefetch=request.prefetch,
                )
            )
