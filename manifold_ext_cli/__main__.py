"""``python -m manifold_ext_cli``: the ``manifold-ext`` command."""

import sys

from manifold_ext_cli import main

sys.exit(main())
