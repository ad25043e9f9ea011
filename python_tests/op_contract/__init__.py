"""The op-contract harness: one :class:`~op_contract.cases.OpCase` per registered op, one shared suite.

Adding an op family: write its :class:`OpCase` (the op, how to build its
inputs, its reference, its tolerances) in ``cases.py``; ``test_contract.py``
(opcheck on every sample, values and gradients against the reference, float64
gradcheck and gradgradcheck, torch.compile with dynamic shapes, torch.export,
non-contiguous inputs, thread-count determinism, every CPU ISA copy, mixed
devices, the NaN rule, CPU/CUDA agreement) and ``test_properties.py`` (the
hypothesis property tests) then cover it.
"""
