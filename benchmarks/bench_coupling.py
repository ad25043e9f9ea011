"""Benchmark op family 1, fused affine coupling: python benchmarks/bench_coupling.py [--quick]."""
import sys

from manifold_ext.benchmark import main

if __name__ == "__main__":
    main(["coupling", *sys.argv[1:]])
