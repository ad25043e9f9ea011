"""`manifold-ext demo attack`: Table 1 of paper 000 on the shipped 8x8 digits, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from manifold_ext.cli import main
from manifold_ext.datasets import load_celeba_gender, load_digits_binary, load_digits_classes


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `demo attack --quick` run shared by the tests below: (output folder, summary)."""
    out = tmp_path_factory.mktemp("attack_demo")
    previous = torch.get_num_threads()
    try:
        assert main(["demo", "attack", "--quick", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(previous)  # the demo runs single-threaded on CPU
    return out, json.loads((out / "summary.json").read_text())


def test_attack_demo_quick_shows_collapse_and_recovery(quick_run):
    """Table 1's pattern on the conv VAE-classifier: a good classifier, collapsed by an 8-pixel (12.5 %) patch,
    restored by ELBO purification, which leaves clean accuracy nearly intact; both purification rules run."""
    tmp_path, summary = quick_run
    acc = summary["accuracy_percent"]
    assert summary["settings"]["net"] == "conv" and summary["settings"]["primary_purify_rule"] == "scaled"
    assert acc["clean"] > 90
    for attack in ("patch_pgd", "patch_nag"):
        assert acc[attack] < acc["clean"] - 30, acc
        # purification helps (a no-op purify would give + 0); the paper's large recovery is the xfail test below
        assert acc[f"purified_{attack}"] > acc[attack] + 10, acc
        elbo = summary["mean_elbo_nats"]["scaled"][attack]
        assert elbo["after"] > elbo["before"] + 100, elbo
    assert acc["purified_clean"] > acc["clean"] - 5
    assert set(summary["accuracy_percent_by_purify_rule"]) == {"scaled", "sign"}
    patch = summary["patch"]
    assert patch["pixels"] == 8 and patch["fraction_percent"] == 12.5 and summary["test_images"] == 200
    assert {patch["height"], patch["width"]} == {2, 4}
    assert "| this run, 'scaled' purification |" in summary["table_markdown"]
    for figure in ("table1.png", "examples_patch_pgd.png", "examples_patch_nag.png", "attack_strength.png"):
        assert (tmp_path / figure).stat().st_size > 10_000


@pytest.mark.xfail(
    strict=True,
    reason="Table 1's claim that ELBO purification restores most of the attacked "
    "accuracy does not reproduce on the 8x8 digits: measured + 16 / + 14.5 points (Patch-PGD / "
    "Patch-NAG) at --quick, + 11.9 / + 10.4 in the full run (docs/results/attack); the paper gains "
    "+ 62.6 / + 69.9. Strict: an xpass means the recovery now reproduces and this mark must go.",
)
def test_attack_demo_quick_purification_restores_most_of_the_attacked_accuracy(quick_run):
    _, summary = quick_run
    acc = summary["accuracy_percent"]
    for attack in ("patch_pgd", "patch_nag"):
        assert acc[f"purified_{attack}"] > acc[attack] + 20, acc


def test_attack_demo_quick_attack_strength_study(quick_run):
    """Accuracy vs iterations (both attacks), the exhaustive corner search of the patch, and the size / placement
    curves: the study that explains how strong a patch attack can be on this data."""
    _, summary = quick_run
    for name in ("patch_pgd", "patch_nag"):
        curve = {int(k): v for k, v in summary["accuracy_vs_iterations"][name].items()}
        assert curve[0] == summary["accuracy_percent"]["clean"]
        assert max(curve) == summary["settings"]["attack_steps"]
        assert curve[max(curve)] == summary["accuracy_percent"][name]
    corner = summary["corner_search_accuracy_percent"]
    assert 0 <= corner < summary["accuracy_percent"]["clean"] - 30  # the best corner of the patch fools the model
    study = summary["strength_study"]
    fractions = [point["fraction_percent"] for point in study["by_size"]]
    assert fractions == sorted(fractions) and 12.5 in fractions
    for point in study["by_size"] + list(study["by_placement"].values()):
        assert 0 <= point["patch_nag"] <= 100
        if point["patch"][2] * point["patch"][3] <= 9:
            assert point["corner_search"] is not None
    placements = study["by_placement"]
    salient = placements["most salient (the Table 1 patch)"]
    assert salient["patch"] == [summary["patch"][k] for k in ("top", "left", "height", "width")]
    for point in placements.values():
        assert 0 <= point["purified_patch_nag"] <= 100
    least = placements["least salient 2x4"]
    assert salient["corner_search"] < least["corner_search"]  # placement matters: the salient place is stronger
    knn = summary["pixel_knn_check"]
    assert knn["clean_knn_accuracy_percent"] > 90 and 0 <= knn["patch_nag"]["fooled_percent"] <= 100


def test_attack_demo_quick_paper_comparison_rows(quick_run):
    _, summary = quick_run
    ids = {row["id"] for row in summary["paper_comparison"]}
    for name in ("clean", "pgd", "nag"):
        assert {f"000-table1-{name}-before", f"000-table1-{name}-after", f"000-table1-{name}-after-sign"} <= ids
    for mode in ("no-thresh", "thresh"):
        assert {f"004-table41-{mode}-{metric}" for metric in ("accuracy", "error", "rejected")} <= ids
    assert {
        "004-table41-recovered",
        "004-table41-recovered-accuracy",
        "004-fig43-max-error",
        "004-table41-thresh-rejected-train-images",
    } <= ids
    rows = {row["id"]: row for row in summary["paper_comparison"]}
    assert rows["000-table1-nag-before"]["paper"] == 6.83 and rows["000-table1-pgd-after"]["paper"] == 75.75
    assert rows["004-table41-thresh-accuracy"]["paper"] == 97.97
    assert rows["000-table1-clean-before"]["ours"] == summary["accuracy_percent"]["clean"]
    assert summary["run"]["seconds"] > 0 and summary["run"]["machine"]["threads"] == 1


def test_attack_demo_quick_table41_and_fgsm_sweep(quick_run):
    """Thesis 004 Table 4.1 / Fig. 4.3 on 10-class digits: accuracy + error + rejection add up, the FGSM sweep
    lowers accuracy and raises rejection, and the rejected clean images go through reclassification."""
    out, summary = quick_run
    section = summary["table41"]
    run = section["per_seed"][0]
    clean = run["clean"]
    assert clean["no_thresh_accuracy"] > 80
    assert clean["no_thresh_accuracy"] + clean["no_thresh_error"] == pytest.approx(100, abs=0.02)
    assert clean["thresh_accuracy"] + clean["thresh_error"] + clean["thresh_rejected"] == pytest.approx(100, abs=0.03)
    assert clean["thresh_error"] <= clean["no_thresh_error"]  # thresholds only remove predictions
    assert 0 <= run["recovered_count"] <= run["rejected_count"]
    train = run["train_images_verdict"]  # the images the thresholds were calibrated on
    assert train["thresh_accuracy"] + train["thresh_error"] + train["thresh_rejected"] == pytest.approx(100, abs=0.03)
    sweep = run["fgsm"]
    first, last = sweep[f"{section['eps'][0]:g}"], sweep[f"{section['eps'][-1]:g}"]
    assert first == clean
    assert last["thresh_accuracy"] < first["thresh_accuracy"] - 20
    assert last["thresh_rejected"] > first["thresh_rejected"] + 10
    rows = {row["id"]: row for row in summary["paper_comparison"]}
    for eps in section["eps"]:
        assert rows[f"004-fig43-eps{eps:g}-rejected"]["ours"] == sweep[f"{eps:g}"]["thresh_rejected"]
    assert rows["004-table41-recovered"]["ours"] == run["recovered_percent_of_rejected"]
    assert rows["004-table41-thresh-rejected-train-images"]["ours"] == train["thresh_rejected"]
    assert (out / "table41_fig43.png").stat().st_size > 10_000


def test_table41_rows_each_come_from_their_own_measurement():
    """The recovered row once carried the mean of the training-image rejection (a variable reused)."""
    from manifold_ext.demos.attack.table41 import comparison_rows

    def record(recovered, train_rejected, after):
        verdict = {
            f"{mode}_{metric}": 1.0 for mode in ("no_thresh", "thresh") for metric in ("accuracy", "error", "rejected")
        }
        return {
            "clean": verdict,
            "recovered_percent_of_rejected": recovered,
            "recovered_count": 1,
            "rejected_count": 2,
            "train_images_verdict": {"thresh_rejected": train_rejected},
            "accuracy_after_reclassification": after,
            "fgsm": {"0": {**verdict}},
        }

    rows = {row["id"]: row for row in comparison_rows([record(40.0, 3.0, 90.0), record(60.0, 5.0, 92.0)], [0.0], "")}
    assert rows["004-table41-recovered"]["ours"] == pytest.approx(50.0)
    assert rows["004-table41-thresh-rejected-train-images"]["ours"] == pytest.approx(4.0)
    assert rows["004-table41-recovered-accuracy"]["ours"] == pytest.approx(91.0)


def test_attack_demo_quick_gmm_classifier_rejects_and_reclassifies(quick_run):
    """Thesis 004 §4.6-4.7 on the same task and patch: the attacks fool the GMM classifier, its
    thresholds flag most attacked images (few clean ones) and decoder inversion relabels them."""
    out, summary = quick_run
    gmm = summary["gmm_classifier"]
    table = gmm["percent"]
    clean = table["clean"]
    assert clean["accuracy"] > 90 and clean["rejected"] < 10
    assert clean["accuracy_reclassified"] > clean["accuracy"] - 5  # the defence barely costs clean accuracy
    for attack in ("patch_pgd", "patch_nag"):
        row = table[attack]
        assert row["accuracy"] < clean["accuracy"] - 30, row  # the white-box patch attack works ...
        assert row["rejected"] > clean["rejected"] + 40, row  # ... but is mostly detected (§4.6)
        assert row["accuracy_reclassified"] > row["accuracy"] + 20, row  # and reclassification recovers (§4.7)
        assert row["final_error"] < (100 - row["accuracy"]) - 25, row  # errors with the full defence
        assert row["final_accuracy"] + row["final_error"] + row["final_rejected"] == pytest.approx(100, abs=0.05)
        assert row["rejected"] >= max(row["rejected_latent"], row["rejected_recon"])  # either threshold
    assert gmm["patch"] == {"top": 0, "left": 0, "height": 3, "width": 3}  # its own 9-pixel corner patch
    for runs in gmm["reclassify_every_image_accuracy_percent"].values():  # §4.7's multi-start pays off
        assert runs["all_centres"] > max(runs["start_0"], runs["start_1"]) + 5, runs
    assert 0 < gmm["thresholds"]["tau_dec"] and gmm["thresholds"]["tau_enc"] == pytest.approx(11.62, abs=0.01)
    assert "| accuracy, no defence |" in gmm["table_markdown"]
    for figure in ("gmm_defence.png", "gmm_examples.png"):
        assert (out / figure).stat().st_size > 10_000


def test_attack_demo_quick_gmm_threshold_aware_whitebox(quick_run):
    """Thesis 004 §4.8.5-4.8.6: Eq. 4.9 (patch and unconstrained) and Eq. 4.10 fooling images against the GMM
    classifier. The entries exist, are consistent percentages, and record what the run measured: on this
    small model the threshold-aware attack gets most images past both thresholds as the target class."""
    out, summary = quick_run
    whitebox = summary["gmm_classifier"]["whitebox"]
    table = whitebox["percent"]
    assert set(table) == {"eq49_patch", "eq49_unconstrained", "eq410_fooling"}
    percent_keys = (
        "success",
        "rejected",
        "rejected_latent",
        "rejected_recon",
        "other",
        "fooled_encoder",
        "defence_success",
        "defence_rejected",
        "reclassify_all_success",
        "reclassify_all_rejected",
        "knn_agrees_of_success",
    )
    for name, row in table.items():
        for key in percent_keys:
            assert 0 <= row[key] <= 100, (name, key, row[key])
        # without defence every image is exactly one of: success, rejected, correct (attacks only), other
        parts = [row["success"], row["rejected"], row["other"]]
        defended = [row["defence_success"], row["defence_rejected"]]
        if name == "eq410_fooling":
            assert row["correct"] is None and row["defence_correct"] is None  # fooling images have no true class
        else:
            parts.append(row["correct"])
            defended.append(row["defence_correct"])
            assert 0 <= row["correct"] <= 100 and 0 <= row["defence_correct"] <= 100
            assert 0 <= row["reclassify_all_correct"] <= 100
            assert row["other"] == 0  # two classes: a label is the true class or the target
        assert sum(parts) == pytest.approx(100, abs=0.05), (name, row)
        assert sum(defended) <= 100 + 0.05
        assert row["success"] <= row["fooled_encoder"]
        assert row["rejected"] >= max(row["rejected_latent"], row["rejected_recon"])
        assert row["rejected"] <= row["rejected_latent"] + row["rejected_recon"] + 0.05
        assert row["mean_objective_end"] < row["mean_objective_start"], (name, row)  # the attacks minimise
        assert row["mean_eta_l2"] > 0 and 0 < row["mean_eta_linf"] <= 1
    patch, free = table["eq49_patch"], table["eq49_unconstrained"]
    assert patch["mean_eta_linf"] <= 1 and free["mean_eta_l2"] < 3  # a perturbation, not a new image
    assert free["success"] > 50, free  # the measured outcome: the adaptive attack breaks the defence here
    assert free["defence_success"] >= free["success"] - 0.05  # images that pass are never reclassified
    assert whitebox["settings"]["fooling_per_class"] == 50 and whitebox["settings"]["a"] == 2.0
    assert "| attack success: target, not rejected |" in whitebox["table_markdown"]
    assert (out / "gmm_whitebox.png").stat().st_size > 10_000


def test_digits_binary_split():
    data = load_digits_binary(threshold=5, seed=0)
    assert data.x_train.shape[1:] == (1, 8, 8) and data.x_train.dtype == torch.float32
    assert data.x_train.shape[0] + data.x_test.shape[0] == 1797
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert set(data.y_test.tolist()) == {0, 1}
    assert abs(data.y_train.float().mean().item() - 0.5) < 0.05
    with pytest.raises(ValueError, match="threshold must be in 1..9"):
        load_digits_binary(threshold=0)


def test_digits_classes_split_matches_the_binary_split():
    ten, binary = load_digits_classes(seed=0), load_digits_binary(seed=0)
    assert ten.name == "digits-10" and ten.class_names == tuple("0123456789")
    assert torch.equal(ten.x_test, binary.x_test) and torch.equal((ten.y_test >= 5).long(), binary.y_test)
    assert sorted(ten.y_train.unique().tolist()) == list(range(10))
    with pytest.raises(ValueError, match="test_fraction must be in"):
        load_digits_classes(test_fraction=1.0)


def test_celeba_loader_reads_a_local_folder(tmp_path):
    """The CelebA loader on a tiny folder in CelebA's layout (never downloads)."""
    from PIL import Image

    images = tmp_path / "img_align_celeba"
    images.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(10):
        name = f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)).save(images / name)
        rows.append(f"{name} -1 {'1' if i % 2 else '-1'}")  # Smiling, Male
    (tmp_path / "list_attr_celeba.txt").write_text("10\nSmiling Male\n" + "\n".join(rows) + "\n")
    data = load_celeba_gender(tmp_path, image_size=16, test_fraction=0.2)
    assert data.x_train.shape == (8, 3, 16, 16) and data.x_test.shape == (2, 3, 16, 16)
    assert data.y_train.sum() + data.y_test.sum() == 5
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_celeba_gender(tmp_path / "missing")
