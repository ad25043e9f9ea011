"""A ReLU MLP as the polyhedral toolbox sees it: hidden layers with ReLU, an affine output layer.

Paper 001 (Liu et al.), model (1): x -> ReLU(W_1 x + b_1) -> ... -> ReLU(W_L . + b_L) -> W_{L+1} . + b_{L+1}.
The geometry is computed in float64 on the CPU, whatever the module's dtype and device.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from torch import nn

from manifold_ext.ops.relu_patterns import activation_patterns, region_system, unpack_patterns, words_for_units


def _as_float64(t) -> torch.Tensor:
    return torch.as_tensor(t).detach().to(device="cpu", dtype=torch.float64).contiguous()


@dataclasses.dataclass(frozen=True, eq=False)
class Region:
    """One linear region: the pattern, its inequalities ``A x <= c`` (Eq. 5) and the affine map there.

    ``A [H, d]`` and ``c [H]`` have one row per hidden unit, in pattern order, exactly as
    :func:`~manifold_ext.ops.region_system` builds them (not normalised: the geometry
    functions normalise each row to unit length themselves, so tolerances are distances);
    the network equals ``W_hat x + b_hat`` on the region. ``row_scale [H]`` and
    ``offset_scale [H]`` are the norms of the same rows and offsets built from ``|W|`` and
    ``|b|``: the size of the terms whose cancellation produced each row, against which a row
    is decided to be zero (see :func:`manifold_ext.relu_geometry.lp.zero_rows`).
    """

    pattern: np.ndarray  # int64 [words], packed as in manifold_ext.ops.activation_patterns
    num_units: int
    A: np.ndarray  # [H, d]
    c: np.ndarray  # [H]
    W_hat: np.ndarray  # [n_out, d]
    b_hat: np.ndarray  # [n_out]
    row_scale: np.ndarray | None = None  # [H]
    offset_scale: np.ndarray | None = None  # [H]

    @property
    def input_dim(self) -> int:
        return self.A.shape[1]

    @property
    def key(self) -> bytes:
        """Hashable identity of the region (its packed pattern's bytes)."""
        return self.pattern.tobytes()

    @property
    def bits(self) -> np.ndarray:
        """The pattern unpacked, ``bool [H]``."""
        return unpack_patterns(torch.from_numpy(self.pattern[None]), self.num_units)[0].numpy()

    def contains(self, x, tol: float = 1e-9) -> np.ndarray:
        """Whether points ``x [..., d]`` satisfy every inequality within ``tol``."""
        x = np.asarray(x, dtype=np.float64)
        return np.all(x @ self.A.T <= self.c + tol, axis=-1)

    def affine_map(self, x) -> np.ndarray:
        """The network's output on this region, ``W_hat x + b_hat``."""
        return np.asarray(x, dtype=np.float64) @ self.W_hat.T + self.b_hat


class ReLUNetwork:
    """Hidden layers ``(W_j, b_j)`` with ReLU, then an affine output layer ``(W_out, b_out)``.

    Build it with :meth:`from_module` (``nn.Sequential`` of ``Linear``/``ReLU``, or
    a module whose top-level children are ``Linear`` layers applied in order with
    ReLUs between them) or :meth:`from_weights`.
    """

    def __init__(self, hidden_weights: Sequence, hidden_biases: Sequence, output_weight=None, output_bias=None):
        if len(hidden_weights) == 0:
            raise ValueError("ReLUNetwork: needs at least one hidden (ReLU) layer")
        if len(hidden_weights) != len(hidden_biases):
            raise ValueError(
                f"ReLUNetwork: got {len(hidden_weights)} hidden weight matrices but {len(hidden_biases)} bias vectors"
            )
        self.hidden_weights = [_as_float64(w) for w in hidden_weights]
        self.hidden_biases = [_as_float64(b) for b in hidden_biases]
        width = self.hidden_weights[-1].shape[0]
        if output_weight is None:  # the network's output is the last hidden layer's activations
            output_weight = torch.eye(width, dtype=torch.float64)
            output_bias = torch.zeros(width, dtype=torch.float64) if output_bias is None else output_bias
        if output_bias is None:
            output_bias = torch.zeros(_as_float64(output_weight).shape[0], dtype=torch.float64)
        self.output_weight = _as_float64(output_weight)
        self.output_bias = _as_float64(output_bias)
        fan_in = self.hidden_weights[0].shape[1]
        for j, (w, b) in enumerate(zip(self.layers_weights, self.layers_biases)):
            if w.dim() != 2 or b.dim() != 1 or b.shape[0] != w.shape[0]:
                raise ValueError(
                    f"ReLUNetwork: layer {j} needs weights [out, in] and biases [out], got "
                    f"{tuple(w.shape)} and {tuple(b.shape)}"
                )
            if w.shape[1] != fan_in:
                raise ValueError(
                    f"ReLUNetwork: layer {j} takes {w.shape[1]} inputs but the previous layer has {fan_in} units"
                )
            for name, t in (("weights", w), ("biases", b)):
                bad = ~torch.isfinite(t)
                if bad.any():
                    raise ValueError(
                        f"ReLUNetwork: layer {j} {name} contain {int(bad.sum())} NaN or infinite "
                        f"value(s) (first at index {tuple(torch.nonzero(bad)[0].tolist())}); the "
                        "regions of such a network are undefined"
                    )
            fan_in = w.shape[0]
        self._abs_layers: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_weights(cls, weights: Sequence, biases: Sequence, output_layer: bool = True) -> "ReLUNetwork":
        """From lists of all layers' weights ``[out, in]`` and biases; the last is the (affine) output
        layer when ``output_layer`` (default), otherwise every layer has a ReLU."""
        if output_layer:
            if len(weights) < 2:
                raise ValueError(
                    "ReLUNetwork.from_weights: with output_layer=True pass at least two layers "
                    "(hidden layers, then the output layer)"
                )
            return cls(weights[:-1], biases[:-1], weights[-1], biases[-1])
        return cls(weights, biases)

    @classmethod
    def random(
        cls, input_dim: int, widths: Sequence[int], *, seed: int = 0, outputs: int = 1, box=(-1.0, 1.0)
    ) -> "ReLUNetwork":
        """A random network (normal weights scaled by ``1/sqrt(fan_in)``) whose first-layer hyperplanes
        pass through uniform points of ``box`` and deeper units through typical activations, as a
        trained network's do (PyTorch's default initialisation leaves most hyperplanes outside a
        unit box). For benchmarks and tests that need realistic region counts; deterministic in ``seed``."""
        from manifold_ext.relu_geometry._checks import as_int
        from manifold_ext.relu_geometry.lp import as_box

        input_dim = as_int(input_dim, "ReLUNetwork.random: input_dim", minimum=1)
        widths = [as_int(w, "ReLUNetwork.random: widths", minimum=1) for w in widths]
        bounds = as_box(box, input_dim)
        g = np.random.default_rng(as_int(seed, "ReLUNetwork.random: seed"))
        weights, biases, fan_in = [], [], input_dim
        for layer, width in enumerate(widths):
            w = g.standard_normal((width, fan_in)) / np.sqrt(fan_in)
            through = (
                g.uniform(bounds.lo, bounds.hi, (width, fan_in))
                if layer == 0
                else 0.3 * np.abs(g.standard_normal((width, fan_in)))
            )
            weights.append(w)
            biases.append(-(w * through).sum(axis=1))
            fan_in = width
        weights.append(g.standard_normal((as_int(outputs, "ReLUNetwork.random: outputs", minimum=1), fan_in)))
        biases.append(np.zeros(outputs))
        return cls.from_weights(weights, biases)

    @classmethod
    def from_module(cls, module: nn.Module, check: bool = True) -> "ReLUNetwork":
        """From an ``nn.Sequential`` of ``Linear``/``ReLU`` (nested Sequentials, ``Identity`` and
        ``Dropout`` allowed; consecutive ``Linear`` layers are composed), or from any module whose
        forward is such a chain: it is read with ``torch.fx`` (so the order in which children are
        registered does not matter), or failing that as its top-level ``Linear`` children in
        registration order with a ReLU after each but the last. With ``check`` (default) the result
        is compared with ``module`` on random inputs, to a tolerance set by the module's dtype
        (float16/bfloat16 modules work), and a mismatch raises, so a module this reading does not
        describe is never silently accepted. The geometry is that of the float64 copy of the weights.
        """
        params = list(module.parameters())
        if not params:
            raise TypeError(f"ReLUNetwork.from_module: {type(module).__name__} has no parameters (no Linear layers)")
        for name, p in module.named_parameters():
            bad = ~torch.isfinite(p.detach())
            if bad.any():
                raise ValueError(
                    f"ReLUNetwork.from_module: parameter {name!r} contains {int(bad.sum())} NaN or "
                    "infinite value(s); the regions of such a network are undefined"
                )
        if isinstance(module, nn.Sequential):
            net = cls._from_sequential(module)
            if check:
                net._check_against(module)
            return net
        others = [
            type(child).__name__
            for child in module.children()
            if not isinstance(child, (nn.Linear, nn.ReLU, nn.Identity, nn.Dropout))
        ]
        if others:
            raise TypeError(
                f"ReLUNetwork.from_module: {type(module).__name__} has children other than "
                f"Linear/ReLU ({', '.join(others)}); only ReLU MLPs have this polyhedral structure"
            )
        linears = [(name, child) for name, child in module.named_children() if isinstance(child, nn.Linear)]
        if not linears:
            raise TypeError(f"ReLUNetwork.from_module: {type(module).__name__} has no Linear layers")
        traced, trace_problem = _trace_chain(module)
        weights = [layer.weight for _, layer in linears]
        biases = [layer.bias if layer.bias is not None else torch.zeros(layer.out_features) for _, layer in linears]
        order = ", ".join(name for name, _ in linears)
        candidates = (
            [] if traced is None else [("its forward read with torch.fx", lambda: cls._from_sequential(traced))]
        )
        if len(linears) >= 2:
            candidates.append(
                (
                    f"Linear children in registration order ({order}) with an affine output",
                    lambda: cls.from_weights(weights, biases, output_layer=True),
                )
            )
        candidates.append(
            (
                f"Linear children in registration order ({order}) with a ReLU after each",
                lambda: cls.from_weights(weights, biases, output_layer=False),
            )
        )
        tried = []
        for what, build in candidates:
            try:
                net = build()
            except (ValueError, TypeError) as error:  # e.g. shapes that do not chain in this order
                tried.append(f"{what} ({error})")
                continue
            if net._matches(module):
                return net
            tried.append(f"{what} (does not reproduce the output)")
        tried = "; ".join(tried)
        raise ValueError(
            f"ReLUNetwork.from_module: {type(module).__name__}'s forward is neither its Linear "
            f"children in registration order with ReLUs between them nor a Linear/ReLU chain torch.fx "
            f"can read ({trace_problem or 'read, but it does not reproduce the output'}); tried: {tried}. "
            "Wrap it as nn.Sequential or use ReLUNetwork.from_weights"
        )

    @classmethod
    def _from_sequential(cls, seq: nn.Sequential) -> "ReLUNetwork":
        flat: list[nn.Module] = []

        def flatten(m):
            for child in m:
                if isinstance(child, nn.Sequential):
                    flatten(child)
                elif isinstance(child, (nn.Identity, nn.Dropout)):
                    continue
                elif isinstance(child, (nn.Linear, nn.ReLU)):
                    flat.append(child)
                else:
                    raise TypeError(
                        f"ReLUNetwork.from_module: unsupported layer {type(child).__name__} in "
                        "nn.Sequential; only Linear and ReLU (plus Identity/Dropout) are allowed"
                    )

        flatten(seq)
        weights, biases, relu_after = [], [], []
        for layer in flat:
            if isinstance(layer, nn.Linear):
                w = _as_float64(layer.weight)
                b = _as_float64(layer.bias) if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
                if weights and not relu_after[-1]:  # Linear after Linear: compose the two affine maps
                    weights[-1], biases[-1] = w @ weights[-1], w @ biases[-1] + b
                else:
                    weights.append(w)
                    biases.append(b)
                    relu_after.append(False)
            else:
                if not weights or relu_after[-1]:
                    raise ValueError(
                        "ReLUNetwork.from_module: a ReLU must follow a Linear layer "
                        "(found a ReLU first or two ReLUs in a row)"
                    )
                relu_after[-1] = True
        if not weights:
            raise TypeError("ReLUNetwork.from_module: the nn.Sequential has no Linear layers")
        if relu_after[-1]:
            return cls(weights, biases)
        if len(weights) < 2:
            raise ValueError("ReLUNetwork.from_module: the network has no ReLU layer")
        return cls(weights[:-1], biases[:-1], weights[-1], biases[-1])

    def _matches(self, module: nn.Module, samples: int = 64) -> bool:
        param = next(module.parameters())
        g = torch.Generator().manual_seed(0)
        x = torch.randn(samples, self.input_dim, generator=g, dtype=torch.float64) * 2
        x = x.to(param.dtype).to(torch.float64)  # inputs the module's dtype represents exactly
        try:
            with torch.no_grad():
                want = module(x.to(device=param.device, dtype=param.dtype)).to("cpu", torch.float64)
        except (RuntimeError, TypeError, ValueError):  # e.g. the forward does not take [N, d]
            return False
        got = self.forward(x)
        if want.shape != got.shape:
            return False
        # Rounding of the module's own dtype: a few ulps of the largest term of each output.
        eps = torch.finfo(param.dtype).eps if param.dtype.is_floating_point else 1e-12
        magnitude = self._magnitude(x)
        tol = 16 * (len(self.hidden_weights) + 1) * max(eps, 1e-12) * (magnitude + 1e-30)
        return bool(torch.all((got - want).abs() <= tol))

    def _magnitude(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output computed with |W|, |b| and |x|: the size of the terms each output sums."""
        h = x.abs()
        for w, b in zip(self.hidden_weights, self.hidden_biases):
            h = h @ w.abs().T + b.abs()
        return h @ self.output_weight.abs().T + self.output_bias.abs()

    def _check_against(self, module: nn.Module) -> None:
        if not self._matches(module):
            raise ValueError(
                "ReLUNetwork.from_module: the network read from the module does not reproduce its "
                "output on random inputs; is its forward a plain Linear/ReLU stack?"
            )

    # ------------------------------------------------------------------ sizes
    @property
    def layers_weights(self) -> list[torch.Tensor]:
        return [*self.hidden_weights, self.output_weight]

    @property
    def layers_biases(self) -> list[torch.Tensor]:
        return [*self.hidden_biases, self.output_bias]

    @property
    def input_dim(self) -> int:
        return self.hidden_weights[0].shape[1]

    @property
    def hidden_sizes(self) -> list[int]:
        return [w.shape[0] for w in self.hidden_weights]

    @property
    def num_units(self) -> int:
        """``H``, the total number of hidden units (pattern length)."""
        return sum(self.hidden_sizes)

    @property
    def num_words(self) -> int:
        return words_for_units(self.num_units)

    @property
    def output_dim(self) -> int:
        return self.output_weight.shape[0]

    def __repr__(self) -> str:
        sizes = " -> ".join(map(str, [self.input_dim, *self.hidden_sizes, self.output_dim]))
        return f"ReLUNetwork({sizes})"

    _STATE = ("hidden_weights", "hidden_biases", "output_weight", "output_bias")

    def __getstate__(self):  # plain arrays travel to worker processes cheaply
        return {
            k: [t.numpy() for t in v] if isinstance(v, list) else v.numpy()
            for k, v in self.__dict__.items()
            if k in self._STATE
        }

    def __setstate__(self, state):
        self.__dict__.update(
            {
                k: [torch.from_numpy(a) for a in v] if isinstance(v, list) else torch.from_numpy(v)
                for k, v in state.items()
            }
        )
        self._abs_layers = None

    # ------------------------------------------------------------------ evaluation
    def _inputs(self, x) -> torch.Tensor:
        x = _as_float64(x)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"{self!r}: inputs must have shape [N, {self.input_dim}], got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{self!r}: inputs contain NaN or infinity; their patterns are undefined")
        return x

    def forward(self, x) -> torch.Tensor:
        h = self._inputs(x)
        for w, b in zip(self.hidden_weights, self.hidden_biases):
            h = torch.relu(h @ w.T + b)
        return h @ self.output_weight.T + self.output_bias

    __call__ = forward

    def patterns(self, x) -> torch.Tensor:
        """Packed activation patterns ``int64 [N, ceil(H/64)]`` of points ``x [N, d]`` (Eq. 3-4)."""
        return activation_patterns(self._inputs(x), self.hidden_weights, self.hidden_biases)

    def bits(self, x) -> torch.Tensor:
        """Unpacked patterns ``bool [N, H]``."""
        return unpack_patterns(self.patterns(x), self.num_units)

    def systems(self, patterns) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(A [P,H,d], c [P,H], W_hat [P,n_out,d], b_hat [P,n_out])`` of packed patterns (Eq. 5)."""
        patterns = self._packed(patterns)
        A, c, W_hat, b_hat = region_system(self.layers_weights, self.layers_biases, patterns)
        return A.numpy(), c.numpy(), W_hat.numpy(), b_hat.numpy()

    def system_scales(self, patterns) -> tuple[np.ndarray, np.ndarray]:
        """``(row_scale [P, H], offset_scale [P, H])``: the norms of each region's rows and offsets built
        from ``|W|`` and ``|b|`` instead of ``W`` and ``b``, i.e. the size of the terms whose sum (with
        cancellation) each row of :meth:`systems` is. A row far below its scale is a zero row."""
        patterns = self._packed(patterns)
        if self._abs_layers is None:
            self._abs_layers = ([w.abs() for w in self.layers_weights], [b.abs() for b in self.layers_biases])
        A_abs, c_abs, _, _ = region_system(*self._abs_layers, patterns)
        return torch.linalg.vector_norm(A_abs, dim=-1).numpy(), c_abs.abs().numpy()

    def regions(self, patterns) -> list[Region]:
        """:class:`Region` of each packed pattern ``[P, words]``."""
        patterns = self._packed(patterns)
        A, c, W_hat, b_hat = self.systems(patterns)
        row_scale, offset_scale = self.system_scales(patterns)
        p = patterns.numpy()
        return [
            Region(p[i].copy(), self.num_units, A[i], c[i], W_hat[i], b_hat[i], row_scale[i], offset_scale[i])
            for i in range(len(p))
        ]

    def region_of_point(self, x) -> Region:
        """The region containing the point ``x [d]`` (its pattern under the tie rule of Eq. 3)."""
        point = np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)
        if point.ndim == 2 and point.shape[0] == 1:
            point = point[0]
        if point.shape != (self.input_dim,):
            raise ValueError(
                f"{self!r}.region_of_point: x must be one point of shape [{self.input_dim}], got shape "
                f"{point.shape}; for several points use regions(patterns(x))"
            )
        return self.regions(self.patterns(point[None]))[0]

    def region_of_pattern(self, pattern) -> Region:
        """The region of one packed pattern ``int64 [words]`` (see :func:`manifold_ext.ops.activation_patterns`)."""
        p = pattern if torch.is_tensor(pattern) else np.asarray(pattern)
        if p.dtype not in (np.int64, torch.int64):
            raise ValueError(
                f"{self!r}.region_of_pattern: a pattern is packed int64 [{self.num_words}] (see "
                f"manifold_ext.ops.activation_patterns), got dtype {p.dtype}"
                + (
                    "; for a point use region_of_point(x) or region(x=...)"
                    if str(p.dtype).replace("torch.", "").startswith(("float", "bfloat"))
                    else ""
                )
            )
        if tuple(p.shape) not in ((self.num_words,), (1, self.num_words)):
            raise ValueError(
                f"{self!r}.region_of_pattern: a pattern is packed int64 [{self.num_words}], got shape {tuple(p.shape)}"
            )
        return self.regions(torch.as_tensor(p).reshape(1, -1))[0]

    def region(self, pattern=None, *, x=None) -> Region:
        """The region of one packed pattern ``[words]`` (``region(pattern)``) or of one point
        (``region(x=point)``); the same as :meth:`region_of_pattern` / :meth:`region_of_point`."""
        if (pattern is None) == (x is None):
            raise ValueError(
                "ReLUNetwork.region: pass exactly one of a packed pattern (region(pattern)) or a point "
                "(region(x=point)); or call region_of_pattern / region_of_point"
            )
        return self.region_of_point(x) if x is not None else self.region_of_pattern(pattern)

    def _packed(self, patterns) -> torch.Tensor:
        p = torch.as_tensor(np.asarray(patterns) if not torch.is_tensor(patterns) else patterns)
        if p.dtype != torch.int64 or p.dim() != 2 or p.shape[1] != self.num_words:
            raise ValueError(
                f"{self!r}: patterns must be packed int64 [P, {self.num_words}], got {p.dtype} {tuple(p.shape)}"
            )
        spare = self.num_words * 64 - self.num_units  # bits past the last unit must be 0
        if spare and len(p):
            high = p[:, -1] & ~((1 << (64 - spare)) - 1)
            if bool((high != 0).any()):
                row = int(torch.nonzero(high != 0)[0, 0])
                raise ValueError(
                    f"{self!r}: pattern {row} has bits set beyond its {self.num_units} hidden units "
                    f"(bits {self.num_units}..{self.num_words * 64 - 1} of the packed words must be 0)"
                )
        return p.to("cpu").contiguous()


_RELU_FUNCTIONS = (torch.relu, torch.relu_, nn.functional.relu)


def _trace_chain(module: nn.Module) -> tuple[nn.Sequential | None, str]:
    """The module's forward as an ``nn.Sequential`` when ``torch.fx`` traces it to a plain chain of
    Linear / ReLU (module, function or method) / Identity / Dropout; else ``(None, why not)``."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as error:  # any tracing failure just means: not readable this way
        return None, f"torch.fx could not trace it: {type(error).__name__}"
    nodes = list(graph.nodes)
    if len(nodes) < 3 or nodes[0].op != "placeholder" or nodes[-1].op != "output":
        return None, "its forward is not a chain of layers"
    layers: list[nn.Module] = []
    previous = nodes[0]
    for node in nodes[1:-1]:
        if not node.args or node.args[0] is not previous or any(a is not None for a in node.args[1:]):
            return None, f"its forward is not a chain of layers (at {node.name})"
        if node.op == "call_module":
            layer = module.get_submodule(node.target)
            if isinstance(layer, (nn.Linear, nn.ReLU)):
                layers.append(layer)
            elif not isinstance(layer, (nn.Identity, nn.Dropout)):
                return None, f"it calls {type(layer).__name__}"
        elif (node.op == "call_function" and node.target in _RELU_FUNCTIONS) or (
            node.op == "call_method" and node.target in ("relu", "relu_")
        ):
            layers.append(nn.ReLU())
        else:
            return None, f"its forward does more than Linear/ReLU (at {node.name})"
        previous = node
    if nodes[-1].args[0] is not previous:
        return None, "its output is not the end of the chain"
    return nn.Sequential(*layers), ""
