"""``DynamicRouting``: routing loads that drift over passes and correlate across layers.

Kinds ``drift``, ``correlated`` and ``fitted``; it follows the ``routing_model.RoutingModel``
contract and is one model with three parts.

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
    The ``Q`` builders and the slot sampler live in ``layer_transitions``.

``base_popularity`` draws the popularity of the ``drift`` and ``correlated`` kinds.
"""

from __future__ import annotations

import numpy as np

from moesim.config.schema import RoutingLoadCfg
from moesim.workload.layer_transitions import _TINY, _cap_rows, _move_slots, _slot_tables
from moesim.workload.routing_load import capped_inclusion, capped_inclusion_rows, counts_from_inclusion
from moesim.workload.routing_model import _check_tokens

__all__ = ["DynamicRouting", "base_popularity"]

_IPF_ROUNDS = 3
_MEAN_DRAWS = 512
"""Drift draws (fixed seed) used to calibrate log-popularity so that the *mean* share is ``popularity``."""
_MEAN_ROUNDS = 8


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
        rng = self._rng
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
