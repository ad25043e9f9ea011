"""One :class:`OpCase` per registered op: the op, how its inputs are built, its reference, its tolerances.

A case builds every sample from a small dict of parameters (shapes, modes,
schedules) and a :class:`Maker` (device, dtype, seed, layout, special
values), so the fixed samples of ``test_contract.py`` and the drawn ones of
``test_properties.py`` come from the same builder. Backward ops are not cases
of their own: the suite records the backward-op calls a backward pass makes
(``record_op_calls``) and checks those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from manifold_ext import ops
from manifold_ext import reference as ref

F32, F64 = torch.float32, torch.float64
SPECIAL_VALUES = {
    "nan": (math.nan,),
    # NaN, infinities, values that overflow float32 products, float32 denormals, signed zero
    "extreme": (math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38, 1e-40, -1e-42, -0.0, 1e20),
}


# ---------------------------------------------------------------------------
# Samples and how their tensors are made
# ---------------------------------------------------------------------------
@dataclass
class Sample:
    args: tuple
    kwargs: dict
    name: str

    def flat(self):
        return pytree.tree_flatten((self.args, self.kwargs))

    def tensors(self) -> list[torch.Tensor]:
        return [leaf for leaf in self.flat()[0] if isinstance(leaf, torch.Tensor)]

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Sample":
        args, kwargs = pytree.tree_map(lambda v: fn(v) if isinstance(v, torch.Tensor) else v, (self.args, self.kwargs))
        return Sample(tuple(args), dict(kwargs), self.name)

    def replace_tensor(self, index: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Sample":
        """Apply ``fn`` to the ``index``-th tensor leaf only."""
        counter = iter(range(10**9))
        return self.map_tensors(lambda t: fn(t) if next(counter) == index else t)

    def grad_leaves(self) -> list[torch.Tensor]:
        return [t for t in self.tensors() if t.requires_grad]


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in memory that is not contiguous: channels-last for rank >= 3, transposed for rank 2, else
    every other element of a buffer twice as long. A leaf (no graph), like the input."""
    if t.dim() >= 3 and t.shape[1] > 1 and math.prod(t.shape[2:]) > 1:  # channels-last strides
        out = t.detach().movedim(1, -1).contiguous().movedim(-1, 1)
    elif t.dim() >= 2 and t.shape[-1] > 1 and t.shape[-2] > 1:
        out = t.detach().transpose(-1, -2).contiguous().transpose(-1, -2)
    elif t.dim() >= 1:
        buffer = t.new_empty((*t.shape[:-1], 2 * t.shape[-1]))
        out = buffer[..., ::2]
        out.copy_(t.detach())
    else:
        return t
    out = out.detach()
    return out.requires_grad_() if t.requires_grad else out


def expanded(t: torch.Tensor) -> torch.Tensor:
    """Row 0 repeated over the batch (stride 0 on dim 0): other values, but a valid input with an expanded layout."""
    if t.dim() == 0 or t.shape[0] < 2:
        return t
    out = t.detach()[:1].expand_as(t)
    return out.requires_grad_() if t.requires_grad else out


class Maker:
    """Builds one sample's tensors from a seeded generator (values drawn in float64 on the CPU, then cast and
    moved), optionally laid out non-contiguously and sprinkled with special values."""

    def __init__(
        self,
        device="cpu",
        dtype=F32,
        requires_grad=False,
        seed=0,
        layout: Callable[[torch.Tensor], torch.Tensor] | None = None,
        specials: str | None = None,
    ):
        self.device = torch.device(device)
        self.dtype = dtype
        self.requires_grad = requires_grad
        self.generator = torch.Generator().manual_seed(seed)
        self.layout = layout
        self.specials = specials

    def _finish(self, values: torch.Tensor, grad: bool, sprinkle: bool = True) -> torch.Tensor:
        if sprinkle and self.specials and values.is_floating_point() and values.numel():
            pool = torch.tensor(SPECIAL_VALUES[self.specials], dtype=F64)
            count = max(1, values.numel() // 6)
            where = torch.randint(0, values.numel(), (count,), generator=self.generator)
            picks = pool[torch.randint(0, len(pool), (count,), generator=self.generator)]
            values = values.clone().view(-1).index_copy(0, where, picks.to(values.dtype)).view(values.shape)
        t = values.to(self.device)
        if self.layout is not None:
            t = self.layout(t)
        if grad and self.requires_grad and t.is_floating_point():
            t = t.detach().requires_grad_()
        return t

    def randn(self, shape, scale=1.0, shift=0.0, grad=True, dtype=None) -> torch.Tensor:
        values = torch.randn(tuple(shape), generator=self.generator, dtype=F64) * scale + shift
        return self._finish(values.to(dtype or self.dtype), grad)

    def uniform(self, shape, low, high, grad=True, dtype=None) -> torch.Tensor:
        values = torch.rand(tuple(shape), generator=self.generator, dtype=F64) * (high - low) + low
        return self._finish(values.to(dtype or self.dtype), grad)

    def round_plus(self, shape, spread, jitter, spacing=1.0, grad=True) -> torch.Tensor:
        """Values near grid points (away from the half-way points where a chosen centre jumps)."""
        base = torch.round(torch.randn(tuple(shape), generator=self.generator, dtype=F64) * spread)
        noise = (torch.rand(tuple(shape), generator=self.generator, dtype=F64) - 0.5) * 2 * jitter
        return self._finish(((base + noise) * spacing).to(self.dtype), grad)

    def bools(self, shape, p=0.5) -> torch.Tensor:
        return self._finish(torch.rand(tuple(shape), generator=self.generator) < p, grad=False)

    def packed(self, n, words) -> torch.Tensor:
        values = torch.randint(-(2**63), 2**63 - 1, (n, words), generator=self.generator, dtype=torch.int64)
        return self._finish(values, grad=False)

    def schedule(self, values: torch.Tensor) -> torch.Tensor:
        """A per-sample abar: float64 on the device, never sprinkled, laid out or differentiable."""
        return values.to(self.device)

    def rand01(self, shape) -> torch.Tensor:
        return torch.rand(tuple(shape), generator=self.generator, dtype=F64)


# ---------------------------------------------------------------------------
# The case
# ---------------------------------------------------------------------------
Outputs = tuple  # of tensors


def as_tuple(outputs) -> Outputs:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def upcast(sample: Sample) -> Sample:
    """The sample with float tensors in float64 (the reference's truth for float32 inputs)."""
    return sample.map_tensors(lambda t: t.detach().double() if t.is_floating_point() and t.dtype != F64 else t)


@dataclass(repr=False)
class OpCase:
    name: str
    op: Callable
    reference: Callable
    build: Callable[[dict, Maker], Sample]
    params: list[dict]
    dtypes: tuple = (F32, F64)
    differentiable: bool = True
    differentiable_outputs: int | None = None  # how many leading outputs carry gradients (None: all)
    has_backward_op: bool = True  # its first derivative runs through a fused backward op (RK4's is plain PyTorch)
    layout_exact: bool = True  # non-contiguous inputs give the same bits (False: region_system's batched GEMMs)
    gradcheck_params: list[dict] = field(default_factory=list)
    big_params: list[dict] = field(default_factory=list)  # samples large enough to split across threads
    # (dtype, sample) -> a dict of assert_close tolerances, or one per output
    tolerance: Callable[[torch.dtype, Sample], Any] = None
    reference_in_float64: bool = False  # compare float32 results with the reference on float64 inputs
    check: Callable | None = None  # (case, sample, outputs, dtype) -> None, replacing the default comparison
    nan_rule: str = "reference"  # "reference": the NaN pattern of the reference; "raises"; "none"
    nan_error: str = ""
    strategy: Callable[[], Any] | None = None  # () -> hypothesis strategy of params
    invalid_leaf: int | None = 0  # the tensor leaf a property test reshapes into an invalid input
    compile_backend: str = "aot_eager"
    compile_params: list[dict] | None = None  # the compile test's samples (default: the first two)
    # (params, mutate(sample) -> sample, exception, match, the fake kernel raises it too)
    invalid: list = field(default_factory=list)

    def __repr__(self) -> str:
        return f"OpCase({self.name})"

    @property
    def overload(self):
        return getattr(torch.ops.manifold_ext, self.name).default

    def make(
        self, params: dict, device="cpu", dtype=F32, requires_grad=False, seed=0, layout=None, specials=None
    ) -> Sample:
        maker = Maker(device, dtype, requires_grad and self.differentiable, seed, layout, specials)
        return self.build(params, maker)

    def samples(self, device="cpu", dtype=F32, requires_grad=False, **maker) -> list[Sample]:
        return [self.make(p, device, dtype, requires_grad, seed=i, **maker) for i, p in enumerate(self.params)]

    def __call__(self, sample: Sample) -> Outputs:
        return as_tuple(self.op(*sample.args, **sample.kwargs))

    def expected(self, sample: Sample, dtype) -> Outputs:
        if self.reference_in_float64 and dtype != F64:
            sample = upcast(sample)
        return as_tuple(self.reference(*sample.args, **sample.kwargs))

    def tolerances(self, dtype, sample, count) -> list[dict]:
        tol = self.tolerance(dtype, sample) if self.tolerance else default_tolerance(dtype)
        return list(tol) if isinstance(tol, (list, tuple)) else [tol] * count

    def check_values(self, sample: Sample, outputs: Outputs, dtype) -> None:
        """The op's outputs against the reference (raises AssertionError)."""
        if self.check is not None:
            return self.check(self, sample, outputs, dtype)
        expected = self.expected(sample, dtype)
        assert len(outputs) == len(expected)
        for ours, want, tol in zip(outputs, expected, self.tolerances(dtype, sample, len(outputs))):
            assert ours.shape == want.shape, f"{self.name}: shape {tuple(ours.shape)} != reference {tuple(want.shape)}"
            if not ours.is_floating_point():
                assert ours.dtype == want.dtype and torch.equal(ours, want), f"{self.name}: integer outputs differ"
            else:
                torch.testing.assert_close(ours.detach().to(want.dtype), want.detach(), equal_nan=True, **tol)

    def check_nan_pattern(self, sample: Sample, where: str, integers_equal: bool = True) -> None:
        """The op's floating outputs are NaN exactly where the reference's are (raises AssertionError naming
        ``where``); with ``integers_equal`` its integer outputs equal the reference's too."""
        got, want = self(sample), as_tuple(self.reference(*sample.args, **sample.kwargs))
        for a, b in zip(got, want):
            if a.is_floating_point():
                assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{where}: NaN pattern differs from the reference"
            elif integers_equal:
                assert torch.equal(a, b), f"{where}: integer outputs differ from the reference"


def default_tolerance(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == F64 else dict(rtol=1e-5, atol=1e-5)


def exact(dtype, sample):
    return dict(rtol=0, atol=0)


def op_case(name: str, build: Callable[[dict, Maker], Sample], **fields) -> OpCase:
    """The :class:`OpCase` of ``manifold_ext.ops.<name>``, checked against ``manifold_ext.reference.<name>_reference``
    (every wrapper and its reference share the name this way; ``test_docs_and_signatures`` checks the pairs)."""
    return OpCase(name=name, op=getattr(ops, name), reference=getattr(ref, f"{name}_reference"), build=build, **fields)


def integer_case(name: str, build: Callable[[dict, Maker], Sample], **fields) -> OpCase:
    """A case of an op on integer (packed bit-pattern) tensors: not differentiable, int64 only, exact, no NaN."""
    return op_case(name, build, differentiable=False, dtypes=(torch.int64,), tolerance=exact, nan_rule="none", **fields)


# ---------------------------------------------------------------------------
# Recording the raw op calls a wrapper (or a backward pass) makes
# ---------------------------------------------------------------------------
class record_op_calls(TorchDispatchMode):
    """Records every ``torch.ops.manifold_ext`` call (forward and backward ops) as (overload, args, kwargs)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "namespace", None) == "manifold_ext":
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def weighted_loss(outputs: Outputs, seed: int = 1) -> torch.Tensor:
    """sum_k <w_k, out_k> over the differentiable outputs, with fixed random weights (a generic cotangent)."""
    generator = torch.Generator().manual_seed(seed)
    total = 0
    for out in outputs:
        if out.is_floating_point() and out.requires_grad:
            weights = torch.randn(out.shape, generator=generator, dtype=F64).to(out.device, out.dtype)
            total = total + (out * weights).sum()
    return total


# ---------------------------------------------------------------------------
# Op family 1: affine coupling
# ---------------------------------------------------------------------------
def _coupling(p, m: Maker) -> Sample:
    shape = tuple(p["shape"])
    x = m.randn(shape)
    h = m.randn((shape[0], 2 * shape[1], *shape[2:]), scale=p.get("raw_scale", 2.0))
    kwargs = dict(scale=p["scale"], layout=p["layout"], clamp=p.get("clamp", 2.0), reverse=p["reverse"])
    return Sample((x, h), kwargs, f"{shape}-{p['scale']}-{p['layout']}-{'rev' if p['reverse'] else 'fwd'}")


def _coupling_tolerance(dtype, sample):
    x = sample.args[0]
    per_sample = max(1, math.prod(x.shape[1:]))
    y = default_tolerance(dtype) if dtype == F64 else dict(rtol=1e-5, atol=2e-5)
    logdet = dict(rtol=y["rtol"], atol=y["atol"] * per_sample**0.5)  # a sum over the sample
    return [y, logdet]


def _coupling_strategy():
    from hypothesis import strategies as st

    return st.fixed_dictionaries(
        dict(
            shape=st.tuples(st.integers(0, 3), st.integers(0, 3)).flatmap(
                lambda bc: st.lists(st.integers(0, 4), max_size=2).map(lambda sp: (*bc, *sp))
            ),
            scale=st.sampled_from(ops.COUPLING_SCALES),
            layout=st.sampled_from(ops.COUPLING_LAYOUTS),
            reverse=st.booleans(),
            clamp=st.floats(0.5, 3.0),
        )
    )


AFFINE_COUPLING = op_case(
    "affine_coupling",
    _coupling,
    params=[
        dict(shape=(2, 3, 5, 7), scale="glow", layout="cross", reverse=False),
        dict(shape=(3, 4), scale="exp", layout="split", reverse=True),
        dict(shape=(0, 2, 3), scale="softclamp", layout="cross", reverse=False),
        dict(shape=(2, 2, 3, 4, 5), scale="softclamp", layout="split", reverse=True, clamp=1.5),
        dict(shape=(5, 1), scale="glow", layout="cross", reverse=True),
        dict(shape=(1, 2, 70, 70), scale="exp", layout="cross", reverse=False),  # rows longer than a 4096 chunk
    ]
    + [
        dict(shape=(2, 3, 4, 5), scale=scale, layout=layout, reverse=reverse, clamp=1.5)  # the other modes
        for scale, layout, reverse in [
            ("glow", "split", False),
            ("glow", "cross", True),
            ("glow", "split", True),
            ("exp", "cross", False),
            ("exp", "split", False),
            ("exp", "cross", True),
            ("softclamp", "split", False),
            ("softclamp", "cross", True),
        ]
    ],
    gradcheck_params=[
        dict(shape=(1, 2, 3), scale="glow", layout="cross", reverse=False),
        dict(shape=(2, 1, 2), scale="exp", layout="split", reverse=True),
        dict(shape=(1, 2, 2, 2), scale="softclamp", layout="cross", reverse=True, clamp=1.5),
    ],
    big_params=[dict(shape=(4, 8, 64, 64), scale="glow", layout="cross", reverse=False)],
    tolerance=_coupling_tolerance,
    strategy=_coupling_strategy,
    compile_backend="inductor",
    compile_params=[
        dict(shape=(4, 3, 8, 8), scale="glow", layout="cross", reverse=False),  # one dynamic-shape graph
        dict(shape=(3, 3, 6, 5), scale="glow", layout="cross", reverse=False),
    ],
    invalid=[
        (
            dict(shape=(2, 3, 4), scale="glow", layout="cross", reverse=False),
            lambda s: replace(s, args=(s.args[0], s.args[1][:, :5])),
            RuntimeError,
            r"h must have 2\*C = 6 channels",
            True,
        )
    ],
)


# ---------------------------------------------------------------------------
# Op families 2 and 3: diffusion likelihood and sampler steps
# ---------------------------------------------------------------------------
def _per_sample_pair(m: Maker, batch: int, rule: str):
    """Per-sample (a, b) abar pairs for a schedule rule, with a few repeats and edge lanes."""
    cleaner = m.rand01((batch,)) * 0.9 + 0.05
    if batch > 2:
        cleaner[1] = cleaner[0]
    noisier = cleaner * (m.rand01((batch,)) * 0.5 + 0.4)
    if rule == "likelihood":  # (abar_t, abar_next), a t = 0 pair every third sample
        cleaner[::3] = 1.0
        return m.schedule(cleaner), m.schedule(noisier)
    if rule == "forward":  # (abar_t, abar_next)
        return m.schedule(cleaner), m.schedule(noisier)
    prev = cleaner.clone()  # backward: (abar_t, abar_prev), a final step (abar_prev = 1) every third sample
    prev[::3] = 1.0
    return m.schedule(noisier), m.schedule(prev)


def _pair(p, m, batch, rule):
    return _per_sample_pair(m, batch, rule) if p["abar"] == "per_sample" else p["abar"]


def _scale_of(a, b):
    """max over samples of 1 / (1 - b / a): the likelihood terms grow like 1 / variance."""
    a = a if isinstance(a, torch.Tensor) else torch.tensor(float(a), dtype=F64)
    b = b if isinstance(b, torch.Tensor) else torch.tensor(float(b), dtype=F64)
    ratio = (b / a).cpu()
    return float((1 / (1 - ratio)).max()) if ratio.numel() else 1.0


def _nll(p, m: Maker) -> Sample:
    shape = tuple(p["shape"])
    x_t, x_next, eps = (m.randn(shape) for _ in range(3))
    acc = m.randn((shape[0],), dtype=p.get("acc", F64))
    abar_t, abar_next = _pair(p, m, shape[0], "likelihood")
    return Sample((acc, x_t, x_next, eps, abar_t, abar_next), {}, f"{shape}-{p['abar']}")


def _nll_tolerance(dtype, sample):
    acc, x_t = sample.args[0], sample.args[1]
    numel = max(1, math.prod(x_t.shape[1:]))
    scale = _scale_of(sample.args[4], sample.args[5])
    if dtype == F64 and acc.dtype == F64:
        return dict(rtol=1e-6, atol=1e-9 * numel * scale)
    return dict(rtol=1e-5, atol=2e-5 * numel**0.5 * scale)


def _nll_and_forward(p, m: Maker) -> Sample:
    shape = tuple(p["shape"])
    x_t, x_next, eps, noise = (m.randn(shape) for _ in range(4))
    acc = m.randn((shape[0],), dtype=p.get("acc", F64))
    if p["abar"] == "per_sample":
        abar_t, abar_next = _per_sample_pair(m, shape[0], "likelihood")
        abar_after = m.schedule(abar_next.cpu() * (m.rand01((shape[0],)) * 0.7 + 0.3))
    else:
        abar_t, abar_next, abar_after = p["abar"]
    return Sample((acc, x_t, x_next, eps, noise, abar_t, abar_next, abar_after), {}, f"{shape}-{p['abar']}")


def _nll_and_forward_tolerance(dtype, sample):
    acc_tol = _nll_tolerance(dtype, replace(sample, args=sample.args[:4] + sample.args[5:7]))
    return [acc_tol, default_tolerance(dtype)]


def _linear_step_sample(p, m: Maker, rule: str, with_eta: bool) -> Sample:
    shape = tuple(p["shape"])
    x, eps = m.randn(shape), m.randn(shape)
    noise = m.randn(shape) if p.get("noise", True) else None
    a, b = _pair(p, m, shape[0], rule)
    if rule == "forward":
        return Sample((x, eps, a, b), {}, f"{shape}-{p['abar']}")
    kwargs = dict(noise=noise)
    if with_eta:
        kwargs["eta"] = p.get("eta", 0.3)
    return Sample((x, eps, a, b), kwargs, f"{shape}-{p['abar']}-{'noise' if noise is not None else 'mean'}")


def _linear_step_tolerance(dtype, sample):
    a, b = (torch.as_tensor(v, dtype=F64).cpu() for v in sample.args[2:4])
    ratio = b / a
    ratio = float(ratio.max()) if ratio.numel() else 1.0  # the coefficients grow like abar_prev / abar_t
    tol = default_tolerance(dtype)
    return dict(rtol=tol["rtol"], atol=tol["atol"] * (1 + ratio) * 100)


def _shape_strategy(min_rank=1, max_rank=3, max_side=5):
    from hypothesis import strategies as st

    return st.tuples(
        st.integers(0, 4), st.lists(st.integers(0, max_side), min_size=min_rank - 1, max_size=max_rank - 1)
    ).map(lambda t: (t[0], *t[1]))


def _abar_strategy(rule):
    from hypothesis import strategies as st

    def scalar_pair(values):
        low, high = sorted(values)
        if rule == "likelihood":
            return (high, low) if low < high else (1.0, 0.5)
        if rule == "forward":
            return (high, low)
        return (low, high) if low < 1 else (0.5, 1.0)

    scalar = st.lists(st.floats(1e-4, 1.0), min_size=2, max_size=2).map(scalar_pair)
    return st.one_of(scalar, st.just("per_sample"))


def _nll_strategy():
    from hypothesis import strategies as st

    return st.fixed_dictionaries(
        dict(shape=_shape_strategy(), abar=_abar_strategy("likelihood"), acc=st.sampled_from([F32, F64]))
    )


def _step_strategy(rule, with_eta=False):
    from hypothesis import strategies as st

    fields = dict(shape=_shape_strategy(), abar=_abar_strategy(rule), noise=st.booleans())
    if with_eta:
        fields["eta"] = st.floats(0.0, 1.0)
    return lambda: st.fixed_dictionaries(fields)


def _nll_and_forward_strategy():
    from hypothesis import strategies as st

    triple = (
        st.lists(st.floats(1e-3, 1.0), min_size=3, max_size=3)
        .map(sorted)
        .filter(lambda v: v[1] < v[2])
        .map(lambda v: (v[2], v[1], v[0]))
    )
    return st.fixed_dictionaries(
        dict(shape=_shape_strategy(), abar=st.one_of(triple, st.just("per_sample")), acc=st.sampled_from([F32, F64]))
    )


DIFFUSION_NLL_STEP = op_case(
    "diffusion_nll_step",
    _nll,
    params=[
        dict(shape=(5, 2), abar=(0.9, 0.8)),
        dict(shape=(3, 3, 5, 7), abar=(1.0, 0.999)),
        dict(shape=(0, 2), abar=(0.9, 0.8)),
        dict(shape=(6, 3), abar="per_sample", acc=F32),
        dict(shape=(2, 5000), abar=(0.3, 0.01)),  # samples longer than a 4096-element chunk
        dict(shape=(37, 2), abar="per_sample"),  # the one-pass path for short per-sample samples
    ],
    gradcheck_params=[
        dict(shape=(3, 4), abar=(0.8, 0.5)),
        dict(shape=(2, 3), abar=(1.0, 0.9)),
        dict(shape=(4, 3), abar="per_sample"),
    ],
    big_params=[dict(shape=(10_000, 2), abar="per_sample"), dict(shape=(3, 9000), abar=(0.9, 0.8))],
    tolerance=_nll_tolerance,
    reference_in_float64=True,
    strategy=_nll_strategy,
)

DIFFUSION_NLL_STEP_AND_FORWARD = op_case(
    "diffusion_nll_step_and_forward",
    _nll_and_forward,
    params=[
        dict(shape=(37, 2), abar=(0.9, 0.8, 0.7)),
        dict(shape=(3, 3, 8, 8), abar=(1.0, 0.99, 0.5)),
        dict(shape=(2, 5000), abar=(0.5, 0.4, 0.4)),
        dict(shape=(6, 4), abar="per_sample"),
        dict(shape=(0, 3), abar=(0.9, 0.8, 0.7)),
    ],
    gradcheck_params=[dict(shape=(3, 4), abar=(0.8, 0.5, 0.3)), dict(shape=(4, 2), abar="per_sample")],
    big_params=[dict(shape=(3000, 2), abar=(0.9, 0.8, 0.7))],
    tolerance=_nll_and_forward_tolerance,
    reference_in_float64=True,
    strategy=_nll_and_forward_strategy,
)

DIFFUSION_FORWARD_STEP = op_case(
    "diffusion_forward_step",
    lambda p, m: _linear_step_sample(p, m, "forward", False),
    params=[
        dict(shape=(37, 2), abar=(1.0, 0.5)),
        dict(shape=(3, 3, 5, 7), abar=(0.9, 0.9)),
        dict(shape=(0, 4), abar=(0.5, 0.001)),
        dict(shape=(37, 2), abar="per_sample"),
    ],
    gradcheck_params=[dict(shape=(3, 4), abar=(0.7, 0.4)), dict(shape=(4, 3), abar="per_sample")],
    big_params=[dict(shape=(64, 3, 32, 32), abar=(0.9, 0.6))],
    tolerance=_linear_step_tolerance,
    reference_in_float64=True,
    strategy=_step_strategy("forward"),
)

_STEP_PARAMS = [
    dict(shape=(1, 1), abar=(0.5, 0.6)),
    dict(shape=(37, 2), abar=(0.01, 1.0), noise=False),  # to t = 0
    dict(shape=(3, 3, 5, 7), abar=(0.9999, 1.0)),
    dict(shape=(2, 5000), abar=(0.3, 0.3)),  # identity step
    dict(shape=(0, 2), abar=(0.5, 0.6)),
    dict(shape=(7, 3), abar="per_sample"),
]
_STEP_GRADCHECK = [dict(shape=(4, 3), abar=(0.4, 0.7)), dict(shape=(4, 3), abar="per_sample", noise=False)]


def _step_case(name, with_eta=False, extra_params=()):
    return op_case(
        name,
        lambda p, m: _linear_step_sample(p, m, "backward", with_eta),
        params=list(_STEP_PARAMS) + list(extra_params),
        gradcheck_params=list(_STEP_GRADCHECK),
        big_params=[dict(shape=(64, 3, 32, 32), abar=(0.4, 0.6))],
        tolerance=_linear_step_tolerance,
        reference_in_float64=True,
        strategy=_step_strategy("backward", with_eta),
        invalid=[]
        if name != "ddim_step"
        else [
            (
                dict(shape=(3, 2), abar=(0.4, 0.6)),
                lambda s: replace(s, args=(s.args[0], s.args[1][:, :1], *s.args[2:])),
                RuntimeError,
                "eps must have the shape of x_t",
                True,
            )
        ],
    )


DDPM_STEP = _step_case("ddpm_step")
DDIM_STEP = _step_case(
    "ddim_step",
    with_eta=True,
    extra_params=[dict(shape=(9, 2), abar=(0.3, 0.7), eta=1.0), dict(shape=(9, 2), abar=(0.3, 0.7), eta=0.0)],
)
LARGE_STEP = _step_case("large_step")


def _rk4(p, m: Maker, with_x: bool) -> Sample:
    shape = tuple(p["shape"])
    tensors = tuple(m.randn(shape) for _ in range(5 if with_x else 4))
    args = (*tensors, p.get("h", 0.1)) if with_x else tensors
    return Sample(args, {}, f"{shape}")


def _rk4_strategy(with_x):
    from hypothesis import strategies as st

    fields = dict(shape=st.lists(st.integers(0, 5), max_size=3).map(tuple))
    if with_x:
        fields["h"] = st.floats(-3.0, 3.0)
    return lambda: st.fixed_dictionaries(fields)


_RK4_PARAMS = [
    dict(shape=(1,)),
    dict(shape=(37, 2), h=-2.5),
    dict(shape=(3, 3, 5, 7), h=0.0),
    dict(shape=(0, 2)),
    dict(shape=(10_001,)),
    dict(shape=()),
]
RK4_COMBINE = op_case(
    "rk4_combine",
    lambda p, m: _rk4(p, m, False),
    params=_RK4_PARAMS,
    gradcheck_params=[dict(shape=(3, 4))],
    big_params=[dict(shape=(1 << 18,))],
    strategy=_rk4_strategy(False),
    has_backward_op=False,
)
RK4_UPDATE = op_case(
    "rk4_update",
    lambda p, m: _rk4(p, m, True),
    params=_RK4_PARAMS,
    gradcheck_params=[dict(shape=(3, 4), h=-0.3)],
    big_params=[dict(shape=(1 << 18,))],
    strategy=_rk4_strategy(True),
    has_backward_op=False,
)


# ---------------------------------------------------------------------------
# Op family 4: closest-centre and nearest-centre KL
# ---------------------------------------------------------------------------
# The fixed keyword arguments of each closest_centre_kl mode; "guided" and "partial-*" also draw a target, "partial-dim"
# a mask per latent dimension and "partial-elem" one per element (test_closest_centre_kl.py draws its own too).
CLOSEST_MODES = {
    "unguided": {},
    "clipped": dict(low=-2.0, high=3.0),
    "low-only": dict(low=-1.0),
    "grid": dict(spacing=0.75, offset=0.3, low=-1.2, high=2.7, sigma0=0.2),
    "guided": {},
    "partial-dim": dict(low=-2.0, high=3.0),
    "partial-elem": {},
}


def _closest(p, m: Maker) -> Sample:
    shape, mode = tuple(p["shape"]), p["mode"]
    spacing = 0.75 if mode == "grid" else 1.0
    if p.get("near_centres"):  # for finite differences: mu away from the half-way points
        mu = m.round_plus(shape, spread=2.0, jitter=0.3, spacing=spacing)
    else:
        mu = m.randn(shape, scale=3.0)
    logvar = m.randn(shape, shift=-4.0 if not p.get("near_centres") else -1.0)
    kwargs = {}
    if mode in ("guided", "partial-dim", "partial-elem"):
        kwargs["target"] = m.randn(shape)
    if mode == "partial-dim":
        kwargs["mask"] = m.bools((shape[1],))
    elif mode == "partial-elem":
        kwargs["mask"] = m.bools(shape, p=0.7)
    kwargs.update(CLOSEST_MODES[mode])
    if "sigma0" in p:
        kwargs["sigma0"] = p["sigma0"]
    return Sample((mu, logvar), kwargs, f"{shape}-{mode}")


def _closest_check(case, sample, outputs, dtype):
    kl, centre = outputs
    kl_ref, centre_ref = case.expected(sample, dtype)
    assert torch.equal(centre, centre_ref), "closest_centre_kl: centres differ from the reference"  # bit for bit
    n = sample.args[0].shape[1]
    tol = dict(rtol=1e-12, atol=1e-10 * max(n, 1)) if dtype == F64 else dict(rtol=1e-5, atol=1e-4 * max(n, 1))
    torch.testing.assert_close(kl.detach(), kl_ref.detach(), equal_nan=True, **tol)


def _closest_strategy():
    from hypothesis import strategies as st

    return st.fixed_dictionaries(
        dict(shape=st.tuples(st.integers(0, 5), st.integers(0, 6)), mode=st.sampled_from(list(CLOSEST_MODES)))
    )


CLOSEST_CENTRE_KL = op_case(
    "closest_centre_kl",
    _closest,
    params=[
        dict(shape=(7, 2), mode="unguided"),
        dict(shape=(5, 3), mode="clipped"),
        dict(shape=(2, 17), mode="low-only"),
        dict(shape=(33, 40), mode="grid"),
        dict(shape=(3, 0), mode="guided"),
        dict(shape=(0, 4), mode="partial-dim"),
        dict(shape=(3, 1500), mode="partial-elem"),
        dict(shape=(61, 40), mode="partial-dim"),  # a per-dimension mask tiled over blocks of whole rows
        dict(shape=(2, 1500), mode="partial-dim"),  # ... and over pieces of rows longer than a block
        dict(shape=(1, 1), mode="unguided", sigma0=1 / 3),
    ],
    gradcheck_params=[
        dict(shape=(3, 4), mode=mode, near_centres=True, sigma0=0.5)
        for mode in ("unguided", "clipped", "guided", "partial-elem")
    ],
    big_params=[dict(shape=(4099, 40), mode="partial-elem"), dict(shape=(4099, 40), mode="partial-dim")],
    check=_closest_check,
    strategy=_closest_strategy,
    differentiable_outputs=1,
    invalid=[
        (
            dict(shape=(4, 3), mode="partial-dim"),
            lambda s: replace(s, kwargs={**s.kwargs, "mask": torch.ones(5, dtype=torch.bool)}),
            RuntimeError,
            r"mask must have shape \[n\] = \[3\]",
            True,
        )
    ],
)


def _nearest(p, m: Maker) -> Sample:
    batch, n, num_centres = p["shape"]
    if p.get("near_centres"):  # each mu near one of a few well-separated centres (finite differences stay on it)
        centres = m.randn((num_centres, n), scale=4.0)
        pick = torch.arange(batch) % max(num_centres, 1)
        mu = m._finish((centres.detach().cpu()[pick] + 0.2 * m.rand01((batch, n))).to(m.dtype), grad=True)
    else:
        centres = m.randn((num_centres, n), scale=2.0)
        mu = m.randn((batch, n), scale=2.0)
    logvar = m.randn((batch, n), shift=-2.0)
    return Sample((mu, logvar, centres, p.get("sigma0", 0.25)), {}, f"{(batch, n, num_centres)}")


def _nearest_check(case, sample, outputs, dtype):
    """The index must attain the exact minimum distance (the reference's cdist may pick another centre only on a
    near-tie); where both pick the same centre the KLs agree."""
    mu, logvar, centres = sample.args[:3]
    kl, index = outputs
    kl_ref, index_ref = case.expected(sample, dtype)
    assert index.dtype == torch.int64 and index.shape == (mu.shape[0],)
    exact = ((mu.detach().double()[:, None] - centres.detach().double()[None]) ** 2).sum(-1)
    if mu.shape[0]:
        finite = torch.isfinite(exact).all(1)
        best = exact.min(1).values
        chosen = exact.gather(1, index[:, None])[:, 0]
        torch.testing.assert_close(chosen[finite], best[finite], rtol=1e-5 if dtype == F32 else 1e-12, atol=1e-6)
    agree = index == index_ref
    if mu.shape[0]:
        assert agree.float().mean() >= 0.9
    n = mu.shape[1]
    tol = dict(rtol=1e-12, atol=1e-10 * max(n, 1)) if dtype == F64 else dict(rtol=1e-5, atol=1e-4 * max(n, 1))
    torch.testing.assert_close(kl.detach()[agree], kl_ref.detach()[agree], equal_nan=True, **tol)


def _nearest_strategy():
    from hypothesis import strategies as st

    return st.fixed_dictionaries(
        dict(shape=st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(1, 9)), sigma0=st.floats(0.1, 2.0))
    )


NEAREST_CENTRE_KL = op_case(
    "nearest_centre_kl",
    _nearest,
    params=[
        dict(shape=(1, 1, 1)),
        dict(shape=(7, 2, 36)),
        dict(shape=(33, 40, 5)),
        dict(shape=(0, 3, 4)),
        dict(shape=(5, 3, 1)),
        dict(shape=(4, 0, 3)),
        dict(shape=(3, 1500, 9)),
    ],
    gradcheck_params=[dict(shape=(4, 3, 3), near_centres=True, sigma0=0.5)],
    big_params=[dict(shape=(4099, 40, 100))],
    check=_nearest_check,
    strategy=_nearest_strategy,
    differentiable_outputs=1,
)


# ---------------------------------------------------------------------------
# Gaussian ELBO
# ---------------------------------------------------------------------------
def _elbo(p, m: Maker) -> Sample:
    x_shape, z_shape = tuple(p["x_shape"]), tuple(p["z_shape"])
    x, x_mean = m.uniform(x_shape, 0.0, 1.0), m.uniform(x_shape, 0.0, 1.0)
    mu, logvar = m.randn(z_shape), m.randn(z_shape)
    return Sample((x, x_mean, mu, logvar), dict(decoder_logvar=p.get("decoder_logvar", 0.0)), f"{x_shape}-{z_shape}")


def _elbo_tolerance(dtype, sample):
    if dtype == F64:
        return dict(rtol=1e-10, atol=1e-10)
    pixels = max(1, math.prod(sample.args[0].shape[1:]))
    return dict(rtol=1e-5, atol=1e-5 * pixels**0.5)  # the reference sums in float32; ours in double


def _elbo_strategy():
    from hypothesis import strategies as st

    def shapes(batch):
        rest = st.lists(st.integers(0, 5), min_size=1, max_size=3)
        return st.tuples(rest, rest).map(lambda r: dict(x_shape=(batch, *r[0]), z_shape=(batch, *r[1])))

    return (
        st.integers(0, 4)
        .flatmap(shapes)
        .flatmap(lambda d: st.floats(-20.0, 20.0).map(lambda s: {**d, "decoder_logvar": s}))
    )


GAUSSIAN_ELBO = op_case(
    "gaussian_elbo",
    _elbo,
    params=[
        dict(x_shape=(1, 1, 1, 1), z_shape=(1, 1)),
        dict(x_shape=(2, 1, 8, 8), z_shape=(2, 8), decoder_logvar=-4.6),
        dict(x_shape=(0, 1, 8, 8), z_shape=(0, 4)),
        dict(x_shape=(5, 13), z_shape=(5, 3), decoder_logvar=1.7),
        dict(x_shape=(2, 2, 3, 4, 5), z_shape=(2, 2, 3)),
        dict(x_shape=(4, 3, 33, 31), z_shape=(4, 300)),
        dict(x_shape=(300, 1, 4, 4), z_shape=(300, 8)),  # the latents of many samples over several blocks
        dict(x_shape=(3, 5), z_shape=(3, 2500)),  # samples with more latents than a block, in pieces
    ],
    gradcheck_params=[dict(x_shape=(3, 2, 3), z_shape=(3, 4), decoder_logvar=-1.0)],
    big_params=[dict(x_shape=(64, 3, 32, 32), z_shape=(64, 16))],
    tolerance=_elbo_tolerance,
    strategy=_elbo_strategy,
    invalid=[
        (
            dict(x_shape=(2, 1, 4, 4), z_shape=(2, 3)),
            lambda s: replace(s, args=(s.args[0], s.args[1][..., :3], *s.args[2:])),
            RuntimeError,
            "x_mean must have the shape of x",
            True,
        )
    ],
)


# ---------------------------------------------------------------------------
# Op family 5: ReLU patterns
# ---------------------------------------------------------------------------
def _network(m: Maker, widths, d, n_out=None):
    sizes = [d, *widths] + ([n_out] if n_out else [])
    weights = [m.randn((sizes[i + 1], sizes[i]), grad=False) for i in range(len(sizes) - 1)]
    biases = [m.randn((sizes[i + 1],), grad=False) for i in range(len(sizes) - 1)]
    return weights, biases


def _activation(p, m: Maker) -> Sample:
    weights, biases = _network(m, p["widths"], p["d"])
    x = m.randn((p["n"], p["d"]), grad=False)
    return Sample((x, weights, biases), {}, f"{p['widths']}-d{p['d']}-n{p['n']}")


def _networks_strategy(extra):
    from hypothesis import strategies as st

    return lambda: st.fixed_dictionaries(
        dict(widths=st.lists(st.integers(1, 70), min_size=1, max_size=3).map(tuple), d=st.integers(1, 5), **extra())
    )


NETWORKS = [
    dict(widths=(10, 10), d=2),
    dict(widths=(7,), d=3),
    dict(widths=(64,), d=5),
    dict(widths=(33, 40, 5), d=4),
    dict(widths=(1,), d=1),
    dict(widths=(100, 29), d=8),
]

ACTIVATION_PATTERNS = op_case(
    "activation_patterns",
    _activation,
    differentiable=False,
    params=[{**net, "n": n} for net, n in zip(NETWORKS, (17, 1, 300, 0, 5, 40))],
    big_params=[dict(widths=(64, 64), d=8, n=20_000)],
    tolerance=exact,
    nan_rule="raises",
    nan_error=r"is NaN for sample \d+, so its pattern bit is undefined",
    strategy=_networks_strategy(lambda: dict(n=__import__("hypothesis").strategies.integers(0, 20))),
)


def _random_bits(m: Maker, n, units):
    return (m.rand01((n, units)) < 0.5).to(m.device)


def _unpack(p, m: Maker) -> Sample:
    bits = _random_bits(m, p["n"], p["units"])
    packed = ref.pack_patterns_reference(bits)
    if m.layout is not None:
        packed = m.layout(packed)
    return Sample((packed, p["units"]), {}, f"n{p['n']}-H{p['units']}")


def _pack(p, m: Maker) -> Sample:
    bits = _random_bits(m, p["n"], p["units"])
    if m.layout is not None:
        bits = m.layout(bits)
    return Sample((bits,), {}, f"n{p['n']}-H{p['units']}")


def _units_strategy():
    from hypothesis import strategies as st

    return st.fixed_dictionaries(dict(n=st.integers(0, 6), units=st.integers(0, 200)))


_UNITS_PARAMS = [dict(n=37, units=u) for u in (0, 1, 63, 64, 65, 130)] + [dict(n=0, units=70)]


def _units_case(name, build, **fields):
    """pack_patterns and unpack_patterns: the same unit counts (around the 64-bit word edges) and big sample."""
    return integer_case(
        name, build, params=_UNITS_PARAMS, big_params=[dict(n=20_000, units=1000)], strategy=_units_strategy, **fields
    )


UNPACK_PATTERNS = _units_case("unpack_patterns", _unpack)
PACK_PATTERNS = _units_case("pack_patterns", _pack, invalid_leaf=None)


def _hamming(p, m: Maker) -> Sample:
    na, nb, words = p["sizes"]
    args = (m.packed(na, words), m.packed(nb, words))
    if "k" in p:
        args = (*args, p["k"])
    return Sample(args, {}, f"{p['sizes']}" + (f"-k{p['k']}" if "k" in p else ""))


def _hamming_strategy(with_k):
    from hypothesis import strategies as st

    sizes = st.tuples(st.integers(0, 6), st.integers(0, 40), st.integers(0, 3))
    if not with_k:
        return lambda: st.fixed_dictionaries(dict(sizes=sizes))
    return lambda: sizes.flatmap(lambda s: st.integers(0, s[1]).map(lambda k: dict(sizes=s, k=k)))


HAMMING_DISTANCE = integer_case(
    "hamming_distance",
    _hamming,
    params=[dict(sizes=s) for s in [(0, 5, 1), (5, 0, 2), (1, 1, 1), (37, 1029, 1), (130, 600, 3), (20, 70, 17)]],
    big_params=[dict(sizes=(2000, 3000, 2))],
    strategy=_hamming_strategy(False),
)
HAMMING_TOPK = integer_case(
    "hamming_topk",
    _hamming,
    params=[
        dict(sizes=s, k=k)
        for s, k in [
            ((0, 5, 1), 2),
            ((7, 5, 1), 0),
            ((1, 1, 1), 1),
            ((50, 1500, 1), 1),
            ((33, 700, 2), 5),
            ((20, 300, 17), 300),
            ((9, 1100, 1), 64),
        ]
    ],
    big_params=[dict(sizes=(2000, 3000, 2), k=10)],
    strategy=_hamming_strategy(True),
    invalid=[
        (dict(sizes=(3, 3, 1), k=3), lambda s: replace(s, args=(*s.args[:2], 5)), ValueError, "k must be in", True)
    ],
)


def _region(p, m: Maker) -> Sample:
    weights, biases = _network(m, p["widths"], p["d"], n_out=3)
    points = m.randn((p.get("patterns", 9), p["d"]), grad=False)
    patterns = ref.activation_patterns_reference(points, weights[:-1], biases[:-1])
    if m.layout is not None:
        patterns = m.layout(patterns)
    return Sample((weights, biases, patterns), {}, f"{p['widths']}-d{p['d']}")


REGION_SYSTEM = op_case(
    "region_system",
    _region,
    differentiable=False,
    params=NETWORKS + [dict(widths=(5, 4), d=2, patterns=0)],
    big_params=[dict(widths=(64, 64), d=8, patterns=500)],
    tolerance=lambda dtype, s: dict(rtol=1e-4, atol=1e-4) if dtype == F32 else dict(rtol=1e-10, atol=1e-10),
    nan_rule="none",
    invalid_leaf=-1,
    layout_exact=False,
    strategy=_networks_strategy(lambda: dict(patterns=__import__("hypothesis").strategies.integers(0, 6))),
)


from op_contract.region_clip_case import REGION_CLIP_2D  # noqa: E402  (needs the classes above)

CASES: list[OpCase] = [
    AFFINE_COUPLING,
    DIFFUSION_NLL_STEP,
    DIFFUSION_NLL_STEP_AND_FORWARD,
    DIFFUSION_FORWARD_STEP,
    DDPM_STEP,
    DDIM_STEP,
    LARGE_STEP,
    RK4_COMBINE,
    RK4_UPDATE,
    CLOSEST_CENTRE_KL,
    NEAREST_CENTRE_KL,
    GAUSSIAN_ELBO,
    ACTIVATION_PATTERNS,
    UNPACK_PATTERNS,
    PACK_PATTERNS,
    HAMMING_DISTANCE,
    HAMMING_TOPK,
    REGION_SYSTEM,
    REGION_CLIP_2D,
]
DIFFERENTIABLE = [case for case in CASES if case.differentiable]
BY_NAME = {case.name: case for case in CASES}
# Every op registered in manifold_ext's schema: a forward op has a case; a backward op is reached through one.
BACKWARD_OPS = {
    "affine_coupling_backward": "affine_coupling",
    "diffusion_nll_step_backward": "diffusion_nll_step",
    "diffusion_step_backward": "ddim_step",
    "closest_centre_kl_backward": "closest_centre_kl",
    "nearest_centre_kl_backward": "nearest_centre_kl",
    "gaussian_elbo_backward": "gaussian_elbo",
}


def registered_ops() -> set[str]:
    """Names of every op in the manifold_ext namespace."""
    prefix = "manifold_ext::"
    return {
        name[len(prefix) :].split(".")[0] for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix)
    }


def ids(cases: Sequence[OpCase]) -> list[str]:
    return [case.name for case in cases]
