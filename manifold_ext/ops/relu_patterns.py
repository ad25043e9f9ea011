"""ReLU activation patterns (op family 5; paper 001, Liu et al., Eq. 3-5).

Conventions shared by every op here:

* A *pattern* is the sign bit of every hidden pre-activation of a ReLU MLP,
  hidden layers concatenated in order (Eq. 4). It is packed into ``int64``
  words, ``[N, ceil(H / 64)]``: hidden unit ``g`` is bit ``g % 64`` (least
  significant bit first) of word ``g // 64``; bits past the last unit are 0
  (ops that know ``H`` refuse patterns with such bits set).
* Tie rule (Eq. 3): a unit is active (bit 1) iff its pre-activation is
  ``> 0``; a pre-activation of exactly 0 gives 0. NaN rule: a NaN
  pre-activation has no sign, so its bit is undefined and
  :func:`activation_patterns` raises (naming the sample and unit) instead of
  guessing; ``+inf``/``-inf`` have a sign and give 1/0.
* Top-k ties: neighbours are ordered by ``(distance, reference index)``, so of
  two references at the same distance the one with the smaller index comes first.

None of these ops is differentiable (patterns are discrete; region systems
are for geometry, not training).
"""

from __future__ import annotations

from typing import Sequence

import torch

from manifold_ext.ops._checks import as_int, check_device
from manifold_ext.ops._dispatch import call_op, register_autograd
from manifold_ext.ops._docs import fill_doc
from manifold_ext.ops._second_order import NotDifferentiableError

BITS_PER_WORD = 64

_PACKED_DEVICES = """
        CPU and CUDA; ``int64`` patterns (meta/fake tensors trace). Tensors of
        one call on one device (a meta tensor mixed with real ones is refused)."""


def words_for_units(num_units: int) -> int:
    """int64 words of a packed pattern of ``num_units`` hidden units."""
    return (int(num_units) + BITS_PER_WORD - 1) // BITS_PER_WORD


def activation_patterns(
    x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Packed activation patterns of a ReLU MLP (Eq. 3-4).

    Args:
        x: inputs.
        weights: the hidden layers' weight matrices, in order; the output layer
            is *not* included.
        biases: the hidden layers' biases.

    Returns:
        The packed patterns: bit ``j`` of word ``w`` is hidden unit ``64 w + j``
        (LSB first), set when its pre-activation is > 0. Each layer is one
        GEMM; the sign bits are packed and the ReLU applied in one pass.

    Shapes:
        ``x``: ``[N, d]``; ``weights[j]``: ``[h_j, h_{j-1}]`` (``h_0 = d``);
        ``biases[j]``: ``[h_j]``. Returns ``int64 [N, ceil(H / 64)]``,
        ``H = sum h_j``. ``N = 0`` works.

    Dtypes and devices:
        CPU: float32/float64; CUDA: also float16/bfloat16. ``x``, weights and
        biases share one dtype and one device (a meta tensor mixed with real
        ones is refused); meta/fake tensors trace.

    Numerics:
        A NaN pre-activation (from a NaN in ``x``, a weight or a bias, or
        ``inf - inf``) raises ``ValueError`` naming the sample and hidden unit:
        its bit would be a guess, and the ReLU would pass a plausible 0 to the
        next layer. ``+-inf`` pre-activations have a sign (1 / 0). Exactly 0 gives
        0 (Eq. 3). Not differentiable (the output is integer).

    Raises:
        ValueError: layer shapes that do not chain, no layers, mismatched
            dtypes or devices, a non-floating dtype, a NaN pre-activation.
        RuntimeError: float16/bfloat16 on CPU.
    """
    return call_op(torch.ops.manifold_ext.activation_patterns.default, x, list(weights), list(biases))


@fill_doc(devices=_PACKED_DEVICES)
def unpack_patterns(packed: torch.Tensor, num_units: int) -> torch.Tensor:
    """Packed patterns -> one bool per hidden unit (``num_units = H``).

    Shapes:
        ``packed``: ``int64 [N, ceil(H / 64)]``. Returns ``bool [N, H]``.

    Dtypes and devices:
        {devices}

    Numerics:
        Exact (bits; integer input, so no NaN can occur). Bits set past unit ``H - 1`` are refused: they mean the
        patterns belong to a wider network, and dropping them would lose units.

    Raises:
        ValueError: ``packed`` not ``int64 [N, words]``; ``num_units`` < 0 or
            needing another number of words; bits set past the last unit.
        TypeError: ``num_units`` not an integer (``69.9``, ``True``; NumPy
            integers are accepted).
    """
    return call_op(
        torch.ops.manifold_ext.unpack_patterns.default, packed, as_int(num_units, "num_units", "unpack_patterns")
    )


@fill_doc(devices=_PACKED_DEVICES)
def pack_patterns(bits: torch.Tensor) -> torch.Tensor:
    """One bool per hidden unit -> packed patterns (the packing of :func:`activation_patterns`).

    Shapes:
        ``bits``: ``bool [N, H]``. Returns ``int64 [N, ceil(H / 64)]`` with the
        bits past unit ``H - 1`` zero.

    Dtypes and devices:
        {devices}

    Numerics:
        Exact (bits; bool input, so no NaN can occur).

    Raises:
        ValueError: ``bits`` not a bool tensor of rank 2.
    """
    return call_op(torch.ops.manifold_ext.pack_patterns.default, bits)


@fill_doc(devices=_PACKED_DEVICES)
def hamming_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distances between two sets of packed patterns: ``popcount(a_i XOR b_j)``.

    Cache-blocked; on CPU the popcounts run 8 lanes wide where AVX512-VPOPCNTDQ
    is available.

    Shapes:
        ``a``: ``int64 [Na, W]``; ``b``: ``int64 [Nb, W]`` (same ``W``). Returns
        ``int32 [Na, Nb]``.

    Dtypes and devices:
        {devices}

    Numerics:
        Exact (integers: no NaN can occur), the same on every CPU instruction
        set and on CUDA.

    Raises:
        ValueError: not ``int64 [N, W]``; different ``W``; different devices.
    """
    return call_op(torch.ops.manifold_ext.hamming_distance.default, a, b)


@fill_doc(devices=_PACKED_DEVICES)
def hamming_topk(query: torch.Tensor, ref: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` Hamming-nearest reference patterns of every query, without the full distance matrix.

    Returns:
        ``(dist, index)``, ascending by ``(distance, reference index)``: ties go
        to the smaller index.

    Shapes:
        ``query``: ``int64 [Nq, W]``; ``ref``: ``int64 [Nr, W]``; ``0 <= k <= Nr``.
        Returns ``int32 [Nq, k]`` and ``int64 [Nq, k]``.

    Dtypes and devices:
        {devices}

    Numerics:
        Exact (integers: no NaN can occur), deterministic tie order, the same
        on every CPU instruction set and on CUDA.

    Raises:
        ValueError: not ``int64 [N, W]``; different ``W`` or devices; ``k`` out
            of ``[0, Nr]``.
        TypeError: ``k`` not an integer (``2.7``, ``True``; NumPy integers are
            accepted).
    """
    return call_op(torch.ops.manifold_ext.hamming_topk.default, query, ref, as_int(k, "k", "hamming_topk"))


def region_system(
    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], patterns: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear system of each pattern's region (Eq. 5) and the network's affine map on it.

    Args:
        weights: the hidden layers' weights followed by the output layer's
            (``L + 1`` matrices); biases likewise.
        patterns: packed patterns of the ``H`` hidden units.

    Returns:
        ``(A, c, W_hat, b_hat)``: ``A`` and ``c`` with one row per hidden unit in
        pattern order, ``A_g x <= c_g`` being the closed half-space on which unit
        ``g`` keeps the sign the pattern gives it (row ``g`` is ``s'_g W_hat_g``
        with ``s' = +1`` for inactive, ``-1`` for active units); and the
        network's output on the region, ``f(x) = W_hat x + b_hat``.

    Shapes:
        ``weights[j]``: ``[h_{j+1}, h_j]``; ``patterns``: ``int64 [P, ceil(H / 64)]``.
        Returns ``A [P, H, d]``, ``c [P, H]``, ``W_hat [P, n_out, d]``,
        ``b_hat [P, n_out]`` (``P = 0`` works).

    Dtypes and devices:
        CPU: float32/float64 (CUDA: also float16/bfloat16); outputs in the
        weights' dtype. Weights, biases and patterns on one device (a meta
        tensor mixed with real ones is refused); meta/fake tensors trace.

    Numerics:
        Products and sums of the weights (NaN in, NaN out, as the matrix
        products that form them). Bits set past unit ``H - 1`` are refused. Not
        differentiable: region systems are geometry, not a training target.

    Raises:
        ValueError: fewer than 2 layers, layer shapes that do not chain,
            mismatched dtypes or devices, patterns with another number of
            words or with bits set past the last unit.
        RuntimeError: float16/bfloat16 on CPU.
    """
    return call_op(torch.ops.manifold_ext.region_system.default, list(weights), list(biases), patterns)


# ---------------------------------------------------------------------------
# Fake (meta) kernels: the compiled kernels' checks (relu_patterns_host.h), in
# their words and with their exception type, then the output shapes, so a
# traced program fails at trace time as the real one would at run time.
# ---------------------------------------------------------------------------
def _check(ok, message):
    torch._check_value(ok, message)


def _check_network(weights, biases, hidden_layers: int, op: str) -> int:
    """check_network: shapes that chain, one dtype and one device; returns the hidden units."""
    _check(
        len(weights) == len(biases),
        lambda: f"{op}: got {len(weights)} weight matrices but {len(biases)} bias vectors; pass one bias per layer",
    )
    _check(len(weights) > 0, lambda: f"{op}: the network needs at least one layer, got empty weight lists")
    first = weights[0]
    hidden = 0
    for j, (w, b) in enumerate(zip(weights, biases)):
        _check(
            w.dim() == 2,
            lambda: f"{op}: weights[{j}] must be a matrix [out_features, in_features], got shape {list(w.shape)}",
        )
        _check(
            b.dim() == 1 and b.shape[0] == w.shape[0],
            lambda: f"{op}: biases[{j}] must have shape [{w.shape[0]}] to match weights[{j}]",
        )
        _check(w.is_floating_point(), lambda: f"{op}: weights must be floating point, got {w.dtype} for weights[{j}]")
        _check(
            w.dtype == first.dtype and b.dtype == first.dtype,
            lambda: f"{op}: all weights and biases must share one dtype; weights[0] is {first.dtype}",
        )
        check_device(
            w.device == first.device and b.device == first.device,
            lambda: (
                f"{op}: all weights and biases must be on one device; weights[0] is on {first.device} "
                f"but layer {j} has weights on {w.device} and biases on {b.device}"
            ),
            value_error=True,
        )
        if j > 0:
            previous = weights[j - 1]
            _check(
                w.shape[1] == previous.shape[0],
                lambda: f"{op}: weights[{j}] takes {w.shape[1]} inputs but layer {j - 1} has {previous.shape[0]} units",
            )
        if j < hidden_layers:
            hidden = hidden + w.shape[0]
    return hidden


def _check_packed(packed, name: str, op: str) -> None:
    _check(
        packed.dtype == torch.int64,
        lambda: f"{op}: {name} must be packed patterns of dtype int64 (see activation_patterns), got {packed.dtype}",
    )
    _check(packed.dim() == 2, lambda: f"{op}: {name} must have shape [N, words], got shape {list(packed.shape)}")


def _check_pair(a, b, name_a, name_b, op):
    _check_packed(a, name_a, op)
    _check_packed(b, name_b, op)
    _check(
        a.shape[1] == b.shape[1],
        lambda: f"{op}: {name_a} and {name_b} must have the same number of words (patterns of the same network)",
    )
    check_device(
        a.device == b.device,
        lambda: f"{op}: {name_a} and {name_b} must be on one device, got {a.device} and {b.device}",
        value_error=True,
    )


@torch.library.register_fake("manifold_ext::activation_patterns")
def _activation_patterns_fake(x, weights, biases):
    op = "activation_patterns"
    hidden = _check_network(weights, biases, len(weights), op)
    _check(x.dim() == 2, lambda: f"{op}: x must have shape [N, d], got shape {list(x.shape)}")
    _check(
        x.shape[1] == weights[0].shape[1],
        lambda: f"{op}: x has {x.shape[1]} features but weights[0] expects {weights[0].shape[1]}",
    )
    _check(
        x.dtype == weights[0].dtype,
        lambda: f"{op}: x and the weights must share one dtype, got x {x.dtype} and weights {weights[0].dtype}",
    )
    check_device(
        x.device == weights[0].device,
        lambda: (
            f"{op}: x and the weights must be on one device, got x on {x.device} and weights on {weights[0].device}"
        ),
        value_error=True,
    )
    return x.new_empty((x.shape[0], words_for_units(hidden)), dtype=torch.int64)


@torch.library.register_fake("manifold_ext::unpack_patterns")
def _unpack_patterns_fake(packed, num_units):
    op = "unpack_patterns"
    _check_packed(packed, "packed", op)
    _check(num_units >= 0, lambda: f"{op}: num_units must be >= 0, got {num_units}")
    _check(
        words_for_units(num_units) == packed.shape[1],
        lambda: (
            f"{op}: {num_units} units need {words_for_units(num_units)} int64 words per pattern, but packed "
            f"has shape {list(packed.shape)}"
        ),
    )
    return packed.new_empty((packed.shape[0], num_units), dtype=torch.bool)


@torch.library.register_fake("manifold_ext::pack_patterns")
def _pack_patterns_fake(bits):
    op = "pack_patterns"
    _check(bits.dtype == torch.bool, lambda: f"{op}: bits must be a bool tensor [N, H], got dtype {bits.dtype}")
    _check(bits.dim() == 2, lambda: f"{op}: bits must have shape [N, H], got shape {list(bits.shape)}")
    return bits.new_empty((bits.shape[0], words_for_units_symbolic(bits.shape[1])), dtype=torch.int64)


def words_for_units_symbolic(units):
    return (units + BITS_PER_WORD - 1) // BITS_PER_WORD


@torch.library.register_fake("manifold_ext::hamming_distance")
def _hamming_distance_fake(a, b):
    _check_pair(a, b, "a", "b", "hamming_distance")
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


@torch.library.register_fake("manifold_ext::hamming_topk")
def _hamming_topk_fake(query, ref, k):
    _check_pair(query, ref, "query", "ref", "hamming_topk")
    _check(
        0 <= k and k <= ref.shape[0],
        lambda: f"hamming_topk: k must be in [0, number of reference patterns = {ref.shape[0]}], got k = {k}",
    )
    return (
        query.new_empty((query.shape[0], k), dtype=torch.int32),
        query.new_empty((query.shape[0], k), dtype=torch.int64),
    )


@torch.library.register_fake("manifold_ext::region_system")
def _region_system_fake(weights, biases, patterns):
    op = "region_system"
    _check(
        len(weights) >= 2,
        lambda: (
            f"{op}: weights must list the hidden layers followed by the output layer "
            f"(at least 2 layers), got {len(weights)}"
        ),
    )
    hidden = _check_network(weights, biases, len(weights) - 1, op)
    _check_packed(patterns, "patterns", op)
    _check(
        patterns.shape[1] == words_for_units_symbolic(hidden),
        lambda: (
            f"{op}: the network has {hidden} hidden units, so patterns need "
            f"{words_for_units_symbolic(hidden)} int64 words each, got shape {list(patterns.shape)}"
        ),
    )
    check_device(
        patterns.device == weights[0].device,
        lambda: f"{op}: patterns and weights must be on one device, got {patterns.device} and {weights[0].device}",
        value_error=True,
    )
    d = weights[0].shape[1]
    n_out = weights[-1].shape[0]
    num = patterns.shape[0]
    ref = weights[0]
    return (
        ref.new_empty((num, hidden, d)),
        ref.new_empty((num, hidden)),
        ref.new_empty((num, n_out, d)),
        ref.new_empty((num, n_out)),
    )


# region_system is not differentiable: asking for a gradient through it raises
# (without this, PyTorch's fallback would backpropagate through the kernel's
# internal ATen calls on some devices and warn of "silently incorrect behavior").
def _region_system_setup(ctx, inputs, output):
    pass


def _region_system_backward(ctx, *grads):
    raise NotDifferentiableError(
        "region_system: a gradient through the region system was requested, but region_system is not "
        "differentiable (region systems are geometry, not a training target); detach the weights and biases"
    )


register_autograd("region_system", _region_system_backward, _region_system_setup)
