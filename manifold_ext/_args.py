"""Checks for scalar arguments, shared so that every function treats them alike.

Integers: Python ints and NumPy integers (``np.int64``, anything with
``__index__``) are accepted and returned as ``int``; bools are refused (``True``
is an ``int`` to Python, but ``dt=True`` is a mistake, not a step of 1);
floats are refused even when integral (``2.7`` must not silently become 2).
"""

from __future__ import annotations

import operator


def as_int(value, name: str, minimum: int | None = None) -> int:
    """``value`` as an ``int``; TypeError for a bool or non-integer, ValueError below ``minimum``."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TypeError(f"{name} must be an integer, got the bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number
