"""GMM classifier of thesis 004 ch. 4 under the Table 1 patch attacks: rejection (§4.6) and reclassification (§4.7).

The same binary task, attack settings and test images as the VAE-classifier
experiment (``table1``), with its own patch (``--gmm-patch``, default a 3x3
corner patch off the digit): ``GMMClassifier`` (one fixed latent centre per class, Eq. 4.6) is attacked with
Patch-PGD / Patch-NAG, white-box on the classifier (cross-entropy on the scores
-1/2 ||f(x) - mu_c||^2), and defended as in §4.6-4.7: rejection by the tau_enc /
tau_dec thresholds, then reclassification of the rejected images by decoder
inversion from every class centre (Eq. 4.8). Writes ``gmm_defence.png`` and
``gmm_examples.png``.
"""

from __future__ import annotations

import argparse
import time

import torch

from manifold_ext.attacks import patch_nag, patch_pgd
from manifold_ext.demos.attack._shared import accuracy_percent, percent, percent_table_lines
from manifold_ext.demos.common import pyplot, seed_everything
from manifold_ext.vae.rae import GMMClassifier, train_autoencoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-gmm",
        action="store_true",
        help="skip the GMM-classifier sections (thesis 004 ch. 4: patch attacks with rejection and "
        "reclassification, the white-box attacks, and Table 4.1 / Fig. 4.3)",
    )
    parser.add_argument(
        "--gmm-train-steps", type=int, default=None, help="GMM classifier training steps (default 3000, quick 600)"
    )
    parser.add_argument(
        "--gmm-latent-dim",
        type=int,
        default=2,
        help="GMM classifier latent size (default 2 = the number of classes, as the thesis)",
    )
    parser.add_argument(
        "--gmm-patch",
        type=int,
        nargs=4,
        metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"),
        default=(0, 0, 3, 3),
        help="patch of the GMM-classifier sections (default 0 0 3 3: 9 pixels in the corner, off "
        "the digit, the setting these sections were built and tested with)",
    )
    parser.add_argument("--reclassify-steps", type=int, default=300, help="Adam steps of Eq. 4.8 (default 300)")
    parser.add_argument("--reclassify-lr", type=float, default=0.05, help="Adam step size of Eq. 4.8 (default 0.05)")


GMM_SETS = (("clean", "Clean"), ("patch_pgd", "Patch-PGD"), ("patch_nag", "Patch-NAG"))
GMM_ROWS = (
    ("accuracy", "accuracy, no defence"),
    ("rejected", "rejected by tau_enc / tau_dec (§4.6)"),
    ("accuracy_reclassified", "accuracy after reclassification (§4.7, all labelled)"),
    ("accuracy_reclassified_of_rejected", "  of which: accuracy on the rejected ones"),
    ("final_accuracy", "with fooling rejection: accuracy"),
    ("final_error", "with fooling rejection: error"),
    ("final_rejected", "with fooling rejection: rejected"),
)


def gmm_table_markdown(table: dict) -> str:
    return "\n".join(percent_table_lines("GMM classifier (%)", GMM_SETS, GMM_ROWS, table))


def run_gmm_patch(
    args, split, x_test, y_test, mask, attack_step, attack_steps, device, figures
) -> tuple[dict, GMMClassifier]:
    """Train a GMMClassifier, attack it (white box on the classifier), defend it (§4.6-4.7)."""
    timings = {}
    seed_everything(args.seed)
    train_steps = args.gmm_train_steps or (600 if args.quick else 3000)
    start = time.perf_counter()
    model = GMMClassifier(split.image_shape, 2, latent_dim=args.gmm_latent_dim, net="mlp", hidden=16).to(device)
    losses = train_autoencoder(
        model, split.x_train, split.y_train, steps=train_steps, device=device, desc="training the GMM classifier"
    )
    thresholds = model.calibrate(split.x_train.to(device), split.y_train.to(device))
    timings["train_s"] = time.perf_counter() - start

    # White box on the classifier: the attack maximises the cross-entropy of the
    # nearest-centre scores -1/2 ||f(x) - mu_c||^2; it does not see the thresholds.
    attacked = {"clean": x_test}
    for name, attack in (("patch_pgd", patch_pgd), ("patch_nag", patch_nag)):
        start = time.perf_counter()
        attacked[name] = attack(
            model.logits, x_test, y_test, mask, step=attack_step, steps=attack_steps, seed=args.seed
        )
        timings[f"{name}_s"] = time.perf_counter() - start

    table, defended = {}, {}
    for name, images in attacked.items():
        start = time.perf_counter()
        first = model.predict(images)
        out = model.predict_with_defence(
            images, reject_fooling=True, steps=args.reclassify_steps, lr=args.reclassify_lr
        )
        timings[f"defend_{name}_s"] = time.perf_counter() - start
        defended[name] = out
        correct = out["label"] == y_test
        flagged = out["rejected_initially"]
        table[name] = {
            "accuracy": accuracy_percent(first["label"], y_test),
            "rejected": percent(flagged),
            "rejected_latent": percent(first["rejected_latent"]),
            "rejected_recon": percent(first["rejected_recon"]),
            "accuracy_reclassified": percent(correct),
            "accuracy_reclassified_of_rejected": percent(correct[flagged]),
            "final_accuracy": percent(correct & ~out["rejected"]),
            "final_error": percent(~correct & ~out["rejected"]),
            "final_rejected": percent(out["rejected"]),
        }

    # §4.7's multi-start, measured: Eq. 4.8 on every image from one centre vs from all of them
    start = time.perf_counter()
    multi_start = {}
    for name in ("clean", "patch_pgd"):
        runs = {f"start_{c}": model.centres[c : c + 1] for c in range(model.num_classes)}
        runs["all_centres"] = model.centres
        multi_start[name] = {
            run: accuracy_percent(
                model.reclassify(
                    attacked[name],
                    steps=args.reclassify_steps,
                    lr=args.reclassify_lr,
                    reject=False,
                    starts=starts,
                    progress=False,
                )["label"],
                y_test,
            )
            for run, starts in runs.items()
        }
    timings["multi_start_ablation_s"] = time.perf_counter() - start

    figures["gmm_defence"] = str(args.out / "gmm_defence.png")
    _gmm_bars_figure(figures["gmm_defence"], table)
    figures["gmm_examples"] = str(args.out / "gmm_examples.png")
    _gmm_examples_figure(
        figures["gmm_examples"],
        model,
        x_test,
        attacked["patch_pgd"],
        y_test,
        split.class_names,
        min(args.examples, x_test.shape[0]),
        args,
    )
    return {
        "model": {
            "latent_dim": model.latent_dim,
            "centres": model.centres.tolist(),
            "noise_std": model.noise_std,
            "alpha": model.alpha,
            "net": "mlp (256, 128)",
            "likelihood": model.likelihood,
            "train_steps": train_steps,
            "final_loss": round(sum(losses[-50:]) / min(50, len(losses)), 3),
        },
        "thresholds": {
            "quantile": 0.997,
            "tau_enc": round(thresholds["tau_enc"], 3),
            "tau_dec": round(thresholds["tau_dec"], 3),
        },
        "attack": "white box on the classifier: Patch-PGD / Patch-NAG maximising the cross-entropy of the "
        "scores -1/2 ||f(x) - mu_c||^2 (same patch, steps and step size as above); thresholds unseen",
        "reclassification": {
            "steps": args.reclassify_steps,
            "lr": args.reclassify_lr,
            "starts": "all class centres (Eq. 4.8, multi-start)",
            "applied_to": "images rejected by tau_enc / tau_dec",
        },
        "percent": table,
        "table_markdown": gmm_table_markdown(table),
        "reclassify_every_image_accuracy_percent": multi_start,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }, model


def _gmm_bars_figure(path, table):
    plt = pyplot()
    keys = [
        ("accuracy", "accuracy, no defence", "tab:red"),
        ("rejected", "rejected (§4.6)", "tab:orange"),
        ("accuracy_reclassified", "accuracy after reclassification (§4.7)", "tab:green"),
        ("final_accuracy", "accuracy with fooling rejection", "tab:blue"),
    ]
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    width = 0.8 / len(keys)
    for i, (key, label, colour) in enumerate(keys):
        positions = [p + (i - (len(keys) - 1) / 2) * width for p in range(len(GMM_SETS))]
        values = [table[name][key] for name, _ in GMM_SETS]
        ax.bar(positions, values, width=width, label=label, color=colour)
        for p, v in zip(positions, values):
            ax.text(p, v + 1, f"{v:.0f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(GMM_SETS)), [title for _, title in GMM_SETS])
    ax.set_ylim(0, 115)
    ax.set_ylabel("% of test images")
    ax.set_title("GMM classifier (thesis 004 ch. 4): patch attacks, rejection and reclassification", fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gmm_examples_figure(path, model, clean, attacked, labels, class_names, n, args):
    """Clean and Patch-PGD inputs, the encoder's reconstruction g(f(x)) of each, and the
    reconstruction g(z*) found by reclassification (Eq. 4.8)."""
    plt = pyplot()
    clean, attacked, labels = clean[:n], attacked[:n], labels[:n]
    with torch.no_grad():
        clean_scores, attacked_scores = model.predict(clean), model.predict(attacked)
        clean_recon = model.decode_mean(model.encode(clean))
        attacked_recon = model.decode_mean(model.encode(attacked))
    inverted = model.reclassify(
        attacked, steps=args.reclassify_steps, lr=args.reclassify_lr, reject=False, progress=False
    )
    with torch.no_grad():
        inverted_recon = model.decode_mean(inverted["z"])
    # (row name, images, scores to title the row with, whether the scores carry a rejection)
    rows = [
        ("clean", clean, clean_scores, True),
        ("g(f(clean))", clean_recon, None, False),
        ("Patch-PGD", attacked, attacked_scores, True),
        ("g(f(attacked))", attacked_recon, None, False),
        ("g(z*), Eq. 4.8", inverted_recon, inverted, False),
    ]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.55 * len(rows) + 0.5), squeeze=False)
    for r, (name, images, scores, rejection) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c].permute(1, 2, 0).squeeze(-1).clamp(0, 1).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if scores is not None:
                label = int(scores["label"][c])
                text = class_names[label] + (" (rejected)" if rejection and bool(scores["rejected"][c]) else "")
                ax.set_title(text, fontsize=6, color="green" if label == int(labels[c]) else "red")
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.suptitle(
        "GMM classifier: predictions (green: correct, red: wrong), reconstructions, and reclassification", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
