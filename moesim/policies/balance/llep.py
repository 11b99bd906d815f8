"""LLEP, Least-Loaded Expert Parallelism (POLICIES.md B1; arXiv 2601.17111).

Each expert has one *native* GPU (its only placement slot; contiguous EP puts expert e on GPU
``e // M``). Per layer, from the global counts ``l[E]``:

0. **Gate**: with a threshold ``lam``, if the native-load imbalance ``max_g / mean_g`` of the
   per-GPU native loads is below ``lam``, run plain EP. ``lam=None`` always balances.
1. ``cap = max(1, floor(alpha * floor(sum(l) / P)))``; ``pending[g]`` = g's native load,
   ``assigned[g] = 0``, ``eff(g) = assigned[g] + pending[g]``.
2. Experts in descending load (ties: lower id), zeros skipped. For expert e (load x, native g):
   ``pending[g] -= x``; ``room = cap - eff(g)``.

   - Case 1, ``room >= x``: all x on g.
   - Case 2, ``0 < room < x``: ``room`` on g; the rest ``r`` spills repeatedly: sort the other
     GPUs by eff ascending (ties: lower id) and give the first with positive room ``min(r,
     room_q)``, skipping a GPU when that chunk is ``< m`` while ``r`` is larger; when no GPU
     qualifies, force all of r onto the least-loaded other GPU, even over cap.
   - Case 3, ``room <= 0``: one pass over the other GPUs sorted once by eff (same room and
     ``m`` rules), then force the leftover onto the first of that sorted list.

Every helper that receives tokens of e needs e's weights: one transfer (layer, e, g, helper).
Tokens are conserved (nothing dropped). ``alpha * floor(sum/P)`` is floored with a 1e-9 slack
against float noise, as the authors' code truncates it to an integer.
"""

from __future__ import annotations

import math

import numpy as np

from moesim.core.errors import ConfigError
from moesim.policies.balance.base import BALANCERS, BalanceDecision, check_counts
from moesim.policies.placement.base import Placement

__all__ = ["Llep", "llep_layer"]


class _State:
    """One layer's running loads and the plan being built."""

    def __init__(self, load: np.ndarray, native: np.ndarray, n_gpus: int, cap: int,
                 min_tokens: int) -> None:
        self.native, self.cap, self.m = native, cap, min_tokens
        self.pending = np.bincount(native, weights=load, minlength=n_gpus).astype(np.int64)
        self.assigned = np.zeros(n_gpus, dtype=np.int64)
        self.chunks: list[tuple[int, int, int]] = []          # (expert, gpu, tokens)
        self.transfers: dict[tuple[int, int], None] = {}       # (expert, helper), ordered

    def eff(self) -> np.ndarray:
        return self.assigned + self.pending

    def give(self, e: int, g: int, tokens: int) -> None:
        self.assigned[g] += tokens
        self.chunks.append((e, g, tokens))
        if g != self.native[e]:
            self.transfers[(e, g)] = None

    def helpers(self, e: int) -> list[int]:
        """Other GPUs by eff ascending, ties to the lower id."""
        eff = self.eff()
        return [int(q) for q in np.argsort(eff, kind="stable") if q != self.native[e]]

    def chunk_for(self, q: int, r: int) -> int:
        """Tokens GPU q may take of r (0 if it has no room or the chunk is too small)."""
        room = self.cap - int(self.eff()[q])
        chunk = min(r, room)
        return 0 if room <= 0 or (chunk < self.m and r > chunk) else chunk

    def spill_repeat(self, e: int, r: int) -> None:
        """Case 2: re-sort after every chunk; force the rest when nobody qualifies."""
        while r > 0:
            order = self.helpers(e)
            if not order:
                self.give(e, int(self.native[e]), r)
                return
            pick = next(((q, c) for q in order if (c := self.chunk_for(q, r)) > 0), None)
            if pick is None:
                self.give(e, order[0], r)
                return
            self.give(e, *pick)
            r -= pick[1]

    def spill_one_pass(self, e: int, r: int) -> None:
        """Case 3: one pass over the helpers sorted once; force the rest onto the first."""
        order = self.helpers(e)
        if not order:
            self.give(e, int(self.native[e]), r)
            return
        for q in order:
            if r == 0:
                return
            chunk = self.chunk_for(q, r)
            if chunk > 0:
                self.give(e, q, chunk)
                r -= chunk
        if r > 0:
            self.give(e, order[0], r)


def llep_layer(load: np.ndarray, native: np.ndarray, *, n_gpus: int, alpha: float,
               min_tokens: int, threshold: float | None
               ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """One layer's plan: ``(chunks [(expert, gpu, tokens)], transfers [(expert, helper)])``.

    ``load int[E]`` tokens per expert, ``native int[E]`` native GPU per expert.
    """
    native_load = np.bincount(native, weights=load, minlength=n_gpus)
    total = int(load.sum())
    plain = [(int(e), int(native[e]), int(load[e])) for e in np.nonzero(load)[0]]
    if total == 0:
        return plain, []
    if threshold is not None and native_load.max() / (total / n_gpus) < threshold:
        return plain, []
    cap = max(1, math.floor(alpha * (total // n_gpus) + 1e-9))
    st = _State(load, native, n_gpus, cap, min_tokens)
    for e in np.argsort(-load, kind="stable"):
        e, x = int(e), int(load[e])
        if x == 0:
            break
        g = int(native[e])
        st.pending[g] -= x
        room = cap - int(st.eff()[g])
        if room >= x:
            st.give(e, g, x)
        elif room > 0:
            st.give(e, g, room)
            st.spill_repeat(e, x - room)
        else:
            st.spill_one_pass(e, x)
    return st.chunks, list(st.transfers)


@BALANCERS.register("llep")
class Llep:
    """LLEP: spill tokens *and* expert weights from overloaded GPUs to the least-loaded ones.

    Args:
        alpha: capacity factor ``alpha`` (1.0 in the paper and README; 1.1 the code default).
        min_tokens: ``m``, smallest spill chunk worth a GEMM (1024 in the paper).
        threshold: ``lam``, native-load imbalance below which plain EP runs (1.3 in the
            paper's runs); None = always balance, as the code does when it is unset.

    The placement must give every expert exactly one slot (its native GPU); LLEP's spills are
    per pass, while replicas are a placement decision (use ``replica_select`` for those).
    """

    def __init__(self, *, alpha: float = 1.0, min_tokens: int = 1024,
                 threshold: float | None = 1.3) -> None:
        if not alpha > 0 or min_tokens < 1 or (threshold is not None and not threshold > 0):
            raise ConfigError(f"alpha={alpha} must be > 0, min_tokens={min_tokens} >= 1, "
                              f"threshold={threshold} > 0 or None", field="balance")
        self.alpha, self.min_tokens, self.threshold = float(alpha), int(min_tokens), threshold

    def balance(self, counts: np.ndarray, placement: Placement, *,
                src_tokens: np.ndarray | None = None) -> BalanceDecision:
        """See :class:`~moesim.policies.balance.base.BalancePolicy`."""
        arr = check_counts(counts, placement)
        if (placement.logcnt != 1).any():
            l, e = np.argwhere(placement.logcnt != 1)[0]
            raise ConfigError(f"llep needs one slot per expert; expert {e} of layer {l} has "
                              f"{placement.logcnt[l, e]} (use placement contiguous/round_robin/ilp "
                              "without replicas, or balance kind replica_select)",
                              field="balance.kind")
        native = placement.log2phy[:, :, 0] // placement.slots_per_gpu
        chunks, transfers = [], []
        for l in range(placement.n_layers):
            layer_chunks, layer_transfers = llep_layer(
                arr[l], native[l], n_gpus=placement.n_gpus, alpha=self.alpha,
                min_tokens=self.min_tokens, threshold=self.threshold)
            chunks += [(l, e, g, n) for e, g, n in layer_chunks]
            transfers += [(l, e, int(native[l, e]), h) for e, h in layer_transfers]
        return BalanceDecision.from_chunks(
            np.array(chunks, dtype=np.int64).reshape(-1, 4), n_layers=placement.n_layers,
            n_gpus=placement.n_gpus, transfers=np.array(transfers, dtype=np.int64).reshape(-1, 4))
