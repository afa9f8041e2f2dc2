"""What the embedded model has read, kept on disk: reopening a notebook after a restart, or the next day,
restores instead of reading again.

Each saved prompt is two files in the cache folder (``kv/<model>/``): its KV state as llama.cpp wrote
it (``<key>.kv``) and what it holds (``<key>.json``: the tokens, the document they came from, the
size).  The key is a hash of the tokens.  The folder is bounded (``kv_disk_mb``): the least recently
used go first.  States of documents the course policy refuses are deleted when the worker starts, and
no request for them ever reaches the worker, so nothing is kept for them.

Writes happen on a thread of their own: the model never waits for the disk.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .kv_reuse import Read, Tokens

log = logging.getLogger(__name__)


def key_of(tokens: Tokens) -> str:
    return hashlib.sha256(tokens.astype(np.intc).tobytes()).hexdigest()[:32]


@dataclass
class Entry:
    key: str
    read: Read  # its tokens, indexed
    size: int  # bytes on disk
    document: str | None
    used_at: float


class DiskCache:
    """Saved states on disk, within ``budget_bytes``; the index (tokens, sizes) is held in memory."""

    def __init__(self, folder: Path, budget_bytes: int) -> None:
        self.folder = folder
        self.budget_bytes = budget_bytes
        self.entries: dict[str, Entry] = {}
        self._writes: queue.Queue[tuple[str, Tokens, Any, str | None] | None] = queue.Queue()
        self._lock = threading.Lock()
        # The saved states hold the notebooks' text (their tokens): only their owner may read them.
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        self._load_index()
        self._writer = threading.Thread(target=self._write_loop, name="kv-disk", daemon=True)
        self._writer.start()

    # -- the index ---------------------------------------------------------------------
    def _load_index(self) -> None:
        for meta in self.folder.glob("*.json"):
            state = meta.with_suffix(".kv")
            try:
                info = json.loads(meta.read_text())
                tokens = np.frombuffer(base64.b64decode(info["tokens"]), dtype=np.intc).copy()
                size = state.stat().st_size
            except (OSError, ValueError, KeyError, TypeError):
                self._remove(meta.stem)  # half written, or damaged: never load it
                continue
            self.entries[meta.stem] = Entry(meta.stem, Read(tokens), size, info.get("document"), state.stat().st_mtime)
        # What a crash left behind: unfinished files, and states whose description was never written.
        for stray in [*self.folder.glob(".*.partial"), *self.folder.glob("*.kv")]:
            if stray.suffix == ".partial" or stray.stem not in self.entries:
                stray.unlink(missing_ok=True)

    @property
    def used_bytes(self) -> int:
        return sum(entry.size for entry in self.entries.values())

    def forget(self, refused: Callable[[str], bool]) -> int:
        """Delete the states of documents ``refused`` says no to (the course policy); how many."""
        gone = [key for key, entry in self.entries.items() if entry.document is not None and refused(entry.document)]
        for key in gone:
            self._remove(key)
        return len(gone)

    # -- reading -----------------------------------------------------------------------
    def load(self, key: str) -> bytes | None:
        """A state's bytes (None: it could not be read; it is forgotten)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        try:
            data = (self.folder / f"{key}.kv").read_bytes()
        except OSError:
            self._remove(key)
            return None
        entry.used_at = time.time()
        with contextlib.suppress(OSError):
            os.utime(self.folder / f"{key}.kv")  # least recently used goes first, across restarts too
        return data

    # -- writing -----------------------------------------------------------------------
    def put(self, tokens: Tokens, data: Any, document: str | None) -> None:
        """Keep ``tokens``' state (``data``, a ctypes buffer copied before it returns) on disk, in the background."""
        key = key_of(tokens)
        if key in self.entries or len(data) > self.budget_bytes:
            return
        # Entries whose tokens this state holds and more are superseded by it.
        for old in [k for k, e in self.entries.items() if _starts(tokens, e.read.tokens)]:
            self._remove(old)
        self.entries[key] = Entry(key, Read(tokens.copy()), len(data), document, time.time())
        self._writes.put((key, tokens.copy(), bytes(data), document))
        self._evict()

    def _evict(self) -> None:
        while self.used_bytes > self.budget_bytes and self.entries:
            oldest = min(self.entries.values(), key=lambda entry: entry.used_at)
            self._remove(oldest.key)

    def _remove(self, key: str) -> None:
        self.entries.pop(key, None)
        with self._lock:
            for suffix in (".json", ".kv"):
                try:
                    (self.folder / f"{key}{suffix}").unlink()
                except FileNotFoundError:
                    pass
                except OSError as error:
                    log.warning("cannot remove a saved state: %s", error)

    def _write_loop(self) -> None:
        while (job := self._writes.get()) is not None:
            try:
                self._write(*job)
            finally:
                self._writes.task_done()

    def _write(self, key: str, tokens: Tokens, data: bytes, document: str | None) -> None:
        meta = {"tokens": base64.b64encode(tokens.tobytes()).decode(), "document": document, "size": len(data)}
        try:
            with self._lock:
                if key not in self.entries:
                    return  # evicted before it was written
                _write_private(self.folder / f"{key}.kv", data)
                _write_private(self.folder / f"{key}.json", json.dumps(meta).encode())
        except OSError as error:
            log.warning("cannot save a read prompt to disk: %s", error)
            self.entries.pop(key, None)

    def flush(self) -> None:
        """Wait until every state given so far is written (at shutdown)."""
        self._writes.join()

    def close(self) -> None:
        self.flush()
        self._writes.put(None)


def _starts(longer: Tokens, shorter: Tokens) -> bool:
    return len(shorter) <= len(longer) and bool(np.array_equal(longer[: len(shorter)], shorter))


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (a partial file never has its name), readable by its owner only."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(partial, path)
