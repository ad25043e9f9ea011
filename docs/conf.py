"""Sphinx configuration for manifold_ext (MyST Markdown pages, API from docstrings).

Build with ``make docs`` (``sphinx-build -W --keep-going``). The reproduction and
benchmark pages are generated on every build from the committed results
(``docs/results/*/summary.json``, ``benchmarks/results/*.json``) by
``docs/_ext/generate_pages.py``; nothing in them is typed by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import generate_pages  # noqa: E402

import manifold_ext  # noqa: E402  (autodoc documents the installed, compiled package)

project = "manifold_ext"
author = "manifold_ext developers"
copyright = "manifold_ext developers"
release = version = manifold_ext.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "plain_text_docstrings",  # docs/_ext: docstrings' plain-text math (*, |) stays literal
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# notes/* are included into the generated pages, not pages of their own
# results/<demo>/*.md are the demos' own tables; the results pages are generated from summary.json
exclude_patterns = [
    "_build",
    "_ext",
    "results/README.md",
    "results/*/*.md",
    "guides/README.md",
    "reproductions/notes/*",
    "benchmarks/notes/*",
]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
math_numfig = True
math_eqref_format = "Eq. {number}"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
# Names re-exported by a package are documented on that package's page only.
autodoc_inherit_docstrings = True
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# "Attributes:" sections as fields: dataclass fields are documented once, by autodoc
napoleon_use_ivar = True

html_theme = "furo"
html_title = f"manifold_ext {release}"
html_static_path: list[str] = []


generate_pages.generate_all(DOCS)
