"""Datasets for the demos and tests. Everything ships or is generated; real-image
sets (MNIST) load from a local folder the user points at. Nothing downloads."""
from manifold_ext.datasets.digits import TwoDigitData, compose_pairs, two_digit_digits, two_digit_mnist
from manifold_ext.datasets.mnist import load_mnist

__all__ = ["TwoDigitData", "compose_pairs", "two_digit_digits", "two_digit_mnist", "load_mnist"]
