"""The router's natural expert preference over training steps, before any balancing rule.

``logits(t) [L, E]`` = log slot shares the router would produce at step ``t`` with plain top-k.
Three parts, each optional:

1. **base**: ``log p0`` from the scenario's routing model (Zipf, Dirichlet, hot experts ...).
2. **drift**: an Ornstein-Uhlenbeck process per (layer, expert) on the log-popularity with
   stationary std ``sigma`` and time constant ``tau`` steps (lag-1 autocorrelation
   ``exp(-1/tau)``), started in its stationary law.
3. **implicit congestion** ("Three Phases of Expert Routing", POLICIES.md C7): the router plays
   a congestion game whose equilibrium slot shares solve ``x = softmax(a - gamma * E * x)``
   (``a`` = base + drift). ``gamma(t)`` follows the surge / stabilisation / relaxation profile of
   ``PhasesCfg``; the fixed point is found by damped iteration.

The functions are pure; ``RouterAffinity`` carries the drift state and takes its random stream.
"""

from __future__ import annotations

import numpy as np

from moesim.config.training import PhasesCfg
from moesim.policies.gate.base import softmax_rows

__all__ = ["RouterAffinity", "congestion_equilibrium", "phase_gamma"]

_FIXED_POINT_ITERS = 60
_DAMPING = 0.5


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


def congestion_equilibrium(logits: np.ndarray, gamma: float) -> np.ndarray:
    """Slot shares ``x [..., E]`` with ``x = softmax(logits - gamma * E * x)`` (damped iteration)."""
    x = softmax_rows(logits)
    if gamma <= 0:
        return x
    e = logits.shape[-1]
    for _ in range(_FIXED_POINT_ITERS):
        x = (1 - _DAMPING) * x + _DAMPING * softmax_rows(logits - gamma * e * x)
    return x


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

    def gamma(self, step: int) -> float:
        """Implicit congestion at ``step`` (0 without phases)."""
        if self.phases is None:
            return 0.0
        return phase_gamma(self.phases, step / max(self.steps - 1, 1))

    def logits(self, step: int) -> np.ndarray:
        """``[L, E]`` natural logits at ``step``; advances the drift by one step per call."""
        a = self.base
        if self.z is not None:
            a = a + self.sigma * self.z - 0.5 * self.sigma ** 2
            self.z = self.a * self.z + np.sqrt(1.0 - self.a ** 2) * self.rng.standard_normal(self.z.shape)
        g = self.gamma(step)
        return np.log(np.maximum(congestion_equilibrium(a, g), 1e-300)) if g > 0 else a
