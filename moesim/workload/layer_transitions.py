"""Cross-layer slot transitions: the matrices ``Q [L-1, E, E]`` and the sampler that moves slots by them.

Row ``a`` of ``Q[l]`` says where a slot at expert ``a`` of layer ``l`` goes at layer ``l + 1``
(``dynamic_routing`` mixes it with the next layer's popularity by ``rho``). The ``correlated``
kind's ``Q`` is the comonotone coupling of consecutive layers' popularities along random expert
orders (``coupled_transitions``); ``load_transitions`` reads one from a file. ``_move_slots``
spreads each source expert's slots by ``Multinomial(c[a], Q[a])``, vectorised over experts and
repetitions; ``_cap_rows`` then enforces ``count <= T``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.core.errors import ConfigError

__all__ = ["comonotone_coupling", "coupled_transitions", "load_transitions"]

_SLOTWISE_PER_SOURCE = 8
_SLOTWISE_PER_COLUMN = 2000
"""Slots are placed one by one (cost ~ slots) while fewer than ``PER_COLUMN * width + PER_SOURCE *
sources``, else column by column (cost ~ width numpy calls + sources still holding slots)."""
_TINY = 1e-300


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

