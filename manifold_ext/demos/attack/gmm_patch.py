"""Table 1 of paper 000 (§3.2): patch attacks collapse a VAE-classifier, ELBO purification restores it.

A VAE-classifier (Eq. 21) is trained on a binary task, attacked with Patch-PGD
and Patch-NAG restricted to a small rectangle of pixels (paper: a 16x32
forehead patch on CelebA gender, step 1/255, 2,048 iterations), and every
test set (clean, Patch-PGD, Patch-NAG) is purified by 256 steps of ELBO
ascent over the input with the same step size (Eq. 22, budget removed). The
default data ship with scikit-learn: its 8x8 digits as "digit < 5" vs
"digit >= 5", with a 3x3 patch in the top-left corner. ``--data celeba
--celeba-root DIR`` runs the CelebA gender task from a local copy instead
(nothing is downloaded).

Writes ``table1.png`` (accuracies), ``examples_patch_pgd.png`` and
``examples_patch_nag.png`` (clean / attacked / purified images with their
reconstructions and predictions, as in the paper's Fig. 10) and
``summary.json``.

A second section (skip it with ``--no-gmm``) runs the same patch attacks
against the GMM classifier of thesis 004 ch. 4 (``GMMClassifier``: one fixed
latent centre per class, Eq. 4.6) on the same task and patch, white-box on the
classifier (cross-entropy on the scores -1/2 ||f(x) - mu_c||^2), and defends it
as in §4.6-4.7: rejection by the tau_enc / tau_dec thresholds, then
reclassification of the rejected images by decoder inversion from every class
centre (Eq. 4.8). Writes ``gmm_defence.png`` and ``gmm_examples.png``.

That section then runs the complete white-box attacks of §4.8.5-4.8.6, which
know the encoder, the decoder and both thresholds (skip them with
``--no-whitebox``): Eq. 4.9 on the same test images towards the other class,
once restricted to the same patch and once unconstrained (only its ||eta||^2
penalty limits the change, as in the thesis), and Eq. 4.10 fooling images from
uniform noise (``--fooling-per-class`` per class). Success means "classified as
the target and not rejected", the thesis' criterion. Writes
``gmm_whitebox.png`` (attacked and fooling images with their reconstructions
g(f(x)), as the thesis' Fig. 4.4).
"""
from __future__ import annotations

import argparse
import time

import torch

from manifold_ext.attacks import fooling_attack, patch_mask, patch_nag, patch_pgd, purify, threshold_aware_attack
from manifold_ext.datasets import load_celeba_gender, load_digits_binary
from manifold_ext.demos.common import add_common_arguments, pyplot, seed_everything, write_json
from manifold_ext.vae import VAEClassifier, train_vae_classifier
from manifold_ext.vae.rae import GMMClassifier, train_autoencoder

NAME = "attack"
DESCRIPTION = ("Table 1: Patch-PGD / Patch-NAG on a VAE-classifier and ELBO test-time purification; "
               "GMM classifier with rejection and reclassification (thesis 004 ch. 4)")

PAPER_TABLE1 = {  # CelebA gender, ResNet-50 VAE-classifier (paper 000, Table 1)
    "clean": 97.86, "patch_pgd": 13.14, "patch_nag": 6.83,
    "purified_clean": 91.20, "purified_patch_pgd": 75.75, "purified_patch_nag": 76.75,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, NAME)
    parser.add_argument("--data", choices=("digits", "celeba"), default="digits",
                        help="digits: scikit-learn's 8x8 digits, <5 vs >=5 (ships); celeba: gender from --celeba-root")
    parser.add_argument("--celeba-root", default=None,
                        help="local CelebA folder with img_align_celeba/ and list_attr_celeba.txt (for --data celeba)")
    parser.add_argument("--image-size", type=int, default=32, help="CelebA images are resized to this (default 32)")
    parser.add_argument("--patch", type=int, nargs=4, metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"), default=None,
                        help="patch rectangle in pixels (default: digits 0 0 3 3; celeba a forehead band)")
    parser.add_argument("--train-steps", type=int, default=None, help="VAE-classifier training steps (default 3000, quick 600)")
    parser.add_argument("--lam", type=float, default=20.0, help="lambda of Eq. 21 (weight of the classification loss)")
    parser.add_argument("--latent-dim", type=int, default=8, help="latent dimension of the VAE (default 8)")
    parser.add_argument("--attack-steps", type=int, default=None, help="patch attack iterations (default 2048, quick 256)")
    parser.add_argument("--attack-step", type=float, default=1 / 255, help="patch attack step size (default 1/255)")
    parser.add_argument("--purify-steps", type=int, default=None, help="ELBO ascent iterations (default 256, quick 128)")
    parser.add_argument("--purify-step", type=float, default=1 / 255, help="ELBO ascent step size (default 1/255)")
    parser.add_argument("--purify-rule", choices=("scaled", "sign"), default="scaled",
                        help="ELBO ascent step rule (default scaled: the gradient, largest pixel move = step)")
    parser.add_argument("--no-ablation", action="store_true",
                        help="skip the purification with the other step rule (run by default, not with --quick)")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="evaluate on the first N test images (default: all 540 digits; quick 200)")
    parser.add_argument("--examples", type=int, default=8, help="images shown in the example figures")
    parser.add_argument("--no-gmm", action="store_true",
                        help="skip the GMM-classifier section (thesis 004 ch. 4: rejection + reclassification)")
    parser.add_argument("--gmm-train-steps", type=int, default=None,
                        help="GMM classifier training steps (default 3000, quick 600)")
    parser.add_argument("--gmm-latent-dim", type=int, default=2,
                        help="GMM classifier latent size (default 2 = the number of classes, as the thesis)")
    parser.add_argument("--reclassify-steps", type=int, default=300, help="Adam steps of Eq. 4.8 (default 300)")
    parser.add_argument("--reclassify-lr", type=float, default=0.05, help="Adam step size of Eq. 4.8 (default 0.05)")
    parser.add_argument("--no-whitebox", action="store_true",
                        help="skip the threshold-aware white-box attacks on the GMM classifier (Eq. 4.9, 4.10)")
    parser.add_argument("--whitebox-steps", type=int, default=None,
                        help="Adam steps of the Eq. 4.9 / 4.10 attacks (default 500, quick 200)")
    parser.add_argument("--whitebox-lr", type=float, default=None,
                        help="Adam step size of the Eq. 4.9 / 4.10 attacks (default 0.01, quick 0.02)")
    parser.add_argument("--whitebox-exponents", type=float, nargs=2, default=(2.0, 2.0), metavar=("A", "B"),
                        help="exponents a, b (> 1) of Eq. 4.9 / 4.10 (default 2 2)")
    parser.add_argument("--fooling-per-class", type=int, default=None,
                        help="Eq. 4.10 fooling images per target class, from uniform noise (default 100, quick 50)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 on CPU: the models are tiny and one thread is fastest)")


def _load(args: argparse.Namespace):
    if args.data == "celeba":
        if not args.celeba_root:
            raise SystemExit("--data celeba needs --celeba-root pointing at a local CelebA copy (nothing is downloaded)")
        return load_celeba_gender(args.celeba_root, image_size=args.image_size, seed=args.seed)
    return load_digits_binary(seed=args.seed)


def _default_patch(data: str, size: int) -> tuple[int, int, int, int]:
    if data == "digits":
        return (0, 0, 3, 3)
    # CelebA (aligned, centre-cropped): a band on the forehead, the paper's 16x32 patch at 178-pixel scale
    height, width = max(1, round(size * 16 / 178)), max(1, round(size * 32 / 178))
    return (round(size * 0.18), (size - width) // 2, height, width)


def _model_for(split, args) -> VAEClassifier:
    if split.name == "digits-binary":
        return VAEClassifier(split.image_shape, num_classes=2, latent_dim=args.latent_dim, hidden=(256, 128))
    return VAEClassifier(split.image_shape, num_classes=2, latent_dim=max(args.latent_dim, 32), hidden=(1024, 512),
                         classifier_hidden=128)


def _accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100.0 * (predictions == labels).float().mean().item(), 2)


def _examples_figure(path, title, model, clean, attacked, purified, labels, class_names, n):
    plt = pyplot()
    rows = [("clean", clean), ("attacked", attacked), ("purified", purified)]
    fig, axes = plt.subplots(6, n, figsize=(1.3 * n, 9.2), squeeze=False)
    for r, (name, images) in enumerate(rows):
        images = images[:n]
        with torch.no_grad():
            predictions = model(images).argmax(1)
            reconstructions = model.reconstruct(images)
        for c in range(n):
            for k, picture in enumerate((images[c], reconstructions[c])):
                ax = axes[2 * r + k, c]
                picture = picture.permute(1, 2, 0).squeeze(-1).clamp(0, 1).cpu().numpy()
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    correct = bool(predictions[c] == labels[c])
                    ax.set_title(class_names[int(predictions[c])], fontsize=7, color="green" if correct else "red")
            axes[2 * r, 0].set_ylabel(f"{name}\ninput", fontsize=8)
            axes[2 * r + 1, 0].set_ylabel("reconstr.", fontsize=8)
    fig.suptitle(f"{title}: inputs, reconstructions and predictions (green: correct, red: wrong)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table_figure(path, table, dataset):
    plt = pyplot()
    names = ["clean", "patch_pgd", "patch_nag"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, (title, ours) in zip(axes, (("this run: " + dataset, table), ("paper (CelebA gender)", PAPER_TABLE1))):
        before = [ours[n] for n in names]
        after = [ours["purified_" + n] for n in names]
        positions = range(len(names))
        ax.bar([p - 0.2 for p in positions], before, width=0.4, label="VAE-CLF", color="tab:red")
        ax.bar([p + 0.2 for p in positions], after, width=0.4, label="+TTD (ELBO)", color="tab:green")
        for p, (b, a) in enumerate(zip(before, after)):
            ax.text(p - 0.2, b + 1, f"{b:.1f}", ha="center", fontsize=8)
            ax.text(p + 0.2, a + 1, f"{a:.1f}", ha="center", fontsize=8)
        ax.set_xticks(list(positions), ["Clean", "Patch-PGD", "Patch-NAG"])
        ax.set_ylim(0, 110)
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_markdown(table: dict) -> str:
    head = "| | Clean | Patch-PGD | Patch-NAG | Clean +TTD | Patch-PGD +TTD | Patch-NAG +TTD |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    keys = ["clean", "patch_pgd", "patch_nag", "purified_clean", "purified_patch_pgd", "purified_patch_nag"]
    ours = "| this run | " + " | ".join(f"{table[k]:.2f}" for k in keys) + " |"
    paper = "| paper (CelebA gender) | " + " | ".join(f"{PAPER_TABLE1[k]:.2f}" for k in keys) + " |"
    return "\n".join([head, rule, ours, paper])


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    seed_everything(args.seed)
    train_steps = args.train_steps or (600 if args.quick else 3000)
    attack_steps = args.attack_steps or (256 if args.quick else 2048)
    purify_steps = args.purify_steps or (128 if args.quick else 256)
    # --quick takes bigger steps so the shorter runs still cover the pixel range
    attack_step = args.attack_step * (2048 / attack_steps if args.quick and args.attack_steps is None else 1)
    purify_step = args.purify_step * (256 / purify_steps if args.quick and args.purify_steps is None else 1)
    test_limit = args.test_limit or (200 if args.quick else None)

    split = _load(args)
    x_test, y_test = split.x_test[:test_limit].to(device), split.y_test[:test_limit].to(device)
    top, left, height, width = args.patch or _default_patch(args.data, split.image_shape[-1])
    mask = patch_mask(split.image_shape[-2:], top, left, height, width, device=device)

    timings = {}
    start = time.perf_counter()
    model = _model_for(split, args).to(device)
    history = train_vae_classifier(model, split.x_train, split.y_train, steps=train_steps, lam=args.lam,
                                   seed=args.seed)
    timings["train_s"] = time.perf_counter() - start

    attacked = {"clean": x_test}
    for name, attack in (("patch_pgd", patch_pgd), ("patch_nag", patch_nag)):
        start = time.perf_counter()
        attacked[name] = attack(model, x_test, y_test, mask, step=attack_step, steps=attack_steps, seed=args.seed)
        timings[f"{name}_s"] = time.perf_counter() - start

    table, purified, elbo, ablation = {}, {}, {}, {}
    other_rule = "sign" if args.purify_rule == "scaled" else "scaled"
    for name, images in attacked.items():
        with torch.no_grad():
            table[name] = _accuracy(model(images).argmax(1), y_test)
        start = time.perf_counter()
        result = purify(model, images, steps=purify_steps, step=purify_step, rule=args.purify_rule, seed=args.seed)
        timings[f"purify_{name}_s"] = time.perf_counter() - start
        purified[name] = result.x
        table[f"purified_{name}"] = _accuracy(result.predictions, y_test)
        elbo[name] = {"before": round(result.elbo_start.mean().item(), 2), "after": round(result.elbo_end.mean().item(), 2)}
        if not (args.quick or args.no_ablation):
            other = purify(model, images, steps=purify_steps, step=purify_step, rule=other_rule, seed=args.seed)
            ablation[f"purified_{name}"] = _accuracy(other.predictions, y_test)

    args.out.mkdir(parents=True, exist_ok=True)
    figures = {"table": str(args.out / "table1.png")}
    _table_figure(figures["table"], table, split.name)
    n = min(args.examples, x_test.shape[0])
    for name, title in (("patch_pgd", "Patch-PGD"), ("patch_nag", "Patch-NAG")):
        figures[name] = str(args.out / f"examples_{name}.png")
        _examples_figure(figures[name], title, model, x_test, attacked[name], purified[name], y_test,
                         split.class_names, n)

    summary = {
        "demo": NAME,
        "dataset": split.name,
        "device": str(device),
        "test_images": int(x_test.shape[0]),
        "patch": {"top": top, "left": left, "height": height, "width": width,
                  "pixels": height * width, "image_pixels": split.image_shape[-1] * split.image_shape[-2]},
        "settings": {"train_steps": train_steps, "lambda": args.lam, "latent_dim": model.latent_dim,
                     "attack_steps": attack_steps, "attack_step": attack_step,
                     "purify_steps": purify_steps, "purify_step": purify_step, "purify_rule": args.purify_rule,
                     "seed": args.seed},
        "accuracy_percent": table,
        f"accuracy_percent_purify_rule_{other_rule}": ablation or None,
        "paper_table1_percent": PAPER_TABLE1,
        "table_markdown": table_markdown(table),
        "mean_elbo_nats": elbo,
        "final_training": {"elbo": round(sum(history.elbo[-50:]) / min(50, len(history.elbo)), 2),
                           "cross_entropy": round(sum(history.ce[-50:]) / min(50, len(history.ce)), 4)},
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "figures": figures,
    }
    if not args.no_gmm:
        if split.name != "digits-binary":
            summary["gmm_classifier"] = {"skipped": "the GMM-classifier section runs on the 8x8 digits only"}
        else:
            summary["gmm_classifier"] = _gmm_defence(args, split, x_test, y_test, mask, attack_step, attack_steps,
                                                     device, figures)
    write_json(args.out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------
# GMM classifier with rejection and reclassification (thesis 004 ch. 4)
# ---------------------------------------------------------------------------
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


def _percent(flags: torch.Tensor) -> float | None:
    """Share of True in percent; None for an empty selection (e.g. no clean image rejected)."""
    return round(100.0 * flags.float().mean().item(), 2) if flags.numel() else None


def _percent_table_lines(title: str, sets, rows, table: dict) -> list[str]:
    """Markdown lines of a table with one column per (name, title) in ``sets`` and one row per
    (key, label) in ``rows``; cells are ``table[name][key]`` percentages (None prints as a dash)."""
    def cell(value):
        return "–" if value is None else f"{value:.2f}"

    head = f"| {title} | " + " | ".join(column for _, column in sets) + " |"
    rule = "|---|" + "---:|" * len(sets)
    body = [f"| {label} | " + " | ".join(cell(table[name][key]) for name, _ in sets) + " |" for key, label in rows]
    return [head, rule, *body]


def gmm_table_markdown(table: dict) -> str:
    return "\n".join(_percent_table_lines("GMM classifier (%)", GMM_SETS, GMM_ROWS, table))


def _gmm_defence(args, split, x_test, y_test, mask, attack_step, attack_steps, device, figures) -> dict:
    """Train a GMMClassifier, attack it (white box on the classifier), defend it (§4.6-4.7)."""
    timings = {}
    seed_everything(args.seed)
    train_steps = args.gmm_train_steps or (600 if args.quick else 3000)
    start = time.perf_counter()
    model = GMMClassifier(split.image_shape, 2, latent_dim=args.gmm_latent_dim, net="mlp", hidden=16).to(device)
    losses = train_autoencoder(model, split.x_train, split.y_train, steps=train_steps, device=device,
                               desc="training the GMM classifier")
    thresholds = model.calibrate(split.x_train.to(device), split.y_train.to(device))
    timings["train_s"] = time.perf_counter() - start

    # White box on the classifier: the attack maximises the cross-entropy of the
    # nearest-centre scores -1/2 ||f(x) - mu_c||^2; it does not see the thresholds.
    attacked = {"clean": x_test}
    for name, attack in (("patch_pgd", patch_pgd), ("patch_nag", patch_nag)):
        start = time.perf_counter()
        attacked[name] = attack(model.logits, x_test, y_test, mask, step=attack_step, steps=attack_steps,
                                seed=args.seed)
        timings[f"{name}_s"] = time.perf_counter() - start

    table, defended = {}, {}
    for name, images in attacked.items():
        start = time.perf_counter()
        first = model.predict(images)
        out = model.predict_with_defence(images, reject_fooling=True, steps=args.reclassify_steps,
                                         lr=args.reclassify_lr)
        timings[f"defend_{name}_s"] = time.perf_counter() - start
        defended[name] = out
        correct = out["label"] == y_test
        flagged = out["rejected_initially"]
        table[name] = {
            "accuracy": _accuracy(first["label"], y_test),
            "rejected": _percent(flagged),
            "rejected_latent": _percent(first["rejected_latent"]),
            "rejected_recon": _percent(first["rejected_recon"]),
            "accuracy_reclassified": _percent(correct),
            "accuracy_reclassified_of_rejected": _percent(correct[flagged]),
            "final_accuracy": _percent(correct & ~out["rejected"]),
            "final_error": _percent(~correct & ~out["rejected"]),
            "final_rejected": _percent(out["rejected"]),
        }

    # §4.7's multi-start, measured: Eq. 4.8 on every image from one centre vs from all of them
    start = time.perf_counter()
    multi_start = {}
    for name in ("clean", "patch_pgd"):
        runs = {f"start_{c}": model.centres[c:c + 1] for c in range(model.num_classes)}
        runs["all_centres"] = model.centres
        multi_start[name] = {
            run: _accuracy(model.reclassify(attacked[name], steps=args.reclassify_steps, lr=args.reclassify_lr,
                                            reject=False, starts=starts, progress=False)["label"], y_test)
            for run, starts in runs.items()}
    timings["multi_start_ablation_s"] = time.perf_counter() - start

    figures["gmm_defence"] = str(args.out / "gmm_defence.png")
    _gmm_bars_figure(figures["gmm_defence"], table)
    figures["gmm_examples"] = str(args.out / "gmm_examples.png")
    _gmm_examples_figure(figures["gmm_examples"], model, x_test, attacked["patch_pgd"], y_test, split.class_names,
                         min(args.examples, x_test.shape[0]), args)
    whitebox = None if args.no_whitebox else _gmm_whitebox(args, model, split, x_test, y_test, mask, figures)
    return {
        "model": {"latent_dim": model.latent_dim, "centres": model.centres.tolist(), "noise_std": model.noise_std,
                  "alpha": model.alpha, "net": "mlp (256, 128)", "likelihood": model.likelihood,
                  "train_steps": train_steps, "final_loss": round(sum(losses[-50:]) / min(50, len(losses)), 3)},
        "thresholds": {"quantile": 0.997, "tau_enc": round(thresholds["tau_enc"], 3),
                       "tau_dec": round(thresholds["tau_dec"], 3)},
        "attack": "white box on the classifier: Patch-PGD / Patch-NAG maximising the cross-entropy of the "
                  "scores -1/2 ||f(x) - mu_c||^2 (same patch, steps and step size as above); thresholds unseen",
        "reclassification": {"steps": args.reclassify_steps, "lr": args.reclassify_lr,
                             "starts": "all class centres (Eq. 4.8, multi-start)",
                             "applied_to": "images rejected by tau_enc / tau_dec"},
        "percent": table,
        "table_markdown": gmm_table_markdown(table),
        "reclassify_every_image_accuracy_percent": multi_start,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "whitebox": whitebox,
    }


def _gmm_bars_figure(path, table):
    plt = pyplot()
    keys = [("accuracy", "accuracy, no defence", "tab:red"), ("rejected", "rejected (§4.6)", "tab:orange"),
            ("accuracy_reclassified", "accuracy after reclassification (§4.7)", "tab:green"),
            ("final_accuracy", "accuracy with fooling rejection", "tab:blue")]
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
    inverted = model.reclassify(attacked, steps=args.reclassify_steps, lr=args.reclassify_lr, reject=False,
                                progress=False)
    with torch.no_grad():
        inverted_recon = model.decode_mean(inverted["z"])
    # (row name, images, scores to title the row with, whether the scores carry a rejection)
    rows = [("clean", clean, clean_scores, True), ("g(f(clean))", clean_recon, None, False),
            ("Patch-PGD", attacked, attacked_scores, True), ("g(f(attacked))", attacked_recon, None, False),
            ("g(z*), Eq. 4.8", inverted_recon, inverted, False)]
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
    fig.suptitle("GMM classifier: predictions (green: correct, red: wrong), reconstructions, and reclassification",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Threshold-aware white-box attacks on the GMM classifier (thesis 004 §4.8.5-4.8.6)
# ---------------------------------------------------------------------------
WHITEBOX_SETS = (("eq49_patch", "Eq. 4.9, patch"), ("eq49_unconstrained", "Eq. 4.9, unconstrained"),
                 ("eq410_fooling", "Eq. 4.10, fooling"))
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
KNN_NEIGHBOURS = 5


def whitebox_table_markdown(table: dict) -> str:
    rows = _percent_table_lines("GMM classifier, white box (%)", WHITEBOX_SETS, WHITEBOX_ROWS, table)
    rows.append("| mean ‖η‖₂ (distance moved) | " + " | ".join(f"{table[name]['mean_eta_l2']:.3f}"
                                                           for name, _ in WHITEBOX_SETS) + " |")
    return "\n".join(rows)


def _pixel_knn(train_x: torch.Tensor, train_y: torch.Tensor, images: torch.Tensor,
               k: int = KNN_NEIGHBOURS) -> tuple[torch.Tensor, torch.Tensor]:
    """A model-free reference: majority label of the k nearest training images in pixel space,
    and the distance to the nearest one. It tells whether an image that passes the GMM
    classifier as class t also looks like a class-t digit, or is a real adversarial example."""
    distances = torch.cdist(images.flatten(1), train_x.flatten(1))
    nearest = distances.topk(k, largest=False).indices
    votes = torch.nn.functional.one_hot(train_y[nearest], int(train_y.max()) + 1).sum(1)
    return votes.argmax(1), distances.min(1).values


def _mean(values: torch.Tensor) -> float:
    return round(values.float().mean().item(), 4)


def _whitebox_row(model, result, truth, defence, every, knn_label, knn_distance) -> dict:
    """The outcome categories of one white-box set, in percent of its images.

    Without defence every image is exactly one of: success (target, not rejected),
    rejected, correct (true class, not rejected; None for fooling images, which have
    no true class) or other (another class, not rejected)."""
    target, label, rejected = result.target, result.label, result.rejected
    success = result.success
    row = {
        "success": _percent(success),
        "rejected": _percent(rejected),
        "rejected_latent": _percent(rejected & (result.mahalanobis2 > model.tau_enc)),
        "rejected_recon": _percent(rejected & (result.recon_error > model.tau_dec)),
        "correct": None if truth is None else _percent((label == truth) & ~rejected),
        "other": _percent(~rejected & (label != target) & (True if truth is None else (label != truth))),
        "fooled_encoder": _percent(result.fooled),
        "defence_success": _percent((defence["label"] == target) & ~defence["rejected"]),
        "defence_rejected": _percent(defence["rejected"]),
        "defence_correct": None if truth is None else _percent((defence["label"] == truth) & ~defence["rejected"]),
        "reclassify_all_success": _percent((every["label"] == target) & ~every["rejected"]),
        "reclassify_all_rejected": _percent(every["rejected"]),
        "reclassify_all_correct": None if truth is None else _percent((every["label"] == truth) & ~every["rejected"]),
        # of the successful images: does a pixel-space 5-NN still see the true class (adversarial
        # examples) / already see the target (fooling images that became target-class digits)?
        "knn_agrees_of_success": _percent((knn_label == (target if truth is None else truth))[success]),
        "mean_eta_l2": round(result.eta_l2.mean().item(), 4),
        "mean_eta_linf": round(result.eta_linf.mean().item(), 4),
        "mean_recon_term": _mean(result.recon_term),
        "mean_latent_term": _mean(result.latent_term),
        "mean_objective_start": _mean(result.objective_start),
        "mean_objective_end": _mean(result.objective),
        "mean_nearest_train_distance": _mean(knn_distance),
    }
    return row


def _gmm_whitebox(args, model, split, x_test, y_test, mask, figures) -> dict:
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
        defence = model.predict_with_defence(result.x, steps=args.reclassify_steps, lr=args.reclassify_lr,
                                             progress=False)
        every = model.predict_with_defence(result.x, reclassify_all=True, steps=args.reclassify_steps,
                                           lr=args.reclassify_lr, progress=False)
        timings[f"defend_{name}_s"] = time.perf_counter() - start
        knn_label, knn_distance = _pixel_knn(train_x, train_y, result.x)
        table[name] = _whitebox_row(model, result, truth, defence, every, knn_label, knn_distance)
    clean_knn, clean_distance = _pixel_knn(train_x, train_y, x_test)
    # what reclassifying every image costs on clean images (the same setting as the reclassify_all_* rows)
    clean_every = model.predict_with_defence(x_test, reclassify_all=True, steps=args.reclassify_steps,
                                             lr=args.reclassify_lr, progress=False)

    figures["gmm_whitebox"] = str(args.out / "gmm_whitebox.png")
    _whitebox_figure(figures["gmm_whitebox"], model, x_test, y_test, results, split.class_names,
                     min(args.examples, x_test.shape[0]))
    return {
        "settings": {"optimiser": "projected Adam from eta = 0 (Eq. 4.9) / from U(0, 1) noise (Eq. 4.10)",
                     "steps": steps, "lr": lr, "a": a, "b": b, "fooling_per_class": per_class,
                     "target": "the other class", "patch": "the same patch as Patch-PGD / Patch-NAG",
                     "latent_term": "Mahalanobis distance with the inverse covariance (precision) of the target "
                                    "class, as thresholded by tau_enc (the thesis' Sigma_t read as Sigma_t^-1)",
                     "defence_steps": args.reclassify_steps, "defence_lr": args.reclassify_lr},
        "percent": table,
        "table_markdown": whitebox_table_markdown(table),
        "reference": {"knn_neighbours": KNN_NEIGHBOURS,
                      "knn_clean_accuracy_percent": _accuracy(clean_knn, y_test),
                      "reclassify_all_clean_correct_percent": _percent((clean_every["label"] == y_test)
                                                                       & ~clean_every["rejected"]),
                      "reclassify_all_clean_rejected_percent": _percent(clean_every["rejected"]),
                      "mean_nearest_train_distance_clean": _mean(clean_distance),
                      "mean_distance_to_nearest_other_class_train_image": _mean(
                          torch.cdist(x_test.flatten(1), train_x.flatten(1))
                          .masked_fill(train_y[None] == y_test[:, None], float("inf")).min(1).values)},
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
    fig.suptitle("GMM classifier, threshold-aware white-box attacks (thesis 004 Fig. 4.4): images and g(f(x)); "
                 "red: attack succeeded, orange: rejected, green: correct / not fooled", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
