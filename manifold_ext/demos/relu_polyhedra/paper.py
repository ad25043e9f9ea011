"""The numbers of paper 001 (Liu et al., "Integrating geometries of ReLU feedforward neural networks")
that the demo is compared with, copied from its text and tables (never derived from our runs)."""

from __future__ import annotations

# Section 4.1.1 / Fig. 1: the 2 x 10 network on x1^2 + x2^2 - 0.4.
FIG1 = {"box": 218, "R2": 237, "bounded": 211, "unbounded": 26}

# Section 4.1.3 / Fig. 2: the 3 x 10 network on x1^2 + x2^2 + x3^2 - 3, regions in [-1, 1]^3.
REGIONS_3D_BOX = 2212

# Table 1: (layers, nodes) -> polyhedra count over 50 initialisations and validation MSE.
TABLE1 = {
    (2, 5): {"mean": 55.10, "sd": 8.28, "median": 56, "min": 37, "max": 70, "mse": 0.001389, "mse_sd": 0.000618},
    (4, 5): {"mean": 163.33, "sd": 43.99, "median": 156.5, "min": 101, "max": 277, "mse": 0.001086, "mse_sd": 0.001553},
    (6, 5): {"mean": 260.70, "sd": 108.29, "median": 249, "min": 114, "max": 664, "mse": 0.000947, "mse_sd": 0.001926},
    (8, 5): {"mean": 472.53, "sd": 232.09, "median": 392, "min": 265, "max": 1081, "mse": 0.000593, "mse_sd": 0.000518},
    (10, 5): {
        "mean": 588.80,
        "sd": 181.59,
        "median": 539.5,
        "min": 378,
        "max": 1072,
        "mse": 0.000635,
        "mse_sd": 0.000711,
    },
    (3, 5): {"mean": 110.20, "sd": 27.35, "median": 105, "min": 75, "max": 210, "mse": 0.000651, "mse_sd": 0.000300},
    (3, 10): {"mean": 392.20, "sd": 64.65, "median": 379, "min": 302, "max": 532, "mse": 0.000081, "mse_sd": 0.000021},
    (3, 15): {
        "mean": 788.83,
        "sd": 138.14,
        "median": 774,
        "min": 572,
        "max": 1051,
        "mse": 0.000036,
        "mse_sd": 0.000014,
    },
    (3, 20): {
        "mean": 1405.30,
        "sd": 233.28,
        "median": 1376,
        "min": 970,
        "max": 1938,
        "mse": 0.000019,
        "mse_sd": 0.000003,
    },
    (3, 25): {
        "mean": 2225.60,
        "sd": 315.68,
        "median": 2245.5,
        "min": 1592,
        "max": 3153,
        "mse": 0.000014,
        "mse_sd": 0.000002,
    },
}
TABLE1_SEEDS = 50

# Table 2 (MNIST, 5 hidden layers of n nodes, 30 training images): active bits per region.
TABLE2_ACTIVE_BITS = {
    300: {"mean": 658.30, "sd": 64.07, "min": 520, "max": 785},
    350: {"mean": 740.57, "sd": 82.18, "min": 525, "max": 885},
    400: {"mean": 780.00, "sd": 97.48, "min": 556, "max": 942},
    450: {"mean": 886.87, "sd": 105.19, "min": 636, "max": 1056},
    500: {"mean": 975.00, "sd": 124.29, "min": 719, "max": 1181},
}

# MNIST structures of Section 4.2.1.1 (hidden layers, nodes per layer).
STRUCTURES = {1: (3, 200), 2: (5, 300), 3: (5, 500)}

# Table 3: 1-NN accuracy (same class as the nearest neighbour), MNIST, in percent.
TABLE3 = {
    "euclidean": {"train": 97.37, "test": 95.58},
    1: {"train": 99.50, "test": 98.26},
    2: {"train": 99.52, "test": 98.06},
    3: {"train": 99.58, "test": 98.05},
}

# Table 4: Hamming distance to a point sampled at a fixed Euclidean distance (MNIST): mean and SD.
TABLE4 = {
    1: {
        "train": {0.5: (52.97, 13.80), 0.75: (102.76, 30.90), 1.0: (131.82, 35.73)},
        "test": {0.5: (52.48, 13.66), 0.75: (101.40, 29.71), 1.0: (130.51, 34.43)},
        "fgsm": {0.5: (75.27, 13.37), 0.75: (128.01, 35.27), 1.0: (151.09, 36.89)},
    },
    2: {
        "train": {0.5: (99.97, 41.88), 0.75: (173.59, 69.61), 1.0: (251.73, 93.69)},
        "test": {0.5: (99.36, 42.65), 0.75: (170.45, 67.51), 1.0: (246.99, 90.01)},
        "fgsm": {0.5: (178.57, 83.69), 0.75: (264.66, 99.79), 1.0: (339.07, 106.60)},
    },
    3: {
        "train": {0.5: (129.98, 56.91), 0.75: (234.34, 92.26), 1.0: (329.89, 107.36)},
        "test": {0.5: (129.05, 56.73), 0.75: (242.05, 87.36), 1.0: (344.97, 106.26)},
        "fgsm": {0.5: (219.92, 99.16), 0.75: (351.10, 113.61), 1.0: (439.77, 118.09)},
    },
}

# Table 5 (structure 2): Hamming distance vs regions along the segment, six nearest-neighbour pairs.
TABLE5 = {"hamming": [98, 132, 184, 232, 282, 320], "regions": [100, 135, 193, 252, 299, 351]}

# Fig. 4: regions along the segment between 1000 Euclidean nearest-neighbour training pairs,
# 1..5 hidden layers of 200 nodes: the mean grows from 21 to 49, the maximum from 41 to 303.
FIG4 = {"mean": {1: 21, 5: 49}, "max": {1: 41, 5: 303}}

# Table 6 (structure 2, 1000 points each): Chebyshev radius of the region holding a point.
TABLE6 = {
    "train": {"mean": 0.23, "sd": 0.081, "max": 0.43, "min": 0.016},
    "test": {"mean": 0.21, "sd": 0.079, "max": 0.43, "min": 0.018},
    "adversarial": {"mean": 0.13, "sd": 0.092, "max": 0.54, "min": 0.097},
}
