"""Data that ships with the package's dependencies or loads from a local folder (no downloads)."""
from manifold_ext.datasets.digits_binary import ImageSplit, load_celeba_gender, load_digits_binary

__all__ = ["ImageSplit", "load_digits_binary", "load_celeba_gender"]
