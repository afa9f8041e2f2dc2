"""What counts as a number in a configuration (JSON or Python): the checks every setting shares."""

from __future__ import annotations

from typing import Any


def is_number(value: Any, whole: bool = False) -> bool:
    """An int (for ``whole``) or a float or int, never a bool (``true`` is not 1 in a configuration)."""
    return not isinstance(value, bool) and isinstance(value, int if whole else int | float)


def is_positive(value: Any, whole: bool = False) -> bool:
    return is_number(value, whole) and value > 0


def is_non_negative(value: Any) -> bool:
    return is_number(value) and value >= 0
