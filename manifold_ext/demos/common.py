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
    parser.add_argument("--out", type=Path, default=Path("demo_out") / default_name,
                        help=f"folder for the figure and summary.json (default: demo_out/{default_name})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device (default: cuda when available, else cpu)")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
