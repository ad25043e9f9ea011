"""Checks shared by the op wrappers and the fake (meta) kernels, in one place.

* Scalar arguments: the wrappers turn Python and NumPy numbers into what the
  schema takes, refusing what would be silently truncated or reinterpreted
  (``k=2.7``, ``num_units=69.9``, ``reverse="no"``, ``True`` as a number).
* Devices: the fake kernels run whenever one argument is a meta (or fake)
  tensor, so they must refuse mixed devices themselves, with the words of the
  compiled kernels, or a call mixing a meta and a real tensor returns
  uninitialised memory.
* Value ranges that depend on the compute dtype (a scale whose reciprocal
  overflows it): the compiled kernels apply the same limits.
* Outputs of the fake kernels: ``empty_contiguous_like``, the contiguous
  tensors the compiled kernels return whatever the inputs' strides.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Callable

import torch

# ---------------------------------------------------------------------------
# Scalar arguments
# ---------------------------------------------------------------------------


def _is_bool(value) -> bool:
    # np.bool_ is not a numbers.Integral, but operator.index accepts it.
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def as_int(value, name: str, op: str) -> int:
    """``value`` as a Python int: ints, NumPy integers and integer 0-dim tensors; not bools or floats."""
    if _is_bool(value):
        raise TypeError(f"{op}: {name} must be an integer, got the bool {value!r}")
    if isinstance(value, torch.Tensor) and (value.dim() != 0 or value.is_floating_point() or value.is_complex()):
        raise TypeError(
            f"{op}: {name} must be an integer, got a tensor of shape {list(value.shape)} and dtype {value.dtype}"
        )
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{op}: {name} must be an integer, got {value!r} ({type(value).__name__}); "
            f"it is not rounded or truncated for you"
        ) from None


def as_float(value, name: str, op: str) -> float:
    """``value`` as a Python float: real numbers (NumPy's included) and 0-dim real tensors; not bools."""
    if type(value) is float:  # the common case first: the checks below cost about 0.3 µs of a 5 µs call
        return value
    if _is_bool(value):
        raise TypeError(f"{op}: {name} must be a real number, got the bool {value!r}")
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(
                f"{op}: {name} must be a real number, got a tensor of shape {list(value.shape)} and dtype {value.dtype}"
            )
        return float(value.item())
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def as_optional_float(value, name: str, op: str) -> float | None:
    return None if value is None else as_float(value, name, op)


def as_bool(value, name: str, op: str) -> bool:
    """``value`` as a Python bool: ``True``/``False`` (and NumPy's); not strings, numbers or None."""
    if not _is_bool(value):
        raise TypeError(f"{op}: {name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


# ---------------------------------------------------------------------------
# Devices (fake kernels)
# ---------------------------------------------------------------------------


def check_device(ok: bool, message: Callable[[], str], *, value_error: bool = False) -> None:
    """Raise the compiled kernels' error (RuntimeError, or ValueError where they raise that) unless ``ok``."""
    if value_error:
        torch._check_value(ok, message)
    else:
        torch._check(ok, message)


def check_on_device_of(
    tensor: torch.Tensor | None, like: torch.Tensor, message: Callable[[], str], *, value_error: bool = False
) -> None:
    """``tensor`` (if given) must be on ``like``'s device."""
    if tensor is not None:
        check_device(tensor.device == like.device, message, value_error=value_error)


def empty_contiguous_like(tensor: torch.Tensor) -> torch.Tensor:
    """A fake kernel's output of ``tensor``'s shape, dtype and device, in the contiguous layout the kernels write."""
    return torch.empty_like(tensor, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------
# Dtype-dependent ranges
# ---------------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in: float32 for float16/bfloat16 (and float32), else the input's."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def largest_finite(dtype: torch.dtype) -> float:
    return float(torch.finfo(compute_dtype(dtype)).max)


def fits(value: float, dtype: torch.dtype) -> bool:
    """True when ``value`` is finite in the compute dtype of ``dtype``."""
    return math.isfinite(value) and abs(value) <= largest_finite(dtype)
