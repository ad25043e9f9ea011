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

    ``A [H, d]`` and ``c [H]`` have one row per hidden unit, in pattern order; the
    network equals ``W_hat x + b_hat`` on the region.
    """

    pattern: np.ndarray  # int64 [words], packed as in manifold_ext.ops.activation_patterns
    num_units: int
    A: np.ndarray  # [H, d]
    c: np.ndarray  # [H]
    W_hat: np.ndarray  # [n_out, d]
    b_hat: np.ndarray  # [n_out]

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
            raise ValueError(f"ReLUNetwork: got {len(hidden_weights)} hidden weight matrices but "
                             f"{len(hidden_biases)} bias vectors")
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
                raise ValueError(f"ReLUNetwork: layer {j} needs weights [out, in] and biases [out], got "
                                 f"{tuple(w.shape)} and {tuple(b.shape)}")
            if w.shape[1] != fan_in:
                raise ValueError(f"ReLUNetwork: layer {j} takes {w.shape[1]} inputs but the previous layer has "
                                 f"{fan_in} units")
            fan_in = w.shape[0]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_weights(cls, weights: Sequence, biases: Sequence, output_layer: bool = True) -> "ReLUNetwork":
        """From lists of all layers' weights ``[out, in]`` and biases; the last is the (affine) output
        layer when ``output_layer`` (default), otherwise every layer has a ReLU."""
        if output_layer:
            if len(weights) < 2:
                raise ValueError("ReLUNetwork.from_weights: with output_layer=True pass at least two layers "
                                 "(hidden layers, then the output layer)")
            return cls(weights[:-1], biases[:-1], weights[-1], biases[-1])
        return cls(weights, biases)

    @classmethod
    def from_module(cls, module: nn.Module, check: bool = True) -> "ReLUNetwork":
        """From an ``nn.Sequential`` of ``Linear``/``ReLU`` (nested Sequentials, ``Identity`` and
        ``Dropout`` allowed; consecutive ``Linear`` layers are composed), or from a module whose
        top-level ``Linear`` children are applied in registration order with a ReLU after each but
        the last. With ``check`` (default) the result is compared with ``module`` on random inputs
        and a mismatch raises, so a module this reading does not describe is never silently accepted.
        """
        if isinstance(module, nn.Sequential):
            net = cls._from_sequential(module)
            if check:
                net._check_against(module)
            return net
        linears = [child for child in module.children() if isinstance(child, nn.Linear)]
        others = [type(child).__name__ for child in module.children()
                  if not isinstance(child, (nn.Linear, nn.ReLU, nn.Identity, nn.Dropout))]
        if others:
            raise TypeError(f"ReLUNetwork.from_module: {type(module).__name__} has children other than "
                            f"Linear/ReLU ({', '.join(others)}); only ReLU MLPs have this polyhedral structure")
        if not linears:
            raise TypeError(f"ReLUNetwork.from_module: {type(module).__name__} has no Linear layers")
        weights = [layer.weight for layer in linears]
        biases = [layer.bias if layer.bias is not None else torch.zeros(layer.out_features) for layer in linears]
        candidates = []
        if len(linears) >= 2:
            candidates.append(cls.from_weights(weights, biases, output_layer=True))
        candidates.append(cls.from_weights(weights, biases, output_layer=False))
        for net in candidates:
            if net._matches(module):
                return net
        raise ValueError(f"ReLUNetwork.from_module: {type(module).__name__}'s forward is neither its Linear "
                         "children in registration order with ReLUs between them (affine output) nor with a "
                         "ReLU after every one; wrap it as nn.Sequential or use ReLUNetwork.from_weights")

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
                    raise TypeError(f"ReLUNetwork.from_module: unsupported layer {type(child).__name__} in "
                                    "nn.Sequential; only Linear and ReLU (plus Identity/Dropout) are allowed")

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
                    raise ValueError("ReLUNetwork.from_module: a ReLU must follow a Linear layer "
                                     "(found a ReLU first or two ReLUs in a row)")
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
        with torch.no_grad():
            want = module(x.to(device=param.device, dtype=param.dtype)).to("cpu", torch.float64)
        got = self.forward(x)
        if want.shape != got.shape:
            return False
        scale = 1.0 + want.abs().max().item()
        tol = 1e-9 if param.dtype == torch.float64 else 1e-4
        return bool(torch.allclose(got, want, rtol=tol, atol=tol * scale))

    def _check_against(self, module: nn.Module) -> None:
        if not self._matches(module):
            raise ValueError("ReLUNetwork.from_module: the network read from the module does not reproduce its "
                             "output on random inputs; is its forward a plain Linear/ReLU stack?")

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

    def __getstate__(self):  # plain arrays travel to worker processes cheaply
        return {k: [t.numpy() for t in v] if isinstance(v, list) else v.numpy() for k, v in self.__dict__.items()}

    def __setstate__(self, state):
        self.__dict__.update({k: [torch.from_numpy(a) for a in v] if isinstance(v, list) else torch.from_numpy(v)
                              for k, v in state.items()})

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

    def regions(self, patterns) -> list[Region]:
        """:class:`Region` of each packed pattern ``[P, words]``."""
        patterns = self._packed(patterns)
        A, c, W_hat, b_hat = self.systems(patterns)
        p = patterns.numpy()
        return [Region(p[i].copy(), self.num_units, A[i], c[i], W_hat[i], b_hat[i]) for i in range(len(p))]

    def region(self, pattern=None, *, x=None) -> Region:
        """The region of one packed pattern ``[words]``, or of the point ``x [d]``."""
        if (pattern is None) == (x is None):
            raise ValueError("ReLUNetwork.region: pass exactly one of a pattern or a point x=")
        if x is not None:
            pattern = self.patterns(x)[0]
        return self.regions(torch.as_tensor(pattern).reshape(1, -1))[0]

    def _packed(self, patterns) -> torch.Tensor:
        p = torch.as_tensor(np.asarray(patterns) if not torch.is_tensor(patterns) else patterns)
        if p.dtype != torch.int64 or p.dim() != 2 or p.shape[1] != self.num_words:
            raise ValueError(f"{self!r}: patterns must be packed int64 [P, {self.num_words}], got "
                             f"{p.dtype} {tuple(p.shape)}")
        return p.to("cpu").contiguous()
