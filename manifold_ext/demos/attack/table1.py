"""Table 1 of paper 000 (§3.2): patch attacks collapse a VAE-classifier, ELBO purification restores it.

The paper attacks a ResNet-50 VAE-classifier (Eq. 21) of CelebA gender with a
16x32 forehead patch on 64x64 faces (12.5 % of the pixels): Patch-PGD and
Patch-NAG, 2,048 iterations of step 1/255, then 256 iterations of ELBO ascent
over the input with the same step (Eq. 22, budget removed) purify every set.

Here the data ship with scikit-learn: its 8x8 digits as "digit < 5" vs
"digit >= 5". The VAE-classifier is convolutional (the small ResNet and its
mirror of ``vae.networks``, ``--net conv``). The patch has the paper's area
fraction, 2x4 = 8 of 64 pixels, and is placed where it matters to the
classifier: of all 2x4 and 4x2 windows, the one with the largest mean input
gradient |d CE / d x| over the *training* images (the attacker's best place;
the paper's forehead is chosen instead so that the patch does not change the
face's gender, which a digit, all stroke, cannot offer). Whether the attacked
digits still look like their class is checked with a pixel-space 5-NN on the
training images. PGD follows Madry et al.: a uniform random start inside the
patch (``--no-random-start`` starts from the clean pixels).

Both purification update rules run (the paper does not say which it used):
``scaled`` (gradient scaled so the largest pixel move is the step) and
``sign`` (PGD's rule, every pixel moves by the step).

The attack-strength study (skip with ``--no-curve``) explains the attacked
accuracy: accuracy against iterations for both attacks, against the patch size
and against its placement, each beside the exhaustive corner search (the best
of all 2^k settings of the patch to black/white, ``patch_corner_search``), the
strongest attack a small patch allows at its corners.

``--data celeba --celeba-root DIR`` runs the CelebA gender task from a local
copy (nothing is downloaded). Writes ``table1.png``, ``examples_patch_pgd.png``,
``examples_patch_nag.png`` (clean / attacked / purified with reconstructions, as
the paper's Fig. 10) and ``attack_strength.png``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from manifold_ext.attacks import (
    cross_entropy_per_sample,
    input_gradient,
    patch_corner_search,
    patch_mask,
    patch_nag,
    patch_pgd,
    purify,
)
from manifold_ext.datasets import load_celeba_gender, load_digits_binary
from manifold_ext.demos.attack._shared import accuracy_percent, percent, pixel_knn, show_image
from manifold_ext.demos.common import paper_row, pyplot
from manifold_ext.vae import VAEClassifier, train_vae_classifier

PAPER_TABLE1 = {  # CelebA gender, ResNet-50 VAE-classifier (paper 000, Table 1)
    "clean": 97.86,
    "patch_pgd": 13.14,
    "patch_nag": 6.83,
    "purified_clean": 91.20,
    "purified_patch_pgd": 75.75,
    "purified_patch_nag": 76.75,
}
SETS = (("clean", "Clean"), ("patch_pgd", "Patch-PGD"), ("patch_nag", "Patch-NAG"))
RULES = ("scaled", "sign")
PAPER_PATCH_FRACTION = 16 * 32 / (64 * 64)  # 12.5 %
CURVE_SIZES = ((1, 2), (2, 2), (2, 3), (2, 4), (3, 3), (4, 4))  # 3 % .. 25 % of an 8x8 image
CORNER_SEARCH_LIMIT = 9  # patch values searched exhaustively in the curves (2^9 = 512 corners)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        choices=("digits", "celeba"),
        default="digits",
        help="digits: scikit-learn's 8x8 digits, <5 vs >=5 (ships); celeba: gender from --celeba-root",
    )
    parser.add_argument(
        "--celeba-root",
        default=None,
        help="local CelebA folder with img_align_celeba/ and list_attr_celeba.txt (for --data celeba)",
    )
    parser.add_argument("--image-size", type=int, default=32, help="CelebA images are resized to this (default 32)")
    parser.add_argument(
        "--patch",
        type=int,
        nargs=4,
        metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"),
        default=None,
        help="patch rectangle in pixels (default digits: the most salient 2x4 or 4x2 window; celeba: a forehead band)",
    )
    parser.add_argument(
        "--net",
        choices=("conv", "mlp"),
        default="conv",
        help="VAE-classifier networks (default conv: the small ResNet and its mirror)",
    )
    parser.add_argument("--channels", type=int, default=16, help="conv width of the VAE-classifier (default 16)")
    parser.add_argument(
        "--train-steps", type=int, default=None, help="VAE-classifier training steps (default 2000, quick 1000)"
    )
    parser.add_argument("--lam", type=float, default=20.0, help="lambda of Eq. 21 (weight of the classification loss)")
    parser.add_argument("--latent-dim", type=int, default=8, help="latent dimension of the VAE (default 8)")
    parser.add_argument(
        "--attack-steps", type=int, default=None, help="patch attack iterations (default 2048, quick 256)"
    )
    parser.add_argument("--attack-step", type=float, default=1 / 255, help="patch attack step size (default 1/255)")
    parser.add_argument(
        "--no-random-start",
        action="store_true",
        help="start the attacks from the clean patch instead of uniform noise in it (Madry's PGD)",
    )
    parser.add_argument(
        "--purify-steps", type=int, default=None, help="ELBO ascent iterations (default 256, quick 128)"
    )
    parser.add_argument("--purify-step", type=float, default=1 / 255, help="ELBO ascent step size (default 1/255)")
    parser.add_argument(
        "--purify-rule",
        choices=RULES,
        default="scaled",
        help="the ELBO ascent rule of the main rows (default scaled; both rules always run)",
    )
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="evaluate on the first N test images (default: all 540 digits; quick 200)",
    )
    parser.add_argument("--examples", type=int, default=8, help="images shown in the example figures")
    parser.add_argument(
        "--no-curve",
        action="store_true",
        help="skip the attack-strength study (accuracy vs iterations, patch size and placement)",
    )
    parser.add_argument(
        "--curve-images",
        type=int,
        default=None,
        help="test images of the size / placement curves (default 270, half the digits; quick all)",
    )
    parser.add_argument(
        "--curve-steps",
        type=int,
        default=None,
        help="attack iterations per point of the size / placement curves (default 256, quick 64)",
    )


def load_split(args: argparse.Namespace):
    if args.data == "celeba":
        if not args.celeba_root:
            raise SystemExit(
                "--data celeba needs --celeba-root pointing at a local CelebA copy (nothing is downloaded)"
            )
        return load_celeba_gender(args.celeba_root, image_size=args.image_size, seed=args.seed)
    return load_digits_binary(seed=args.seed)


def _celeba_patch(size: int) -> tuple[int, int, int, int]:
    # aligned, centre-cropped CelebA: a band on the forehead, the paper's 16x32 patch at 178-pixel scale
    height, width = max(1, round(size * 16 / 178)), max(1, round(size * 32 / 178))
    return (round(size * 0.18), (size - width) // 2, height, width)


def _model_for(split, args) -> VAEClassifier:
    if split.name == "digits-binary":
        return VAEClassifier(
            split.image_shape,
            num_classes=2,
            latent_dim=args.latent_dim,
            hidden=(256, 128),
            net=args.net,
            channels=args.channels,
        )
    return VAEClassifier(
        split.image_shape,
        num_classes=2,
        latent_dim=max(args.latent_dim, 32),
        hidden=(1024, 512),
        classifier_hidden=128,
        net=args.net,
        channels=2 * args.channels,
    )


def saliency_map(model, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Mean |d CE / d x| over the images, summed over channels: [H, W] (where the classifier looks)."""
    total = torch.zeros(x.shape[-2:], device=x.device)
    for start in range(0, x.shape[0], batch):
        grad = input_gradient(model, x[start : start + batch], y[start : start + batch], cross_entropy_per_sample)
        total += grad.abs().sum((0, 1))
    return total / x.shape[0]


def salient_window(saliency: torch.Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """The ``height x width`` or ``width x height`` window with the largest summed saliency (first on ties)."""
    best, best_value = None, -math.inf
    for h, w in dict.fromkeys(((height, width), (width, height))):
        sums = torch.nn.functional.avg_pool2d(saliency[None, None], (h, w), stride=1)[0, 0] * (h * w)
        value, index = sums.flatten().max(0)
        if value.item() > best_value:
            top, left = divmod(int(index), sums.shape[1])
            best, best_value = (top, left, h, w), value.item()
    return best


def _attack(attack, model, x, y, mask, args, steps, step, seed, curve: dict | None = None):
    """One attack run; with ``curve``, accuracy at iterations 1, 2, 4, ... and the last one."""
    marks = {2**k for k in range(int(math.log2(steps)) + 1)} | {steps}

    def record(iteration, x_adv, part):
        if curve is not None and iteration in marks and part.start == 0 and part.stop == x.shape[0]:
            with torch.no_grad():
                curve[iteration] = accuracy_percent(model(x_adv).argmax(1), y)

    return attack(
        model,
        x,
        y,
        mask,
        step=step,
        steps=steps,
        random_start=not args.no_random_start,
        seed=seed,
        callback=record if curve is not None else None,
    )


def _strength_study(args, model, split, x_test, y_test, saliency, main_patch, step, purification, timings) -> dict:
    """Accuracy against patch size and placement (Patch-NAG at ``--curve-steps`` and the corner search) on the
    first ``--curve-images`` test images; for each placement also after purifying the Patch-NAG images
    (``purification`` = (steps, step)). Patch-PGD is left out: with a random start it tracks Patch-NAG within a
    point or two here (see the accuracy-vs-iterations curve), and the study is the demo's longest part."""
    steps = args.curve_steps or (64 if args.quick else 256)
    step = max(step, 1.0 / steps)  # the shorter runs still let a pixel cross the range
    count = args.curve_images or (x_test.shape[0] if args.quick else 270)
    x_test, y_test = x_test[:count], y_test[:count]
    _, rows, width = split.image_shape
    start = time.perf_counter()

    def measure(patch, purified: bool = False):
        mask = patch_mask((rows, width), *patch, device=x_test.device)
        point = {"patch": list(patch), "fraction_percent": round(100.0 * patch[2] * patch[3] / (rows * width), 2)}
        adversarial = _attack(patch_nag, model, x_test, y_test, mask, args, steps, step, args.seed)
        with torch.no_grad():
            point["patch_nag"] = accuracy_percent(model(adversarial).argmax(1), y_test)
        if purified:  # does ELBO ascent undo this placement's Patch-NAG images?
            result = purify(
                model,
                adversarial,
                steps=purification[0],
                step=purification[1],
                rule=args.purify_rule,
                seed=args.seed,
                progress=False,
            )
            point["purified_patch_nag"] = accuracy_percent(result.predictions, y_test)
        values = patch[2] * patch[3] * split.image_shape[0]
        if values <= CORNER_SEARCH_LIMIT:
            corners = patch_corner_search(model, x_test, y_test, mask, progress=False)
            with torch.no_grad():
                point["corner_search"] = accuracy_percent(model(corners).argmax(1), y_test)
        else:
            point["corner_search"] = None
        return point

    sizes = [measure(salient_window(saliency, h, w)) for h, w in CURVE_SIZES]
    placements = {
        "most salient (the Table 1 patch)": main_patch,
        "top-left corner (off the digit)": (0, 0, 2, 4),
        "top centre (the 'forehead')": (0, (width - 4) // 2, 2, 4),
        "least salient 2x4": _least_salient(saliency, 2, 4),
    }
    placed = {name: measure(patch, purified=True) for name, patch in placements.items()}
    timings["strength_study_s"] = time.perf_counter() - start
    return {
        "steps": steps,
        "step": step,
        "test_images": int(x_test.shape[0]),
        "by_size": sizes,
        "by_placement": placed,
        "note": "size curve: each size at its most salient place; corner_search = best of all 2^k black/white "
        "settings of the patch (None above 9 values); purified_patch_nag: the placement's Patch-NAG images after "
        f"ELBO purification ('{args.purify_rule}' rule, the Table 1 purification settings)",
    }


def _least_salient(saliency: torch.Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    top, left, h, w = salient_window(-saliency, height, width)
    return (top, left, h, w)


def _examples_figure(path, title, model, clean, attacked, purified, labels, class_names, n, mask):
    plt = pyplot()
    rows = [("clean", clean), ("attacked", attacked), ("purified", purified)]
    fig, axes = plt.subplots(6, n, figsize=(1.3 * n, 9.2), squeeze=False)
    top, left = [int(i.min()) for i in torch.nonzero(mask, as_tuple=True)]
    height, width = [int(i.max()) - int(i.min()) + 1 for i in torch.nonzero(mask, as_tuple=True)]
    for r, (name, images) in enumerate(rows):
        images = images[:n]
        with torch.no_grad():
            predictions = model(images).argmax(1)
            reconstructions = model.reconstruct(images)
        for c in range(n):
            for k, picture in enumerate((images[c], reconstructions[c])):
                ax = axes[2 * r + k, c]
                show_image(ax, picture)
                if k == 0:
                    correct = bool(predictions[c] == labels[c])
                    ax.set_title(class_names[int(predictions[c])], fontsize=7, color="green" if correct else "red")
                    if name == "attacked":
                        ax.add_patch(
                            plt.Rectangle((left - 0.5, top - 0.5), width, height, fill=False, ec="red", lw=0.8)
                        )
            axes[2 * r, 0].set_ylabel(f"{name}\ninput", fontsize=8)
            axes[2 * r + 1, 0].set_ylabel("reconstr.", fontsize=8)
    fig.suptitle(
        f"{title}: inputs, reconstructions and predictions (green: correct, red: wrong; red box: patch)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table_figure(path, tables: dict, dataset):
    plt = pyplot()
    names = [name for name, _ in SETS]
    panels = [(f"this run ({dataset}), purified with the '{rule}' rule", tables[rule]) for rule in RULES]
    panels.append(("paper (CelebA gender, ResNet-50)", PAPER_TABLE1))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), sharey=True)
    for ax, (title, ours) in zip(axes, panels):
        before = [ours[n] for n in names]
        after = [ours["purified_" + n] for n in names]
        positions = range(len(names))
        ax.bar([p - 0.2 for p in positions], before, width=0.4, label="VAE-CLF", color="tab:red")
        ax.bar([p + 0.2 for p in positions], after, width=0.4, label="+TTD (ELBO)", color="tab:green")
        for p, (b, a) in enumerate(zip(before, after)):
            ax.text(p - 0.2, b + 1, f"{b:.1f}", ha="center", fontsize=8)
            ax.text(p + 0.2, a + 1, f"{a:.1f}", ha="center", fontsize=8)
        ax.set_xticks(list(positions), [title for _, title in SETS])
        ax.set_ylim(0, 110)
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _strength_figure(path, curves: dict, corner_accuracy: float | None, study: dict | None, saliency, patch):
    plt = pyplot()
    panels = 2 + (2 if study else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.8))
    ax = axes[0]
    for name, title, colour in (("patch_pgd", "Patch-PGD", "tab:blue"), ("patch_nag", "Patch-NAG", "tab:purple")):
        iterations = sorted(i for i in curves[name] if i > 0)
        ax.plot(iterations, [curves[name][i] for i in iterations], marker="o", ms=3, label=title, color=colour)
    if corner_accuracy is not None:
        ax.axhline(corner_accuracy, color="black", ls="--", lw=0.8, label="corner search (best of 2^k)")
    ax.axhline(PAPER_TABLE1["patch_pgd"], color="tab:blue", ls=":", lw=0.8, label="paper Patch-PGD")
    ax.axhline(PAPER_TABLE1["patch_nag"], color="tab:purple", ls=":", lw=0.8, label="paper Patch-NAG")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("attack iterations (step 1/255)")
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(0, 100)
    ax.set_title("accuracy vs iterations (Table 1 patch)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    image = ax.imshow(saliency.cpu().numpy(), cmap="magma")
    top, left, height, width = patch
    ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), width, height, fill=False, ec="cyan", lw=1.5))
    ax.set_title("mean |dCE/dx| on training images; patch", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    if study:
        ax = axes[2]
        fractions = [p["fraction_percent"] for p in study["by_size"]]
        for key, title, colour in (
            ("patch_nag", "Patch-NAG", "tab:purple"),
            ("corner_search", "corner search", "black"),
        ):
            points = [(f, p[key]) for f, p in zip(fractions, study["by_size"]) if p[key] is not None]
            ax.plot(*zip(*points), marker="o", ms=3, label=title, color=colour)
        ax.axvline(100 * PAPER_PATCH_FRACTION, color="gray", ls=":", lw=0.8, label="paper's patch fraction")
        ax.set_xlabel("patch area (% of the image), most salient place")
        ax.set_ylabel("accuracy under attack (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"accuracy vs patch size ({study['steps']} iterations, {study['test_images']} images)", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[3]
        names = list(study["by_placement"])
        positions = np.arange(len(names))
        for offset, (key, title, colour) in zip(
            (-0.27, 0.0, 0.27),
            (
                ("patch_nag", "Patch-NAG", "tab:purple"),
                ("corner_search", "corner search", "black"),
                ("purified_patch_nag", "Patch-NAG + purification", "tab:green"),
            ),
        ):
            ax.bar(
                positions + offset,
                [study["by_placement"][n][key] for n in names],
                width=0.27,
                label=title,
                color=colour,
            )
        ax.set_xticks(positions, [n.replace(" (", "\n(") for n in names], fontsize=6)
        ax.set_ylim(0, 105)
        ax.set_title("2x4 patch: accuracy vs placement", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table_markdown(tables: dict) -> str:
    head = "| | Clean | Patch-PGD | Patch-NAG | Clean +TTD | Patch-PGD +TTD | Patch-NAG +TTD |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    keys = ["clean", "patch_pgd", "patch_nag", "purified_clean", "purified_patch_pgd", "purified_patch_nag"]
    lines = [head, rule]
    for name, table in tables.items():
        lines.append(f"| this run, '{name}' purification | " + " | ".join(f"{table[k]:.2f}" for k in keys) + " |")
    lines.append("| paper (CelebA gender) | " + " | ".join(f"{PAPER_TABLE1[k]:.2f}" for k in keys) + " |")
    return "\n".join(lines)


def _paper_rows(tables: dict, primary: str, setup: str) -> list[dict]:
    rows = []
    for name, title in SETS:
        short = {"clean": "clean", "patch_pgd": "pgd", "patch_nag": "nag"}[name]
        before = tables[primary][name]
        rows.append(
            paper_row(
                f"000-table1-{short}-before",
                f"{title} accuracy, VAE-classifier",
                PAPER_TABLE1[name],
                before,
                unit="%",
                setup=setup,
            )
        )

        def purified(rule: str, id_suffix: str, note: str) -> dict:
            return paper_row(
                f"000-table1-{short}-after{id_suffix}",
                f"{title} accuracy after ELBO purification ('{rule}' rule{note})",
                PAPER_TABLE1[f"purified_{name}"],
                tables[rule][f"purified_{name}"],
                unit="%",
                setup=setup,
            )

        rows.append(purified(primary, "", ""))
        rows += [purified(rule, f"-{rule}", "; the paper does not state its rule") for rule in RULES if rule != primary]
    return rows


def run_table1(args, split, device, figures: dict) -> tuple[dict, list[dict], dict]:
    """Train, attack, purify. Returns (summary section, paper_comparison rows, what the later sections reuse:
    the test images, the mask and the attack settings)."""
    train_steps = args.train_steps or (1000 if args.quick else 2000)
    attack_steps = args.attack_steps or (256 if args.quick else 2048)
    purify_steps = args.purify_steps or (128 if args.quick else 256)
    # --quick takes bigger steps so the shorter runs still cover the pixel range
    attack_step = args.attack_step * (2048 / attack_steps if args.quick and args.attack_steps is None else 1)
    purify_step = args.purify_step * (256 / purify_steps if args.quick and args.purify_steps is None else 1)
    test_limit = args.test_limit or (200 if args.quick else None)
    x_test, y_test = split.x_test[:test_limit].to(device), split.y_test[:test_limit].to(device)
    x_train, y_train = split.x_train.to(device), split.y_train.to(device)

    timings = {}
    start = time.perf_counter()
    model = _model_for(split, args).to(device)
    history = train_vae_classifier(model, split.x_train, split.y_train, steps=train_steps, lam=args.lam, seed=args.seed)
    timings["train_s"] = time.perf_counter() - start

    saliency = saliency_map(model, x_train, y_train)
    if args.patch is not None:
        patch, placement = tuple(args.patch), "given by --patch"
    elif args.data == "digits":
        patch = salient_window(saliency, 2, 4)
        placement = "the 2x4 / 4x2 window of largest mean |dCE/dx| over the training images"
    else:
        patch, placement = _celeba_patch(split.image_shape[-1]), "a forehead band (the paper's patch, rescaled)"
    mask = patch_mask(split.image_shape[-2:], *patch, device=device)

    attacked, curves = {"clean": x_test}, {}
    for name, attack in (("patch_pgd", patch_pgd), ("patch_nag", patch_nag)):
        start = time.perf_counter()
        curves[name] = {0: accuracy_percent(model(x_test).argmax(1), y_test)}
        attacked[name] = _attack(
            attack, model, x_test, y_test, mask, args, attack_steps, attack_step, args.seed, curves[name]
        )
        timings[f"{name}_s"] = time.perf_counter() - start
    corner_accuracy = None
    if patch[2] * patch[3] * split.image_shape[0] <= CORNER_SEARCH_LIMIT:
        start = time.perf_counter()
        corners = patch_corner_search(model, x_test, y_test, mask)
        with torch.no_grad():
            corner_accuracy = accuracy_percent(model(corners).argmax(1), y_test)
        timings["corner_search_s"] = time.perf_counter() - start

    tables = {rule: {} for rule in RULES}
    purified, elbo = {}, {rule: {} for rule in RULES}
    for name, images in attacked.items():
        with torch.no_grad():
            before = accuracy_percent(model(images).argmax(1), y_test)
        for rule in RULES:
            start = time.perf_counter()
            result = purify(model, images, steps=purify_steps, step=purify_step, rule=rule, seed=args.seed)
            timings[f"purify_{rule}_{name}_s"] = time.perf_counter() - start
            tables[rule][name] = before
            tables[rule][f"purified_{name}"] = accuracy_percent(result.predictions, y_test)
            elbo[rule][name] = {
                "before": round(result.elbo_start.mean().item(), 2),
                "after": round(result.elbo_end.mean().item(), 2),
            }
            if rule == args.purify_rule:
                purified[name] = result.x

    # do the successful attacks redraw the digit? a pixel-space 5-NN on the training images says
    knn = {}
    for name in ("patch_pgd", "patch_nag"):
        with torch.no_grad():
            fooled = model(attacked[name]).argmax(1) != y_test
        knn_label, _ = pixel_knn(x_train, y_train, attacked[name])
        knn[name] = {
            "fooled_percent": percent(fooled),
            "knn_true_class_percent_of_fooled": percent((knn_label == y_test)[fooled]),
        }
    clean_knn, _ = pixel_knn(x_train, y_train, x_test)
    knn["clean_knn_accuracy_percent"] = accuracy_percent(clean_knn, y_test)

    study = None
    if not args.no_curve:
        study = _strength_study(
            args, model, split, x_test, y_test, saliency, patch, attack_step, (purify_steps, purify_step), timings
        )

    args.out.mkdir(parents=True, exist_ok=True)
    figures["table1"] = str(args.out / "table1.png")
    _table_figure(figures["table1"], tables, split.name)
    n = min(args.examples, x_test.shape[0])
    for name, title in (("patch_pgd", "Patch-PGD"), ("patch_nag", "Patch-NAG")):
        figures[f"examples_{name}"] = str(args.out / f"examples_{name}.png")
        _examples_figure(
            figures[f"examples_{name}"],
            title,
            model,
            x_test,
            attacked[name],
            purified[name],
            y_test,
            split.class_names,
            n,
            mask,
        )
    figures["attack_strength"] = str(args.out / "attack_strength.png")
    _strength_figure(figures["attack_strength"], curves, corner_accuracy, study, saliency, patch)

    image_pixels = split.image_shape[-1] * split.image_shape[-2]
    data = "scikit-learn 8x8 digits, <5 vs >=5" if split.name == "digits-binary" else split.name
    setup = (
        f"{data} ({x_test.shape[0]} test images) instead of CelebA gender 64x64; {args.net} VAE-classifier "
        f"({args.channels} channels) instead of ResNet-50; {patch[2]}x{patch[3]} patch "
        f"({100 * patch[2] * patch[3] / image_pixels:.1f} % of the pixels, the paper's 16x32 of 64x64 is 12.5 %) "
        f"at the most salient place instead of the forehead; "
        f"{'random' if not args.no_random_start else 'clean'} start"
    )
    section = {
        "dataset": split.name,
        "test_images": int(x_test.shape[0]),
        "patch": {
            "top": patch[0],
            "left": patch[1],
            "height": patch[2],
            "width": patch[3],
            "pixels": patch[2] * patch[3],
            "image_pixels": image_pixels,
            "fraction_percent": round(100.0 * patch[2] * patch[3] / image_pixels, 2),
            "placement": placement,
        },
        "settings": {
            "net": args.net,
            "channels": args.channels,
            "train_steps": train_steps,
            "lambda": args.lam,
            "latent_dim": model.latent_dim,
            "attack_steps": attack_steps,
            "attack_step": attack_step,
            "random_start": not args.no_random_start,
            "purify_steps": purify_steps,
            "purify_step": purify_step,
            "purify_rules": list(RULES),
            "primary_purify_rule": args.purify_rule,
            "seed": args.seed,
        },
        "accuracy_percent": tables[args.purify_rule],
        "accuracy_percent_by_purify_rule": tables,
        "paper_table1_percent": PAPER_TABLE1,
        "table_markdown": table_markdown(tables),
        "mean_elbo_nats": elbo,
        "accuracy_vs_iterations": {name: {str(k): v for k, v in curve.items()} for name, curve in curves.items()},
        "corner_search_accuracy_percent": corner_accuracy,
        "pixel_knn_check": knn,
        "strength_study": study,
        "final_training": {
            "elbo": round(sum(history.elbo[-50:]) / min(50, len(history.elbo)), 2),
            "cross_entropy": round(sum(history.ce[-50:]) / min(50, len(history.ce)), 4),
        },
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    reuse = {"x_test": x_test, "y_test": y_test, "mask": mask, "attack_step": attack_step, "attack_steps": attack_steps}
    return section, _paper_rows(tables, args.purify_rule, setup), reuse
