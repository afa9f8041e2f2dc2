"""A compact summary of the user's namespace, read from the live IPython kernel.

The code that reads the namespace runs as a *user expression* of an empty,
silent execute request: IPython does not count it (no execution count
change), stores nothing in ``In``/``Out``, sends no output, and since the
helper is defined inside a fresh dictionary, no name is left behind in the
user's namespace.  It is only asked while the kernel is idle, and again only
after the kernel has done something since (an execution): never per
keystroke.  A kernel that does not answer quickly is skipped.
"""

from __future__ import annotations

import ast
import asyncio
import time
from dataclasses import dataclass
from typing import Any

from jupyter_client.session import Session

# Runs inside the kernel.  Describes names, most recently defined first.
PROBE = r'''
def summarize(ns, hidden, limit):
    import inspect, types
    def columns(frame):
        items = [f"{c!r}: {d}" for c, d in list(frame.dtypes.items())[:40]]
        if frame.shape[1] > 40:
            items.append(f"... {frame.shape[1] - 40} more")
        return ", ".join(items)
    def describe(name, v):
        t = type(v)
        mod = getattr(t, "__module__", "") or ""
        if isinstance(v, types.ModuleType):
            real = getattr(v, "__name__", name)
            return f"{name} = module {real}" if real != name else f"{name}: module"
        if mod.startswith("pandas") and t.__name__ == "DataFrame":
            return f"{name}: DataFrame, {v.shape[0]} rows, columns {{{columns(v)}}}"
        if mod.startswith("pandas") and t.__name__ == "Series":
            return f"{name}: Series {v.name!r}, {len(v)} values, dtype {v.dtype}"
        if mod.startswith("numpy") and t.__name__ == "ndarray":
            return f"{name}: ndarray, shape {v.shape}, dtype {v.dtype}"
        if inspect.isclass(v) and getattr(v, "__module__", "") == "__main__":
            try:
                sig = str(inspect.signature(v))
            except (TypeError, ValueError):
                sig = "()"
            methods = [m for m, f in vars(v).items() if callable(f) and not m.startswith("_")][:12]
            return f"class {name}{sig}" + (f", methods: {', '.join(methods)}" if methods else "")
        if inspect.isfunction(v) and getattr(v, "__module__", "") == "__main__":
            return f"def {name}{inspect.signature(v)}"
        if isinstance(v, dict):
            keys = list(v)[:20]
            more = f" (+{len(v) - 20} more)" if len(v) > 20 else ""
            return f"{name}: dict, keys {keys!r}{more}"
        if isinstance(v, (list, tuple, set, frozenset)):
            first = next(iter(v), None)
            kind = f" of {type(first).__name__}" if v else ""
            return f"{name}: {t.__name__}{kind}, {len(v)} items"
        if isinstance(v, (bool, int, float, complex)):
            return f"{name}: {t.__name__} = {v!r}"
        if isinstance(v, str):
            return f"{name}: str = {v[:60]!r}"
        if callable(v):
            return f"{name}: {t.__name__} from {getattr(v, '__module__', None) or mod}"
        return f"{name}: {mod + '.' if mod and mod != 'builtins' else ''}{t.__name__}"
    lines, used = [], 0
    for name in reversed(list(ns)):
        if name.startswith("_") or name in hidden:
            continue
        try:
            line = describe(name, ns[name])[:400]
        except Exception:
            continue
        if used + len(line) > limit:
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)
'''


def probe_expression(limit_chars: int) -> str:
    """One expression: define the helper in a throwaway dict and call it."""
    return (
        "(lambda g: (exec(" + repr(PROBE) + ", g), "
        "g['summarize'](get_ipython().user_ns, get_ipython().user_ns_hidden, " + str(int(limit_chars)) + "))[1])({})"
    )


@dataclass
class Snapshot:
    text: str
    taken_at: float  # wall-clock seconds, comparable with the kernel's last_activity


class KernelNamespace:
    """Summaries per kernel, refreshed only after the kernel was active."""

    # Our own query shows up as kernel activity a moment after its reply.
    OWN_ACTIVITY_GRACE = 0.5

    def __init__(self, kernel_manager: Any, timeout: float = 1.0, limit_chars: int = 8000) -> None:
        self.kernel_manager = kernel_manager
        self.timeout = timeout
        self.limit_chars = limit_chars
        self.queries = 0
        self._snapshots: dict[str, Snapshot] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _kernel(self, kernel_id: str) -> Any | None:
        if kernel_id not in self.kernel_manager:
            return None
        return self.kernel_manager.get_kernel(kernel_id)

    @staticmethod
    def _is_ipython(kernel: Any) -> bool:
        try:
            return str(kernel.kernel_spec.language).lower() == "python"
        except Exception:  # noqa: BLE001 - a spec we cannot read: no summary
            return False

    async def summary(self, kernel_id: str) -> str:
        kernel = self._kernel(kernel_id)
        if kernel is None or not self._is_ipython(kernel):
            return ""
        snapshot = self._snapshots.get(kernel_id)
        if getattr(kernel, "execution_state", "idle") != "idle":
            return snapshot.text if snapshot else ""  # never make a busy kernel wait
        last = getattr(kernel, "last_activity", None)
        last_ts = last.timestamp() if last is not None else 0.0
        if snapshot and last_ts <= snapshot.taken_at + self.OWN_ACTIVITY_GRACE:
            return snapshot.text
        lock = self._locks.setdefault(kernel_id, asyncio.Lock())
        async with lock:
            snapshot = self._snapshots.get(kernel_id)
            if snapshot and last_ts <= snapshot.taken_at + self.OWN_ACTIVITY_GRACE:
                return snapshot.text
            text = await self._query(kernel)
            previous = snapshot.text if snapshot else ""
            # A kernel that did not answer keeps its previous summary, and is
            # not asked again until it has been active.
            self._snapshots[kernel_id] = Snapshot(previous if text is None else text, time.time())
            return self._snapshots[kernel_id].text

    async def _query(self, kernel: Any) -> str | None:
        self.queries += 1
        # A session of our own: clients sharing the manager's session share its
        # socket identity, and the kernel's replies would go astray.
        session = Session(key=kernel.session.key, signature_scheme=kernel.session.signature_scheme)
        client = kernel.client(session=session)
        client.start_channels()
        try:
            msg_id = client.execute(
                "", silent=True, store_history=False,
                user_expressions={"codestral": probe_expression(self.limit_chars)},
            )
            deadline = time.monotonic() + self.timeout
            while (left := deadline - time.monotonic()) > 0:
                reply = await client.get_shell_msg(timeout=left)
                if reply["parent_header"].get("msg_id") == msg_id:
                    result = reply["content"].get("user_expressions", {}).get("codestral", {})
                    if result.get("status") != "ok":
                        return None
                    return str(ast.literal_eval(result["data"]["text/plain"]))
        except Exception:  # noqa: BLE001 - timeouts (queue.Empty) and dead kernels: skip
            return None
        finally:
            client.stop_channels()
        return None
