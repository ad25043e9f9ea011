"""Threshold-aware white-box attacks on the GMM classifier (thesis 004 §4.8.5-4.8.6).

The complete white-box attacks know the encoder, the decoder and both thresholds:
Eq. 4.9 on the test images towards the other class, once restricted to the
Table 1 patch and once unconstrained (only its ||eta||^2 penalty limits the
change, as in the thesis), and Eq. 4.10 fooling images from uniform noise
(``--fooling-per-class`` per class). Success means "classified as the target and
not rejected", the thesis' criterion. Writes ``gmm_whitebox.png`` (attacked and
fooling images with their reconstructions g(f(x)), as the thesis' Fig. 4.4).
"""

from __future__ import annotations

import argparse
import time

import torch

from manifold_ext.attacks import fooling_attack, threshold_aware_attack
from manifold_ext.demos.attack._shared import (
    KNN_NEIGHBOURS,
    accuracy_percent,
    mean4,
    percent,
    percent_table_lines,
    pixel_knn,
)
from manifold_ext.demos.common import pyplot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-whitebox",
        action="store_true",
        help="skip the threshold-aware white-box attacks on the GMM classifier (Eq. 4.9, 4.10)",
    )
    parser.add_argument(
        "--whitebox-steps",
        type=int,
        default=None,
        help="Adam steps of the Eq. 4.9 / 4.10 attacks (default 500, quick 200)",
    )
    parser.add_argument(
        "--whitebox-lr",
        type=float,
        default=None,
        help="Adam step size of the Eq. 4.9 / 4.10 attacks (default 0.01, quick 0.02)",
    )
    parser.add_argument(
        "--whitebox-exponents",
        type=float,
        nargs=2,
        default=(2.0, 2.0),
        metavar=("A", "B"),
        help="exponents a, b (> 1) of Eq. 4.9 / 4.10 (default 2 2)",
    )
    parser.add_argument(
        "--fooling-per-class",
        type=int,
        default=None,
        help="Eq. 4.10 fooling images per target class, from uniform noise (default 100, quick 50)",
    )


WHITEBOX_SETS = (
    ("eq49_patch", "Eq. 4.9, patch"),
    ("eq49_unconstrained", "Eq. 4.9, unconstrained"),
    ("eq410_fooling", "Eq. 4.10, fooling"),
)
WHITEBOX_ROWS = (
    ("success", "attack success: target, not rejected"),
    ("rejected", "rejected by tau_enc / tau_dec (§4.6)"),
    ("correct", "still correctly classified"),
    ("fooled_encoder", "nearest centre = target (rejected or not)"),
    ("defence_success", "with reclassification (§4.7): success"),
    ("defence_rejected", "with reclassification (§4.7): rejected"),
    ("defence_correct", "with reclassification (§4.7): correct"),
    ("reclassify_all_success", "reclassifying every image (Eq. 4.8): success"),
    ("reclassify_all_rejected", "reclassifying every image (Eq. 4.8): rejected"),
    ("reclassify_all_correct", "reclassifying every image (Eq. 4.8): correct"),
    ("knn_agrees_of_success", "5-NN in pixels agrees with the true class / target, of the successes"),
)


def whitebox_table_markdown(table: dict) -> str:
    rows = percent_table_lines("GMM classifier, white box (%)", WHITEBOX_SETS, WHITEBOX_ROWS, table)
    rows.append(
        "| mean ‖η‖₂ (distance moved) | "
        + " | ".join(f"{table[name]['mean_eta_l2']:.3f}" for name, _ in WHITEBOX_SETS)
        + " |"
    )
    return "\n".join(rows)


def _whitebox_row(model, result, truth, defence, every, knn_label, knn_distance) -> dict:
    """The outcome categories of one white-box set, in percent of its images.

    Without defence every image is exactly one of: success (target, not rejected),
    rejected, correct (true class, not rejected; None for fooling images, which have
    no true class) or other (another class, not rejected)."""
    target, label, rejected = result.target, result.label, result.rejected
    success = result.success
    row = {
        "success": percent(success),
        "rejected": percent(rejected),
        "rejected_latent": percent(rejected & (result.mahalanobis2 > model.tau_enc)),
        "rejected_recon": percent(rejected & (result.recon_error > model.tau_dec)),
        "correct": None if truth is None else percent((label == truth) & ~rejected),
        "other": percent(~rejected & (label != target) & (True if truth is None else (label != truth))),
        "fooled_encoder": percent(result.fooled),
        "defence_success": percent((defence["label"] == target) & ~defence["rejected"]),
        "defence_rejected": percent(defence["rejected"]),
        "defence_correct": None if truth is None else percent((defence["label"] == truth) & ~defence["rejected"]),
        "reclassify_all_success": percent((every["label"] == target) & ~every["rejected"]),
        "reclassify_all_rejected": percent(every["rejected"]),
        "reclassify_all_correct": None if truth is None else percent((every["label"] == truth) & ~every["rejected"]),
        # of the successful images: does a pixel-space 5-NN still see the true class (adversarial
        # examples) / already see the target (fooling images that became target-class digits)?
        "knn_agrees_of_success": percent((knn_label == (target if truth is None else truth))[success]),
        "mean_eta_l2": round(result.eta_l2.mean().item(), 4),
        "mean_eta_linf": round(result.eta_linf.mean().item(), 4),
        "mean_recon_term": mean4(result.recon_term),
        "mean_latent_term": mean4(result.latent_term),
        "mean_objective_start": mean4(result.objective_start),
        "mean_objective_end": mean4(result.objective),
        "mean_nearest_train_distance": mean4(knn_distance),
    }
    return row


def run_gmm_whitebox(args, model, split, x_test, y_test, mask, figures) -> dict:
    """Eq. 4.9 (patch and unconstrained) towards the other class and Eq. 4.10 fooling images."""
    timings = {}
    steps = args.whitebox_steps or (200 if args.quick else 500)
    lr = args.whitebox_lr or (0.02 if args.quick else 0.01)
    a, b = args.whitebox_exponents
    per_class = args.fooling_per_class or (50 if args.quick else 100)
    device = x_test.device
    train_x, train_y = split.x_train.to(device), split.y_train.to(device)
    other_class = (1 - y_test) if model.num_classes == 2 else (y_test + 1) % model.num_classes
    results = {}
    for name, patch in (("eq49_patch", mask), ("eq49_unconstrained", None)):
        start = time.perf_counter()
        results[name] = threshold_aware_attack(model, x_test, other_class, a=a, b=b, steps=steps, lr=lr, mask=patch)
        timings[f"{name}_s"] = time.perf_counter() - start
    start = time.perf_counter()
    fooling_target = torch.arange(model.num_classes, device=device).repeat_interleave(per_class)
    results["eq410_fooling"] = fooling_attack(model, fooling_target, seed=args.seed, a=a, b=b, steps=steps, lr=lr)
    timings["eq410_fooling_s"] = time.perf_counter() - start

    table = {}
    for name, result in results.items():
        truth = None if name == "eq410_fooling" else y_test
        start = time.perf_counter()
        defence = model.predict_with_defence(
            result.x, steps=args.reclassify_steps, lr=args.reclassify_lr, progress=False
        )
        every = model.predict_with_defence(
            result.x, reclassify_all=True, steps=args.reclassify_steps, lr=args.reclassify_lr, progress=False
        )
        timings[f"defend_{name}_s"] = time.perf_counter() - start
        knn_label, knn_distance = pixel_knn(train_x, train_y, result.x)
        table[name] = _whitebox_row(model, result, truth, defence, every, knn_label, knn_distance)
    clean_knn, clean_distance = pixel_knn(train_x, train_y, x_test)
    # what reclassifying every image costs on clean images (the same setting as the reclassify_all_* rows)
    clean_every = model.predict_with_defence(
        x_test, reclassify_all=True, steps=args.reclassify_steps, lr=args.reclassify_lr, progress=False
    )

    figures["gmm_whitebox"] = str(args.out / "gmm_whitebox.png")
    _whitebox_figure(
        figures["gmm_whitebox"], model, x_test, y_test, results, split.class_names, min(args.examples, x_test.shape[0])
    )
    return {
        "settings": {
            "optimiser": "projected Adam from eta = 0 (Eq. 4.9) / from U(0, 1) noise (Eq. 4.10)",
            "steps": steps,
            "lr": lr,
            "a": a,
            "b": b,
            "fooling_per_class": per_class,
            "target": "the other class",
            "patch": "the same patch as Patch-PGD / Patch-NAG",
            "latent_term": "Mahalanobis distance with the inverse covariance (precision) of the target "
            "class, as thresholded by tau_enc (the thesis' Sigma_t read as Sigma_t^-1)",
            "defence_steps": args.reclassify_steps,
            "defence_lr": args.reclassify_lr,
        },
        "percent": table,
        "table_markdown": whitebox_table_markdown(table),
        "reference": {
            "knn_neighbours": KNN_NEIGHBOURS,
            "knn_clean_accuracy_percent": accuracy_percent(clean_knn, y_test),
            "reclassify_all_clean_correct_percent": percent(
                (clean_every["label"] == y_test) & ~clean_every["rejected"]
            ),
            "reclassify_all_clean_rejected_percent": percent(clean_every["rejected"]),
            "mean_nearest_train_distance_clean": mean4(clean_distance),
            "mean_distance_to_nearest_other_class_train_image": mean4(
                torch.cdist(x_test.flatten(1), train_x.flatten(1))
                .masked_fill(train_y[None] == y_test[:, None], float("inf"))
                .min(1)
                .values
            ),
        },
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }


def _whitebox_figure(path, model, clean, labels, results, class_names, n):
    """Thesis Fig. 4.4: the images each white-box attack converged to and their reconstructions g(f(x))."""
    plt = pyplot()
    fooling = results["eq410_fooling"]
    # fooling images: the first n, alternating the target classes
    per_class = [torch.nonzero(fooling.target == c).flatten() for c in range(model.num_classes)]
    order = torch.stack([p[: (n + model.num_classes - 1) // model.num_classes] for p in per_class], 1).flatten()[:n]
    panels = [("clean", clean[:n], labels[:n], None, None)]
    for name, title in (("eq49_patch", "Eq. 4.9 patch"), ("eq49_unconstrained", "Eq. 4.9")):
        panels.append((title, results[name].x[:n], labels[:n], results[name].target[:n], True))
    panels.append(("uniform noise", fooling.start[order], None, None, None))
    panels.append(("Eq. 4.10 fooling", fooling.x[order], None, fooling.target[order], True))
    rows = []
    for title, images, truth, target, with_recon in panels:
        with torch.no_grad():
            verdict = model.predict(images)
            recon = model.decode_mean(model.encode(images))
        rows.append((title, images, verdict, truth, target))
        if with_recon or title == "clean":
            rows.append(("g(f(x))", recon, None, None, None))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.45 * len(rows) + 0.6), squeeze=False)
    for r, (title, images, verdict, truth, target) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c].permute(1, 2, 0).squeeze(-1).clamp(0, 1).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if verdict is not None and (truth is not None or target is not None):
                label, rejected = int(verdict["label"][c]), bool(verdict["rejected"][c])
                text = class_names[label] + (" (rej.)" if rejected else "")
                if target is not None:
                    text = f"{text} / t={class_names[int(target[c])]}"
                broken = target is not None and label == int(target[c]) and not rejected
                ax.set_title(text, fontsize=5.5, color="red" if broken else ("green" if not rejected else "orange"))
        axes[r, 0].set_ylabel(title, fontsize=7)
    fig.suptitle(
        "GMM classifier, threshold-aware white-box attacks (thesis 004 Fig. 4.4): images and g(f(x)); "
        "red: attack succeeded, orange: rejected, green: correct / not fooled",
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
