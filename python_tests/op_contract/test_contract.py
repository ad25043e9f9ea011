"""The contract every registered op keeps, checked for every :class:`OpCase` (see ``cases.py``).

opcheck on every sample (forward ops and the backward ops a backward pass
calls), values and gradients against the reference, float64 gradcheck and
gradgradcheck, torch.compile(fullgraph=True, dynamic=True), torch.export,
non-contiguous inputs, thread-count determinism, every CPU ISA copy, meta
tensors and mixed devices, the NaN rule, errors raised at trace time as at
run time, and CPU/CUDA agreement where a GPU exists.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import manifold_ext
from op_contract.cases import (
    BACKWARD_OPS,
    CASES,
    DIFFERENTIABLE,
    F64,
    OpCase,
    Sample,
    as_tuple,
    default_tolerance,
    ids,
    noncontiguous,
    record_op_calls,
    registered_ops,
    weighted_loss,
)

ALL_CASES = pytest.mark.parametrize("case", CASES, ids=ids(CASES))
DIFFERENTIABLE_CASES = pytest.mark.parametrize("case", DIFFERENTIABLE, ids=ids(DIFFERENTIABLE))
CASE_DTYPES = [(case, dtype) for case in CASES for dtype in case.dtypes]
WITH_DTYPES = pytest.mark.parametrize(
    "case,dtype", CASE_DTYPES, ids=[f"{c.name}-{str(d).removeprefix('torch.')}" for c, d in CASE_DTYPES]
)


BACKWARD_OPCHECKS = 3


def first_dtype(case):
    return case.dtypes[0]


def compiled_op(case, backend="aot_eager", dynamic=None):
    """torch.compile(fullgraph=True) of the op's wrapper. Dynamo's cache is cleared first: every case compiles the
    same lambda (one code object), whose recompilation limit would otherwise be spent across cases."""
    torch._dynamo.reset()
    return torch.compile(lambda *a, **k: case.op(*a, **k), fullgraph=True, dynamic=dynamic, backend=backend)


def assert_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Bit for bit (NaN where NaN)."""
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape}/{a.dtype} != {b.shape}/{b.dtype}"
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def gradients(case, sample: Sample, seed: int = 1):
    leaves = sample.grad_leaves()
    loss = weighted_loss(case(sample), seed)
    if not leaves or not isinstance(loss, torch.Tensor):
        return []
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def test_every_registered_op_has_a_case():
    """A new op family is covered by adding its OpCase; the backward ops are reached through their forward op."""
    covered = {case.name for case in CASES} | set(BACKWARD_OPS)
    assert registered_ops() == covered


# ---------------------------------------------------------------------------
# Values, gradients, gradcheck and gradgradcheck against the reference
# ---------------------------------------------------------------------------
@WITH_DTYPES
def test_values_match_reference_and_inputs_are_untouched(case, dtype):
    for sample in case.samples(dtype=dtype):
        before = [t.clone() for t in sample.tensors()]
        outputs = case(sample)
        case.check_values(sample, outputs, dtype)
        for old, new in zip(before, sample.tensors()):
            assert_same(new, old, f"{case.name}[{sample.name}] modified an input")


@DIFFERENTIABLE_CASES
def test_gradients_match_reference(case):
    for sample in case.samples(dtype=F64, requires_grad=True):
        ours = gradients(case, sample)
        reference = type(case)(**{**case.__dict__, "op": case.reference})
        theirs = gradients(reference, sample)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, msg=lambda m: f"{case.name}[{sample.name}]: {m}")


def _as_function(case, sample: Sample):
    """fn(*leaves) -> the sample's differentiable outputs, for gradcheck."""
    leaves = sample.grad_leaves()
    positions = {id(t): i for i, t in enumerate(leaves)}

    def fn(*values):
        rebuilt = sample.map_tensors(lambda t: values[positions[id(t)]] if id(t) in positions else t)
        return case(rebuilt)[: case.differentiable_outputs]

    return fn, leaves


@DIFFERENTIABLE_CASES
def test_gradcheck_and_gradgradcheck_float64(case):
    """First and second derivatives are right (numerically checked), not zeros (issue 13 item 2)."""
    assert case.gradcheck_params, f"{case.name}: declare gradcheck samples"
    for params in case.gradcheck_params:
        sample = case.make(params, dtype=F64, requires_grad=True)
        fn, leaves = _as_function(case, sample)
        assert torch.autograd.gradcheck(fn, tuple(leaves)), sample.name
        assert torch.autograd.gradgradcheck(fn, tuple(leaves)), sample.name


# ---------------------------------------------------------------------------
# As PyTorch citizens: opcheck, torch.compile, torch.export
# ---------------------------------------------------------------------------
@ALL_CASES
def test_opcheck_every_sample(case):
    """torch.library.opcheck on every sample of the op, and on the backward ops its backward pass calls (on the
    first BACKWARD_OPCHECKS samples: each backward opcheck also traces the second-order formula)."""
    seen = set()
    for k, sample in enumerate(case.samples(dtype=first_dtype(case), requires_grad=True)):
        with record_op_calls() as recorder:
            outputs = case(sample)
            loss = weighted_loss(outputs)
            if isinstance(loss, torch.Tensor) and k < BACKWARD_OPCHECKS:
                loss.backward()
        assert recorder.calls and recorder.calls[0][0] == case.overload
        for overload, args, kwargs in recorder.calls:
            seen.add(overload)
            torch.library.opcheck(overload, args, kwargs)
    if case.differentiable and case.has_backward_op:
        assert len(seen) >= 2, f"{case.name}: no backward op was exercised"
    if not case.differentiable and any(t.is_floating_point() for t in _first_nonempty(case).tensors()):
        # inputs that require grad: autograd is registered (region_system refuses a backward with a clear error;
        # the others return integers), so no silent "autograd kernel was not registered" fallback
        sample = _first_nonempty(case).map_tensors(
            lambda t: t.detach().requires_grad_() if t.is_floating_point() else t
        )
        torch.library.opcheck(case.overload, sample.args, sample.kwargs, test_utils="test_autograd_registration")


def _compile_samples(case):
    if case.compile_params:
        return [
            case.make(p, dtype=first_dtype(case), requires_grad=True, seed=i) for i, p in enumerate(case.compile_params)
        ]
    return case.samples(dtype=first_dtype(case), requires_grad=True)[:2]


@ALL_CASES
def test_torch_compile_fullgraph_dynamic_shapes(case):
    compiled = compiled_op(case, case.compile_backend, dynamic=True)
    for sample in _compile_samples(case):
        eager = case(sample)
        got = as_tuple(compiled(*sample.args, **sample.kwargs))
        for a, b in zip(got, eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)
        leaves = sample.grad_leaves()
        if leaves and isinstance(weighted_loss(eager), torch.Tensor):
            grads_eager = torch.autograd.grad(weighted_loss(case(sample)), leaves, allow_unused=True)
            grads_compiled = torch.autograd.grad(weighted_loss(got), leaves, allow_unused=True)
            for a, b in zip(grads_compiled, grads_eager):
                if a is not None or b is not None:
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@ALL_CASES
def test_torch_compile_inductor(case):
    """The same under inductor for every op (slow on a small shared CPU: it compiles the surrounding C++)."""
    compiled = compiled_op(case, "inductor", dynamic=True)
    for sample in _compile_samples(case):
        for a, b in zip(as_tuple(compiled(*sample.args, **sample.kwargs)), case(sample)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)


@ALL_CASES
def test_torch_export(case):
    sample = _first_nonempty(case)
    leaves, spec = sample.flat()
    tensor_positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

    class OneOp(torch.nn.Module):
        def forward(self, *tensors):
            values = list(leaves)
            for position, tensor in zip(tensor_positions, tensors):
                values[position] = tensor
            args, kwargs = torch.utils._pytree.tree_unflatten(values, spec)
            return case.op(*args, **kwargs)

    inputs = tuple(leaves[i] for i in tensor_positions)
    exported = torch.export.export(OneOp(), inputs)
    assert any(f"manifold_ext.{case.name}" in str(node.target) for node in exported.graph.nodes)
    for a, b in zip(as_tuple(exported.module()(*inputs)), case(sample)):
        assert_same(a, b, f"{case.name}: exported program")


# ---------------------------------------------------------------------------
# Layouts, threads, instruction sets
# ---------------------------------------------------------------------------
@ALL_CASES
def test_non_contiguous_inputs_give_the_same_bits(case):
    """Transposed or strided inputs: the same outputs (and gradients) as contiguous copies, bit for bit."""
    for sample in case.samples(dtype=case.dtypes[-1], requires_grad=True):
        strided = sample.map_tensors(noncontiguous)
        if not any(not t.is_contiguous() for t in strided.tensors()):
            continue  # nothing to lay out differently (0-dim or single-element tensors)
        if not case.layout_exact:  # the same numbers to rounding
            case.check_values(strided, case(strided), case.dtypes[-1])
            continue
        for a, b in zip(case(strided), case(sample)):
            assert_same(a, b, f"{case.name}[{sample.name}] non-contiguous")
        for a, b in zip(gradients(case, strided), gradients(case, sample)):
            assert_same(a, b, f"{case.name}[{sample.name}] non-contiguous gradient")


@pytest.mark.parametrize("case", [c for c in CASES if c.big_params], ids=ids([c for c in CASES if c.big_params]))
def test_result_independent_of_thread_count(case):
    """Outputs and gradients bit for bit the same on 1 and on several threads."""
    previous = torch.get_num_threads()
    for params in case.big_params:
        sample = case.make(params, dtype=first_dtype(case), requires_grad=True)
        results = []
        try:
            for threads in (1, max(2, previous)):
                torch.set_num_threads(threads)
                results.append((case(sample), gradients(case, sample)))
        finally:
            torch.set_num_threads(previous)
        (out1, grads1), (out2, grads2) = results
        for a, b in zip(out1 + tuple(grads1), out2 + tuple(grads2)):
            assert_same(a, b, f"{case.name}[{sample.name}]: 1 thread vs {max(2, previous)}")


def available_isas() -> list[str]:
    info = manifold_ext.build_info()
    in_use = info["cpu_isa_in_use"]
    isas = ["default"]
    for isa in ("avx2", "avx512"):
        if isa in info["cpu_isas_compiled"] and in_use in (isa, "avx512"):
            isas.append(isa)
    return isas


@pytest.fixture(scope="module")
def isa_results(tmp_path_factory):
    """Every case's samples (normal, NaN and extreme values; outputs and gradients) on each ISA copy."""
    worker = os.path.join(os.path.dirname(__file__), "isa_worker.py")
    folder = tmp_path_factory.mktemp("isa")
    procs = {}
    for isa in available_isas():  # concurrently: each mostly waits on importing torch
        env = dict(os.environ, ATEN_CPU_CAPABILITY=isa, OMP_NUM_THREADS="1")
        procs[isa] = subprocess.Popen(
            [sys.executable, worker, str(folder / f"{isa}.pt")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for isa, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        results[isa] = torch.load(folder / f"{isa}.pt", weights_only=False)
        assert results[isa]["isa"] == isa, f"asked for {isa}, kernels ran {results[isa]['isa']}"
    return results


def _assert_isa_agree(ours, base, what):
    if not ours.is_floating_point():
        assert torch.equal(ours, base), what
        return
    assert torch.equal(torch.isnan(ours), torch.isnan(base)), f"{what}: NaN where the default ISA has none"
    assert torch.equal(torch.isinf(ours), torch.isinf(base)), f"{what}: inf where the default ISA has none"
    tight = ours.dtype == F64
    # sums in another lane order: float64 sums with cancellation keep ~1e-7 of their terms' size
    torch.testing.assert_close(
        ours,
        base,
        rtol=1e-6 if tight else 2e-4,
        atol=1e-8 if tight else 1e-3,
        equal_nan=True,
        msg=lambda m: f"{what}: {m}",
    )


@ALL_CASES
def test_every_cpu_isa_copy_agrees(case, isa_results):
    """The same values (to rounding), the same NaN/inf pattern and the same errors on every ISA copy."""
    base = isa_results["default"]["results"][case.name]
    for isa, result in isa_results.items():
        entries = result["results"][case.name]
        assert len(entries) == len(base)
        for k, (entry, reference) in enumerate(zip(entries, base)):
            what = f"{case.name} sample {k} on {isa}"
            assert entry[0] == reference[0], f"{what}: {entry} vs {reference}"
            if entry[0] == "error":
                assert entry[1:] == reference[1:], what
                continue
            for ours, theirs in zip(entry[1] + entry[2], reference[1] + reference[2]):
                if ours is None or theirs is None:
                    assert ours is theirs, what
                else:
                    _assert_isa_agree(ours, theirs, what)


# ---------------------------------------------------------------------------
# Devices: meta tensors and mixed devices (issue 13 item 1)
# ---------------------------------------------------------------------------
def _first_nonempty(case, requires_grad=False):
    return next(
        s
        for s in case.samples(dtype=first_dtype(case), requires_grad=requires_grad)
        if all(t.numel() for t in s.tensors())
    )


@ALL_CASES
def test_meta_tensors_give_the_real_shapes_and_dtypes(case):
    for sample in case.samples(dtype=first_dtype(case)):
        real = case(sample)
        meta = case(sample.map_tensors(lambda t: t.detach().to("meta")))
        for a, b in zip(meta, real):
            assert a.device.type == "meta" and a.shape == b.shape and a.dtype == b.dtype, sample.name


def _mixed_samples(sample: Sample):
    """The sample with one tensor moved to the meta device, for each tensor that makes a real mix (a tensor
    next to others of rank >= 1)."""
    tensors = sample.tensors()
    for i in range(len(tensors)):
        others = [t for j, t in enumerate(tensors) if j != i]
        if any(t.dim() > 0 for t in others):
            yield i, sample.replace_tensor(i, lambda t: t.detach().to("meta"))


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if len(_first_nonempty(c).tensors()) > 1],
    ids=ids([c for c in CASES if len(_first_nonempty(c).tensors()) > 1]),
)
def test_mixed_devices_are_refused_by_wrapper_raw_op_and_compile(case):
    """A meta tensor mixed with real ones raises the kernels' device error; it never returns uninitialised memory."""
    sample = _first_nonempty(case)
    with record_op_calls() as recorder:
        case(sample)
    overload, raw_args, raw_kwargs = recorder.calls[0]
    raw = Sample(raw_args, raw_kwargs, "raw")
    compiled = compiled_op(case)
    for index, mixed in _mixed_samples(sample):
        with pytest.raises((RuntimeError, ValueError), match="device"):
            case(mixed)
        if index == 0:
            with pytest.raises(Exception, match="device"):
                compiled(*mixed.args, **mixed.kwargs)
    for _, mixed in _mixed_samples(raw):
        with pytest.raises((RuntimeError, ValueError), match="device"):
            overload(*mixed.args, **mixed.kwargs)


WITH_BACKWARD_OP = [c for c in DIFFERENTIABLE if c.has_backward_op]


@pytest.mark.parametrize("case", WITH_BACKWARD_OP, ids=ids(WITH_BACKWARD_OP))
def test_backward_ops_refuse_mixed_devices(case):
    sample = _first_nonempty(case, requires_grad=True)
    with record_op_calls() as recorder:
        weighted_loss(case(sample)).backward()
    backward_calls = [call for call in recorder.calls if call[0] != case.overload]
    assert backward_calls
    for overload, args, kwargs in backward_calls:
        call = Sample(args, kwargs, overload.__name__).map_tensors(lambda t: t.detach())
        for _, mixed in _mixed_samples(call):
            with pytest.raises((RuntimeError, ValueError), match="device"):
                overload(*mixed.args, **mixed.kwargs)


# ---------------------------------------------------------------------------
# The NaN rule (issue 13 item 7) and errors at trace time
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case", [c for c in CASES if c.nan_rule != "none"], ids=ids([c for c in CASES if c.nan_rule != "none"])
)
def test_nan_rule(case):
    """A NaN in any one floating input: NaN exactly where the plain-PyTorch reference has NaN, or a clear error."""
    for dtype in case.dtypes:
        for sample in case.samples(dtype=dtype)[:3]:
            floats = [i for i, t in enumerate(sample.tensors()) if t.is_floating_point() and t.numel() and t.dim()]
            for index in floats:
                poisoned = sample.replace_tensor(index, lambda t: _with_nan(t))
                if case.nan_rule == "raises":
                    with pytest.raises(ValueError, match=case.nan_error):
                        case(poisoned)
                    continue
                case.check_nan_pattern(poisoned, f"{case.name}[{sample.name}] NaN in tensor {index}")


def test_check_nan_pattern_compares_integer_outputs_only_when_asked():
    def op(x):
        return x * 2, torch.zeros(x.shape[0], dtype=torch.int64)

    def reference(x):
        return x + x, torch.ones(x.shape[0], dtype=torch.int64)

    case = OpCase(name="toy", op=op, reference=reference, build=None, params=[])
    sample = Sample((torch.tensor([1.0, float("nan")]),), {}, "toy")
    case.check_nan_pattern(sample, "toy", integers_equal=False)
    with pytest.raises(AssertionError, match="toy: integer outputs differ from the reference"):
        case.check_nan_pattern(sample, "toy")
    case.op = lambda x: (x.nan_to_num(), reference(x)[1])  # the NaN replaced by a number
    with pytest.raises(AssertionError, match="toy: NaN pattern differs from the reference"):
        case.check_nan_pattern(sample, "toy", integers_equal=False)


def _with_nan(t: torch.Tensor) -> torch.Tensor:
    out = t.detach().clone()
    out.view(-1)[out.numel() // 2] = float("nan")
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c.invalid], ids=ids([c for c in CASES if c.invalid]))
def test_bad_input_raises_the_same_error_eagerly_and_at_trace_time(case):
    for params, mutate, error, match, at_trace in case.invalid:
        sample = mutate(case.make(params, dtype=first_dtype(case)))
        with pytest.raises(error, match=match):
            case(sample)
        if at_trace:
            compiled = compiled_op(case)
            with pytest.raises(Exception, match=match):
                compiled(*sample.args, **sample.kwargs)
            with pytest.raises(Exception, match=match):  # and so does the fake kernel on meta tensors
                case(sample.map_tensors(lambda t: t.to("meta")))


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------
@pytest.mark.cuda
@WITH_DTYPES
def test_cuda_matches_cpu(case, dtype):
    for sample in case.samples(dtype=dtype, requires_grad=True):
        on_cuda = sample.map_tensors(lambda t: t.detach().cuda().requires_grad_(t.requires_grad))
        for a, b in zip(case(on_cuda), case(sample)):
            tol = default_tolerance(dtype) if a.is_floating_point() else dict(rtol=0, atol=0)
            torch.testing.assert_close(a.cpu(), b, equal_nan=True, **tol)
        for a, b in zip(gradients(case, on_cuda), gradients(case, sample)):
            torch.testing.assert_close(a.cpu(), b, **default_tolerance(dtype))
