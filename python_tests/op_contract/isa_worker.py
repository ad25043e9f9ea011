"""Runs every case's samples on the CPU instruction set that ATEN_CPU_CAPABILITY selects and saves the results.

``python isa_worker.py OUT`` writes ``{"isa": ..., "results": {case: [entry, ...]}}`` with torch.save, where an
entry is ``("ok", outputs, grads)`` or ``("error", type name, message)``. test_contract.py runs one worker per
ISA copy of the kernels and compares them: normal values, the special values of the NaN rule (NaN, inf,
float32-overflowing, denormal), and the gradients (the backward kernels).
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import manifold_ext  # noqa: E402
from op_contract.cases import CASES, weighted_loss  # noqa: E402


def run(case, sample):
    try:
        outputs = case(sample)
        grads = ()
        leaves = sample.grad_leaves()
        if leaves:
            loss = weighted_loss(outputs)
            if isinstance(loss, torch.Tensor):
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return ("ok", [o.detach() for o in outputs], [None if g is None else g.detach() for g in grads])
    except Exception as error:  # the error itself is the result to compare
        return ("error", type(error).__name__, str(error).splitlines()[0])


def main(out_path: str) -> None:
    torch.set_num_threads(1)
    results = {}
    for case in CASES:
        entries = []
        for dtype in case.dtypes:
            for specials in (None, "nan", "extreme"):
                grad = case.differentiable and specials is None
                for sample in case.samples(dtype=dtype, requires_grad=grad, specials=specials):
                    entries.append(run(case, sample))
        results[case.name] = entries
    torch.save({"isa": manifold_ext.build_info()["cpu_isa_in_use"], "results": results}, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
