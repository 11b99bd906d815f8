"""ILP stage 2 (MoETuner ILP2): map each layer's clusters one-to-one onto GPUs.

Inputs: ``sizes int[L, P]`` experts (copies) per cluster, ``traffic[t] float[P, P]`` tokens from
cluster k of layer t to cluster k' of layer t+1, ``bw float[P, P]`` bytes/s, ``caps int[P]``
most experts (all layers) each GPU can hold.

Model: binaries ``y[l,k,g]`` (a permutation per layer); every GPU's total experts over all layers
lies in ``[floor(N/P), ceil(N/P)]`` (``N = sizes.sum()``) and under its cap. Objective
``sum_t max_{g != g'} T_t[g,g'] / bw[g,g']`` with ``T_t[g,g'] = sum_{k,k'} traffic[t][k,k']
y[t,k,g] y[t+1,k',g']``, linearised exactly: ``a[t,g,k'] = sum_k traffic[t][k,k'] y[t,k,g]``,
``v[t,g,k',g'] >= a[t,g,k'] - M (1 - y[t+1,k',g'])``, ``v >= 0``, ``m_t >= sum_k' v / bw``.
Size: ``L P^2`` binaries and up to ``(L-1) P^2 (P-1)`` continuous ``v``; beyond ``max_vars``
of those the traffic term is skipped (feasibility only, noted in the report). P <= 8 with
L <= 32 (14k ``v``) solves or reaches a good incumbent within seconds.
"""

from __future__ import annotations

import numpy as np
import pulp

from moesim.policies.placement._cbc import CbcResult, new_var, solve

__all__ = ["cyclic", "map_clusters", "traffic_cost"]


def _fits(perm: np.ndarray, sizes: np.ndarray, caps: np.ndarray) -> bool:
    n_layers, n_gpus = sizes.shape
    totals = np.zeros(n_gpus, dtype=np.int64)
    for l in range(n_layers):
        if sorted(perm[l].tolist()) != list(range(n_gpus)):
            return False
        np.add.at(totals, perm[l], sizes[l])
    n = int(sizes.sum())
    return bool((totals >= n // n_gpus).all() and (totals <= -(-n // n_gpus)).all()
                and (totals <= caps).all())


def cyclic(sizes: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """``perm int[L, P]`` (cluster -> GPU) dealing each layer's larger clusters round the GPUs in
    descending-capacity order; balanced whenever every layer's sizes are floor/ceil of its mean."""
    n_layers, n_gpus = sizes.shape
    order = np.argsort(-caps, kind="stable")
    perm = np.empty((n_layers, n_gpus), dtype=np.int64)
    start = 0
    for l in range(n_layers):
        by_size = np.argsort(-sizes[l], kind="stable")
        perm[l, by_size] = order[(start + np.arange(n_gpus)) % n_gpus]
        start = (start + int((sizes[l] > sizes[l].min()).sum())) % n_gpus
    return perm


def _greedy(sizes: np.ndarray, caps: np.ndarray) -> np.ndarray:
    n_layers, n_gpus = sizes.shape
    totals = np.zeros(n_gpus, dtype=np.int64)
    perm = np.empty((n_layers, n_gpus), dtype=np.int64)
    for l in range(n_layers):
        free = np.ones(n_gpus, dtype=bool)
        for k in np.argsort(-sizes[l], kind="stable"):
            key = np.where(free, totals * (caps.max() + 1) - caps, np.iinfo(np.int64).max)
            g = int(np.argmin(key))
            perm[l, k], free[g] = g, False
            totals[g] += sizes[l, k]
    return perm


def traffic_cost(perm: np.ndarray, traffic: list[np.ndarray], bw: np.ndarray) -> float:
    """Sum over transitions of the max over GPU pairs (g != g') of traffic / bandwidth."""
    total = 0.0
    for t, c in enumerate(traffic):
        gpu = np.zeros_like(c)
        np.add.at(gpu, (perm[t][:, None], perm[t + 1][None, :]), c)
        np.fill_diagonal(gpu, 0.0)
        total += float((gpu / bw).max(initial=0.0))
    return total


def map_clusters(sizes: np.ndarray, traffic: list[np.ndarray] | None, bw: np.ndarray,
                 caps: np.ndarray, *, time_limit_s: float, rel_gap: float,
                 max_vars: int) -> tuple[np.ndarray | None, list[tuple[str, CbcResult]], str | None]:
    """``(perm int[L, P] or None when no balanced mapping was found, solves, note)``.

    When neither the cyclic nor the greedy mapping balances the totals, a feasibility-only
    model (no traffic) runs first, with a quarter of the time: it tells an infeasible size
    profile apart quickly and warm-starts the traffic model.
    """
    n_layers, n_gpus = sizes.shape
    warm = next((p for p in (cyclic(sizes, caps), _greedy(sizes, caps)) if _fits(p, sizes, caps)),
                None)
    note = None
    if traffic is not None and (n_layers - 1) * n_gpus ** 2 * (n_gpus - 1) > max_vars:
        traffic, note = None, (f"stage 2 traffic objective skipped: (L-1)*P^2*(P-1) > "
                               f"max_stage2_vars={max_vars}")
    solves: list[tuple[str, CbcResult]] = []
    if warm is None:
        warm, result = _solve(sizes, None, bw, caps, None, 0.25 * time_limit_s, 0.0)
        solves.append(("map_feasibility", result))
        if warm is None:
            return None, solves, note
        time_limit_s *= 0.75
    if traffic is None or not any(c.any() for c in traffic):
        return warm, solves, note
    # CBC's absolute tolerances (~1e-6..1e-9) swallow an objective of tokens / (bytes/s) (~1e-10..1e-6):
    # solve in units of the largest traffic entry and the narrowest link
    t_scale = max(float(c.max()) for c in traffic)
    off = bw[~np.eye(n_gpus, dtype=bool)]
    b_scale = float(off[np.isfinite(off)].min()) if np.isfinite(off).any() else 1.0
    scaled = [c / t_scale for c in traffic]
    warm = _polish(warm, sizes, scaled, bw / b_scale, caps)
    perm, result = _solve(sizes, scaled, bw / b_scale, caps, warm, time_limit_s, rel_gap)
    solves.append(("map", result))
    if perm is None or traffic_cost(perm, traffic, bw) > traffic_cost(warm, traffic, bw) * (1 + 1e-9):
        perm = warm
    return perm, solves, note


def _polish(perm: np.ndarray, sizes: np.ndarray, traffic: list[np.ndarray], bw: np.ndarray,
            caps: np.ndarray, max_perms: int = 720) -> np.ndarray:
    """Coordinate descent over each layer's cluster->GPU map (all P! maps for small P, else
    pairwise swaps), keeping the totals balanced: a strong warm start for the weak big-M model."""
    import itertools
    import math
    n_layers, n_gpus = sizes.shape
    perm = perm.copy()
    if math.factorial(n_gpus) <= max_perms:
        moves = [np.array(p) for p in itertools.permutations(range(n_gpus))]
    else:
        moves = []
        for i, j in itertools.combinations(range(n_gpus), 2):
            m = np.arange(n_gpus)
            m[[i, j]] = m[[j, i]]
            moves.append(m)
    best = traffic_cost(perm, traffic, bw)
    improved = True
    while improved:
        improved = False
        for l in range(n_layers):
            base = perm[l].copy()
            for m in moves:
                perm[l] = m[base]
                if not _fits(perm, sizes, caps):
                    continue
                c = traffic_cost(perm, traffic, bw)
                if c < best * (1 - 1e-9):
                    best, base, improved = c, perm[l].copy(), True
            perm[l] = base
    return perm


def _solve(sizes: np.ndarray, traffic: list[np.ndarray] | None, bw: np.ndarray, caps: np.ndarray,
           warm: np.ndarray | None, time_limit_s: float,
           rel_gap: float) -> tuple[np.ndarray | None, CbcResult]:
    prob, y = _build(sizes, traffic, bw, caps)
    if warm is not None:                  # integers only: CBC derives the continuous values
        for (l, k, g), var in y.items():
            var.setInitialValue(int(warm[l, k] == g))
    result = solve(prob, time_limit_s=time_limit_s, rel_gap=rel_gap, warm=warm is not None)
    if result.status not in ("optimal", "feasible"):
        return None, result
    perm = np.zeros(sizes.shape, dtype=np.int64)
    for (l, k, g), var in y.items():
        if (var.value() or 0.0) > 0.5:
            perm[l, k] = g
    return (perm if _fits(perm, sizes, caps) else None), result


def _build(sizes: np.ndarray, traffic: list[np.ndarray] | None, bw: np.ndarray,
           caps: np.ndarray) -> tuple[pulp.LpProblem, dict]:
    n_layers, P = sizes.shape
    prob = pulp.LpProblem("map", pulp.LpMinimize)
    m = [new_var(prob, f"m_{t}", low=0) for t in range(n_layers - 1)] if traffic else []
    prob += pulp.lpSum(m)
    y = {(l, k, g): new_var(prob, f"y_{l}_{k}_{g}", low=0, up=1, cat="Binary")
         for l in range(n_layers) for k in range(P) for g in range(P)}
    for l in range(n_layers):
        for i in range(P):
            prob += pulp.lpSum(y[l, i, g] for g in range(P)) == 1
            prob += pulp.lpSum(y[l, k, i] for k in range(P)) == 1
    n = int(sizes.sum())
    for g in range(P):
        total = pulp.lpSum(int(sizes[l, k]) * y[l, k, g] for l in range(n_layers) for k in range(P))
        prob += total >= n // P
        prob += total <= min(-(-n // P), int(caps[g]))
    for t, c in enumerate(traffic or []):
        v: dict[tuple[int, int], list] = {}          # (g, g') -> v[t, g, k', g'] over k'
        for g in range(P):
            for k2 in range(P):
                big = float(c[:, k2].sum())
                if big <= 0:
                    continue
                a = pulp.lpSum(float(c[k, k2]) * y[t, k, g] for k in range(P) if c[k, k2] > 0)
                for g2 in range(P):
                    if g2 != g:
                        var = new_var(prob, f"v_{t}_{g}_{k2}_{g2}", low=0)
                        prob += var >= a - big * (1 - y[t + 1, k2, g2])
                        v.setdefault((g, g2), []).append(var)
        for (g, g2), terms in v.items():
            prob += m[t] >= pulp.lpSum(terms) * (1.0 / float(bw[g, g2]))
    return prob, y
