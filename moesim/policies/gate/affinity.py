"""The router's natural expert preference over training steps, before any balancing rule.

``logits(t) [L, E]`` = log slot shares the router would produce at step ``t`` with plain top-k.
Three parts, each optional:

1. **base**: ``log p0`` from the scenario's routing model (Zipf, Dirichlet, hot experts ...).
2. **drift**: an Ornstein-Uhlenbeck process per (layer, expert) on the log-popularity with
   stationary std ``sigma`` and time constant ``tau`` steps (lag-1 autocorrelation
   ``exp(-1/tau)``), started in its stationary law; ``dt`` steps ahead is one exact transition
   ``z <- a^dt z + sqrt(1 - a^(2 dt)) N(0, 1)``.
3. **implicit congestion** ("Three Phases of Expert Routing", POLICIES.md C7): the router plays
   a congestion game whose equilibrium slot shares solve ``x = softmax(a - gamma * E * x)``
   (``a`` = base + drift). ``gamma(t)`` follows the surge / stabilisation / relaxation profile of
   ``PhasesCfg``; the equilibrium is found by Newton's method (``congestion_equilibrium``).

The functions are pure; ``RouterAffinity`` carries the drift state and takes its random stream.
"""

from __future__ import annotations

import numpy as np

from moesim.config.training import PhasesCfg
from moesim.policies.gate.base import softmax_rows

__all__ = ["RouterAffinity", "congestion_equilibrium", "phase_gamma"]

_OUTER_ITERS = 100
_INNER_ITERS = 80


def phase_gamma(cfg: PhasesCfg, progress: float) -> float:
    """``gamma`` at ``progress`` in [0, 1] of the simulated run (piecewise linear, module doc)."""
    x = min(max(progress, 0.0), 1.0)
    if x <= cfg.surge_end:
        frac = x / cfg.surge_end if cfg.surge_end > 0 else 1.0
        return cfg.gamma_start + (cfg.gamma_peak - cfg.gamma_start) * frac
    if x <= cfg.relax_start:
        return cfg.gamma_peak
    span = 1.0 - cfg.relax_start
    frac = (x - cfg.relax_start) / span if span > 0 else 1.0
    return cfg.gamma_peak + (cfg.gamma_end - cfg.gamma_peak) * frac


def _log_share(b: np.ndarray, k: float, y: np.ndarray | None = None) -> np.ndarray:
    """``y`` with ``y + k e^y = b`` by Newton's method, from ``y`` or else from ``b - log1p(k e^b)``
    (left of the root; f is convex and increasing, so the iterates stay below ``b`` and converge)."""
    if y is None:
        y = b - np.log1p(k * np.exp(np.minimum(b, 700.0)))
    for _ in range(_INNER_ITERS):
        ey = np.exp(y)
        step = (y + k * ey - b) / (1.0 + k * ey)
        y = y - step
        if np.abs(step).max() < 1e-12:
            break
    return np.minimum(y, b)


def congestion_equilibrium(logits: np.ndarray, gamma: float) -> np.ndarray:
    """Slot shares ``x [..., E]`` with ``x = softmax(logits - gamma * E * x)``.

    Equivalently ``log x_e + k x_e = logits_e - lambda`` (``k = gamma E``) with ``lambda`` such that
    the row sums to 1. Per ``lambda`` each ``x_e`` comes from Newton's method on ``log x``; ``lambda``
    itself by Newton's method safeguarded with bisection on a bracket where the row sum crosses 1
    (plain fixed-point iteration oscillates once ``k`` is large).
    """
    x = softmax_rows(logits)
    if gamma <= 0:
        return x
    e = logits.shape[-1]
    k = gamma * e
    top = logits.max(axis=-1, keepdims=True)
    lo, hi = top - k, top + np.log(e) - k / e          # row sum >= 1 at lo, <= 1 at hi
    lam = np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)) + top - k / e
    lam = np.clip(lam, lo, hi)
    y = None
    for _ in range(_OUTER_ITERS):
        y = _log_share(logits - lam, k, y)
        x = np.exp(y)
        total = x.sum(axis=-1, keepdims=True)
        if np.all(np.abs(total - 1.0) < 1e-12):
            break
        lo = np.where(total > 1.0, lam, lo)
        hi = np.where(total <= 1.0, lam, hi)
        step = lam + (total - 1.0) / np.maximum((x / (1.0 + k * x)).sum(axis=-1, keepdims=True), 1e-300)
        lam = np.where((step > lo) & (step < hi), step, 0.5 * (lo + hi))
    return x / x.sum(axis=-1, keepdims=True)


class RouterAffinity:
    """Natural router logits step by step (module doc).

    Args:
        base_share: ``[L, E]`` slot shares at the start (rows sum to 1).
        drift_sigma, drift_tau_steps: OU drift of the log-popularity (sigma 0: none).
        phases: implicit-congestion profile, or None.
        steps: simulated steps (the phases' time axis).
        rng: the stream drift draws come from.
    """

    def __init__(self, base_share: np.ndarray, *, drift_sigma: float, drift_tau_steps: float,
                 phases: PhasesCfg | None, steps: int, rng: np.random.Generator) -> None:
        share = np.asarray(base_share, dtype=np.float64)
        self.base = np.log(np.maximum(share / share.sum(axis=-1, keepdims=True), 1e-12))
        self.sigma = float(drift_sigma)
        self.a = float(np.exp(-1.0 / drift_tau_steps))
        self.phases, self.steps, self.rng = phases, max(int(steps), 1), rng
        self.z = rng.standard_normal(self.base.shape) if self.sigma > 0 else None
        self.t = 0

    def gamma(self, step: int) -> float:
        """Implicit congestion at ``step`` (0 without phases)."""
        if self.phases is None:
            return 0.0
        return phase_gamma(self.phases, step / max(self.steps - 1, 1))

    def logits(self, step: int) -> np.ndarray:
        """``[L, E]`` natural logits at ``step`` (non-decreasing across calls). The drift moves from
        the last queried step to ``step`` by the exact OU transition, so skipping steps is allowed."""
        a = self.base
        if self.z is not None:
            dt = step - self.t
            if dt < 0:
                raise ValueError(f"step {step} is before the last queried step {self.t}")
            if dt > 0:
                decay = self.a ** dt
                self.z = decay * self.z + np.sqrt(1.0 - decay ** 2) * self.rng.standard_normal(self.z.shape)
                self.t = step
            a = a + self.sigma * self.z - 0.5 * self.sigma ** 2
        g = self.gamma(step)
        return np.log(np.maximum(congestion_equilibrium(a, g), 1e-300)) if g > 0 else a
