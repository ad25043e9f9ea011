"""Every ```python block of the documentation pages runs, in order, one namespace per page,
so the examples cannot rot (issue 16 item 1, issue 20 item 3). A block whose first line is
``# not run: <reason>`` is skipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/getting_started.md", "docs/recipes.md"]
PAGES += sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "docs").rglob("*.md")
    if "_build" not in p.parts and str(p.relative_to(REPO)) not in PAGES
)
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        code = match.group(1)
        if code.lstrip().startswith("# not run:"):
            continue
        blocks.append((text.count("\n", 0, match.start()) + 2, code))
    return blocks


PAGES_WITH_CODE = [page for page in PAGES if (REPO / page).exists() and python_blocks(REPO / page)]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": "__docs_example__"}
    for line, code in python_blocks(REPO / page):
        try:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the example at {page}:{line} fails: {type(error).__name__}: {error}") from error


def test_the_recipes_page_has_its_three_recipes_and_the_conventions():
    text = (REPO / "docs/recipes.md").read_text()
    for heading in (
        "## A 2-D RealNVP on `affine_coupling`",
        "## Diffusion: train, score, sample with your own ε-network",
        "## ReLU regions of your own MLP",
        "### Coupling layers: normflows, FrEIA, Glow",
        "### Diffusion: diffusers",
    ):
        assert heading in text
    assert len(python_blocks(REPO / "docs/recipes.md")) >= 6
