"""What every demo shares: output folder, seeding, device, atomic JSON, figures."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from manifold_ext._atomic import atomic_write_text


def add_common_arguments(parser: argparse.ArgumentParser, default_name: str) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo_out") / default_name,
        help=f"folder for the figure and summary.json (default: demo_out/{default_name})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device (default: cuda when available, else cpu)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (used by the tests and CI)")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (a crash never leaves a half-written summary)."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    from manifold_ext._optional import require

    require("matplotlib", feature="the demos' figures").use("Agg")
    return require("matplotlib.pyplot", feature="the demos' figures")


# --- paper comparison rows ---------------------------------------------------
# Every reproduction demo writes summary["paper_comparison"]: a list of rows
# {"id", "what", "paper", "ours", "spread", "unit", "setup"}. The docs'
# results pages are generated from these rows (docs/results/<demo>/summary.json
# holds the committed full run of each demo), so the schema is checked here, once.

PAPER_COMPARISON_KEYS = ("id", "what", "paper", "ours", "spread", "unit", "setup")


def paper_row(
    id: str,
    what: str,
    paper: float | None,
    ours: float | None,
    *,
    spread: float | None = None,
    unit: str = "",
    setup: str = "",
) -> dict:
    """One ``paper_comparison`` row.

    ``paper`` is the paper's number (None where the paper gives none), ``ours``
    the measured value (the mean over seeds/rounds where there are several,
    ``spread`` their standard deviation), ``setup`` how our setting differs
    from the paper's (empty when it does not).
    """
    row = {
        "id": id,
        "what": what,
        "paper": _optional_float(paper, "paper"),
        "ours": _optional_float(ours, "ours"),
        "spread": _optional_float(spread, "spread"),
        "unit": unit,
        "setup": setup,
    }
    validate_paper_comparison([row])
    return row


def _optional_float(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"paper_row: {name} must be a number or None, got {type(value).__name__}")
    return float(value)


def validate_paper_comparison(rows: list[dict]) -> None:
    """Raise ValueError unless ``rows`` follow the paper_comparison schema with unique ids."""
    seen: set[str] = set()
    for row in rows:
        if tuple(sorted(row)) != tuple(sorted(PAPER_COMPARISON_KEYS)):
            raise ValueError(
                f"paper_comparison row must have exactly the keys {PAPER_COMPARISON_KEYS}, got {sorted(row)}"
            )
        if not isinstance(row["id"], str) or not row["id"]:
            raise ValueError(f"paper_comparison row id must be a non-empty string, got {row['id']!r}")
        if row["id"] in seen:
            raise ValueError(f"paper_comparison: duplicate id {row['id']!r}")
        seen.add(row["id"])
        for key in ("what", "unit", "setup"):
            if not isinstance(row[key], str):
                raise ValueError(f"paper_comparison row {row['id']!r}: {key} must be a string")


def run_record(started: float) -> dict:
    """Command line, machine and wall time of a demo run, for its summary.json ("run" key)."""
    import sys
    import time

    from manifold_ext._machine import machine_record

    return {
        "command": "manifold-ext " + " ".join(sys.argv[1:]) if sys.argv else "",
        "seconds": round(time.time() - started, 1),
        "machine": machine_record(),
    }
