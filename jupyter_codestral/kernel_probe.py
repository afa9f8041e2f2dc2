"""Runs inside the user's IPython kernel: a compact description of its namespace.

This file is not imported by the server: its source is sent to the kernel
and executed in a throwaway dictionary (see ``kernel_namespace.py``), so it
must stay self-contained and leave nothing behind.  It returns an object
whose JSON representation IPython sends back as ``application/json``::

    {"execution_count": 12,   (the last run's number)
     "variables": [{"name": "df", "kind": "DataFrame", "description": "DataFrame, 2 rows, columns {...}"}, ...]}

Variables are listed most recently defined first.  ``description`` is what
follows the name in the prompt (``df: DataFrame, ...``); for modules,
functions and classes the kind says how the line is written.
"""

from __future__ import annotations

import inspect
import types
from typing import Any


def _columns(frame: Any) -> str:
    items = [f"{c!r}: {d}" for c, d in list(frame.dtypes.items())[:40]]
    if frame.shape[1] > 40:
        items.append(f"... {frame.shape[1] - 40} more")
    return ", ".join(items)


def describe(name: str, value: Any) -> tuple[str, str]:
    """(kind, description) of one variable."""
    cls = type(value)
    module = getattr(cls, "__module__", "") or ""
    if isinstance(value, types.ModuleType):
        return "module", getattr(value, "__name__", name)
    if module.startswith("pandas") and cls.__name__ == "DataFrame":
        return "DataFrame", f"DataFrame, {value.shape[0]} rows, columns {{{_columns(value)}}}"
    if module.startswith("pandas") and cls.__name__ == "Series":
        return "Series", f"Series {value.name!r}, {len(value)} values, dtype {value.dtype}"
    if module.startswith("numpy") and cls.__name__ == "ndarray":
        return "ndarray", f"ndarray, shape {value.shape}, dtype {value.dtype}"
    if inspect.isclass(value) and getattr(value, "__module__", "") == "__main__":
        try:
            signature = str(inspect.signature(value))
        except (TypeError, ValueError):
            signature = "()"
        methods = [m for m, f in vars(value).items() if callable(f) and not m.startswith("_")][:12]
        return "class", signature + (f", methods: {', '.join(methods)}" if methods else "")
    if inspect.isfunction(value) and getattr(value, "__module__", "") == "__main__":
        return "function", str(inspect.signature(value))
    if isinstance(value, dict):
        keys = list(value)[:20]
        more = f" (+{len(value) - 20} more)" if len(value) > 20 else ""
        return "dict", f"dict, keys {keys!r}{more}"
    if isinstance(value, (list, tuple, set, frozenset)):
        first = next(iter(value), None)
        of = f" of {type(first).__name__}" if value else ""
        return cls.__name__, f"{cls.__name__}{of}, {len(value)} items"
    if isinstance(value, (bool, int, float, complex)):
        return cls.__name__, f"{cls.__name__} = {value!r}"
    if isinstance(value, str):
        return "str", f"str = {value[:60]!r}"
    if callable(value):
        return "callable", f"{cls.__name__} from {getattr(value, '__module__', None) or module}"
    return cls.__name__, f"{module + '.' if module and module != 'builtins' else ''}{cls.__name__}"


def summarize(shell: Any, limit_chars: int) -> dict[str, Any]:
    namespace, hidden = shell.user_ns, shell.user_ns_hidden
    variables, used = [], 0
    for name in reversed(list(namespace)):
        if name.startswith("_") or name in hidden:
            continue
        try:
            kind, description = describe(name, namespace[name])
        except Exception:  # noqa: BLE001 - any value may fail to describe itself; it is left out
            continue
        description = description[:400]
        if used + len(name) + len(description) > limit_chars:
            break
        variables.append({"name": name, "kind": kind, "description": description})
        used += len(name) + len(description) + 4
    # IPython's counter holds the number the next run will get.
    return {"execution_count": shell.execution_count - 1, "variables": variables}


class Summary:
    """IPython sends ``_repr_json_`` back as application/json: no repr to parse."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def _repr_json_(self) -> dict[str, Any]:
        return self.data

    def __repr__(self) -> str:
        return "<codestral namespace summary>"
