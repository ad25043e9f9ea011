"""KL attribute analysis (paper 000 §4.3) and the attributes / geodesic demos."""

from __future__ import annotations

import json
import math

import pytest
import torch

from manifold_ext.analysis import attribute_kl, nearest_neighbours, supervised_contrastive_loss
from manifold_ext.cli import main

# Tiny models: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_nearest_neighbours_never_returns_self_and_matches_brute_force():
    x = torch.randn(300, 5)
    nn_index = nearest_neighbours(x, chunk=64)
    d = torch.cdist(x.double(), x.double())
    d.fill_diagonal_(math.inf)
    assert torch.equal(nn_index, d.argmin(1))
    assert (nn_index != torch.arange(300)).all()
    cosine = nearest_neighbours(x, metric="cosine")
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    dc = torch.cdist(xn, xn)
    dc.fill_diagonal_(math.inf)
    assert torch.equal(cosine, dc.argmin(1))


def test_kl_values_by_hand():
    """Four points on a line: nn pairs (0,1) and (2,3). Attribute 'a' agrees within pairs, 'b' not."""
    embeddings = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    attributes = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    report = attribute_kl(embeddings, attributes, ["a", "b"], baseline_draws=5)
    rows = {row.name: row for row in report.attributes}
    # a: p(a) = (1/2, 1/2); p(a | nn = 0) = (1, 0): KL = log 2; expected KL = log 2 (= the mutual information).
    assert rows["a"].kl_at_zero == pytest.approx(math.log(2))
    assert rows["a"].expected_kl == pytest.approx(math.log(2))
    assert rows["a"].neighbour_agreement == 1.0 and rows["a"].chance_agreement == 0.5
    # b: the neighbour always has the other value: p(b | nn = 0) = (0, 1): KL = log 2 too, agreement 0.
    assert rows["b"].kl_at_zero == pytest.approx(math.log(2))
    assert rows["b"].neighbour_agreement == 0.0
    assert rows["a"].conditional[0] == [1.0, 0.0]
    assert report.table().count("\n") == 3


def test_informative_attribute_ranks_first_and_noise_is_at_chance():
    generator = torch.Generator().manual_seed(0)
    n = 2000
    cluster = torch.randint(0, 4, (n,), generator=generator)
    embeddings = torch.randn(n, 3, generator=generator) * 0.1 + torch.nn.functional.one_hot(cluster, 4)[:, :3] * 3.0
    noise = torch.randint(0, 2, (n,), generator=generator)
    three_valued = cluster.clamp(max=2)  # categorical, determined by the cluster
    attributes = torch.stack([noise, cluster % 2, three_valued], 1)
    report = attribute_kl(embeddings, attributes, ["noise", "parity", "three"])
    ranking = [row.name for row in report.attributes]
    assert ranking[-1] == "noise"
    rows = {row.name: row for row in report.attributes}
    assert rows["parity"].expected_kl == pytest.approx(math.log(2), rel=0.02)
    assert rows["noise"].expected_kl < 3 * rows["noise"].chance_expected_kl + 1e-3
    assert len(rows["three"].marginal) == 3
    by_zero = attribute_kl(embeddings, attributes, ["noise", "parity", "three"], rank_by="kl_at_zero")
    assert by_zero.rank_by == "kl_at_zero" and by_zero.attributes[-1].name == "noise"


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(attributes=torch.zeros(10)), "attributes must be an \\[N, A\\]"),
        (dict(attributes=torch.full((10, 2), 0.5)), "integer codes"),
        (dict(attributes=-torch.ones(10, 2, dtype=torch.long)), ">= 0"),
        (dict(embeddings=torch.zeros(9, 3)), "embeddings must be \\[N, E\\] with N = 10"),
        (dict(names=["one"]), "1 names for 2 attributes"),
        (dict(rank_by="entropy"), "unknown rank_by"),
        (dict(metric="manhattan"), "unknown metric"),
        (dict(embeddings=torch.full((10, 3), float("nan"))), "finite"),
    ],
)
def test_bad_input_raises_clear_errors(args, match):
    kwargs = dict(embeddings=torch.randn(10, 3), attributes=torch.randint(0, 2, (10, 2)))
    kwargs.update(args)
    with pytest.raises(ValueError, match=match):
        attribute_kl(**kwargs)


def test_supervised_contrastive_loss_prefers_clustered_embeddings():
    identities = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert supervised_contrastive_loss(clustered, identities) < supervised_contrastive_loss(mixed, identities)


def test_attributes_demo_quick(tmp_path):
    assert main(["demo", "attributes", "--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "attribute_kl.png").stat().st_size > 10_000
    assert "| rank | attribute |" in (tmp_path / "attribute_kl.md").read_text()
    # The recognition manifold is organised by identity: identity-linked attributes rank first, and
    # every identity attribute's KL is far above chance.
    assert summary["identity_attributes_ranked_first"]
    assert summary["identity_nn_accuracy_recognition"] > 0.6
    rows = {row["name"]: row for row in summary["reports"]["recognition manifold"]["attributes"]}
    assert rows["digit >= 5"]["expected_kl"] > 20 * rows["digit >= 5"]["chance_expected_kl"]
    # Raw pixels are organised by the nuisances that change many pixels.
    assert summary["ranking_pixels"][0] in ("low contrast", "bold", "shifted")
    assert summary["run"]["seconds"] > 0 and summary["run"]["command"].startswith("manifold-ext")


def test_geodesic_demo_quick(tmp_path):
    assert main(["demo", "geodesic", "--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "geodesic.png").stat().st_size > 10_000
    assert summary["geodesic_shorter_in_d_w"]
    assert summary["geodesic_closer_to_data"]
    assert summary["geodesic_higher_mean_log_p"]
    rows = {row["id"]: row for row in summary["paper_comparison"]}
    for k, pair in enumerate(summary["pairs"], 1):  # the slides' one example: d_w ratio 148 / 304
        ratio = rows[f"002-geodesic-pair{k}-length-ratio"]
        assert ratio["paper"] == pytest.approx(148 / 304, abs=1e-4) and ratio["ours"] < 1
        assert ratio["ours"] == pytest.approx(pair["weighted_length_ratio"], rel=1e-3)
        assert (
            rows[f"002-geodesic-pair{k}-geodesic-distance-to-data"]["ours"]
            < rows[f"002-geodesic-pair{k}-straight-distance-to-data"]["ours"]
        )
    assert summary["run"]["seconds"] > 0
