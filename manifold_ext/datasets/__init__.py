"""Data the demos and tests use: bundled or generated, or read from a local folder (never downloaded)."""
from manifold_ext.datasets.images import (
    digits_levels,
    find_local_image_set,
    load_celeba_folder,
    load_cifar10_folder,
    ood_digit_sets,
)

__all__ = ["digits_levels", "find_local_image_set", "load_celeba_folder", "load_cifar10_folder", "ood_digit_sets"]
