"""KL attribute analysis of a recognition manifold (paper 000 §4.3) on data that ships.

The paper embeds CelebA faces with a face-recognition network and ranks the
40 attributes by the KL between p(x_a) and p(x_a | nearest neighbour's x_a = 0).
Here: scikit-learn's 8x8 digits, where the *identity* is the digit class, and
every image carries attributes of two kinds:

* identity-linked (fixed by the digit, like "male" for a face): ``digit >= 5``,
  ``even digit``, ``closed loop`` (0, 6, 8, 9);
* generated nuisances, drawn independently with probability 1/2 and applied
  to the image (like "smiling"): ``bold`` (strokes thickened by a 2x2 max
  filter), ``shifted`` (moved one pixel right), ``low contrast`` (intensity
  x 0.5), ``noisy`` (Gaussian noise of std 0.15, clipped to [0, 1]).

A small recognition network (MLP onto the unit sphere of R^16) is trained by
supervised contrastive learning on the identities of the training images, with
fresh random nuisances in every batch (the usual contrastive augmentation, so it
can learn to ignore them); the analysis runs on held-out test images with their
fixed nuisances. The same table for raw pixels (nearest
neighbour in pixel space) shows what an embedding that was not trained for
identity picks up. Expect the identity-linked attributes on top for the
recognition manifold and nuisances near the chance level, while pixel space
also ranks the nuisances that change many pixels.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from manifold_ext._optional import require
from manifold_ext.analysis.attributes import attribute_kl, nearest_neighbours, train_embedding
from manifold_ext.demos.common import add_common_arguments, pyplot, run_record, seed_everything, write_json

NAME = "attributes"
DESCRIPTION = "§4.3: KL per attribute between p(x) and p(x | nearest neighbour) on a recognition manifold (8x8 digits)"

IDENTITY_ATTRIBUTES = ("digit >= 5", "even digit", "closed loop")
NUISANCE_ATTRIBUTES = ("bold", "shifted", "low contrast", "noisy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, NAME)
    parser.add_argument("--steps", type=int, default=None, help="embedding training steps (default 1500, quick 300)")
    parser.add_argument("--dim", type=int, default=16, help="embedding dimension (default 16)")


def apply_nuisances(images: torch.Tensor, flags: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply the nuisance attributes ``flags`` ``[N, 4]`` (bold, shifted, low contrast, noisy) to ``images``."""
    bold, shifted, low, noisy = flags.unbind(1)
    out = images.clone()
    thick = F.max_pool2d(F.pad(out, (0, 1, 0, 1)), 2, stride=1)  # 2x2 max filter: strokes one pixel wider
    out = torch.where(bold[:, None, None, None], thick, out)
    moved = torch.roll(out, 1, dims=3)
    moved[..., 0] = 0
    out = torch.where(shifted[:, None, None, None], moved, out)
    out = torch.where(low[:, None, None, None], 0.5 * out, out)
    noise = 0.15 * torch.randn(out.shape, generator=generator)
    return torch.where(noisy[:, None, None, None], (out + noise).clamp(0, 1), out)


def digits_with_attributes(seed: int):
    """(clean images [N, 1, 8, 8] in [0, 1], images with their nuisances, identities [N], attributes [N, 7], names)."""
    load_digits = require("sklearn.datasets", feature="the attributes demo's digits").load_digits

    digits = load_digits()
    clean = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(seed)
    nuisance = torch.rand(len(labels), len(NUISANCE_ATTRIBUTES), generator=generator) < 0.5
    images = apply_nuisances(clean, nuisance, generator)
    identity_attrs = torch.stack([labels >= 5, labels % 2 == 0, torch.isin(labels, torch.tensor([0, 6, 8, 9]))], 1)
    attributes = torch.cat([identity_attrs, nuisance], 1).long()
    return clean, images, labels, attributes, [*IDENTITY_ATTRIBUTES, *NUISANCE_ATTRIBUTES]


def _figure(path, reports: dict, names: list[str]):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.38
    x = np.arange(len(names))
    for offset, (label, report) in zip((-width / 2, width / 2), reports.items()):
        by_name = {row.name: row for row in report.attributes}
        axes[0].bar(x + offset, [by_name[n].kl_at_zero for n in names], width, label=label)
        axes[1].bar(x + offset, [by_name[n].expected_kl for n in names], width, label=label)
        axes[1].scatter(
            x + offset, [by_name[n].chance_expected_kl for n in names], color="k", marker="_", s=200, zorder=5
        )
    axes[0].set_title("KL(p(x | x of nearest neighbour = 0) || p(x))  (Fig. 17b)")
    axes[1].set_title("expected KL over the neighbour's value (MI); black: random-neighbour chance")
    for ax in axes:
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("nats")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    started = time.time()
    seed_everything(args.seed)
    steps = args.steps or (300 if args.quick else 1500)
    clean, images, identities, attributes, names = digits_with_attributes(args.seed)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    cut = len(images) // 2
    train, test = order[:cut], order[cut:]
    augment_generator = torch.Generator().manual_seed(args.seed + 7)

    def augment(batch_clean: torch.Tensor) -> torch.Tensor:  # fresh nuisances in every batch
        flags = torch.rand(len(batch_clean), len(NUISANCE_ATTRIBUTES), generator=augment_generator) < 0.5
        return apply_nuisances(batch_clean, flags, augment_generator)

    start = time.perf_counter()
    model, losses = train_embedding(
        clean[train], identities[train], dim=args.dim, steps=steps, seed=args.seed, augment=augment
    )
    train_seconds = time.perf_counter() - start
    with torch.no_grad():
        embedded = model(images[test])
    reports = {
        "recognition manifold": attribute_kl(embedded, attributes[test], names, seed=args.seed),
        "raw pixels": attribute_kl(images[test].flatten(1), attributes[test], names, seed=args.seed),
    }
    recognition = reports["recognition manifold"]
    identity_nn_accuracy = float((identities[test] == identities[test][nearest_neighbours(embedded)]).double().mean())
    pixel_nn_accuracy = float(
        (identities[test] == identities[test][nearest_neighbours(images[test].flatten(1))]).double().mean()
    )
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / "attribute_kl.png"
    _figure(figure, reports, names)
    tables = {label: report.table() for label, report in reports.items()}
    (args.out / "attribute_kl.md").write_text(
        "\n\n".join(f"### {label} (ranked by expected KL)\n\n{table}" for label, table in tables.items()) + "\n"
    )
    top = [row.name for row in recognition.attributes[: len(IDENTITY_ATTRIBUTES)]]
    summary = {
        "demo": NAME,
        "quick": bool(args.quick),
        "samples_analysed": len(test),
        "embedding_steps": steps,
        "embedding_dim": args.dim,
        "train_seconds": round(train_seconds, 2),
        "final_contrastive_loss": round(float(np.mean(losses[-50:])), 4),
        "identity_nn_accuracy_recognition": round(identity_nn_accuracy, 4),
        "identity_nn_accuracy_pixels": round(pixel_nn_accuracy, 4),
        "compared": "KL(p(x_a | x_a(nn) = v) || p(x_a)), natural log; expected_kl = sum_v p(x_a(nn) = v) KL_v",
        "reports": {label: report.to_dict() for label, report in reports.items()},
        "ranking_recognition": [row.name for row in recognition.attributes],
        "ranking_pixels": [row.name for row in reports["raw pixels"].attributes],
        "identity_attributes_ranked_first": sorted(top) == sorted(IDENTITY_ATTRIBUTES),
        "figure": str(figure),
        "run": run_record(started),
    }
    for label, table in tables.items():
        print(f"\n{label}:\n{table}")
    write_json(args.out / "summary.json", summary)
    return summary
