"""Expert-routing load generators: how many (token, slot) pairs each expert of each MoE layer gets.

``RoutingLoadGenerator.sample(T)`` returns ``int64[n_layers, n_experts]`` counts for one forward
pass of ``T`` tokens with top-``k`` routing. Every result satisfies, exactly:

- each row sums to ``T * k`` (every token fills its ``k`` slots);
- ``0 <= count <= T`` (a token picks ``k`` *distinct* experts, so an expert sees a token once).

Kinds (``RoutingLoadCfg.kind``):

``uniform``
    Each token picks a uniformly random set of ``k`` distinct experts: inclusion probability
    ``pi_e = k / E``.
``zipf``
    The expert of popularity rank ``i`` (1-based) has weight ``1 / i**s``; a token's slots are
    spread in proportion to weight, so an expert's *slot share* is ``p_e = w_e / sum(w)`` and its
    inclusion probability ``pi_e = k * p_e``. Where ``k * p_e > 1`` (impossible without repeats)
    the expert is capped at ``pi_e = 1`` (every token picks it) and the remaining slots are
    shared among the others in proportion to weight (water-filling). Without
    ``shuffle_per_layer`` expert ``i - 1`` has rank ``i`` in every layer; with it each layer has
    its own random rank order, drawn once at construction.
``hot_experts``
    The LLEP authors' deterministic ``"r:h"`` generator (``test_llep.py``), made valid for any
    ``h`` and ``k``. Let ``n_hot = floor(r*T + 0.5)``, hot group ``0..h-1``, cold group
    ``h..E-1``. Tokens ``0..n_hot-1`` take ``min(k, h)`` slots from the hot group and the rest
    (``k - h`` when ``h < k``) from the cold group; the other tokens take ``min(k, E-h)`` slots
    from the cold group and the rest (only when ``E - h < k``) from the hot group. Within a group
    slots are dealt round-robin from a cursor that starts at the group's first expert and moves
    on with every slot dealt, so one token's slots in a group are consecutive and distinct. The
    authors instead send all ``k`` slots of a hot token to ``hot[j % h]`` (repeating an expert
    when ``h < k``) and start a cold token's window at its index; totals agree up to rounding
    when ``h`` divides ``k``. With ``shuffle_per_layer`` the expert ids are permuted per layer
    (a fixed permutation per layer drawn at construction): logical expert ``j`` is expert
    ``perm[l, j]``, so the hot experts differ by layer.

Sampling (``uniform`` and ``zipf``). Exact per-token sampling costs ``O(T * E)`` per layer, too
slow for every pass. Because tokens are independent, an expert's count under *any* per-token
design with inclusion probability ``pi_e`` is exactly ``Binomial(T, pi_e)``; the joint law is
approximated per layer in ``O(E)``:

1. draw independent deviations from ``Binomial(T, pi_e)``: exactly where ``T * v_e < 9``
   (``v = pi (1 - pi)``), otherwise by a skew-corrected (Cornish-Fisher) normal
   ``sqrt(T v) z + (1 - 2 pi)(z**2 - 1)/6`` (total-variation error < 0.5 % against the binomial);
2. scale them by ``kappa / sqrt(1 - v_e / sum(v))`` with ``kappa = 1 / (1 - 0.25 / sqrt(T sum(v)))``
   (capped at 2), which puts back the variance that step 3 removes;
3. fix the row sum to ``T*k``: a missing unit goes to a (token, expert) cell not yet chosen with
   weight ``pi_e``, an extra unit leaves a chosen cell with weight ``1 - pi_e``, i.e. expert ``e``
   gets ``gap * w_e / sum(w)`` with ``w_e = pi_e (T - x_e)`` or ``(1 - pi_e) x_e``. For large ``T``
   this is Hajek's high-entropy (conditional-Poisson) covariance ``T (diag(v) - v v^T/sum(v))``;
   near the bounds it keeps hot experts from being pushed past ``T``;
4. clip to ``[0, T]`` and move any remaining excess (or deficit) to the other experts in
   proportion to their room (``T - x`` or ``x``), which one pass makes exact;
5. round by systematic rounding (one uniform offset per layer on the cumulative sum), which keeps
   the row sum and rounds each entry to its floor or ceiling.

Measured against exact per-token sampling (uniform) and ``Binomial(T, pi)`` marginals (zipf):
means within ~2.5 % of ``T pi`` for ``T >= 2`` (up to ~6 % for ``T = 1``, where the hottest
random expert is picked a little too rarely), marginal variances within ~±7 %, and ``E[max]``
within 1 %. ``hot_experts`` is exact by construction.

All kinds here are *stationary* (``stationary = True``): every pass is an independent draw from
one distribution, so the engine may pool ``sample_many`` draws per token count. ``next_pass(T)``
is ``sample(T)``, for code that treats every routing model alike. The non-stationary and
cross-layer kinds (``drift``, ``correlated``, ``trace``, ``fitted``) live in
``moesim.workload.dynamic_routing``, ``trace_replay`` and ``routing_fit`` and are built by
``moesim.workload.build_routing``.

``RoutingLoadCfg.samples_per_shape`` is the engine's business: it keeps that many ``sample`` draws
per token count and picks among them.
"""

from __future__ import annotations

import numpy as np

from moesim.config.schema import RoutingLoadCfg
from moesim.core.errors import ConfigError

__all__ = ["RoutingLoadGenerator", "capped_inclusion", "capped_inclusion_rows", "counts_from_inclusion"]

_EXACT_BELOW_VAR = 9.0
"""Per-entry variance below which the binomial is drawn exactly instead of the corrected normal."""
_KAPPA_C = 0.25
"""Strength of the small-batch variance correction ``1 / (1 - c / sqrt(T * sum(v)))``."""
STATIC_KINDS = ("uniform", "zipf", "hot_experts", "dirichlet")
"""The ``RoutingLoadCfg.kind`` values this module builds (the rest: ``build_routing`` in ``__init__``)."""
_DIRICHLET_FLOOR = 1e-12


def capped_inclusion(weights: np.ndarray, top_k: int) -> np.ndarray:
    """Inclusion probabilities ``pi[E]`` proportional to ``weights``, summing to ``top_k``, each <= 1.

    Experts whose share would exceed 1 are set to 1 and the rest re-normalised (water-filling).
    """
    w = np.asarray(weights, dtype=np.float64)
    pi = np.zeros_like(w)
    capped = np.zeros(w.shape, dtype=bool)
    while True:
        free = ~capped
        rest = top_k - int(capped.sum())
        total = float(w[free].sum())
        pi[free] = rest * w[free] / total if rest > 0 and total > 0 else 0.0
        over = free & (pi > 1.0)
        if not over.any():
            return np.clip(pi, 0.0, 1.0)
        capped |= over
        pi[capped] = 1.0


def capped_inclusion_rows(weights: np.ndarray, top_k: int) -> np.ndarray:
    """``float64[R, E]`` inclusion per row: proportional to ``weights``, rows sum to ``top_k``, each <= 1.

    Row-wise ``capped_inclusion`` (water-filling); at most ``top_k`` rounds.
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


class RoutingLoadGenerator:
    """Per-pass expert loads ``int64[n_layers, n_experts]`` for a batch of ``T`` tokens.

    Args:
        cfg: the routing-load model (kind, zipf exponent, hot-expert split, per-layer shuffle).
        n_layers: MoE layers ``L``.
        n_experts: routed experts per layer ``E``.
        top_k: experts per token ``k`` (``1 <= k <= E``).
        rng: the generator's random stream; per-layer permutations are drawn from it here, and
            every ``sample`` continues it (same state => same draws).
    """

    def __init__(self, cfg: RoutingLoadCfg, *, n_layers: int, n_experts: int, top_k: int,
                 rng: np.random.Generator) -> None:
        if cfg.kind not in STATIC_KINDS:
            raise ConfigError(f"kind={cfg.kind!r} is built by moesim.workload.build_routing, not "
                              f"RoutingLoadGenerator (which takes {', '.join(STATIC_KINDS)})", field="routing.kind")
        if n_layers < 1 or n_experts < 1:
            raise ConfigError(f"need n_layers >= 1 and n_experts >= 1, got {n_layers} and {n_experts}",
                              field="model.moe")
        if not 1 <= top_k <= n_experts:
            raise ConfigError(f"top_k={top_k} must be in [1, n_experts={n_experts}]", field="model.moe.top_k")
        if cfg.kind == "hot_experts" and cfg.hot_experts > n_experts:
            raise ConfigError(f"hot_experts={cfg.hot_experts} exceeds the model's {n_experts} experts",
                              field="routing.hot_experts")
        self.cfg = cfg
        self.n_layers, self.n_experts, self.top_k = int(n_layers), int(n_experts), int(top_k)
        self._rng = rng
        shape = (self.n_layers, self.n_experts)
        self._perm: np.ndarray | None = None  # [L, E]: logical (rank) j of layer l is expert perm[l, j]
        if cfg.shuffle_per_layer and cfg.kind in ("zipf", "hot_experts"):
            self._perm = np.argsort(rng.random(shape), axis=1, kind="stable")
        if cfg.kind == "uniform":
            pi = np.full(shape, self.top_k / self.n_experts)
        elif cfg.kind == "zipf":
            ranks = np.arange(1, self.n_experts + 1, dtype=np.float64)
            pi = self._to_experts(np.broadcast_to(capped_inclusion(ranks ** -cfg.zipf_s, self.top_k), shape))
        elif cfg.kind == "dirichlet":
            shares = rng.dirichlet(np.full(self.n_experts, cfg.dirichlet_alpha), size=self.n_layers)
            shares = np.maximum(shares, _DIRICHLET_FLOOR * shares.max(axis=1, keepdims=True))
            pi = np.stack([capped_inclusion(row, self.top_k) for row in shares])
        else:
            pi = self._to_experts(np.broadcast_to(self._hot_inclusion(), shape))
        self.inclusion = pi
        """``float64[L, E]`` probability that a token picks each expert (rows sum to ``k``)."""
        self.inclusion.setflags(write=False)
        self._base = _sampler_params(pi)
        self._tiled: dict[int, tuple[np.ndarray, ...]] = {}

    stationary = True
    """Every pass is an independent draw from one distribution: pooling draws is exact."""

    def __repr__(self) -> str:
        return (f"RoutingLoadGenerator({self.cfg!r}, n_layers={self.n_layers}, n_experts={self.n_experts}, "
                f"top_k={self.top_k})")

    # ------------------------------------------------------------------ public API
    def sample(self, tokens: int) -> np.ndarray:
        """A fresh draw: ``int64[L, E]`` (token, slot) counts for ``tokens`` tokens (see module doc)."""
        t = int(tokens)
        if t < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if t == 0:
            return np.zeros((self.n_layers, self.n_experts), dtype=np.int64)
        if self.cfg.kind == "hot_experts":
            return self._hot_counts(t)
        return self._random_counts(t)

    def next_pass(self, tokens: int) -> np.ndarray:
        """The next pass's ``int64[L, E]`` counts; for a stationary model simply ``sample(tokens)``."""
        return self.sample(tokens)

    def sample_many(self, tokens: int, n: int) -> np.ndarray:
        """``n`` independent draws at once: ``int64[n, L, E]`` (same distribution as ``sample``)."""
        t = int(tokens)
        if t <= 0 or self.cfg.kind == "hot_experts":
            return np.stack([self.sample(t) for _ in range(n)])
        return self._random_counts(t, reps=n).reshape(n, self.n_layers, self.n_experts)

    def expected_counts(self, tokens: int) -> np.ndarray:
        """``float64[L, E]`` mean (token, slot) count per expert for ``tokens`` tokens."""
        if self.cfg.kind == "hot_experts":
            return self._hot_counts(int(tokens)).astype(np.float64)
        return float(tokens) * self.inclusion

    # ------------------------------------------------------------------ internals
    def _to_experts(self, by_rank: np.ndarray) -> np.ndarray:
        """Map ``[L, E]`` values indexed by logical rank to expert ids through the permutation."""
        out = np.array(by_rank, copy=True)
        if self._perm is not None:
            np.put_along_axis(out, self._perm, by_rank, axis=1)
        return out

    def _params(self, reps: int) -> tuple[np.ndarray, ...]:
        """Per-row parameters (inclusion, variance, skew, inflation, row variance, repair mask)
        tiled ``reps`` times along the layer axis: each ``[reps * L, E]`` (row sums ``[reps * L, 1]``)."""
        base = self._base
        if reps == 1:
            return base
        hit = self._tiled.get(reps)
        if hit is None:
            hit = self._tiled[reps] = tuple(np.tile(a, (reps, 1)) for a in base)
        return hit

    def _random_counts(self, t: int, reps: int = 1) -> np.ndarray:
        """``int64[reps * L, E]``: ``reps`` independent draws stacked along the layer axis."""
        return _draw_counts(self._params(reps), t, self.top_k, self._rng)

    def _hot_counts(self, t: int) -> np.ndarray:
        k, e = self.top_k, self.n_experts
        h = self.cfg.hot_experts
        cold = e - h
        n_hot = min(t, int(np.floor(self.cfg.hot_fraction * t + 0.5)))
        n_cold = t - n_hot
        hot_from_hot, cold_from_cold = min(k, h), min(k, cold)
        slots_hot = n_hot * hot_from_hot + n_cold * (k - cold_from_cold)
        slots_cold = n_hot * (k - hot_from_hot) + n_cold * cold_from_cold
        base = np.zeros(e, dtype=np.int64)
        base[:h] = _deal(slots_hot, h)
        if cold:
            base[h:] = _deal(slots_cold, cold)
        return self._to_experts(np.broadcast_to(base, (self.n_layers, e)))

    def _hot_inclusion(self) -> np.ndarray:
        """``float64[E]`` long-run share of tokens that pick each logical expert (``hot_experts``)."""
        k, e, h, r = self.top_k, self.n_experts, self.cfg.hot_experts, self.cfg.hot_fraction
        cold = e - h
        pi = np.empty(e)
        pi[:h] = (r * min(k, h) + (1.0 - r) * (k - min(k, cold))) / h
        if cold:
            pi[h:] = (r * (k - min(k, h)) + (1.0 - r) * min(k, cold)) / cold
        return np.clip(pi, 0.0, 1.0)



def _sampler_params(pi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-row constants of the count sampler for inclusion ``pi[R, E]`` (see the module doc):
    inclusion, variance, skew, inflation, row variance ``[R, 1]`` and repair mask."""
    v = pi * (1.0 - pi)
    skew = (1.0 - 2.0 * pi) / 6.0
    vsum = v.sum(axis=1, keepdims=True)
    share = np.divide(v, vsum, out=np.zeros_like(v), where=vsum > 0)
    inflate = 1.0 / np.sqrt(np.maximum(1.0 - share, 0.25))
    mask = (v > 0).astype(np.float64)  # degenerate experts never absorb repairs
    return pi, v, skew, inflate, np.maximum(vsum, 1e-12), mask


def counts_from_inclusion(pi: np.ndarray, tokens: int, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """``int64[R, E]`` counts for ``tokens`` tokens, one row per row of inclusion ``pi[R, E]``.

    ``pi`` rows must sum to ``top_k`` with entries in ``[0, 1]`` (``capped_inclusion`` makes such
    rows). Rows sum exactly to ``tokens * top_k`` and entries lie in ``[0, tokens]``; the law is
    the one of the ``zipf`` kind (module doc). Used by the dynamic generators, whose inclusion
    changes from pass to pass.
    """
    p = np.ascontiguousarray(np.atleast_2d(np.asarray(pi, dtype=np.float64)))
    t = int(tokens)
    if t <= 0:
        return np.zeros(p.shape, dtype=np.int64)
    return _draw_counts(_sampler_params(p), t, int(top_k), rng)


def _draw_counts(params: tuple[np.ndarray, ...], t: int, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """``int64[R, E]`` counts for ``t > 0`` tokens from ``_sampler_params`` rows (steps 1-5 of the module doc)."""
    pi, v_row, skew, inflate, vsum, mask = params
    target = float(t * top_k)
    mean = t * pi
    var = t * v_row
    exact = var < _EXACT_BELOW_VAR  # includes the degenerate pi in {0, 1}
    n_exact = int(np.count_nonzero(exact))
    if n_exact < exact.size:  # corrected normal; exact entries are overwritten below
        z = rng.standard_normal(pi.shape)
        dev = np.sqrt(var) * z + skew * (z * z - 1.0)
    else:
        dev = np.zeros_like(mean)
    if n_exact:
        random = exact & (v_row > 0)
        if random.all():
            dev = rng.binomial(t, pi) - mean
        elif random.any():
            dev[random] = rng.binomial(t, pi[random]) - mean[random]
        if n_exact < exact.size:
            dev[exact & ~random] = 0.0
    # Restore the variance the sum repair takes away: (1 - s_e)^-1/2 for the projection and
    # kappa for the shrinkage of the boundary-aware weights (c = 0.25 tuned on zipf/uniform).
    kappa = 1.0 / (1.0 - np.minimum(0.5, _KAPPA_C / np.sqrt(t * vsum)))
    x = mean + (inflate * kappa) * dev
    gap = target - x.sum(axis=1, keepdims=True)
    weight = np.where(gap > 0, pi * np.maximum(t - x, 0.0), (1.0 - pi) * np.maximum(x, 0.0))
    wsum = weight.sum(axis=1, keepdims=True)
    x += gap * np.divide(weight, wsum, out=np.zeros_like(weight), where=wsum > 0)
    np.clip(x, 0.0, float(t), out=x)
    gap = target - x.sum(axis=1, keepdims=True)
    if np.abs(gap).max() > 1e-9 * target:
        room = np.where(gap > 0, t - x, x) * mask
        rsum = room.sum(axis=1, keepdims=True)
        x += gap * np.divide(room, rsum, out=np.zeros_like(room), where=rsum > 0)
    cum = _cumsum_columns(x)
    cum += rng.random((pi.shape[0], 1))
    np.floor(cum, out=cum)
    cum[:, -1] = target
    counts = np.empty(cum.shape, np.int64)  # np.diff(cum, prepend=0) as int64, without the prepended copy
    counts[:, 0] = cum[:, 0]
    counts[:, 1:] = cum[:, 1:] - cum[:, :-1]
    if counts.min() < 0 or counts.max() > t:  # floating-point corner; practically never
        counts = _repair(counts, t, top_k)
    return counts


def _cumsum_columns(x: np.ndarray) -> np.ndarray:
    """``np.cumsum(x, axis=1)`` of a 2-D array, one column at a time when it has few (the same
    additions in the same order, without numpy's per-row overhead)."""
    if x.shape[1] > 16:
        return np.cumsum(x, axis=1)
    out = np.empty_like(x)
    out[:, 0] = x[:, 0]
    for j in range(1, x.shape[1]):
        np.add(out[:, j - 1], x[:, j], out=out[:, j])
    return out


def _deal(slots: int, group: int) -> np.ndarray:
    """Counts ``int64[group]`` after dealing ``slots`` round-robin from the group's first member."""
    counts = np.full(group, slots // group, dtype=np.int64)
    counts[: slots % group] += 1
    return counts


def _repair(counts: np.ndarray, t: int, k: int) -> np.ndarray:
    """Deterministically restore ``0 <= c <= t`` and row sums ``t*k`` (moves single units)."""
    counts = np.clip(counts, 0, t)
    for row in counts:
        diff = t * k - int(row.sum())
        while diff:
            idx = int(np.argmin(row)) if diff > 0 else int(np.argmax(row))
            step = min(diff, t - int(row[idx])) if diff > 0 else max(diff, -int(row[idx]))
            row[idx] += step
            diff -= step
    return counts
