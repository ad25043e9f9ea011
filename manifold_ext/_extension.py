"""Loading the compiled operators (``manifold_ext._C``) with clear errors."""

from __future__ import annotations

import functools

import torch  # loads libtorch, which the extension links against


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("+")[0].split(".")[:2])


@functools.cache
def load_extension():
    """Import ``manifold_ext._C`` (registering ``torch.ops.manifold_ext.*``) once.

    Raises ImportError with a remedy when the extension is missing or was
    compiled against a different torch (C++ ABI changes between releases).
    """
    try:
        from manifold_ext import _C
    except ImportError as error:
        raise ImportError(
            f"manifold_ext's compiled operators could not be loaded ({error}). Build them with "
            "`pip install --no-build-isolation .` in an environment that already has torch "
            "(see README, 'Install'). If you run Python from the repository root, the source "
            "folder manifold_ext/ (which has no compiled _C) may be shadowing the installed package."
        ) from error
    built_against = _C.build_info()["torch_version"]
    if _major_minor(built_against) != _major_minor(torch.__version__):
        raise ImportError(
            f"manifold_ext was compiled against torch {built_against}, but torch {torch.__version__} "
            "is installed: a build of manifold_ext loads only in the torch release it was compiled against "
            f"(its wheels require torch=={'.'.join(map(str, _major_minor(built_against)))}.*). Install that "
            "torch, or rebuild against this one: `pip install --no-build-isolation --force-reinstall --no-deps .`"
        )
    return _C


def build_info() -> dict:
    """How the compiled extension was built and what it uses at run time.

    Keys: ``torch_version`` (compiled against), ``cuda`` (CUDA kernels built),
    ``cpu_isas_compiled``, ``cpu_isa_in_use`` (follows ``ATEN_CPU_CAPABILITY``),
    ``compiler``.
    """
    return dict(load_extension().build_info())
