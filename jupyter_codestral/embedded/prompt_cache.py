"""What the embedded model has read: the prompt in its context, and saved copies of others, in memory and on disk.

Reading a prompt is the expensive part on a CPU (a few ms a token), while the KV of tokens read before
can be kept, and moved where a new prompt has them (``kv_reuse.py``).  For each prompt the cache finds
where most of it was read: the context itself, or a saved copy (a prompt of another cell or notebook,
copied out with ``llama_state_seq_get_data`` before the context moved on, about 12 KB a token; or one
saved on disk before a restart).  A copy that spares enough reading is brought back (a memcpy), the
tokens kept are moved into place, and only the rest is read.

Copies are kept least recently used first, within a memory budget; each copy also goes to disk
(``disk_cache.py``), and so does the context when the model has nothing to do.

Runs in the worker process, on the thread that owns the model.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from . import MIN_CHUNK_TOKENS
from .disk_cache import DiskCache, key_of
from .engine import Aborted, Engine
from .kv_reuse import GRAM, Plan, Read, Tokens, common_prefix, plan_reuse

# Bringing a copy back (and saving the context first) costs tens of milliseconds: worth it only when
# it spares reading at least this many tokens.
MIN_GAIN_TOKENS = 32
# A prompt that would move or drop at least this many tokens of the context saves it first.
MIN_SAVED_TOKENS = 128
# A prompt the context nearly holds already is not looked for among the copies.
CLOSE_ENOUGH_TOKENS = 8
# Of the copies, only the few that look closest to a prompt are planned (planning costs about a
# millisecond a copy, and each keystroke asks for a few prompts).
CANDIDATES = 3
# Plans remembered (a request's prompts are asked for several times: to choose one, then to read it).
REMEMBERED_PLANS = 64


class Reuse(StrEnum):
    """What of the tokens read before a new prompt may keep."""

    CHUNKS = "chunks"  # its start, and runs of it found anywhere, moved into place (the default)
    PREFIX = "prefix"  # only the start it shares (to measure what moving costs in quality)
    OFF = "off"  # nothing: every prompt read from its start (to measure what reuse is worth)


@dataclass
class Copy:
    """A saved prompt: its tokens and their KV (in memory, else on disk under ``key``)."""

    read: Read
    data: Any | None  # a ctypes byte array; None: on disk only
    key: str
    document: str | None

    @property
    def size(self) -> int:
        return ctypes.sizeof(self.data) if self.data is not None else 0


@dataclass(frozen=True)
class Prepared:
    """The context made ready for a prompt: what of it is kept, and where that came from."""

    plan: Plan
    source: str  # "context", "memory" or "disk"

    @property
    def restored(self) -> bool:
        return self.source != "context"


class PromptCache:
    def __init__(
        self,
        engine: Engine,
        budget_bytes: int,
        reuse: Reuse = Reuse.CHUNKS,
        disk: DiskCache | None = None,
        min_chunk: int = MIN_CHUNK_TOKENS,
    ) -> None:
        self.engine = engine
        self.reuse = reuse
        self.budget_bytes = budget_bytes if reuse != Reuse.OFF else 0
        self.disk = disk if reuse != Reuse.OFF else None
        self.min_chunk = min_chunk
        self.saved: OrderedDict[str, Copy] = OrderedDict()
        self.document: str | None = None  # the document the context's prompt came from
        self._live: Read | None = None
        self._on_disk = ""  # the key of the context's tokens last written to disk
        self._partial = False  # the context holds a prompt read partway (it is wanted again soon)
        # Recent prompts, indexed, and plans, by the identities of what they are made of (kept alive here).
        self._prompts: OrderedDict[int, Read] = OrderedDict()
        self._plans: OrderedDict[tuple[int, int, bool], tuple[Read, Read, Plan]] = OrderedDict()

    # -- what is read where -------------------------------------------------------------
    @property
    def live(self) -> Read:
        """The context's tokens, indexed (the index is kept while they stay the same)."""
        tokens = self.engine.tokens
        if self._live is None or self._live.tokens is not tokens:
            self._live = Read(tokens)
        return self._live

    @property
    def saved_bytes(self) -> int:
        return sum(copy.size for copy in self.saved.values())

    def _indexed(self, prompt: Tokens) -> Read:
        """``prompt``, indexed once while it is asked for."""
        read = self._prompts.get(id(prompt))
        if read is None or read.tokens is not prompt:
            read = self._prompts[id(prompt)] = Read(prompt)
            while len(self._prompts) > REMEMBERED_PLANS:
                self._prompts.popitem(last=False)
        return read

    def plan(self, read: Read, prompt: Read, moves: bool = True) -> Plan:
        """What ``prompt`` keeps of ``read``; ``moves``: runs read elsewhere may be moved into place (else only
        the shared start is kept, so the prompt's KV is exactly what reading it would give)."""
        key = (id(read), id(prompt), moves)
        known = self._plans.get(key)
        if known is not None and known[0] is read and known[1] is prompt:
            return known[2]
        if self.reuse == Reuse.CHUNKS and moves:
            plan = plan_reuse(read, prompt, self.min_chunk)
        elif self.reuse != Reuse.OFF:
            n = len(prompt.tokens)
            plan = Plan(n, min(common_prefix(read.tokens, prompt.tokens), max(0, n - 1)))
        else:
            plan = Plan(len(prompt.tokens), 0)
        self._plans[key] = (read, prompt, plan)
        while len(self._plans) > REMEMBERED_PLANS:
            self._plans.popitem(last=False)
        return plan

    def _likeness(self, copy: Copy, prompt: Read, moves: bool) -> int:
        """About how many of ``prompt``'s tokens ``copy`` holds (before planning it)."""
        shared = common_prefix(copy.read.tokens, prompt.tokens)
        if self.reuse == Reuse.CHUNKS and moves:
            shared = max(shared, copy.read.likeness(prompt))
        return shared

    def _copies(self) -> list[Copy]:
        """Every saved prompt: those in memory, then those only on disk."""
        copies = list(self.saved.values())
        if self.disk is not None:
            in_memory = set(self.saved)
            copies += [
                Copy(entry.read, None, key, entry.document)
                for key, entry in self.disk.entries.items()
                if key not in in_memory
            ]
        return copies

    def best(self, prompt: Tokens, moves: bool = True) -> tuple[Copy | None, Plan]:
        """Where most of ``prompt`` was read: the context (None), or a copy worth bringing back; and the plan
        (``moves``: as in :meth:`plan`)."""
        wanted = self._indexed(prompt)
        plan = self.plan(self.live, wanted, moves)
        if plan.unread <= CLOSE_ENOUGH_TOKENS or self.reuse == Reuse.OFF:
            return None, plan
        best: Copy | None = None
        best_plan = plan
        ranked = sorted(
            ((self._likeness(copy, wanted, moves), n, copy) for n, copy in enumerate(self._copies())), reverse=True
        )
        for likeness, _, copy in ranked[:CANDIDATES]:
            if likeness + GRAM <= best_plan.kept:
                break
            candidate = self.plan(copy.read, wanted, moves)
            if candidate.kept > best_plan.kept:
                best, best_plan = copy, candidate
        if best is None or best_plan.kept < plan.kept + MIN_GAIN_TOKENS:
            return None, plan
        return best, best_plan

    def unread(self, prompt: Tokens, moves: bool = True) -> int:
        """How many of ``prompt``'s tokens :meth:`prepare` would leave to read."""
        return self.best(prompt, moves)[1].unread

    # -- making the context ready ---------------------------------------------------------
    def prepare(
        self, prompt: Tokens, keep_live: bool = False, document: str | None = None, moves: bool = True
    ) -> Prepared:
        """Make the context hold what it can keep of ``prompt``: its kept start in place, the other kept
        runs parked at their new positions (:meth:`read` brings them in as it reads the rest).

        ``keep_live``: save the context first even if little of it would be lost (a request will come
        back to it soon; so will the reading of a prompt that was stopped partway)."""
        least = 1 if keep_live or self._partial else MIN_SAVED_TOKENS
        copy, plan = self.best(prompt, moves)
        source = "context"
        if copy is not None:
            self.save_live(least)
            source = "memory" if copy.data is not None else "disk"
            if not self._restore(copy):
                source = "context"
            plan = self.plan(self.live, self._indexed(prompt), moves)
        elif len(self.engine.tokens) - plan.prefix >= least:
            self.save_live(least)  # about to be moved or dropped: keep a copy to come back to
        self.engine.park(list(plan.chunks), plan.prefix)
        self.document = document
        return Prepared(plan, source)

    def read(self, prompt: Tokens, plan: Plan, stop: Callable[[], bool]) -> tuple[bool, int]:
        """Read what ``plan`` leaves of ``prompt`` but its last token (whose logits start a completion),
        bringing the parked runs in on the way; until ``stop()``.  (Whether all of it was read, how many
        tokens were read); when not all, the context holds the start read so far."""
        engine = self.engine
        decoded = 0
        self._partial = True
        try:
            for chunk in plan.chunks:
                gap = prompt[len(engine.tokens) : chunk.target]
                done = engine.decode(gap, stop)
                decoded += done
                if done < len(gap):
                    engine.drop_parked()
                    return False, decoded
                engine.unpark(chunk, prompt[chunk.target : chunk.target + chunk.length])
            rest = prompt[len(engine.tokens) : len(prompt) - 1]
            done = engine.decode(rest, stop)
        except Aborted as aborted:
            raise Aborted(decoded + aborted.read) from None
        self._partial = done < len(rest)
        return not self._partial, decoded + done

    def abandon(self) -> None:
        """A read stopped halfway (aborted): what was parked for it is dropped."""
        self.engine.drop_parked()

    # -- copies ----------------------------------------------------------------------------
    def save_live(self, least: int = MIN_SAVED_TOKENS) -> None:
        """Copy the context's state out (to memory, and to disk), unless a copy already holds it or it is
        shorter than ``least``."""
        tokens = self.engine.tokens
        if self.budget_bytes <= 0 or len(tokens) < least:
            return
        n = len(tokens)
        for key, copy in list(self.saved.items()):
            shared = common_prefix(copy.read.tokens, tokens)
            if shared == n:  # a copy already holds all of it
                self.saved.move_to_end(key)
                return
            if shared == len(copy.read.tokens):  # the context holds all of that copy and more
                del self.saved[key]
        data = self.engine.save()
        if data is None or ctypes.sizeof(data) > self.budget_bytes:
            return
        key = key_of(tokens)
        self.saved[key] = Copy(Read(tokens.copy()), data, key, self.document)
        while self.saved_bytes > self.budget_bytes:
            self.saved.popitem(last=False)
        if self.disk is not None:
            self.disk.put(tokens, data, self.document)
            self._on_disk = key

    def persist_live(self) -> None:
        """Write the context to disk if it is not there yet (when the model has nothing else to do)."""
        tokens = self.engine.tokens
        if self.disk is None or len(tokens) < MIN_SAVED_TOKENS:
            return
        key = key_of(tokens)
        if key == self._on_disk or key in self.disk.entries:
            return
        data = self.engine.save()
        if data is not None:
            self.disk.put(tokens, data, self.document)
            self._on_disk = key

    def _restore(self, copy: Copy) -> bool:
        """Load a copy into the context (it stays saved, as the most recently used)."""
        data = copy.data
        if data is None:
            assert self.disk is not None
            raw = self.disk.load(copy.key)
            if raw is None:
                return False
            data = (ctypes.c_uint8 * len(raw)).from_buffer_copy(raw)
        if not self.engine.load(data, copy.read.tokens):
            self.saved.pop(copy.key, None)
            return False
        self.saved.pop(copy.key, None)
        if ctypes.sizeof(data) <= self.budget_bytes:
            self.saved[copy.key] = Copy(copy.read, data, copy.key, copy.document)
            while self.saved_bytes > self.budget_bytes:
                self.saved.popitem(last=False)
        self.document = copy.document
        self._partial = False
        self._on_disk = copy.key if copy.data is None else self._on_disk
        self._live = copy.read
        return True

    def describe(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"saved_prompts": len(self.saved), "saved_mb": round(self.saved_bytes / 2**20, 1)}
        if self.disk is not None:
            figures |= {"disk_prompts": len(self.disk.entries), "disk_mb": round(self.disk.used_bytes / 2**20, 1)}
        return figures
