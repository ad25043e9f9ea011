"""Datasets for the demos and tests. Everything ships with the package's
dependencies or is generated; real-image sets (MNIST, CelebA, CIFAR-10) load from
a local folder the user points at. Nothing downloads."""

from manifold_ext.datasets.digits import TwoDigitData, compose_pairs, two_digit_digits, two_digit_mnist
from manifold_ext.datasets.digits_binary import ImageSplit, load_celeba_gender, load_digits_binary, load_digits_classes
from manifold_ext.datasets.images import (
    digits_levels,
    find_local_image_set,
    load_celeba_folder,
    load_cifar10_folder,
    ood_digit_sets,
)
from manifold_ext.datasets.mnist import load_mnist

__all__ = [
    "TwoDigitData",
    "compose_pairs",
    "two_digit_digits",
    "two_digit_mnist",
    "load_mnist",
    "ImageSplit",
    "load_digits_binary",
    "load_digits_classes",
    "load_celeba_gender",
    "digits_levels",
    "find_local_image_set",
    "load_celeba_folder",
    "load_cifar10_folder",
    "ood_digit_sets",
]
