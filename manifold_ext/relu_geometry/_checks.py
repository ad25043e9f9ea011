"""Argument checks shared by the geometry layer: one message style (name, expected, got)."""

from __future__ import annotations

import numbers

import numpy as np


def as_int(value, name: str, minimum: int | None = None) -> int:
    """``value`` as a Python int; ints and NumPy/torch integer scalars are accepted, bools and
    floats (even integral ones like ``2.0``) are refused, so nothing is truncated silently."""
    if _is_integer_0d(value):
        value = value.item()  # a 0-d integer array or tensor
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _is_integer_0d(value) -> bool:
    dtype = getattr(value, "dtype", None)
    if dtype is None or getattr(value, "ndim", None) != 0:
        return False
    is_floating = getattr(value, "is_floating_point", None)  # torch tensors
    if is_floating is not None:
        return not is_floating() and not is_complex(value) and dtype != _torch_bool()
    return np.issubdtype(dtype, np.integer)


def is_complex(value) -> bool:
    return bool(getattr(value, "is_complex", lambda: False)())


def _torch_bool():
    import torch

    return torch.bool


def as_float(value, name: str) -> float:
    """``value`` as a finite Python float (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value
