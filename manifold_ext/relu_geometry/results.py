"""The regions :func:`~manifold_ext.relu_geometry.enumerate_regions` finds: in memory
(:class:`EnumerationResult`) or streamed to NumPy shards on disk (:class:`EnumerationShards`).

A streamed enumeration keeps nothing per region on the driver but the set of visited patterns
(about ``8 * words + 60`` bytes each); every batch's regions go to a buffer that is written as
``regions-NNNNNN.npz`` (``patterns``, ``interior_points``, ``radii``, ``num_facets`` and, without
a box, ``bounded``) every ``shard_size`` regions, with ``manifest.json`` describing the run.
:func:`load_regions` opens such a folder; :meth:`EnumerationShards.iter_shards` reads it one
shard at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from manifold_ext._atomic import atomic_write_text
from manifold_ext.relu_geometry.lp import Box

MANIFEST = "manifest.json"
FORMAT = "manifold_ext.relu_geometry.regions/1"


@dataclasses.dataclass
class EnumerationResult:
    """All regions found by :func:`~manifold_ext.relu_geometry.enumerate_regions`, in traversal order."""

    patterns: np.ndarray  # int64 [R, words]
    interior_points: np.ndarray  # [R, d] a point inside each region (Chebyshev centre within the box)
    radii: np.ndarray  # [R] Chebyshev radius within the box (capped at 1 without a box)
    num_facets: np.ndarray  # [R]
    bounded: np.ndarray | None  # [R] bool, without a box only
    box: Box | None
    empty_candidates: int  # flipped patterns whose region had no interior (degenerate hyperplanes)
    failures: list[str]  # failed LPs, with the region they belong to
    n_lps: int
    seconds: float
    truncated: bool  # stopped at max_regions
    used_executor: bool = False  # some batches ran through an executor (the one given, or the local pool)
    method: str = ""  # "clip" (exact 2-D op) or the LP path that analysed the regions
    fallbacks: int = 0  # regions the 2-D op handed to the LP path (rounding)
    num_batches: int = 0  # tasks: batches analysed (the seed batches included)

    def __len__(self) -> int:
        return len(self.patterns)

    @property
    def num_regions(self) -> int:
        return len(self.patterns)

    @property
    def num_bounded(self) -> int | None:
        return None if self.bounded is None else int(self.bounded.sum())

    @property
    def num_unbounded(self) -> int | None:
        return None if self.bounded is None else int((~self.bounded).sum())

    def keys(self) -> set[bytes]:
        return {p.tobytes() for p in self.patterns}

    def index_of(self, patterns) -> np.ndarray:
        """Position of each packed pattern ``[P, words]`` in this result, or -1 if absent."""
        lookup = {p.tobytes(): i for i, p in enumerate(self.patterns)}
        patterns = np.asarray(patterns, dtype=np.int64)
        return np.array([lookup.get(p.tobytes(), -1) for p in patterns], dtype=np.int64)

    def regions(self, network) -> list:
        """The :class:`~manifold_ext.relu_geometry.Region` of every pattern (their ``A`` and ``c``)."""
        return network.regions(torch.from_numpy(self.patterns))


@dataclasses.dataclass
class EnumerationShards:
    """An enumeration streamed to ``directory`` (see the module docstring); counts are kept in memory,
    regions are read back with :meth:`iter_shards` or :meth:`load`."""

    directory: Path
    num_regions: int
    num_bounded: int | None
    num_unbounded: int | None
    box: Box | None
    empty_candidates: int
    failures: list[str]
    n_lps: int
    seconds: float
    truncated: bool
    used_executor: bool
    method: str
    fallbacks: int
    shard_files: list[str]
    num_batches: int = 0

    def __len__(self) -> int:
        return self.num_regions

    @classmethod
    def open(cls, directory) -> "EnumerationShards":
        """The enumeration written to ``directory`` (its ``manifest.json``)."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"load_regions: {directory} has no {MANIFEST}: not an enumeration written by "
                "enumerate_regions(..., out_dir=...)"
            )
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"load_regions: {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
        if not meta.get("complete"):
            raise ValueError(
                f"load_regions: {path} belongs to an enumeration that did not finish (no final "
                "manifest); its shards are incomplete"
            )
        box = None if meta["box"] is None else Box(np.asarray(meta["box"][0]), np.asarray(meta["box"][1]))
        return cls(
            directory=directory,
            num_regions=meta["num_regions"],
            num_bounded=meta["num_bounded"],
            num_unbounded=meta["num_unbounded"],
            box=box,
            empty_candidates=meta["empty_candidates"],
            failures=meta["failures"],
            n_lps=meta["n_lps"],
            seconds=meta["seconds"],
            truncated=meta["truncated"],
            used_executor=meta["used_executor"],
            method=meta["method"],
            fallbacks=meta["fallbacks"],
            shard_files=[s["file"] for s in meta["shards"]],
            num_batches=meta.get("num_batches", 0),
        )

    def iter_shards(self) -> Iterator[EnumerationResult]:
        """One :class:`EnumerationResult` per shard, in traversal order (counts and failures are the run's)."""
        for name in self.shard_files:
            with np.load(self.directory / name) as shard:
                yield EnumerationResult(
                    patterns=shard["patterns"],
                    interior_points=shard["interior_points"],
                    radii=shard["radii"],
                    num_facets=shard["num_facets"],
                    bounded=shard["bounded"] if "bounded" in shard else None,
                    box=self.box,
                    empty_candidates=self.empty_candidates,
                    failures=self.failures,
                    n_lps=self.n_lps,
                    seconds=self.seconds,
                    truncated=self.truncated,
                    used_executor=self.used_executor,
                    method=self.method,
                    fallbacks=self.fallbacks,
                    num_batches=self.num_batches,
                )

    def load(self) -> EnumerationResult:
        """Every region in memory, as the in-memory run would have returned them."""
        parts = list(self.iter_shards())
        if not parts:
            raise ValueError(f"load_regions: {self.directory} holds no shards")
        result = parts[0]
        for name in ("patterns", "interior_points", "radii", "num_facets"):
            setattr(result, name, np.concatenate([getattr(p, name) for p in parts]))
        if result.bounded is not None:
            result.bounded = np.concatenate([p.bounded for p in parts])
        return result


def load_regions(directory) -> EnumerationShards:
    """Open an enumeration written by ``enumerate_regions(..., out_dir=directory)``."""
    return EnumerationShards.open(directory)


class MemorySink:
    """Keeps every batch's regions as arrays (one chunk per batch, never one object per region)."""

    def __init__(self, words: int, dim: int, check_bounded: bool):
        self.words, self.dim, self.check_bounded = words, dim, check_bounded
        self.chunks: list[tuple] = []
        self.count = 0
        self.num_bounded = 0

    def add(self, patterns, points, radii, num_facets, bounded) -> None:
        self.chunks.append((patterns, points, radii, num_facets, bounded))
        self.count += len(patterns)
        if bounded is not None:
            self.num_bounded += int(bounded.sum())

    def arrays(self):
        def cat(k, shape, dtype):
            parts = [chunk[k] for chunk in self.chunks]
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(shape, dtype=dtype)

        return (
            cat(0, (0, self.words), np.int64),
            cat(1, (0, self.dim), np.float64),
            cat(2, (0,), np.float64),
            cat(3, (0,), np.int64),
            cat(4, (0,), bool) if self.check_bounded else None,
        )


class ShardSink(MemorySink):
    """Writes regions to ``directory/regions-NNNNNN.npz`` every ``shard_size`` regions."""

    def __init__(self, directory, words: int, dim: int, check_bounded: bool, shard_size: int):
        super().__init__(words, dim, check_bounded)
        self.directory = Path(directory)
        if self.directory.exists() and any(self.directory.iterdir()):
            raise FileExistsError(
                f"enumerate_regions: out_dir {self.directory} is not empty; pass a new or empty "
                "folder (shards of another run would be mixed in)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.files: list[dict] = []
        self.buffered = 0
        self.count_total = 0

    def add(self, patterns, points, radii, num_facets, bounded) -> None:
        super().add(patterns, points, radii, num_facets, bounded)
        self.buffered += len(patterns)
        if self.buffered >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        patterns, points, radii, num_facets, bounded = self.arrays()
        name = f"regions-{len(self.files):06d}.npz"
        arrays = dict(patterns=patterns, interior_points=points, radii=radii, num_facets=num_facets)
        if bounded is not None:
            arrays["bounded"] = bounded
        tmp = self.directory / (name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, self.directory / name)
        self.files.append({"file": name, "regions": int(len(patterns))})
        self.chunks, self.buffered = [], 0

    def write_manifest(self, meta: dict) -> None:
        meta = {"format": FORMAT, **meta, "shards": self.files}
        atomic_write_text(self.directory / MANIFEST, json.dumps(meta, indent=1))
