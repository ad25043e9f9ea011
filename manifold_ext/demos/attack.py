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
"""
from __future__ import annotations

import argparse
import time

import torch

from manifold_ext.attacks import patch_mask, patch_nag, patch_pgd, purify
from manifold_ext.datasets import load_celeba_gender, load_digits_binary
from manifold_ext.demos.common import add_common_arguments, pyplot, seed_everything, write_json
from manifold_ext.vae import VAEClassifier, train_vae_classifier

NAME = "attack"
DESCRIPTION = "Table 1: Patch-PGD / Patch-NAG on a VAE-classifier and ELBO test-time purification"

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
    write_json(args.out / "summary.json", summary)
    return summary
