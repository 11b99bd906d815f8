"""Routing loads that change over passes or across layers: drift, cross-layer correlation, replay, fit.

Every model here returns, for a pass of ``T`` tokens with top-``k`` routing, ``int64[L, E]``
counts whose rows sum to ``T * k`` with ``0 <= count <= T`` (as ``routing_load`` does), and has

- ``stationary``: True when every pass is an independent draw from one law, so the engine may
  pool ``sample_many`` draws per token count; False when passes depend on time;
- ``next_pass(T)``: the next pass's counts, advancing the model's time (any model);
- ``sample(T)`` / ``sample_many(T, n)``: independent draws, for stationary models only
  (a non-stationary model raises ``TypeError``: pooling its draws would freeze its time).

``DynamicRouting`` (kinds ``drift``, ``correlated``, ``fitted``) is one model with three parts.

Popularity
    a mean slot share ``p[l, e]`` per layer (rows sum to 1), e.g. Zipf or Dirichlet
    (``base_popularity``) or fitted to a trace. Counts of a layer without a transition matrix are
    drawn like ``routing_load``'s ``zipf`` kind from inclusion ``capped_inclusion_rows(p_now, k)``.
Drift (``drift_sigma > 0`` or ``drift_loadings``)
    the log-popularity follows an Ornstein-Uhlenbeck process: ``p_now[l] = softmax(mu[l] +
    delta[l])``, with ``mu`` set so that the long-run *mean* of ``p_now`` is ``p`` (plain
    ``log p`` would flatten it, more so for large sigma). ``delta[l] = A[l] @ z[l]`` where the
    factors ``z[l, r]`` are independent AR(1) chains with stationary law ``N(0, 1)`` and lag-1
    autocorrelation ``a = exp(-1/tau)``; ``A = diag(sigma)`` (the ``drift`` kind: every expert
    drifts on its own) or loadings fitted to a trace (``fit``: experts drift together, with the
    trace's covariance). Moving ``dt`` time units ahead is exact for any real ``dt``:
    ``z <- a**dt * z + sqrt(1 - a**(2 dt)) * N(0, 1)``. The time unit is one ``next_pass`` (``tokens_per_step=None``, the ``drift`` kind:
    ``tau = drift_tau_passes``), or ``tokens_per_step`` tokens, so a pass of ``T`` tokens moves
    ``T / tokens_per_step`` steps (the ``fitted`` kind: tau was measured in trace steps). A time
    constant in seconds ``tau_s`` is ``tau_passes = tau_s / mean pass time``; ``advance(dt)``
    moves the clock without drawing a pass (for fast-forwarded runs of identical passes). The
    chain starts in its stationary law, so there is no warm-up. ``snapshot(rng)`` freezes the
    current state into a stationary model, so an engine may pool draws and refresh the pool
    every so often instead of drawing every pass.
Cross-layer correlation (``transitions``)
    token routing at layer ``l + 1`` depends on routing at ``l`` through a slot-level transition
    matrix ``M[l] = (1 - rho[l]) * 1 p_now[l+1]^T + rho[l] * Q[l]`` (row ``a``: where a slot at
    expert ``a`` goes next). Layer 0 is drawn from its popularity; then, per layer, each source
    expert's ``c[a]`` slots are spread by ``Multinomial(c[a], M[l, a])``, vectorised over
    experts (``rho`` part: one binomial split per expert and a single multinomial over the next
    layer's popularity; ``Q`` part: one multinomial per source expert, columns ordered by
    decreasing probability so small counts stop early). **Approximation**: slots move
    independently, so two slots of one token may land on one expert; the per-token "k distinct
    experts" rule survives only as the bound ``count <= T``, enforced by moving any excess to the
    experts with room in proportion to ``room * p_now`` (rare unless an expert's share nears
    ``1/k``). With drift, ``Q`` is re-weighted per pass by column factors (three rounds of
    iterative proportional fitting) so that ``p_now[l] Q = p_now[l+1]``: each layer drifts by
    its own OU process while keeping the transition structure. The ``correlated`` kind's ``Q`` is
    the comonotone coupling of ``p[l]`` and ``p[l+1]`` along random expert orders (drawn once):
    each expert sends its slots to one or a few experts of the next layer, and ``rho`` is
    ``RoutingLoadCfg.layer_correlation``; a matrix from a file or a fit is used with ``rho = 1``.

``TraceReplay`` (kind ``trace``) replays a ``RoutingTrace``: with per-token ids, pass ``i`` takes
the next ``T`` tokens of the recorded token stream (exact, k distinct); counts-only traces give
one recorded step per pass, exact when ``T`` equals the step's tokens and otherwise redrawn for
``T`` tokens from the step's inclusion ``counts / step_tokens``. At the end it wraps around
(``cycle``) or raises ``TraceExhausted``.

``fit(trace)`` estimates a ``FittedRouting`` (per-layer popularity, drift, transitions) whose
``generator(rng)`` drives arbitrarily long simulations; see ``fit`` for the estimators.

``split_by_source`` / ``split_tokens_by_source`` give the ``int64[L, P, E]`` (source rank,
expert) split of a pass for the network model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from moesim.config.schema import RoutingLoadCfg
from moesim.core.errors import ConfigError, MoesimError
from moesim.workload.routing_load import capped_inclusion, counts_from_inclusion
from moesim.workload.routing_trace import RoutingTrace

__all__ = [
    "DynamicRouting", "FittedRouting", "RoutingModel", "TraceExhausted", "TraceReplay", "base_popularity",
    "capped_inclusion_rows", "comonotone_coupling", "coupled_transitions", "fit", "load_transitions",
    "split_by_source", "split_tokens_by_source",
]

_IPF_ROUNDS = 3
_SLOTWISE_PER_SOURCE = 8
_SLOTWISE_PER_COLUMN = 2000
"""Slots are placed one by one (cost ~ slots) while fewer than ``PER_COLUMN * width + PER_SOURCE *
sources``, else column by column (cost ~ width numpy calls + sources still holding slots)."""
_MAX_MEAN_BIAS = 0.2
"""Largest share of drift variance ``fit`` restores for the mean estimated from the trace itself."""
_MEAN_DRAWS = 512
"""Drift draws (fixed seed) used to calibrate log-popularity so that the *mean* share is ``popularity``."""
_MEAN_ROUNDS = 8
_TINY = 1e-300


class TraceExhausted(MoesimError):
    """A routing-trace replay without ``cycle`` was asked for more passes than the trace holds."""


class RoutingModel(Protocol):
    """What the engine may rely on for any routing-load model (module doc)."""

    n_layers: int
    n_experts: int
    top_k: int

    @property
    def stationary(self) -> bool: ...

    def next_pass(self, tokens: int) -> np.ndarray: ...

    def sample(self, tokens: int) -> np.ndarray: ...

    def sample_many(self, tokens: int, n: int) -> np.ndarray: ...


def capped_inclusion_rows(weights: np.ndarray, top_k: int) -> np.ndarray:
    """``float64[R, E]`` inclusion per row: proportional to ``weights``, rows sum to ``top_k``, each <= 1.

    Row-wise ``routing_load.capped_inclusion`` (water-filling); at most ``top_k`` rounds.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    capped = np.zeros(w.shape, dtype=bool)
    while True:
        rest = top_k - capped.sum(axis=1, keepdims=True)
        free_w = np.where(capped, 0.0, w)
        total = free_w.sum(axis=1, keepdims=True)
        scale = np.divide(rest, total, out=np.zeros_like(total), where=(total > 0) & (rest > 0))
        pi = np.where(capped, 1.0, free_w * scale)
        over = ~capped & (pi > 1.0)
        if not over.any():
            return np.clip(pi, 0.0, 1.0)
        capped |= over


def comonotone_coupling(p: np.ndarray, q: np.ndarray, order_p: np.ndarray, order_q: np.ndarray) -> np.ndarray:
    """``float64[E, E]`` row-stochastic ``Q`` with ``p @ Q == q``: the monotone coupling of ``p`` and ``q``.

    Experts are laid out on [0, 1] in the orders ``order_p`` / ``order_q`` with lengths equal to
    their shares; source ``a`` sends to the targets its interval overlaps (one or a few), so the
    coupling is as concentrated as the two popularities allow (at most ``2E - 1`` non-zeros).
    """
    e = p.size
    cp = np.cumsum(p[order_p]) / p.sum()
    cq = np.cumsum(q[order_q]) / q.sum()
    cuts = np.unique(np.concatenate([[0.0], cp, cq]))
    cuts = cuts[cuts <= 1.0]
    mid = 0.5 * (cuts[1:] + cuts[:-1])
    mass = np.diff(cuts)
    a = order_p[np.minimum(np.searchsorted(cp, mid), e - 1)]
    b = order_q[np.minimum(np.searchsorted(cq, mid), e - 1)]
    plan = np.zeros((e, e))
    np.add.at(plan, (a, b), mass)
    rows = plan.sum(axis=1, keepdims=True)
    return np.where(rows > 0, plan / np.maximum(rows, _TINY), q / q.sum())


# ---------------------------------------------------------------------- the dynamic model
class DynamicRouting:
    """Popularity + optional OU drift + optional cross-layer transitions (module doc).

    Args:
        popularity: ``[L, E]`` mean slot shares (rows are normalised; zeros stay zero).
        top_k: experts per token ``k``.
        rng: the model's stream; drift state is drawn from it here and every pass continues it.
        transitions: optional ``Q [L-1, E, E]`` (rows are normalised).
        rho: weight of ``Q`` in ``M`` per layer transition (scalar or ``[L-1]``; default 1).
        drift_sigma: stationary std of log-popularity, scalar, ``[L]`` or ``[L, E]`` (0: no drift),
            each expert drifting independently.
        drift_loadings: instead of ``drift_sigma``, ``[L, E, R]`` factor loadings ``A``: the drift
            is ``delta[l] = A[l] @ z[l]`` with ``R`` independent unit-variance OU factors ``z[l]``,
            so log-shares have covariance ``A[l] A[l]^T`` (``fit`` estimates it from a trace).
        drift_tau: OU time constant in time units (passes, or steps of ``tokens_per_step``).
        tokens_per_step: None: one time unit per ``next_pass``; else ``T / tokens_per_step`` units.
        name: shown in ``repr``.
    """

    def __init__(self, *, popularity: np.ndarray, top_k: int, rng: np.random.Generator,
                 transitions: np.ndarray | None = None, rho: float | np.ndarray = 1.0,
                 drift_sigma: float | np.ndarray = 0.0, drift_loadings: np.ndarray | None = None,
                 drift_tau: float | None = None, tokens_per_step: float | None = None,
                 name: str = "dynamic") -> None:
        pop = np.atleast_2d(np.asarray(popularity, dtype=np.float64))
        if pop.ndim != 2 or pop.min() < 0 or not (pop.sum(axis=1) > 0).all():
            raise ValueError("popularity must be [layers, experts], non-negative, every row with a positive entry")
        self.n_layers, self.n_experts = (int(n) for n in pop.shape)
        self.top_k = int(top_k)
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={top_k} must be in [1, n_experts={self.n_experts}]")
        self.popularity = pop / pop.sum(axis=1, keepdims=True)
        """``float64[L, E]`` mean slot shares."""
        self._log_pop = np.log(np.maximum(self.popularity, _TINY))
        self._alive = self.popularity > 0
        self._rng = rng
        self.name = name
        self._set_drift(drift_sigma, drift_loadings)
        self.drift_tau = None if drift_tau is None else float(drift_tau)
        """OU time constant (time units; module doc), or None without drift."""
        if self._drifts and (self.drift_tau is None or self.drift_tau <= 0):
            raise ValueError(f"drift needs drift_tau > 0, got {drift_tau}")
        self.tokens_per_step = None if tokens_per_step is None else float(tokens_per_step)
        self.time = 0.0
        """Time units elapsed (passes, or steps of ``tokens_per_step`` tokens)."""
        self._z = rng.standard_normal(self._z_shape) if self._drifts else np.zeros(self._z_shape)
        if self._drifts:
            self._log_pop = self._mean_preserving_logits()
        self._set_transitions(transitions, rho)

    def _set_drift(self, sigma: float | np.ndarray, loadings: np.ndarray | None) -> None:
        shape = (self.n_layers, self.n_experts)
        self._loadings: np.ndarray | None = None
        if loadings is not None:
            a = np.asarray(loadings, dtype=np.float64)
            if a.ndim != 3 or a.shape[:2] != shape or not np.isfinite(a).all():
                raise ValueError(f"drift_loadings must be finite, shaped [L, E, R] = [{shape[0]}, {shape[1]}, R]")
            self._loadings = a * self._alive[:, :, None]
            self._sigma = np.sqrt((self._loadings ** 2).sum(axis=2))
            self._z_shape: tuple[int, int] = (self.n_layers, a.shape[2])
        else:
            sig = np.asarray(sigma, dtype=np.float64)
            sig = sig[:, None] if sig.ndim == 1 else sig  # one value per layer
            self._sigma = np.broadcast_to(sig, shape) * self._alive
            if (self._sigma < 0).any():
                raise ValueError("drift_sigma must be >= 0")
            self._z_shape = shape
        self._drifts = bool((self._sigma > 0).any())
        self.drift_sigma = np.sqrt((self._sigma ** 2).mean(axis=1))
        """``float64[L]`` root-mean-square stationary std of each layer's log-popularity."""

    def _delta(self, z: np.ndarray) -> np.ndarray:
        """``[L, E]`` log-popularity offsets of the factor state ``z``."""
        if self._loadings is None:
            return self._sigma * z
        return np.einsum("ler,lr->le", self._loadings, z)

    def _mean_preserving_logits(self) -> np.ndarray:
        """``[L, E]`` logits ``mu`` with ``E[softmax(mu + delta)] = popularity`` in the stationary law.

        ``softmax(log p + delta)`` has a flatter mean than ``p`` (much flatter for large sigma), so
        ``mu`` is corrected multiplicatively over ``_MEAN_ROUNDS`` rounds against ``_MEAN_DRAWS``
        fixed-seed draws of ``delta`` (the model's own stream is not touched).
        """
        pop, alive = self.popularity, self._alive
        log_pop = np.log(np.maximum(pop, _TINY))
        mu = log_pop.copy()
        draws = np.random.default_rng(0).standard_normal((_MEAN_DRAWS, self._z_shape[1]))
        for layer in range(self.n_layers):
            if not (self._sigma[layer] > 0).any():
                continue
            if self._loadings is None:
                noise = draws * self._sigma[layer]
            else:
                noise = draws @ self._loadings[layer].T
            for _ in range(_MEAN_ROUNDS):
                logits = np.where(alive[layer], mu[layer] + noise, -np.inf)
                logits -= logits.max(axis=1, keepdims=True)
                w = np.exp(logits)
                mean = (w / w.sum(axis=1, keepdims=True)).mean(axis=0)
                mu[layer] += np.where(alive[layer], log_pop[layer] - np.log(np.maximum(mean, _TINY)), 0.0)
        return mu

    def _set_transitions(self, transitions: np.ndarray | None, rho: float | np.ndarray) -> None:
        self._q: np.ndarray | None = None
        if transitions is None:
            self.rho = np.zeros(max(self.n_layers - 1, 0))
            return
        q = np.asarray(transitions, dtype=np.float64)
        want = (self.n_layers - 1, self.n_experts, self.n_experts)
        if q.shape != want:
            raise ValueError(f"transitions must have shape [L-1, E, E] = {list(want)}, got {list(q.shape)}")
        if q.min() < 0:
            raise ValueError("transitions must be non-negative")
        rows = q.sum(axis=2, keepdims=True)
        fallback = np.broadcast_to(self.popularity[1:, None, :], q.shape)
        self._q = np.where(rows > 0, q / np.maximum(rows, _TINY), fallback)
        self.rho = np.broadcast_to(np.asarray(rho, dtype=np.float64), (self.n_layers - 1,)).copy()
        """``float64[L-1]`` weight of ``Q`` in each layer transition."""
        if (self.rho < 0).any() or (self.rho > 1).any():
            raise ValueError("rho must be in [0, 1]")
        # Each source row's columns by decreasing probability, cut to the widest row's non-zeros
        # (``[L-1, E, W]``), so column-by-column moves stop early; drift re-weights but never
        # creates non-zeros, so the order stays valid.
        width = max(int((self._q > 0).sum(axis=2).max()), 1)
        top = (np.argpartition(-self._q, width - 1, axis=2)[:, :, :width] if width < self.n_experts
               else np.broadcast_to(np.arange(self.n_experts), self._q.shape))
        by_prob = np.argsort(-np.take_along_axis(self._q, top, axis=2), axis=2, kind="stable")
        self._order = np.take_along_axis(top, by_prob, axis=2)
        self._static_tables = None if self._drifts else _slot_tables(self._q, self._order)

    # ------------------------------------------------------------------ properties
    @property
    def stationary(self) -> bool:
        """True without drift: passes are then independent draws from one law."""
        return not self._drifts

    @property
    def transitions(self) -> np.ndarray | None:
        """``float64[L-1, E, E]`` mean slot-level transition matrices ``M`` (None: layers independent)."""
        if self._q is None:
            return None
        r = self.rho[:, None, None]
        return (1.0 - r) * self.popularity[1:, None, :] + r * self._q

    def popularity_now(self) -> np.ndarray:
        """``float64[L, E]`` the current (drifted) slot shares."""
        if not self._drifts:
            return self.popularity
        logits = np.where(self._alive, self._log_pop + self._delta(self._z), -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        w = np.exp(logits)
        return w / w.sum(axis=1, keepdims=True)

    def __repr__(self) -> str:
        parts = [f"layers={self.n_layers}", f"experts={self.n_experts}", f"top_k={self.top_k}"]
        if self._drifts:
            parts.append(f"drift(sigma={np.round(self.drift_sigma.mean(), 3)}, tau={self.drift_tau:.3g})")
        if self._q is not None:
            parts.append(f"transitions(rho={np.round(self.rho.mean(), 3)})")
        return f"DynamicRouting[{self.name}]({', '.join(parts)})"

    # ------------------------------------------------------------------ passes
    def advance(self, dt: float) -> None:
        """Move the drift clock ``dt`` time units ahead without drawing a pass (exact OU step)."""
        if dt < 0:
            raise ValueError(f"dt must be >= 0, got {dt}")
        self.time += dt
        if not self._drifts or dt == 0:
            return
        a = np.exp(-dt / self.drift_tau)  # type: ignore[operator]
        self._z = a * self._z + np.sqrt(1.0 - a * a) * self._rng.standard_normal(self._z_shape)

    def next_pass(self, tokens: int) -> np.ndarray:
        """The next pass's ``int64[L, E]`` counts; advances the drift clock first (module doc)."""
        t = _check_tokens(tokens)
        if self._drifts:
            self.advance(1.0 if self.tokens_per_step is None else t / self.tokens_per_step)
        return self._draw(t, 1, with_transitions=False)[0][0]

    def next_pass_with_transitions(self, tokens: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``next_pass`` plus the slot moves ``int64[L-1, E, E]`` it drew (before the ``<= T`` repair)."""
        t = _check_tokens(tokens)
        if self._drifts:
            self.advance(1.0 if self.tokens_per_step is None else t / self.tokens_per_step)
        counts, moves = self._draw(t, 1, with_transitions=True)
        return counts[0], None if moves is None else moves[0]

    def sample(self, tokens: int) -> np.ndarray:
        """An independent draw ``int64[L, E]`` (stationary models only)."""
        self._need_stationary("sample")
        return self._draw(_check_tokens(tokens), 1, with_transitions=False)[0][0]

    def sample_many(self, tokens: int, n: int) -> np.ndarray:
        """``n`` independent draws ``int64[n, L, E]`` (stationary models only)."""
        self._need_stationary("sample_many")
        return self._draw(_check_tokens(tokens), int(n), with_transitions=False)[0]

    def expected_counts(self, tokens: int) -> np.ndarray:
        """``float64[L, E]`` mean counts at the current time: ``T * capped_inclusion(p_now)``."""
        return float(tokens) * capped_inclusion_rows(self.popularity_now(), self.top_k)

    def _need_stationary(self, what: str) -> None:
        if not self.stationary:
            raise TypeError(f"{self!r} drifts over time: draw passes with next_pass(tokens), not {what} "
                            f"(pooled draws would freeze its clock)")

    def _draw(self, t: int, reps: int, *, with_transitions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """``(int64[reps, L, E] counts, int64[reps, L-1, E, E] moves or None)`` at the current time."""
        n_layers, e, k = self.n_layers, self.n_experts, self.top_k
        out = np.zeros((reps, n_layers, e), dtype=np.int64)
        moves = None
        if with_transitions and self._q is not None:
            moves = np.zeros((reps, n_layers - 1, e, e), dtype=np.int64)
        if t == 0:
            return out, moves
        p_now = self.popularity_now()
        if self._q is None:
            pi = capped_inclusion_rows(p_now, k)
            out[:] = counts_from_inclusion(np.tile(pi, (reps, 1)), t, k, self._rng).reshape(reps, n_layers, e)
            return out, moves
        out[:, 0] = counts_from_inclusion(np.tile(capped_inclusion_rows(p_now[:1], k), (reps, 1)), t, k, self._rng)
        tables = self._static_tables or _slot_tables(self._tilted_q(p_now), self._order)
        for layer in range(n_layers - 1):
            step = self._propagate(out[:, layer], layer, tuple(a[layer] for a in tables), p_now[layer + 1],
                                   with_transitions)
            out[:, layer + 1] = _cap_rows(step[0], t, p_now[layer + 1], self._rng)
            if moves is not None and step[1] is not None:
                moves[:, layer] = step[1]
        return out, moves

    def _tilted_q(self, p_now: np.ndarray) -> np.ndarray:
        """``Q [L-1, E, E]`` re-weighted by column factors so that ``p_now[l] Q[l] ~ p_now[l+1]``."""
        assert self._q is not None
        q = self._q
        if not self._drifts:
            return q
        src, dst = p_now[:-1], p_now[1:]
        g = np.ones_like(dst)
        for _ in range(_IPF_ROUNDS):
            tilted = q * g[:, None, :]
            tilted /= np.maximum(tilted.sum(axis=2, keepdims=True), _TINY)
            reach = np.einsum("le,lef->lf", src, tilted)
            g *= np.divide(dst, reach, out=np.ones_like(dst), where=reach > 0)
        tilted = q * g[:, None, :]
        return tilted / np.maximum(tilted.sum(axis=2, keepdims=True), _TINY)

    def snapshot(self, rng: np.random.Generator) -> DynamicRouting:
        """A stationary copy frozen at the current time (drifted popularity and re-weighted
        transitions), drawing from ``rng``: pool its ``sample_many`` draws for a while, then take
        a new snapshot after ``advance`` (the OU state moves by ``1 - exp(-dt/tau)`` in ``dt``)."""
        p_now = self.popularity_now()
        q = None if self._q is None else self._tilted_q(p_now)
        return DynamicRouting(popularity=p_now, top_k=self.top_k, rng=rng, transitions=q, rho=self.rho,
                              name=f"{self.name}@{self.time:.6g}")

    def _propagate(self, counts: np.ndarray, layer: int, tables: tuple[np.ndarray, ...], p_next: np.ndarray,
                   with_transitions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Slots ``counts [R, E]`` at ``layer`` moved to ``layer + 1``: ``([R, E], [R, E, E] or None)``."""
        rng, e = self._rng, self.n_experts
        reps = counts.shape[0]
        rho = float(self.rho[layer])
        structured = counts if rho >= 1.0 else rng.binomial(counts, rho)
        loose = counts - structured
        dest, moves = _move_slots(structured, tables, rng, with_transitions)
        if rho < 1.0:
            p = p_next / p_next.sum()
            if with_transitions:
                spread = rng.multinomial(loose, p)                              # [R, E, E]
                moves += spread  # type: ignore[operator]
                dest += spread.sum(axis=1)
            else:
                dest += rng.multinomial(loose.sum(axis=1), p)
        return dest.astype(np.int64), moves


def _slot_tables(q: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables of ``_move_slots`` for row-stochastic ``q [L-1, E, E]``, per layer: the rows'
    cumulative sums laid end to end (``[E * E]``), the column order ``[E, W]`` and the conditional
    probabilities ``[E, W]`` of each column given the ones before it."""
    e = q.shape[1]
    cum = np.cumsum(q, axis=2)
    cum[:, :, -1] = 1.0
    edges = (np.arange(e)[None, :, None] + cum).reshape(q.shape[0], e * e)
    pv = np.take_along_axis(q, order, axis=2)
    left = 1.0 - np.concatenate([np.zeros(pv.shape[:2] + (1,)), np.cumsum(pv, axis=2)[:, :, :-1]], axis=2)
    cond = np.clip(np.divide(pv, left, out=np.ones_like(pv), where=left > 1e-12), 0.0, 1.0)
    cond[:, :, -1] = 1.0
    return edges, order, cond


def _move_slots(n: np.ndarray, tables: tuple[np.ndarray, np.ndarray, np.ndarray], rng: np.random.Generator,
                with_moves: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Send ``n[r, a]`` slots from each source ``a`` by ``Multinomial(n[r, a], q[a])``, for every rep ``r``.

    Returns ``(int64[R, E] arrivals, int64[R, E, E] moves or None)``. Two exact ways, picked by
    cost: few slots per source are placed one by one (inverse CDF: one ``searchsorted`` over all
    rows' cumulative sums laid end to end); many go column by column, ``Binomial(rest, q[a, j] /
    mass left)`` over the sources that still hold slots, columns in decreasing probability, so
    most sources are done after a few columns.
    """
    edges, order, cond = tables
    reps, e = n.shape
    flat = n.ravel()
    total = int(flat.sum())
    if total <= _SLOTWISE_PER_COLUMN * order.shape[1] + _SLOTWISE_PER_SOURCE * np.count_nonzero(flat):
        src_rep = np.repeat(np.arange(reps * e), flat)
        src = src_rep % e
        pos = np.searchsorted(edges, src + rng.random(total), side="right")
        to = np.minimum(pos - src * e, e - 1)
        count = None
    else:                                                           # column by column
        act = np.flatnonzero(flat)
        rest = flat[act].astype(np.int64)
        parts_src, parts_to, parts_x = [], [], []
        for j in range(order.shape[1]):
            if not act.size:
                break
            a = act % e
            x = rng.binomial(rest, cond[a, j]) if j < order.shape[1] - 1 else rest
            parts_src.append(act)
            parts_to.append(order[a, j])
            parts_x.append(x)
            rest = rest - x
            alive = rest > 0
            act, rest = act[alive], rest[alive]
        src_rep = np.concatenate(parts_src)
        to = np.concatenate(parts_to)
        count = np.concatenate(parts_x)
    rep = src_rep // e
    arrivals = np.bincount(rep * e + to, weights=count, minlength=reps * e).reshape(reps, e)
    moves = None
    if with_moves:
        moves = np.bincount(src_rep * e + to, weights=count, minlength=reps * e * e).reshape(reps, e, e)
        moves = moves.astype(np.int64)
    return arrivals.astype(np.int64), moves


def _check_tokens(tokens: int) -> int:
    t = int(tokens)
    if t < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    return t


def _cap_rows(counts: np.ndarray, t: int, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Enforce ``counts <= t`` keeping row sums: excess goes to experts with room, ``~ room * weight``."""
    x = np.asarray(counts, dtype=np.int64)
    w = np.maximum(weight, 0.0) + 1e-9
    while True:
        rows = (x > t).any(axis=1)
        if not rows.any():
            return x
        sub = x[rows]
        excess = np.maximum(sub - t, 0).sum(axis=1)
        sub = np.minimum(sub, t)
        room = (t - sub) * w
        sub += rng.multinomial(excess, room / room.sum(axis=1, keepdims=True))
        x[rows] = sub


# ---------------------------------------------------------------------- replay
class TraceReplay:
    """Replays a ``RoutingTrace`` pass by pass (module doc); never stationary.

    Args:
        trace: the recording; its layers, experts and ``top_k`` are the model's.
        rng: redraws counts-only steps whose size differs from the pass.
        cycle: wrap around at the end (else ``TraceExhausted``).
    """

    stationary = False

    def __init__(self, trace: RoutingTrace, *, rng: np.random.Generator, cycle: bool = True) -> None:
        self.trace = trace
        self.n_layers, self.n_experts, self.top_k = trace.n_layers, trace.n_experts, trace.top_k
        self.cycle = bool(cycle)
        self._rng = rng
        self.position = 0
        """Next token (token-level traces) or next step (counts-only traces) to replay."""
        self.passes = 0
        self.last_token_experts: np.ndarray | None = None
        """``int[T, L, k]`` ids of the last pass's tokens (token-level traces), for exact source splits."""

    def __repr__(self) -> str:
        return f"TraceReplay({self.trace!r}, cycle={self.cycle}, position={self.position})"

    @property
    def exhausted(self) -> bool:
        """True when a non-cycling replay has nothing left."""
        size = self.trace.n_tokens if self.trace.token_experts is not None else self.trace.n_steps
        return not self.cycle and self.position >= size

    def reset(self) -> None:
        """Back to the start of the trace."""
        self.position, self.passes, self.last_token_experts = 0, 0, None

    def next_pass(self, tokens: int) -> np.ndarray:
        """The next pass's ``int64[L, E]`` counts (module doc)."""
        t = _check_tokens(tokens)
        counts = self._from_tokens(t) if self.trace.token_experts is not None else self._from_steps(t)
        self.passes += 1
        return counts

    def sample(self, tokens: int) -> np.ndarray:
        raise TypeError(f"{self!r} replays a recording: draw passes with next_pass(tokens), not sample")

    def sample_many(self, tokens: int, n: int) -> np.ndarray:
        raise TypeError(f"{self!r} replays a recording: draw passes with next_pass(tokens), not sample_many")

    def _from_tokens(self, t: int) -> np.ndarray:
        ids = self.trace.token_experts
        assert ids is not None
        n = ids.shape[0]
        if not self.cycle and self.position + t > n:
            raise TraceExhausted(f"routing trace ends after {n} tokens; a pass of {t} tokens at token "
                                 f"{self.position} runs past it (set routing.trace_cycle: true to wrap around)")
        idx = (self.position + np.arange(t)) % n
        self.position = (self.position + t) % n if self.cycle else self.position + t
        chunk = ids[idx]
        self.last_token_experts = chunk
        e, n_layers = self.n_experts, self.n_layers
        cell = (np.arange(n_layers)[None, :, None] * e + chunk).ravel()
        return np.bincount(cell, minlength=n_layers * e).reshape(n_layers, e).astype(np.int64)

    def _from_steps(self, t: int) -> np.ndarray:
        tr = self.trace
        if self.position >= tr.n_steps:
            if not self.cycle:
                raise TraceExhausted(f"routing trace has {tr.n_steps} steps, all replayed "
                                     f"(set routing.trace_cycle: true to wrap around)")
            self.position = 0
        step = self.position
        self.position += 1
        if self.cycle and self.position >= tr.n_steps:
            self.position = 0
        size = int(tr.step_tokens[step])
        if t == size:
            return tr.counts[step].copy()
        if t == 0:
            return np.zeros((self.n_layers, self.n_experts), dtype=np.int64)
        return counts_from_inclusion(tr.counts[step] / size, t, self.top_k, self._rng)


# ---------------------------------------------------------------------- source-rank split
def split_by_source(counts: np.ndarray, rank_tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``int64[L, P, E]``: which of ``P`` source ranks each (token, slot) of a pass comes from.

    ``rank_tokens[p]`` tokens start on rank ``p`` (``sum == T``); ``counts [L, E]`` is the pass
    (rows ``T * k``). Tokens are exchangeable, so rank ``p``'s tokens are a random subset of the
    pass: per rank in turn, each expert's count is drawn exactly from the hypergeometric law of
    the tokens still unassigned, then the rank's row is moved to sum exactly to
    ``rank_tokens[p] * k`` in proportion to each entry's hypergeometric variance (the Gaussian
    conditional mean given the sum, so no entry is biased), clipped to the hypergeometric support
    (any rest in proportion to room), and systematically rounded. Exact invariants: ``out.sum(axis=1) == counts``,
    ``out[:, p].sum(-1) == rank_tokens[p] * k``, ``0 <= out[:, p, e] <= rank_tokens[p]``.
    Layers are split independently: the cross-layer identity of tokens is not kept (use
    ``split_tokens_by_source`` when per-token ids exist).
    """
    c = np.asarray(counts, dtype=np.int64)
    r = np.asarray(rank_tokens, dtype=np.int64)
    t = int(r.sum())
    if r.ndim != 1 or r.min(initial=0) < 0:
        raise ValueError("rank_tokens must be a 1-D array of non-negative token counts")
    k = int(c[0].sum()) // t if t else 0
    if t and (c.sum(axis=1) != t * k).any():
        raise ValueError(f"counts rows must all sum to tokens * k; rank_tokens sum to {t}")
    out = np.zeros((c.shape[0], r.size, c.shape[1]), dtype=np.int64)
    left, pool = c.copy(), t
    for p, n in enumerate(r[:-1].tolist()):
        if n == 0:
            continue
        lo = np.maximum(0, left - (pool - n))
        hi = np.minimum(left, n)
        x = rng.hypergeometric(left, pool - left, n).astype(np.float64) if pool > n else left.astype(np.float64)
        share = left / pool
        x = _fit_row_sums(x, lo, hi, n * k, share * (1.0 - share), rng)
        out[:, p] = x
        left -= x
        pool -= n
    out[:, -1] = left
    return out


def _fit_row_sums(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, target: int, var: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Integer rows in ``[lo, hi]`` summing to ``target``, near ``x``: the gap is spread in proportion
    to ``var``, then (after clipping) to room; systematic rounding."""
    gap = target - x.sum(axis=1, keepdims=True)
    vsum = var.sum(axis=1, keepdims=True)
    x = np.clip(x + gap * np.divide(var, vsum, out=np.zeros_like(var), where=vsum > 0), lo, hi)
    gap = target - x.sum(axis=1, keepdims=True)
    room = np.where(gap > 0, hi - x, x - lo).astype(np.float64)
    rsum = room.sum(axis=1, keepdims=True)
    x = x + gap * np.divide(room, rsum, out=np.zeros_like(room), where=rsum > 0)
    x = np.clip(x, lo, hi)
    cum = np.cumsum(x, axis=1) + rng.random((x.shape[0], 1))
    cum = np.floor(cum)
    cum[:, -1] = target
    y = np.diff(cum, axis=1, prepend=0.0).astype(np.int64)
    return np.clip(y, lo, hi)


def split_tokens_by_source(token_experts: np.ndarray, rank_tokens: np.ndarray, n_experts: int) -> np.ndarray:
    """``int64[L, P, E]`` exact split of per-token ids ``[T, L, k]``: tokens go to ranks in order."""
    ids = np.asarray(token_experts)
    r = np.asarray(rank_tokens, dtype=np.int64)
    if ids.shape[0] != r.sum():
        raise ValueError(f"{ids.shape[0]} tokens but rank_tokens sum to {int(r.sum())}")
    n_layers = ids.shape[1]
    rank = np.repeat(np.arange(r.size), r)
    cell = ((np.arange(n_layers)[None, :, None] * r.size + rank[:, None, None]) * n_experts + ids).ravel()
    return np.bincount(cell.astype(np.int64), minlength=n_layers * r.size * n_experts).reshape(
        n_layers, r.size, n_experts)


# ---------------------------------------------------------------------- fitting
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


# ---------------------------------------------------------------------- building blocks for the factory
def base_popularity(cfg: RoutingLoadCfg, *, n_layers: int, n_experts: int, top_k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``float64[L, E]`` mean slot shares for ``drift`` / ``correlated``: Zipf or Dirichlet (``cfg.popularity``).

    Zipf(``zipf_s``) uses a random rank order per layer when ``shuffle_per_layer``; Dirichlet
    draws each layer from ``Dirichlet(dirichlet_alpha)``. Shares are made feasible for top-k
    (no expert above ``1/k``: ``capped_inclusion / k``).
    """
    if cfg.popularity == "dirichlet":
        w = rng.dirichlet(np.full(n_experts, cfg.dirichlet_alpha), size=n_layers)
        w = np.maximum(w, 1e-12 * w.max(axis=1, keepdims=True))
    else:
        ranks = np.arange(1, n_experts + 1, dtype=np.float64) ** -cfg.zipf_s
        w = np.tile(ranks, (n_layers, 1))
        if cfg.shuffle_per_layer:
            perm = np.argsort(rng.random((n_layers, n_experts)), axis=1, kind="stable")
            np.put_along_axis(w, perm, np.tile(ranks, (n_layers, 1)), axis=1)
    return np.stack([capped_inclusion(row, top_k) for row in w]) / top_k


def coupled_transitions(popularity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``float64[L-1, E, E]``: per consecutive pair of layers, the comonotone coupling of their
    popularities along random expert orders (drawn here): the ``Q`` of the ``correlated`` kind."""
    n_layers, e = popularity.shape
    out = np.empty((max(n_layers - 1, 0), e, e))
    for layer in range(n_layers - 1):
        out[layer] = comonotone_coupling(popularity[layer], popularity[layer + 1], rng.permutation(e),
                                         rng.permutation(e))
    return out


def load_transitions(path: Path, *, n_layers: int, n_experts: int) -> np.ndarray:
    """``float64[L-1, E, E]`` from a ``.npy`` file or the first (or ``transitions``) array of an ``.npz``.

    Raises:
        ConfigError: (field ``routing.layer_correlation``) unreadable file, wrong shape, negative entries.
    """
    where = "routing.layer_correlation"
    try:
        raw = np.load(path, allow_pickle=False)
        if isinstance(raw, np.lib.npyio.NpzFile):  # an archive: pick its array, then close it
            with raw:
                arr = np.asarray(raw["transitions"] if "transitions" in raw.files else raw[raw.files[0]])
        else:
            arr = np.asarray(raw)
    except (OSError, ValueError, IndexError, EOFError) as e:
        raise ConfigError(f"{path}: cannot read transition matrices ({e})", field=where) from e
    want = (n_layers - 1, n_experts, n_experts)
    if arr.shape != want:
        raise ConfigError(f"{path}: transition matrices need shape [L-1, E, E] = {list(want)} for this model, "
                          f"got {list(arr.shape)}", field=where)
    if arr.dtype.kind not in "iuf" or not np.isfinite(arr).all() or arr.min() < 0:
        raise ConfigError(f"{path}: transition matrices must be finite and non-negative", field=where)
    return arr.astype(np.float64)
