"""The ``manifold-ext`` command: :mod:`manifold_ext_cli` (outside this package, so that
``--help`` does not import torch), re-exported here for ``python -m manifold_ext.cli`` and
for code that imports ``manifold_ext.cli.main``."""

from __future__ import annotations

import sys

from manifold_ext_cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
