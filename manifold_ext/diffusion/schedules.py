"""Noise schedules: ``alphas_cumprod`` (abar) for any number of steps T.

Time indexing: ``alphas_cumprod[0] = 1`` (clean data, t = 0) and
``alphas_cumprod[t] = prod_{i <= t} (1 - beta_i)`` for ``t = 1..T``, so a
schedule holds T + 1 values. Every pair used by Eq. 17-20 needs
``abar_{t+dt} < abar_t``; :meth:`NoiseSchedule.validate` checks it once.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from manifold_ext._args import as_int


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """A discrete diffusion schedule with ``T`` steps.

    Attributes:
        betas: ``[T]`` float64, ``beta_t`` for t = 1..T.
        alphas_cumprod: ``[T + 1]`` float64, ``abar_t`` for t = 0..T (``abar_0 = 1``).
        name: how it was made (for summaries and checkpoints).
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    name: str = "custom"

    @property
    def T(self) -> int:
        return self.betas.numel()

    def __repr__(self) -> str:  # short: the dataclass default would print every beta and abar
        return (
            f"NoiseSchedule(name={self.name!r}, T={self.T}, beta_1={self.betas[0].item():.4g}, "
            f"beta_T={self.betas[-1].item():.4g}, abar_T={self.alphas_cumprod[-1].item():.4g})"
        )

    @classmethod
    def from_betas(cls, betas: torch.Tensor, name: str = "custom") -> NoiseSchedule:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])
        schedule = cls(betas=betas, alphas_cumprod=abar, name=name)
        schedule.validate()
        return schedule

    def validate(self) -> None:
        """Raise ValueError unless 1 = abar_0 > abar_1 > ... > abar_T > 0 (values printed with repr precision)."""
        if self.T < 1:
            raise ValueError("noise schedule: need at least one step (T >= 1)")
        betas = self.betas
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            bad = int(torch.nonzero(~(torch.isfinite(betas) & (betas > 0) & (betas < 1)))[0])
            raise ValueError(
                f"noise schedule: every beta must be in (0, 1) so that abar decreases strictly "
                f"(Eq. 17-20 need abar_(t+dt) < abar_t), got beta_{bad + 1} = {betas[bad].item()!r}"
            )
        abar = self.alphas_cumprod
        if abar.shape != (self.T + 1,):
            raise ValueError(
                f"noise schedule: alphas_cumprod must hold T + 1 = {self.T + 1} values, got shape {list(abar.shape)}"
            )
        if abar[0] != 1.0 or not abar[-1] > 0:
            raise ValueError(
                f"noise schedule: need abar_0 = 1 and abar_T > 0, "
                f"got abar_0 = {abar[0].item()!r} and abar_T = {abar[-1].item()!r}"
            )
        # Rounding can make a tiny beta vanish in 1 - beta: abar_t == abar_(t-1) in float64.
        flat = torch.nonzero(abar[1:] >= abar[:-1])
        if len(flat):
            t = int(flat[0]) + 1
            raise ValueError(
                f"noise schedule: abar must decrease strictly (Eq. 17-20 need abar_(t+dt) < abar_t), "
                f"got abar_{t} = {abar[t].item()!r} >= abar_{t - 1} = {abar[t - 1].item()!r} "
                f"(beta_{t} = {betas[t - 1].item()!r} is lost to rounding in float64)"
            )

    def abar(self, t: int) -> float:
        """abar_t as a Python float (t an integer in 0..T; NumPy integers accepted, bools refused)."""
        t = as_int(t, "time step t")
        if not 0 <= t <= self.T:
            raise ValueError(f"time step {t} outside 0..T = 0..{self.T}")
        return float(self.alphas_cumprod[t])

    def check_dt(self, dt: int) -> list[int]:
        """The times 0, dt, ..., T; ValueError unless dt is a positive divisor of T.

        ``dt`` is an index stride, not a number of steps: the chain visits
        T / dt + 1 times (diffusers' ``num_inference_steps`` is T / dt here).
        NumPy integers are accepted; bools and floats are refused (TypeError).
        """
        dt = as_int(dt, f"dt (a positive integer dividing T = {self.T})")
        if dt < 1 or self.T % dt != 0:
            raise ValueError(f"dt must be a positive integer dividing T = {self.T}, got {dt!r}")
        return list(range(0, self.T + 1, dt))

    # Continuous-time view used by the probability-flow ODE: the noise-to-signal
    # ratio sigma = sqrt((1 - abar) / abar) grows strictly with t.
    def sigma(self, t: int) -> float:
        a = self.abar(t)
        return math.sqrt((1.0 - a) / a)

    def time_at_sigma(self, sigma: float) -> float:
        """The (fractional) time whose sigma is ``sigma``, by linear interpolation between steps."""
        sigmas = torch.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)
        index = int(torch.searchsorted(sigmas, torch.tensor([sigma], dtype=torch.float64)).clamp(1, self.T))
        low, high = sigmas[index - 1].item(), sigmas[index].item()
        return index - 1 + (sigma - low) / (high - low)

    def to_dict(self) -> dict:
        """JSON-able form (name, T, betas); :meth:`from_dict` rebuilds it exactly (float64 round-trips)."""
        return {"name": self.name, "T": self.T, "betas": self.betas.tolist()}

    def identity(self) -> dict:
        """What makes two schedules the same for a model (T and the betas; the name is only a label)."""
        return {"T": self.T, "betas": self.betas.tolist()}

    @classmethod
    def from_dict(cls, payload: dict) -> NoiseSchedule:
        return cls.from_betas(torch.tensor(payload["betas"], dtype=torch.float64), payload.get("name", "custom"))


def linear_schedule(
    T: int, beta_start: float = 1e-4, beta_end: float = 0.02, scale_to_T: bool = True, max_beta: float = 0.999
) -> NoiseSchedule:
    """DDPM's linear betas (Ho et al. 2020: 1e-4 to 0.02 over T = 1000).

    With ``scale_to_T`` (default) both ends are multiplied by 1000 / T (Nichol &
    Dhariwal 2021), so the data is diffused to about the same noise level
    (abar_T ~ 4e-5) for any T; T = 100 then runs from 1e-3 to 0.2. Betas are
    clipped at ``max_beta`` (for T < 20 the scaled end would reach 1).
    """
    T = as_int(T, "T", minimum=1)
    scale = 1000.0 / T if scale_to_T else 1.0
    betas = torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64).clamp(max=max_beta)
    return NoiseSchedule.from_betas(betas, name=f"linear(T={T})")


def cosine_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal (2021): abar(t) = cos^2(((t/T + s) / (1 + s)) pi / 2) / cos^2(s / (1 + s) pi / 2),
    with betas clipped at ``max_beta`` so that abar_T > 0."""
    T = as_int(T, "T", minimum=1)
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    return NoiseSchedule.from_betas(betas, name=f"cosine(T={T})")


def make_schedule(kind: str, T: int) -> NoiseSchedule:
    if kind == "linear":
        return linear_schedule(T)
    if kind == "cosine":
        return cosine_schedule(T)
    raise ValueError(f"unknown schedule '{kind}'; expected 'linear' or 'cosine'")
