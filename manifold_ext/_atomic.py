"""Atomic file writes: write beside the target, then rename over it, so a crash
never leaves a half-written checkpoint, summary or results file behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch


def _replace_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _replace_atomically(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(payload, path: str | os.PathLike) -> Path:
    return _replace_atomically(path, lambda tmp: torch.save(payload, tmp))
