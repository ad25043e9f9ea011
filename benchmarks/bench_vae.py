"""Benchmark op family 4, closest-centre Gaussian KL: python benchmarks/bench_vae.py [--quick]."""
import sys

from manifold_ext.benchmark import main

if __name__ == "__main__":
    main(["vae", *sys.argv[1:]])
