"""Benchmark op family 5, ReLU activation patterns and region LPs: python benchmarks/bench_relu.py [--quick]."""
import sys

from manifold_ext.benchmark import main

if __name__ == "__main__":
    main(["relu", *sys.argv[1:]])
