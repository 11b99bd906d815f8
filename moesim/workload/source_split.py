"""The ``int64[L, P, E]`` (source rank, expert) split of a pass, for the network model.

``split_by_source`` splits counts (tokens exchangeable, hypergeometric per rank);
``split_tokens_by_source`` splits per-token expert ids exactly (``TraceReplay.last_token_experts``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["split_by_source", "split_tokens_by_source"]


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
