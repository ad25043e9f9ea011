"""Benchmark op families 2 and 3, diffusion likelihood and sampler steps:
python benchmarks/bench_diffusion.py [--quick]; add --end-to-end for the full Fig. 5 timing."""
import json
import sys

from manifold_ext.benchmark import main
from manifold_ext.benchmark.diffusion import end_to_end

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--end-to-end" in args:
        print(json.dumps(end_to_end(), indent=2))
    else:
        main(["diffusion", *args])
