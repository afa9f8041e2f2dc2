"""What the live IPython kernel holds, read without disturbing the user.

The probe (``kernel_probe.py``) runs as a *user expression* of an empty,
silent execute request: IPython does not count it (no execution count
change), stores nothing in ``In``/``Out``, sends no output, and since the
helper is defined inside a fresh dictionary, no name is left behind in the
user's namespace.  It is only asked while the kernel is idle, and again only
after the kernel has done something since (an execution): never per
keystroke.  A kernel that does not answer quickly is skipped.

Each answer is kept as a snapshot numbered by the kernel's execution count,
so the prompt can show what each cell produced as of its own run
(``namespace.py``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client.session import Session

from .kernel_variables import KernelState, Snapshot, Variable

# The probe's source, sent to the kernel and run there (it is not imported here).
PROBE = (Path(__file__).parent / "kernel_probe.py").read_text(encoding="utf-8")
# Snapshots kept per kernel: enough for the cells of a long session.
HISTORY = 512


def probe_expression(limit_chars: int) -> str:
    """One expression: run the probe in a throwaway dict; its value's JSON comes back."""
    return (
        "(lambda g: (exec(" + repr(PROBE) + ", g), "
        "g['Summary'](g['summarize'](get_ipython(), " + str(int(limit_chars)) + ")))[1])({})"
    )


def parse_summary(data: Any) -> Snapshot | None:
    """The probe's JSON as a snapshot; ``None`` if it is not what the probe sends."""
    try:
        variables = tuple(Variable(str(v["name"]), str(v["kind"]), str(v["description"])) for v in data["variables"])
        return Snapshot(int(data["execution_count"]), variables)
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class History:
    snapshots: list[Snapshot]
    taken_at: float  # wall-clock seconds of the last query, comparable with the kernel's last_activity

    def add(self, snapshot: Snapshot) -> None:
        if self.snapshots and snapshot.execution_count < self.snapshots[-1].execution_count:
            self.snapshots.clear()  # the kernel was restarted: its numbers begin again
        if self.snapshots and self.snapshots[-1].execution_count == snapshot.execution_count:
            self.snapshots[-1] = snapshot  # nothing ran since: the newer description wins
        else:
            self.snapshots.append(snapshot)
        del self.snapshots[:-HISTORY]

    def state(self) -> KernelState | None:
        return KernelState(tuple(self.snapshots)) if self.snapshots else None


class KernelNamespace:
    """Snapshots per kernel, taken only after the kernel was active."""

    # Our own query shows up as kernel activity a moment after its reply.
    OWN_ACTIVITY_GRACE = 0.5

    def __init__(self, kernel_manager: Any, timeout: float = 1.0, limit_chars: int = 8000) -> None:
        self.kernel_manager = kernel_manager
        self.timeout = timeout
        self.limit_chars = limit_chars
        self.queries = 0
        self._histories: dict[str, History] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _kernel(self, kernel_id: str) -> Any | None:
        if kernel_id not in self.kernel_manager:
            self._histories.pop(kernel_id, None)
            self._locks.pop(kernel_id, None)
            return None
        return self.kernel_manager.get_kernel(kernel_id)

    @staticmethod
    def _is_ipython(kernel: Any) -> bool:
        try:
            return str(kernel.kernel_spec.language).lower() == "python"
        except Exception:  # noqa: BLE001 - a spec we cannot read: no summary
            return False

    def _fresh(self, history: History | None, kernel: Any, newest_run: int | None) -> bool:
        if history is None:
            return False
        if newest_run is not None and (not history.snapshots or newest_run > history.snapshots[-1].execution_count):
            return False  # the notebook shows a run the last snapshot has not seen
        last = getattr(kernel, "last_activity", None)
        last_ts = last.timestamp() if last is not None else 0.0
        return last_ts <= history.taken_at + self.OWN_ACTIVITY_GRACE

    async def state(self, kernel_id: str, newest_run: int | None = None) -> KernelState | None:
        """What the kernel has told so far, asking it again only if it ran something since.

        ``newest_run``: the highest execution number the notebook's cells show."""
        kernel = self._kernel(kernel_id)
        if kernel is None or not self._is_ipython(kernel):
            return None
        history = self._histories.get(kernel_id)
        if getattr(kernel, "execution_state", "idle") != "idle" or self._fresh(history, kernel, newest_run):
            return history.state() if history else None  # never make a busy kernel wait
        lock = self._locks.setdefault(kernel_id, asyncio.Lock())
        async with lock:
            history = self._histories.get(kernel_id)
            if not self._fresh(history, kernel, newest_run):
                snapshot = await self._query(kernel)
                history = self._histories.setdefault(kernel_id, History([], 0.0))
                # A kernel that did not answer keeps what it said before, and is
                # not asked again until it has been active.
                history.taken_at = time.time()
                if snapshot is not None:
                    history.add(snapshot)
            return history.state() if history else None

    async def _query(self, kernel: Any) -> Snapshot | None:
        self.queries += 1
        # A session of our own: clients sharing the manager's session share its
        # socket identity, and the kernel's replies would go astray.
        session = Session(key=kernel.session.key, signature_scheme=kernel.session.signature_scheme)
        client = kernel.client(session=session)
        # The shell channel alone: the reply comes there.  (A heartbeat thread and iopub socket per query
        # would cost a thread and file descriptors for every notebook asked, every few seconds.)
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        try:
            msg_id = client.execute(
                "",
                silent=True,
                store_history=False,
                user_expressions={"codestral": probe_expression(self.limit_chars)},
            )
            deadline = time.monotonic() + self.timeout
            while (left := deadline - time.monotonic()) > 0:
                reply = await client.get_shell_msg(timeout=left)
                if reply["parent_header"].get("msg_id") == msg_id:
                    result = reply["content"].get("user_expressions", {}).get("codestral", {})
                    if result.get("status") != "ok":
                        return None
                    return parse_summary(result.get("data", {}).get("application/json"))
        except Exception:  # noqa: BLE001 - timeouts (queue.Empty) and dead kernels: skip
            return None
        finally:
            client.stop_channels()
        return None
