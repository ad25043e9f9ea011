"""Packaging and docs machinery: the version's single source, the core dependencies and the torch
pin, the installed-package smoke test, and the generators of the results pages (issue 16)."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import tomllib

import manifold_ext

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "packaging"))
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "docs" / "_ext"))

import generate_pages  # noqa: E402
import smoke_test  # noqa: E402
import torch_pin  # noqa: E402

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


# --- version and dependencies ---------------------------------------------------------------


def test_version_is_written_once_and_read_by_the_build():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    provider = PYPROJECT["tool"]["scikit-build"]["metadata"]["version"]
    assert provider["input"] == "manifold_ext/__init__.py"
    assert importlib.metadata.version("manifold_ext") == manifold_ext.__version__


def test_core_dependencies_are_torch_numpy_tqdm_and_the_installed_torch_is_pinned():
    core = PYPROJECT["tool"]["scikit-build"]["metadata"]["dependencies"]["core"]
    assert [torch_pin.re.split(r"[<>=!~ ]", r)[0] for r in core] == ["torch", "numpy", "tqdm"]
    import torch

    series = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    requires = importlib.metadata.requires("manifold_ext")
    assert f"torch=={series}.*" in requires, requires
    assert not any(
        r.split(";")[0].strip().startswith(("matplotlib", "scikit-learn", "scipy", "cvxpy", "highspy"))
        for r in requires
        if "extra ==" not in r
    ), requires


def test_torch_pin_rewrites_only_torch():
    pinned = torch_pin.pin_torch(["torch>=2.4", "numpy>=1.24", "tqdm"], "2.13")
    assert pinned == ["torch==2.13.*", "numpy>=1.24", "tqdm"]
    assert torch_pin.pin_torch(["Torch ; python_version>'3'"], "2.14") == ["torch==2.14.*"]
    with pytest.raises(RuntimeError, match="must list torch"):
        torch_pin.pin_torch(["numpy"], "2.13")
    with pytest.raises(RuntimeError, match="'dependencies' only"):
        torch_pin.dynamic_metadata("version", {"core": ["torch"]})
    with pytest.raises(RuntimeError, match="unknown settings"):
        torch_pin.dynamic_metadata("dependencies", {"core": ["torch"], "extra": 1})


def test_load_error_names_the_torch_a_build_needs(monkeypatch):
    from manifold_ext import _extension

    fake_c = type("FakeC", (), {"build_info": staticmethod(lambda: {"torch_version": "2.11.0+cpu"})})
    monkeypatch.setitem(sys.modules, "manifold_ext._C", fake_c)
    monkeypatch.setattr(manifold_ext, "_C", fake_c, raising=False)
    _extension.load_extension.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"compiled against torch 2\.11\.0\+cpu.*require torch==2\.11\.\*"):
            _extension.load_extension()
    finally:
        _extension.load_extension.cache_clear()
        monkeypatch.undo()
        _extension.load_extension()


# --- the smoke test of an installed package ---------------------------------------------------


def test_smoke_test_calls_every_op():
    from manifold_ext import ops

    called = smoke_test.run_every_op()
    assert called == [name for name in ops.__all__ if callable(getattr(ops, name))]


def test_smoke_test_refuses_a_source_tree():
    # The checkout these tests belong to, not manifold_ext.__file__: make cuda-check runs them against an
    # installed (non-editable) copy, whose folder is no source tree.
    with pytest.raises(SystemExit, match="imported from a source tree"):
        smoke_test.check_not_from_a_checkout(REPO / "manifold_ext" / "__init__.py")


# --- reproduction pages --------------------------------------------------------------------------


def write_summary(folder: Path, rows: list[dict], run: dict | None = None, figure: bool = True) -> None:
    folder.mkdir(parents=True)
    summary = {"paper_comparison": rows}
    if run is not None:
        summary["run"] = run
    (folder / "summary.json").write_text(json.dumps(summary))
    if figure:
        (folder / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n")


RUN = {
    "command": "manifold-ext demo likelihood --out docs/results/likelihood",
    "seconds": 612.0,
    "machine": {"cpu": "AMD EPYC", "cpu_isa": "avx512", "threads": 2, "torch": "2.13.0+cpu", "date": "2026-12-01"},
}


def row(id: str, ours: float = -2.9, paper: float | None = -0.933) -> dict:
    from manifold_ext.demos.common import paper_row

    return paper_row(id, "mean log p, Swiss roll", paper, ours, spread=0.1, unit="nats", setup="2,000 points")


def test_reproduction_pages_are_generated_from_the_rows(tmp_path):
    results, pages = tmp_path / "docs" / "results", tmp_path / "docs" / "reproductions"
    pages.mkdir(parents=True)
    write_summary(results / "likelihood", [row("000-fig5-swiss_roll-logp"), row("001-table1-x", 56.0, None)], RUN)
    (results / "coupling").mkdir()
    (results / "coupling" / "summary.json").write_text(json.dumps({"mean": 1.0}))  # no rows: listed only
    written = {p.name for p in generate_pages.generate_reproductions(results, pages)}
    assert {"paper-000.md", "paper-001.md", "paper-002.md", "paper-004.md", "paper-runs.md"} <= written
    page = (pages / "paper-000.md").read_text()
    assert "| `000-fig5-swiss_roll-logp` | mean log p, Swiss roll | -0.933 | -2.9 ± 0.1 | nats | 2,000 points |" in page
    assert "manifold-ext demo likelihood --out docs/results/likelihood" in page
    assert "../results/likelihood/fig.png" in page and "avx512" in page
    assert "001-table1-x" not in page and "001-table1-x" in (pages / "paper-001.md").read_text()
    assert "No committed full run has rows for paper 002" in (pages / "paper-002.md").read_text()
    assert "`coupling`" in (pages / "paper-runs.md").read_text()


@pytest.mark.parametrize(
    "rows, run, message",
    [
        ([{"id": "000-a", "what": "x", "paper": None, "ours": 1.0}], RUN, "exactly the keys"),
        ([row("fig5-no-paper-number")], RUN, "must start with the paper's three-digit number"),
        ([row("000-a"), row("000-a")], RUN, "duplicate id"),
        ([row("000-a")], None, "needs summary\\['run'\\]"),
    ],
)
def test_reproduction_generator_rejects_a_broken_summary(tmp_path, rows, run, message):
    write_summary(tmp_path / "results" / "demo", rows, run)
    with pytest.raises(generate_pages.ResultsError, match=message):
        generate_pages.generate_reproductions(tmp_path / "results", tmp_path)


# --- benchmark pages ---------------------------------------------------------------------------

BENCH_ROW = {
    "family": "coupling",
    "case": "fwd",
    "shape": "64x16",
    "dtype": "float32",
    "device": "cpu",
    "ms": {"eager": 2.0, "compile": 1.0, "ours": 0.5},
    "bytes_moved": 100,
    "note": "dispatch-bound",
    "ours_vs_bound": 1.25,
}
HARNESS_FORMAT = {
    "environment": {
        "torch": "2.13.0+cpu",
        "threads": 2,
        "device": "cpu",
        "date": "2026-11-23",
        "manifold_ext_build": {"cpu_isa_in_use": "avx512"},
    },
    "results": [dict(BENCH_ROW, speedup_vs_eager=4.0, speedup_vs_compile=2.0)],
}
MACHINE_ISA_FORMAT = {
    "machine": "AMD EPYC 9B14",
    "isa": "avx2",
    "threads": 1,
    "torch": "2.14.1",
    "date": "2026-12-02",
    "rows": [BENCH_ROW],
}

BENCH_FORMAT = {
    "schema": 2,
    "machine": "cpu-amd-epyc-9b14-avx2-2threads",
    "device": "cpu",
    "isa": "avx2",
    "threads": 2,
    "torch": "2.14.1",
    "date": "2026-12-03",
    "load_average": {"start": [17.9, 16.5, 12.0], "end": [15.0, 16.0, 12.1]},
    "environment": {"cpu": "AMD EPYC 9B14", "threads": 2},
    "results": [BENCH_ROW],
}


def test_benchmark_pages_accept_both_formats(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "cpu-amd-epyc-2threads.json").write_text(json.dumps(HARNESS_FORMAT))
    (results / "amd-epyc-avx2.json").write_text(json.dumps(MACHINE_ISA_FORMAT))
    (results / "fig5-end-to-end.json").write_text(
        json.dumps({"fused": {"seconds": 86.0}, "device": "cpu", "threads": 2})
    )
    (results / "cpu-amd-epyc-9b14-avx2-2threads.json").write_text(json.dumps(BENCH_FORMAT))
    generate_pages.generate_benchmarks(results, tmp_path / "pages")
    page = (tmp_path / "pages" / "coupling.md").read_text()
    assert "**cpu-amd-epyc-2threads**: ISA path `avx512`, 2 threads, torch 2.13.0+cpu" in page
    assert "**AMD EPYC 9B14**: ISA path `avx2`, 1 threads, torch 2.14.1" in page
    assert (
        "**cpu-amd-epyc-9b14-avx2-2threads**: ISA path `avx2`, 2 threads, torch 2.14.1, device `cpu`, 2026-12-03, "
        "load average 17.9 / 16.5 / 12 at the start"
    ) in page
    assert page.count("| fwd | 64x16 | float32 | 2.000 | 1.000 | 0.500 | 4.00× | 2.00× | 1.25 |") == 3
    assert "dispatch-bound" in page
    assert "fig5-end-to-end.json" in (tmp_path / "pages" / "zz-records.md").read_text()


@pytest.mark.parametrize(
    "payload, message",
    [
        ({k: v for k, v in MACHINE_ISA_FORMAT.items() if k != "isa"}, "missing isa"),
        ({k: v for k, v in MACHINE_ISA_FORMAT.items() if k != "torch"}, "missing torch"),
        (dict(MACHINE_ISA_FORMAT, rows=[{k: v for k, v in BENCH_ROW.items() if k != "shape"}]), "row 0: missing shape"),
        (
            {
                "environment": {"torch": "2.13", "threads": 1, "device": "cpu", "date": "d", "manifold_ext_build": {}},
                "results": [],
            },
            "missing cpu_isa_in_use",
        ),
        ({"seconds": 3.0}, "neither a benchmark table nor a record"),
        ({k: v for k, v in BENCH_FORMAT.items() if k != "isa"}, "missing isa"),
    ],
)
def test_benchmark_generator_is_strict_about_missing_fields(tmp_path, payload, message):
    (tmp_path / "bad.json").write_text(json.dumps(payload))
    with pytest.raises(generate_pages.ResultsError, match=message):
        generate_pages.generate_benchmarks(tmp_path, tmp_path / "pages")


def test_guides_index_globs_the_guides_and_never_overwrites_a_written_page(tmp_path):
    assert "No guide has been written yet" in generate_pages.generate_guides_index(tmp_path).read_text()
    (tmp_path / "conventions.md").write_text("# Conventions\n")
    assert ":glob:" in generate_pages.generate_guides_index(tmp_path).read_text()
    (tmp_path / "index.md").write_text("# My guide\n")
    with pytest.raises(generate_pages.ResultsError, match="give that guide another file name"):
        generate_pages.generate_guides_index(tmp_path)


def test_committed_results_generate(tmp_path):
    """The committed docs/results and benchmarks/results pass the generators' checks."""
    generate_pages.generate_reproductions(REPO / "docs" / "results", tmp_path / "reproductions")
    generate_pages.generate_benchmarks(REPO / "benchmarks" / "results", tmp_path / "benchmarks")
