"""Benchmark the flow models (family glow): one Glow step and a whole-model training step,
ours vs the same model on eager PyTorch ops vs torch.compile: python benchmarks/bench_glow.py [--quick]."""
import sys

from manifold_ext.benchmark import main

if __name__ == "__main__":
    main(["glow", *sys.argv[1:]])
