"""The polyhedra demo (paper 001, Liu et al.): training recipe, exact region statistics, comparison rows,
the Dask route, and a short end-to-end run."""

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from manifold_ext.demos.relu_polyhedra import QUICK_ARCHITECTURES, settings_from
from manifold_ext.demos.relu_polyhedra.comparison import fig1_rows, required_ids, table1_rows
from manifold_ext.demos.relu_polyhedra.counting import RegionCounter, count_summary, region_statistics
from manifold_ext.demos.relu_polyhedra.paper import TABLE1
from manifold_ext.demos.relu_polyhedra.toy import one_bit_guarantee
from manifold_ext.demos.relu_polyhedra.training import Recipe, StackedMLP, sample_datasets, target, train_networks
from manifold_ext.relu_geometry import ReLUNetwork, bisect_to_neighbour


def _lines_network():
    """Hidden units x1, x2 and x1 - 5: the first two cut [-1, 1]^2 into 4 quadrants, the third misses the box."""
    W1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    b1 = torch.tensor([0.0, 0.0, -5.0], dtype=torch.float64)
    W2, b2 = torch.ones(1, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    return ReLUNetwork.from_weights([W1, W2], [b1, b2])


# ---------------------------------------------------------------------------
# Training recipe
# ---------------------------------------------------------------------------
def test_target_is_the_papers_function_and_refuses_other_dimensions():
    x = torch.tensor([[0.5, -0.5], [1.0, 1.0]])
    assert torch.allclose(target(x)[:, 0], torch.tensor([0.5 - 0.4, 2 - 0.4]))
    assert torch.allclose(target(torch.ones(1, 3))[:, 0], torch.tensor([0.0]))  # 3 - 3
    with pytest.raises(ValueError, match="2-D and 3-D inputs, got dimension 4"):
        target(torch.ones(1, 4))


def test_median_bias_init_starts_every_unit_on_half_of_the_data():
    x, _ = sample_datasets([0, 1, 2], 2, 2001)
    model = StackedMLP(3, 2, [5] * 6, x, torch.Generator().manual_seed(0))
    h = x
    for w, b in zip(list(model.weights)[:-1], list(model.biases)[:-1]):
        z = torch.baddbmm(b, h, w.transpose(1, 2))
        active = (z > 0).double().mean(dim=1)  # [S, units]
        # At most half the points are strictly above the median; fewer only where points tie at the median
        # (points that every unit of the previous layer maps to 0 share one pre-activation). No unit is dead.
        assert torch.all(active <= 1000 / 2001 + 1e-12) and torch.all(active > 0.3)
        h = torch.relu(z)
    assert torch.all(model.biases[-1] == 0)  # the standardised target's mean


def test_pytorch_default_init_ablation_and_bad_init():
    x, _ = sample_datasets([0], 2, 100)
    model = StackedMLP(1, 2, [5, 5], x, torch.Generator().manual_seed(0), init="pytorch")
    for w, b in zip(model.weights, model.biases):
        bound = 1 / np.sqrt(w.shape[2])
        assert w.abs().max() <= bound and b.abs().max() <= bound
    with pytest.raises(ValueError, match="init must be one of .*got 'he'"):
        StackedMLP(1, 2, [5], x, torch.Generator(), init="he")


def test_trained_networks_reproduce_the_stacked_model_and_fit_the_target():
    trained = train_networks([10, 10], 2, seeds=[3, 4], recipe=Recipe(steps=400, eval_every=100), n_points=2000)
    assert trained.name == "2x10" and len(trained.networks) == 2
    assert trained.validation_mse.shape == (2,)
    # Recompute the validation MSE from the exported networks (output layer folded back to target units).
    x, y = sample_datasets([3, 4], 2, 2000)
    for s, network in enumerate(trained.networks):
        mse = float(((network(x[s, 1600:].double()) - y[s, 1600:].double()) ** 2).mean())
        assert mse == pytest.approx(trained.validation_mse[s], rel=1e-4)
        assert mse < 0.02  # the target's variance is ~0.18: the nets fitted it
    with pytest.raises(ValueError, match="at least one seed"):
        train_networks([5], 2, seeds=[])


# ---------------------------------------------------------------------------
# Region statistics
# ---------------------------------------------------------------------------
def test_region_statistics_are_exact_on_a_hand_made_network():
    result = region_statistics(_lines_network())
    stats = result.stats
    assert stats["regions_box"] == 4  # quadrants
    assert stats["regions_everywhere"] == 6  # x1 = 0 and x1 = 5 make three strips, x2 = 0 halves each
    assert stats["bounded"] == 0 and stats["unbounded"] == 6
    assert stats["never_switching_units_in_box"] == 1  # the unit x1 - 5
    assert stats["active_bits"]["min"] == 2 and stats["active_bits"]["max"] == 3
    assert stats["failed_lps"] == 0
    only_box = region_statistics(_lines_network(), everywhere=False)
    assert only_box.patterns_everywhere is None and "regions_everywhere" not in only_box.stats


def test_region_counter_on_dask_gives_the_local_counts():
    """The --scheduler route: a scheduler address -> _cluster -> RegionCounter on the cluster, same counts."""
    from manifold_ext.demos.relu_polyhedra import _cluster

    distributed = pytest.importorskip("distributed")
    network = _lines_network()
    local = region_statistics(network).stats
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    with cluster:
        executor, client = _cluster(cluster.scheduler_address)
        try:
            with RegionCounter(cluster_executor=executor) as counter:
                assert counter.route.startswith("dask")
                remote = counter.submit(network).result().stats
        finally:
            client.close()
    keys = ("regions_box", "regions_everywhere", "bounded", "unbounded", "never_switching_units_in_box")
    assert {k: local[k] for k in keys} == {k: remote[k] for k in keys}
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        RegionCounter(workers=0)


def test_scheduler_option_goes_through_dask_executor():
    from manifold_ext.demos.relu_polyhedra import _cluster

    assert _cluster(None) == (None, None)  # no --scheduler: the local pool
    with pytest.raises(ValueError, match="scheduler must be a Dask scheduler address"):
        _cluster("  ")


def test_count_summary_has_table1s_columns():
    assert count_summary([3, 1, 2, 10]) == {
        "mean": 4.0,
        "sd": pytest.approx(np.std([3, 1, 2, 10], ddof=1)),
        "median": 2.5,
        "min": 1,
        "max": 10,
        "n": 4,
    }


def test_bisection_guarantee_counts_one_bit_steps():
    path = bisect_to_neighbour(_lines_network(), np.array([-0.5, -0.5]), np.array([0.5, 0.7]))
    guarantee = one_bit_guarantee(_lines_network(), path)
    assert guarantee == {
        "regions": 3,
        "steps": 2,
        "steps_one_bit_apart": 2,
        "degenerate_steps": 0,
        "hamming_between_ends": 2,
    }


# ---------------------------------------------------------------------------
# Settings and comparison rows
# ---------------------------------------------------------------------------
def _args(**kw):
    base = {
        "quick": False,
        "full": False,
        "seeds": None,
        "seeds_3d": None,
        "steps": None,
        "grid": None,
        "workers": None,
    }
    return argparse.Namespace(**{**base, **kw})


def test_settings_defaults_and_bad_arguments():
    default = settings_from(_args())
    assert default.seeds == 10 and len(default.architectures) == 10 and default.seeds_3d >= 1
    assert settings_from(_args(full=True)).seeds == 50
    with pytest.raises(ValueError, match="--quick and --full exclude each other"):
        settings_from(_args(quick=True, full=True))
    with pytest.raises(ValueError, match="--seeds must be >= 1, got 0"):
        settings_from(_args(seeds=0))


def test_table1_rows_carry_the_papers_numbers():
    stats = {"mean": 1.0, "sd": 0.5, "median": 1.0, "min": 0, "max": 2, "n": 3}
    rows = table1_rows(
        [{"layers": 3, "nodes": 10, "seeds": 3, "R2": stats, "box": stats, "mse": {"mean": 1e-4, "sd": 1e-5}}]
    )
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"001-table1-3x10-R2", "001-table1-3x10-box", "001-table1-3x10-mse"}
    assert by_id["001-table1-3x10-R2"]["paper"] == TABLE1[(3, 10)]["mean"] == 392.2
    assert by_id["001-table1-3x10-mse"]["paper"] == pytest.approx(8.1e-5)
    fig1 = {"seeds": 2, **{k: stats for k in ("box", "R2", "bounded", "unbounded")}}
    assert [r["paper"] for r in fig1_rows(fig1)] == [218, 237, 211, 26]


# ---------------------------------------------------------------------------
# The demo, short
# ---------------------------------------------------------------------------
def test_polyhedra_demo_quick_run(tmp_path):
    from manifold_ext.cli import main

    assert main(["demo", "polyhedra", "--quick", "--grid", "150", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    fig1 = summary["fig1_2x10"]
    check = fig1["sampling_check_seed0"]
    assert check["sampled_but_not_enumerated"] == 0 and check["distinct_patterns_sampled"] > 10
    for row in [fig1, *summary["table1"]]:
        assert row["failed_lps"] == 0
        assert row["R2"]["min"] >= row["box"]["min"] > 1
        assert row["mse"]["mean"] < 0.05  # fitted (the target's variance is ~0.18)
    assert all(r["regions_everywhere"] == r["bounded"] + r["unbounded"] for r in summary["networks"]["fig1-2x10"])
    observation = fig1["observation"]
    assert observation["every_bisection_step_one_bit"]
    assert fig1["random_segments_bisection"]["steps_one_bit_apart"] == fig1["random_segments_bisection"]["steps"]
    digits = summary["digits"]["structures"]["1"]
    assert digits["test_accuracy"] > 0.8
    assert digits["fgsm"]["accuracy_adversarial"] < digits["test_accuracy"]
    ids = {r["id"] for r in summary["paper_comparison"]}
    # --quick writes the issue's rows for the nets it trains (no 3-D net) and no Table 1 row of a net it skips
    assert required_ids(QUICK_ARCHITECTURES, with_3d=False) <= ids
    assert required_ids() - ids == required_ids() - required_ids(QUICK_ARCHITECTURES, with_3d=False)
    assert summary["run"]["seconds"] > 0
    for name in summary["figures"].values():
        assert Path(name).stat().st_size > 20_000


def test_required_ids_are_the_issues_list():
    ids = required_ids()
    assert len(ids) == 4 + 1 + 3 * 10 + 5
    assert {
        "001-fig1-unbounded",
        "001-3d-box",
        "001-table1-10x5-mse",
        "001-table1-3x25-R2",
        "001-table3-euclidean",
        "001-table6-adversarial",
    } <= ids
    assert required_ids([(2, 5)], with_3d=False) == ids - {"001-3d-box"} - {
        f"001-table1-{a}x{b}-{k}" for a, b in TABLE1 if (a, b) != (2, 5) for k in ("R2", "box", "mse")
    }


COMMITTED_RUN = Path(__file__).resolve().parents[1] / "docs" / "results" / "polyhedra"


@pytest.mark.skipif(not (COMMITTED_RUN / "summary.json").exists(), reason="no committed full polyhedra run")
def test_committed_full_run_has_every_row_and_small_figures():
    """docs/results/polyhedra holds a FULL run (not --quick) with every row the issue asks for."""
    summary = json.loads((COMMITTED_RUN / "summary.json").read_text())
    assert "--quick" not in summary["run"]["command"] and summary["settings"]["seeds"] >= 10
    rows = {r["id"]: r for r in summary["paper_comparison"]}
    assert required_ids() <= set(rows)
    assert all(rows[i]["ours"] is not None for i in required_ids())
    for name in summary["figures"].values():
        size = (COMMITTED_RUN / Path(name).name).stat().st_size
        assert 20_000 < size < 400_000, f"{name}: {size} bytes"


@pytest.mark.slow
def test_polyhedra_demo_full(tmp_path):
    from manifold_ext.cli import main

    assert main(["demo", "polyhedra", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    ids = {r["id"] for r in summary["paper_comparison"]}
    assert required_ids() <= ids
    table = {(r["layers"], r["nodes"]): r for r in summary["table1"]}
    width = [table[(3, n)]["R2"]["mean"] for n in (5, 10, 15, 20, 25)]
    assert all(a < b for a, b in itertools.pairwise(width))  # more nodes, more regions
    assert all(r["never_switching_units_in_box"]["mean"] < 0.25 * r["layers"] * r["nodes"] for r in table.values())
    assert summary["regions_3d_3x10"]["sampling_check_seed0"]["sampled_but_not_enumerated"] == 0
