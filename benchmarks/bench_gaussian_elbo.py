"""Benchmark the fused Gaussian ELBO op family: python benchmarks/bench_gaussian_elbo.py [--quick]."""
import sys

from manifold_ext.benchmark import main

if __name__ == "__main__":
    main(["gaussian_elbo", *sys.argv[1:]])
