"""Helpers the attack experiments share: percentages, markdown tables, a pixel-space reference classifier."""

from __future__ import annotations

import torch

KNN_NEIGHBOURS = 5


def accuracy_percent(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of correct predictions in percent, rounded to 0.01."""
    return round(100.0 * (predictions == labels).float().mean().item(), 2)


def percent(flags: torch.Tensor) -> float | None:
    """Share of True in percent; None for an empty selection (e.g. no clean image rejected)."""
    return round(100.0 * flags.float().mean().item(), 2) if flags.numel() else None


def mean4(values: torch.Tensor) -> float:
    return round(values.float().mean().item(), 4)


def percent_table_lines(title: str, sets, rows, table: dict) -> list[str]:
    """Markdown lines of a table with one column per (name, title) in ``sets`` and one row per
    (key, label) in ``rows``; cells are ``table[name][key]`` percentages (None prints as a dash)."""

    def cell(value):
        return "–" if value is None else f"{value:.2f}"

    head = f"| {title} | " + " | ".join(column for _, column in sets) + " |"
    rule = "|---|" + "---:|" * len(sets)
    body = [f"| {label} | " + " | ".join(cell(table[name][key]) for name, _ in sets) + " |" for key, label in rows]
    return [head, rule, *body]


def pixel_knn(
    train_x: torch.Tensor, train_y: torch.Tensor, images: torch.Tensor, k: int = KNN_NEIGHBOURS
) -> tuple[torch.Tensor, torch.Tensor]:
    """A model-free reference: majority label of the k nearest training images in pixel space,
    and the distance to the nearest one. It tells whether an image that a model calls class t
    also looks like a class-t digit, or is a real adversarial example."""
    distances = torch.cdist(images.flatten(1), train_x.flatten(1))
    nearest = distances.topk(k, largest=False).indices
    votes = torch.nn.functional.one_hot(train_y[nearest], int(train_y.max()) + 1).sum(1)
    return votes.argmax(1), distances.min(1).values


def show_image(ax, image: torch.Tensor) -> None:
    """One [C, H, W] image in [0, 1] on a matplotlib axis, without ticks."""
    picture = image.permute(1, 2, 0).squeeze(-1).clamp(0, 1).cpu().numpy()
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
