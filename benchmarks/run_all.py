"""Benchmark every op family: python benchmarks/run_all.py [--quick] [--device cuda]."""
import sys

from manifold_ext.benchmark import main

if __name__ == "__main__":
    main(sys.argv[1:])
