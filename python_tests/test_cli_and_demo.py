"""The manifold-ext command, the coupling demo and the benchmark harness, end to end."""

from __future__ import annotations

import json

import pytest

from manifold_ext.cli import main

# Tiny models: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("info", "bench", "demo"):
        assert command in out


def test_demo_list(capsys):
    assert main(["demo", "list"]) == 0
    assert "coupling" in capsys.readouterr().out


def test_info_reports_build(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["build"]["cpu_isa_in_use"] in info["build"]["cpu_isas_compiled"]


def test_coupling_demo_quick_learns_the_moons(tmp_path):
    assert main(["demo", "coupling", "--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "coupling_flow.png").stat().st_size > 10_000
    # Real outcomes: better than the best Gaussian, in-distribution scores highest, exact inverse.
    assert summary["test_nll_nats_per_point"] < summary["best_gaussian_nll_nats_per_point"] - 0.5
    assert summary["mean_log_p"]["moons"] > summary["mean_log_p"]["circles"]
    assert summary["mean_log_p"]["moons"] > summary["mean_log_p"]["uniform"]
    assert summary["ood_auroc_log_p"]["uniform"] > 0.85
    assert summary["inverse_roundtrip_max_abs_error"] < 1e-3
    assert summary["run"]["seconds"] > 0


def test_bench_quick_writes_results(tmp_path):
    assert (
        main(
            [
                "bench",
                "coupling",
                "--quick",
                "--impls",
                "eager,ours",
                "--rounds",
                "2",
                "--out",
                str(tmp_path),
                "--machine",
                "test",
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "test.json").read_text())
    assert {r["family"] for r in data["results"]} == {"coupling"}
    for row in data["results"]:
        assert row["ms"]["ours"] > 0 and row["ms"]["eager"] > 0 and row["speedup_vs_eager"] > 0
        assert row["bound_ms"] > 0
    table = (tmp_path / "test.md").read_text()
    assert "| coupling |" in table and "vs eager" in table


def test_bench_rejects_unknown_family():
    with pytest.raises(SystemExit, match="unknown benchmark family 'nope'"):
        main(["bench", "nope", "--quick"])
