"""Fitting a routing generator to a ``RoutingTrace`` (kind ``fitted``).

``fit(trace)`` estimates a ``FittedRouting`` (per-layer popularity, drift, transitions) whose
``generator(rng)`` drives arbitrarily long simulations; see ``fit`` for the estimators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim.workload.dynamic_routing import DynamicRouting
from moesim.workload.routing_trace import RoutingTrace

__all__ = ["FittedRouting", "fit"]

_MAX_MEAN_BIAS = 0.2
"""Largest share of drift variance ``fit`` restores for the mean estimated from the trace itself."""


@dataclass(frozen=True, eq=False)
class FittedRouting:
    """What ``fit`` learned from a trace; ``generator(rng)`` turns it into a ``DynamicRouting``."""

    popularity: np.ndarray
    """``float64[L, E]`` mean slot shares over the whole trace."""
    top_k: int
    tokens_per_step: float
    """Mean tokens per trace step: the drift clock's unit."""
    transitions: np.ndarray | None
    """``float64[L-1, E, E]`` slot-level transition matrices (None for counts-only traces)."""
    drift_loadings: np.ndarray | None
    """``float64[L, E, R]`` factor loadings of the log-share drift (covariance ``A A^T``), or None."""
    drift_tau_steps: float | None
    """OU time constant in trace steps, from the lag-1 autocorrelation (None: no drift found)."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Diagnostics: raw and corrected lag-1 autocorrelation, observed and noise variance, steps used."""

    @property
    def drift_sigma(self) -> np.ndarray:
        """``float64[L]`` root-mean-square std of the fitted log-share drift per layer."""
        n_layers = self.popularity.shape[0]
        if self.drift_loadings is None:
            return np.zeros(n_layers)
        return np.sqrt((self.drift_loadings ** 2).sum(axis=2).mean(axis=1))

    def generator(self, rng: np.random.Generator, *, drift: bool = True) -> DynamicRouting:
        """A model with this popularity and these transitions; with ``drift`` (and drift found), the
        fitted OU drift on a clock of ``tokens_per_step`` tokens per step."""
        use = drift and self.drift_tau_steps is not None and self.drift_loadings is not None
        return DynamicRouting(popularity=self.popularity, top_k=self.top_k, rng=rng, transitions=self.transitions,
                              drift_loadings=self.drift_loadings if use else None,
                              drift_tau=self.drift_tau_steps if use else None,
                              tokens_per_step=self.tokens_per_step, name="fitted")


def fit(trace: RoutingTrace, *, min_mean_count: float = 5.0) -> FittedRouting:
    """Fit per-layer popularity, OU drift and cross-layer transitions to ``trace``.

    - popularity: ``trace.popularity``; transitions: ``trace.transition_matrix(l)`` per layer
      (needs per-token ids; exact by construction: ``p[l] @ M[l] == p[l+1]``).
    - drift, from log-shares ``y[s, l, e] = log((c + 0.5) / (T_s + 1))`` minus each expert's mean
      over steps (``d``), for experts whose mean count per step is at least ``min_mean_count``
      (rarer ones are noise-dominated and do not drift):

      * covariance: ``d``'s covariance over steps per layer, less the multinomial sampling noise
        of a step on the diagonal, ``N = mean_s((1 - pi_s) / (T_s pi_s))`` (delta method, with
        ``pi_s = (c + 0.5) / (T_s + 1)``); negative eigenvalues are dropped and the rest become
        the loadings ``A`` (``cov = A A^T``). A full covariance, not one sigma per expert,
        because experts shift together (a domain change cools some experts as it heats
        others); independent per-expert noise overstates how often several experts peak at once;
      * time constant: the pooled lag-1 autocovariance ``C`` (consecutive steps of one segment)
        has no sampling noise, so ``r = C / (V - N)`` with ``V`` the pooled variance; ``r`` and
        the covariance are then corrected for the mean having been estimated from the same
        ``S`` steps (``_unbias_lag1``), and ``tau = -1 / ln r`` steps.

      With fewer than 5 steps, or no variance beyond noise, no drift is fitted.
    """
    s, n_layers, _ = trace.counts.shape
    transitions = None
    if trace.token_experts is not None and n_layers > 1:
        transitions = np.stack([trace.transition_matrix(layer) for layer in range(n_layers - 1)])
    loadings, tau, stats = _fit_drift(trace, min_mean_count) if s >= 5 else (None, None, {"steps": s})
    return FittedRouting(popularity=trace.popularity, top_k=trace.top_k,
                         tokens_per_step=float(trace.step_tokens.mean()), transitions=transitions,
                         drift_loadings=loadings, drift_tau_steps=tau, stats=stats)


def _fit_drift(trace: RoutingTrace, min_mean_count: float) -> tuple[np.ndarray | None, float | None, dict[str, Any]]:
    s, n_layers, e = trace.counts.shape
    c = trace.counts.astype(np.float64)
    tok = trace.step_tokens.astype(np.float64)[:, None, None]
    used = c.mean(axis=0) >= min_mean_count                                      # [L, E]
    pi = np.clip((c + 0.5) / (tok + 1.0), 1e-9, 1.0)                             # [S, L, E] per step
    d = np.log(pi)
    d = (d - d.mean(axis=0, keepdims=True)) * used
    noise = ((1.0 - pi) / (tok * pi)).mean(axis=0) * used                         # [L, E]
    var_obs = (d * d).sum(axis=0) / (s - 1)                                      # [L, E]
    same_segment = _consecutive_pairs(trace)                                     # [S-1]
    cov1 = (d[1:] * d[:-1])[same_segment].mean(axis=0) if same_segment.any() else np.zeros((n_layers, e))
    signal = float((var_obs - noise).sum())
    raw = float(cov1.sum()) / signal if signal > 0 else 0.0
    n_used = np.maximum(used.sum(axis=1), 1)
    stats: dict[str, Any] = {"steps": s, "experts_used": int(used.sum()),
                             "observed_var": float((var_obs.sum(axis=1) / n_used).mean()),
                             "noise_var": float((noise.sum(axis=1) / n_used).mean()), "lag1_raw": raw}
    if signal <= 0 or raw <= 0:
        return None, None, stats
    r, b = _unbias_lag1(raw, s)
    stats["lag1"] = r
    loadings = np.zeros((n_layers, e, e))
    for layer in range(n_layers):
        cov = d[:, layer].T @ d[:, layer] / (s - 1) - np.diag(noise[layer])
        vals, vecs = np.linalg.eigh(cov / (1.0 - b))
        keep = vals > 1e-9 * max(float(vals.max()), 1e-300)
        loadings[layer, :, :int(keep.sum())] = vecs[:, keep] * np.sqrt(vals[keep])
    rank = int(np.max((np.abs(loadings) > 0).any(axis=1).sum(axis=1)))
    if rank == 0:
        return None, None, stats
    stats["drift_rank"] = rank
    return loadings[:, :, :rank], -1.0 / np.log(r), stats


def _unbias_lag1(raw: float, n: int) -> tuple[float, float]:
    """``(rho, b)``: the AR(1) coefficient whose demeaned ``n``-step estimate is ``raw``, and the share
    ``b`` of the variance the estimated mean took away.

    Removing a mean estimated from ``n`` steps of an AR(1) with coefficient ``rho`` lowers the
    variance to ``sigma**2 (1 - b)`` and the lag-1 covariance to ``sigma**2 (rho - b)``, with
    ``b = (1 + rho) / ((1 - rho) n)``, so ``raw = (rho - b) / (1 - b)``, solved by fixed-point
    iteration. ``b`` is capped at ``_MAX_MEAN_BIAS``: a trace shorter than about ten time
    constants cannot tell a slow drift from a fixed offset, and an uncapped correction runs
    away (``rho -> 1``); the fit then stays close to what the trace shows.
    """
    rho = float(np.clip(raw, 0.01, 0.999))
    b = 0.0
    for _ in range(200):
        b = min(_MAX_MEAN_BIAS, (1.0 + rho) / ((1.0 - rho) * n))
        new = float(np.clip(raw * (1.0 - b) + b, 0.01, 0.999))
        if abs(new - rho) < 1e-10:
            break
        rho = new
    return rho, b


def _consecutive_pairs(trace: RoutingTrace) -> np.ndarray:
    """``bool[S-1]``: steps ``i`` and ``i+1`` belong to the same segment (all True without segments)."""
    ok = np.ones(max(trace.n_steps - 1, 0), dtype=bool)
    segs = trace.meta.get("segments")
    if segs:
        ends = np.cumsum([int(seg["steps"]) for seg in segs])[:-1]
        ok[ends[(ends >= 1) & (ends <= ok.size)] - 1] = False
    return ok
