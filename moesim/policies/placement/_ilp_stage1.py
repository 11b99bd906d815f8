"""ILP stage 1 (MoETuner ILP1, one layer): experts and hot-expert replicas -> ``P`` clusters.

A layer's solution is ``member int[E, P]`` (1 where expert e has a copy in cluster k); an expert
with ``c`` copies sends ``w_e / c`` tokens to each (even split, as :meth:`Placement.gpu_load`).

Model (per layer; ``w`` tokens, ``mean = sum(w) / P``; ``H`` = the ``budget`` hottest experts):

- cold expert e: binaries ``x[e,k]``, ``sum_k x[e,k] = 1``;
- hot expert e: ``z[e,r]`` (e has ``r`` copies, ``r = 1..min(P, budget+1)``, ``sum_r z = 1``) and
  ``u[e,k,r]`` (a copy in cluster k while e has r copies): ``sum_k u[e,k,r] = r z[e,r]``,
  ``sum_r u[e,k,r] <= 1`` (one copy per cluster); the load ``w_e / r`` per copy stays linear;
- extra copies ``sum (r-1) z[e,r] <= budget``;
- cluster size ``1 <= size_k <= S`` (no empty cluster when ``E >= P``); with
  ``balanced_sizes`` also ``floor(n/P) <= size_k <= ceil(n/P)`` for ``n`` = copies in the layer;
- ``d_k >= +-(load_k - mean)``, minimise ``sum_k d_k``; symmetry cut ``load_k >= load_(k+1)``.

The best of several heuristics (greedy LPT with/without replicas, contiguous, round-robin)
warm-starts CBC, and is kept when CBC returns nothing better, so the result is never worse than
any of them. Size: ``E*P + H*P*rmax`` binaries; E <= 64 at P <= 8 usually proves optimal in
seconds; E = 256, P = 32 (8k binaries) runs to the time limit and returns the incumbent.
"""

from __future__ import annotations

import numpy as np
import pulp

from moesim.policies.placement._cbc import CbcResult, new_var, solve

__all__ = ["deviation", "solve_layer"]


def deviation(member: np.ndarray, w: np.ndarray) -> float:
    """Sum over clusters of |cluster load - mean| for ``member int[E, P]``, ``w float[E]``."""
    loads = (w / member.sum(axis=1)) @ member
    return float(np.abs(loads - w.sum() / member.shape[1]).sum())


def _greedy(w: np.ndarray, copies: np.ndarray, n_clusters: int, cap: int) -> np.ndarray | None:
    """LPT: copies (load w/c) in descending load to the lightest cluster with room that does not
    already hold that expert (ties: lower index); None when it gets stuck."""
    member = np.zeros((w.size, n_clusters), dtype=np.int64)
    items = np.repeat(np.arange(w.size), copies)
    share = (w / copies)[items]
    load, size = np.zeros(n_clusters), np.zeros(n_clusters, dtype=np.int64)
    for item in items[np.argsort(-share, kind="stable")]:
        open_ = (size < cap) & (member[item] == 0)
        if not open_.any():
            return None
        k = int(np.argmin(np.where(open_, load, np.inf)))
        member[item, k] = 1
        load[k] += w[item] / copies[item]
        size[k] += 1
    return member


def _heuristics(w: np.ndarray, n_clusters: int, cap: int, hot: np.ndarray,
                budget: int) -> list[np.ndarray]:
    n = w.size
    out = []
    contiguous = np.zeros((n, n_clusters), dtype=np.int64)
    for k, chunk in enumerate(np.array_split(np.arange(n), n_clusters)):
        contiguous[chunk, k] = 1
    robin = np.zeros((n, n_clusters), dtype=np.int64)
    robin[np.arange(n), np.arange(n) % n_clusters] = 1
    ones = np.ones(n, dtype=np.int64)
    lpt = _greedy(w, ones, n_clusters, min(cap, -(-n // n_clusters)))
    out += [m for m in (lpt, contiguous, robin) if m is not None]
    if budget > 0 and hot.size:
        copies = ones.copy()
        for _ in range(budget):                           # EPLB-style replicate, hot set only
            ratio = np.where(copies[hot] < n_clusters, w[hot] / copies[hot], -1.0)
            if ratio.max() <= 0:
                break
            copies[hot[int(np.argmax(ratio))]] += 1
        rep = _greedy(w, copies, n_clusters, min(cap, -(-int(copies.sum()) // n_clusters)))
        if rep is not None:
            out.insert(0, rep)
    return out


def _valid(member: np.ndarray, *, cap: int, hot: np.ndarray, budget: int, balanced: bool) -> bool:
    n, n_clusters = member.shape
    copies = member.sum(axis=1)
    size = member.sum(axis=0)
    cold = np.ones(n, dtype=bool)
    cold[hot] = False
    total = int(copies.sum())
    ok = bool((copies >= 1).all() and (copies[cold] == 1).all() and total - n <= budget
              and (size <= cap).all() and (n < n_clusters or (size >= 1).all()))
    if balanced:
        ok = ok and bool((size >= total // n_clusters).all() and (size <= -(-total // n_clusters)).all())
    return ok


def _build(w: np.ndarray, *, n_clusters: int, cap: int, hot: np.ndarray, budget: int,
           balanced: bool) -> tuple[pulp.LpProblem, dict, dict, list]:
    n, P = w.size, n_clusters
    rmax = min(P, budget + 1)
    prob = pulp.LpProblem("cluster", pulp.LpMinimize)
    d = [new_var(prob, f"d_{k}", low=0) for k in range(P)]
    prob += pulp.lpSum(d)
    size: list[list] = [[] for _ in range(P)]
    load: list[list] = [[] for _ in range(P)]
    x: dict = {}
    z: dict = {}
    extra = []
    hot_set = set(hot.tolist()) if rmax > 1 else set()
    for e in range(n):
        counts = range(1, rmax + 1) if e in hot_set else range(1, 2)
        if e in hot_set:
            for r in counts:
                z[e, r] = new_var(prob, f"z_{e}_{r}", low=0, up=1, cat="Binary")
            prob += pulp.lpSum(z[e, r] for r in counts) == 1
            extra += [(r - 1) * z[e, r] for r in counts if r > 1]
        for r in counts:
            for k in range(P):
                x[e, k, r] = var = new_var(prob, f"x_{e}_{k}_{r}", low=0, up=1, cat="Binary")
                size[k].append(var)
                load[k].append((float(w[e]) / r) * var)
            total = pulp.lpSum(x[e, k, r] for k in range(P))
            prob += total == (r * z[e, r] if e in hot_set else 1)
        if e in hot_set:
            for k in range(P):
                prob += pulp.lpSum(x[e, k, r] for r in counts) <= 1
    if extra:
        prob += pulp.lpSum(extra) <= budget
    n_copies = n + pulp.lpSum(extra)
    mean = float(w.sum()) / P
    loads = [pulp.lpSum(load[k]) for k in range(P)]
    for k in range(P):
        prob += d[k] >= loads[k] - mean
        prob += d[k] >= mean - loads[k]
        prob += pulp.lpSum(size[k]) <= cap
        if n >= P:
            prob += pulp.lpSum(size[k]) >= 1
        if balanced:
            prob += P * pulp.lpSum(size[k]) >= n_copies - (P - 1)
            prob += P * pulp.lpSum(size[k]) <= n_copies + (P - 1)
        if k + 1 < P:
            prob += loads[k] >= loads[k + 1]
    return prob, x, z, d


def _warm_start(member: np.ndarray, w: np.ndarray, x: dict, z: dict, d: list) -> None:
    copies = member.sum(axis=1)
    for (e, k, r), var in x.items():
        var.setInitialValue(int(member[e, k] == 1 and copies[e] == r))
    for (e, r), var in z.items():
        var.setInitialValue(int(copies[e] == r))
    loads = (w / copies) @ member
    for k, var in enumerate(d):
        var.setInitialValue(abs(float(loads[k]) - float(w.sum()) / member.shape[1]))


def solve_layer(w: np.ndarray, *, n_clusters: int, cap: int, budget: int, balanced: bool,
                time_limit_s: float, rel_gap: float) -> tuple[np.ndarray, CbcResult, bool]:
    """``(member int[E, P], CBC result, used_ilp)`` for one layer's loads ``w float[E]``.

    ``used_ilp`` is False when the warm-start heuristic was kept (CBC found nothing better).
    """
    budget = max(0, min(budget, n_clusters * cap - w.size)) if n_clusters > 1 else 0
    hot = np.argsort(-w, kind="stable")[: min(w.size, budget)]
    starts = [m for m in _heuristics(w, n_clusters, cap, hot, budget)
              if _valid(m, cap=cap, hot=hot, budget=budget, balanced=balanced)]
    best = min(starts, key=lambda m: deviation(m, w))
    best = best[:, np.argsort(-((w / best.sum(axis=1)) @ best), kind="stable")]  # symmetry cut
    if deviation(best, w) <= 1e-9 * max(1.0, float(w.sum())):
        return best, CbcResult("optimal", deviation(best, w), 0.0, 0.0), False
    prob, x, z, d = _build(w, n_clusters=n_clusters, cap=cap, hot=hot, budget=budget,
                           balanced=balanced)
    _warm_start(best, w, x, z, d)
    result = solve(prob, time_limit_s=time_limit_s, rel_gap=rel_gap, warm=True)
    if result.status not in ("optimal", "feasible"):
        return best, result, False
    member = np.zeros_like(best)
    for (e, k, _r), var in x.items():
        if (var.value() or 0.0) > 0.5:
            member[e, k] = 1
    if (not _valid(member, cap=cap, hot=hot, budget=budget, balanced=balanced)
            or deviation(member, w) > deviation(best, w) + 1e-9 * max(1.0, float(w.sum()))):
        return best, result, False
    return member, result, True
