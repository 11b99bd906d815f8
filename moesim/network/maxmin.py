"""Max-min fair bandwidth sharing by progressive filling.

**Model.** ``L`` directed links with capacities ``c [L]`` bytes/s and ``F`` flows; flow ``f``
loads link ``l`` with ``w_fl · r_f`` bytes/s at rate ``r_f``. A flow on one path has weight 1 on
its links; a flow ECMP-split evenly over ``k`` paths is *one* flow with weight ``1/k`` on each
path's links (summed where paths share a link), its rate the total over its paths; ``m``
identical flows may be one flow of weight ``m`` (its rate is then per member). The incidence is
stored padded and slot-major (``Incidence``): ``links [K, F]``, row ``k`` the ``k``-th link of
every flow, ``L`` in unused slots, and ``weights [K, F]`` or None for ones; every step is a loop
over the K slots of contiguous ``[F]`` gathers and ``bincount``s.

**Progressive filling** (``solve_maxmin``). Unfrozen flows rise together at a level ``λ``; link
``l`` admits ``λ ≤ (c_l − frozen load on l) / Σ_{unfrozen f on l} w_fl`` (remaining capacity /
number of unfrozen flows with unit weights) and a demand cap bounds its flow. Each round every
link whose share is within relative 1e-12 of the minimum saturates and freezes its unfrozen flows
at ``λ``; capped flows freeze at their cap. The result is the unique max-min allocation: no link
above capacity, every uncapped flow on a saturated link where no flow is faster. Bulk rounds scan
the open flows' slots (frozen ones dropped). Once a round's saturated links hold few open flows, a
link → flows index is built and a round also freezes, in share order, every further link none of
whose flows froze earlier in the round, at its own share (freezing flows below a link's share only
raises it, so that link would saturate next anyway): hundreds of textbook rounds become a few.

Completion times of a batch of flows (``simulate_batch``, ``BatchTimes``) are in ``batch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Incidence", "as_incidence", "solve_maxmin", "solve_maxmin_few"]

SHARE_RTOL = 1e-12
"""Links whose fair share is within this relative distance of the round minimum saturate together."""
CSC_FACTOR = 8
"""Switch from scanning flows to a link → flows index once a round's saturated links hold fewer
than 1/CSC_FACTOR of the open entries."""
CANDIDATES = 256
"""Links examined per round, in share order, once the link → flows index is in use."""
NO_RANK = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Incidence:
    """Padded, slot-major flow × link incidence.

    Attributes:
        links: ``[K, F]`` int32; ``links[k, f]`` is flow f's k-th link, ``n_links`` if unused.
        weights: ``[K, F]`` float64 load per unit of flow rate (any value in unused slots), or
            None for all ones.
        n_links: L.
    """

    links: np.ndarray
    weights: np.ndarray | None
    n_links: int

    @property
    def n_flows(self) -> int:
        """F."""
        return int(self.links.shape[1])

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]], n_links: int,
                  weights: Sequence[Sequence[float]] | None = None) -> Incidence:
        """From per-flow link lists (and optional per-entry weights); a repeated link adds up."""
        k = max([len(r) for r in rows] + [1])
        links = np.full((k, len(rows)), n_links, dtype=np.int32)
        w = None if weights is None else np.zeros(links.shape)
        for f, r in enumerate(rows):
            links[: len(r), f] = r
            if w is not None and weights is not None:
                w[: len(r), f] = weights[f]
        return cls(links, w, n_links)

    def link_load(self, per_flow: np.ndarray) -> np.ndarray:
        """``[L]`` Σ_f w_fl · x_f for a per-flow quantity ``x [F]`` (rates → bytes/s, bytes → bytes)."""
        x = np.asarray(per_flow, dtype=np.float64)
        return _load(self.links, self.weights, x, self.n_links)[: self.n_links]

    def dense(self) -> np.ndarray:
        """``[F, L]`` dense weights (for tests and small cases)."""
        out = np.zeros((self.n_flows, self.n_links + 1))
        w = np.ones(self.links.shape) if self.weights is None else self.weights
        np.add.at(out, (np.arange(self.n_flows)[None, :], self.links), w)
        return out[:, : self.n_links]


def _load(links: np.ndarray, weights: np.ndarray | None, x: np.ndarray | None, n_links: int) -> np.ndarray:
    """``[L + 1]`` Σ over slots of ``bincount(links[k], weights[k] · x)`` (None: ones; ``weights
    [1, F]``: one weight per flow, on every slot)."""
    if weights is not None and weights.shape[0] != links.shape[0]:
        weights = np.broadcast_to(weights, links.shape)
    if links.size < 1 << 16:  # few entries: one bincount over all slots
        w = None if x is None else np.broadcast_to(x, links.shape)
        w = w if weights is None else (weights if w is None else weights * w)
        return np.bincount(links.ravel(), None if w is None else np.ravel(w), minlength=n_links + 1) * 1.0
    out = np.zeros(n_links + 1)
    for k in range(links.shape[0]):
        wk = x if weights is None else (weights[k] if x is None else weights[k] * x)
        out += np.bincount(links[k], wk, minlength=n_links + 1)
    return out


_IDS = np.arange(0)


def _ids(n: int) -> np.ndarray:
    """``arange(n)``, read-only, from a shared one grown as needed."""
    global _IDS
    ids = _IDS
    if ids.size < n:
        ids = np.arange(max(n, 2 * ids.size))
        ids.flags.writeable = False
        _IDS = ids
    return ids[:n]


def _touches(mask: np.ndarray, links: np.ndarray) -> np.ndarray:
    """``[F]`` bool: flow f names a link with ``mask [L + 1]`` set in some slot of ``links [K, F]``."""
    if not links.shape[0]:
        return np.zeros(links.shape[1], dtype=bool)
    hit = np.take(mask, links[0])
    for row in links[1:]:
        hit |= np.take(mask, row)
    return hit


def as_incidence(flow_links: Any, n_links: int) -> Incidence:
    """An ``Incidence`` from one, from a scipy.sparse ``[F, L]`` matrix (values = weights), or from
    a list of per-flow link-index sequences (weight 1 per listed entry; a repeat adds up)."""
    if isinstance(flow_links, Incidence):
        inc = flow_links
    elif hasattr(flow_links, "tocsr"):
        m = flow_links.tocsr()
        ptr = m.indptr
        rows = [m.indices[ptr[f]: ptr[f + 1]] for f in range(m.shape[0])]
        inc = Incidence.from_rows(rows, int(m.shape[1]), [m.data[ptr[f]: ptr[f + 1]] for f in range(m.shape[0])])
    else:
        inc = Incidence.from_rows(flow_links, n_links)
    if inc.n_links != n_links:
        raise ValueError(f"incidence has {inc.n_links} links but link_capacity has {n_links}")
    if inc.links.ndim != 2:
        raise ValueError("incidence links must be [K, F]")
    if inc.links.size and not (0 <= inc.links.min() and inc.links.max() <= n_links):
        raise ValueError(f"link indices must lie in [0, {n_links}] ({n_links} = unused slot)")
    if inc.weights is not None and np.any(inc.weights[inc.links < n_links] <= 0):
        raise ValueError("incidence weights must be > 0")
    return inc


def _capacity(link_capacity: np.ndarray) -> np.ndarray:
    cap = np.asarray(link_capacity, dtype=np.float64)
    if cap.ndim != 1 or np.any(np.isnan(cap)) or np.any(cap < 0):
        raise ValueError("link_capacity must be a 1-D array of bytes/s >= 0")
    return cap


def solve_maxmin(link_capacity: np.ndarray, flow_links: Any,
                 demand_cap: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rates by progressive filling (see the module doc).

    Args:
        link_capacity: ``[L]`` bytes/s (0 = failed link: its flows get rate 0; ``inf`` allowed).
        flow_links: ``Incidence``, scipy.sparse ``[F, L]`` weights, or per-flow link lists.
        demand_cap: ``[F]`` bytes/s upper bound per flow (``inf`` = none), or None.

    Returns:
        ``[F]`` rates, bytes/s. A flow on no link gets its cap (``inf`` without one).
    """
    cap = _capacity(link_capacity)
    inc = as_incidence(flow_links, cap.shape[0])
    demand = None
    if demand_cap is not None:
        demand = np.asarray(demand_cap, dtype=np.float64)
        if demand.shape != (inc.n_flows,) or np.any(np.isnan(demand)) or np.any(demand < 0):
            raise ValueError(f"demand_cap must be {inc.n_flows} values >= 0 bytes/s")
    return _Filling(cap, inc.links, inc.weights, demand, None).run()


def solve_maxmin_few(link_capacity: np.ndarray, links: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``solve_maxmin`` for a few flows given flow-major: textbook progressive filling, one round
    per distinct level, without the set-up that pays off for many flows (the DES re-solves of
    ``engine.live_flows`` are mostly a handful of flows).

    Args:
        link_capacity: ``[L]`` bytes/s.
        links: ``[F, K]`` link indices, padded with L; every flow names at least one link.
        weights: ``[F, K]`` load per unit of rate (> 0 on real entries).

    Returns:
        ``[F]`` max-min fair rates, bytes/s.
    """
    n_links = link_capacity.shape[0]
    cap = np.append(link_capacity, np.inf)
    rate = np.zeros(links.shape[0])
    open_ = np.ones(links.shape[0], bool)
    used = np.zeros(n_links + 1)
    while open_.any():
        wsum = np.bincount(links[open_].ravel(), weights[open_].ravel(), minlength=n_links + 1)
        live = np.flatnonzero(wsum[:n_links] > 0)
        share = (cap[live] - used[live]) / wsum[live]
        level = max(float(share.min()), 0.0)
        sat = np.zeros(n_links + 1, bool)
        sat[live[share <= level * (1.0 + SHARE_RTOL)]] = True
        hit = open_ & sat[links].any(axis=1)
        rate[hit] = level
        open_ &= ~hit
        used += np.bincount(links[hit].ravel(), (weights[hit] * level).ravel(), minlength=n_links + 1)
    return rate


def radix_argsort(key: np.ndarray, bits: int) -> np.ndarray:
    """Stable argsort of ``key [N]`` (integers, ``0 ≤ key < 2**bits``) by 16-bit radix passes
    (numpy's stable sort of 16-bit keys is a radix sort), low digits first."""
    order: np.ndarray | None = None
    for shift in range(0, max(bits, 1), 16):
        digit = ((key if order is None else key[order]) >> shift).astype(np.uint16)
        step = np.argsort(digit, kind="stable")
        order = step if order is None else order[step]
    assert order is not None
    return order


def _by_link(links: np.ndarray, n_links: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ptr [L + 2], cols [nnz])``: the columns of ``links [K, R]`` on each link, link-sorted."""
    flat = links.ravel()
    order = radix_argsort(flat, int(n_links).bit_length())
    ptr = np.zeros(n_links + 2, dtype=np.int64)
    np.cumsum(np.bincount(flat, minlength=n_links + 1), out=ptr[1:])
    return ptr, order % links.shape[1]


class _Filling:
    """One progressive filling of the flows ``links [K, F]`` (padded with L; ``weights [K, F]``,
    ``[1, F]`` for one weight per flow, or None); ``counts`` (``[L + 1]`` entries per link), when
    given, also promises that every flow names a link, and ``wsum`` (``[L + 1]`` weight per link,
    with ``counts`` only) saves summing the weights; ``frozen`` (``[F]`` bool, with ``counts`` only)
    marks flows left out of the problem (in neither ``counts`` nor ``wsum``; their rates are
    finite, otherwise meaningless). The flows of the saturated links are found by
    scanning the open flows' slots (bulk rounds; open flows kept compacted) until a round's
    saturated links hold few open entries compared with all open ones; then a link → flows index
    is built and used."""

    def __init__(self, cap: np.ndarray, links: np.ndarray, weights: np.ndarray | None,
                 demand: np.ndarray | None, counts: np.ndarray | None, wsum: np.ndarray | None = None,
                 frozen: np.ndarray | None = None) -> None:
        n_links, n_flows = cap.shape[0], links.shape[1]
        slots = [k for k in range(links.shape[0]) if n_flows and links[k].min() < n_links]  # drop empty slots
        if len(slots) < links.shape[0]:
            links = links[slots]
            weights = weights if weights is None or weights.shape[0] == 1 else weights[slots]
        self.cap, self.n_links, self.demand = cap, n_links, demand
        self.links0, self.weights0 = links, weights  # indexed by flow id
        self.rate, self.frozen = np.empty(n_flows), np.zeros(n_flows, dtype=bool)
        self.rows = _ids(n_flows)  # open flows, in the column order of links / weights
        self.pre = None if frozen is None or counts is None or not frozen.any() else frozen
        if self.pre is not None:  # frozen from the start: rate 0, in no count
            self.rate, self.frozen = np.zeros(n_flows), self.pre.copy()
        if counts is None:
            real = np.ones(n_links + 1, dtype=bool)
            real[n_links] = False
            self.frozen = ~_touches(real, links)
            lone = np.flatnonzero(self.frozen)
            self.rate[lone] = np.inf if demand is None else demand[lone]
            if lone.size:
                self.rows = np.flatnonzero(~self.frozen)
                links = np.take(links, self.rows, axis=1)
                weights = None if weights is None else np.take(weights, self.rows, axis=1)
        self.links, self.weights = links, weights
        self.cnt = _load(links, None, None, n_links).astype(np.int64) if counts is None else counts.copy()
        if wsum is not None and counts is not None:
            self.wsum = wsum.copy()
        else:
            self.wsum = self.cnt.astype(np.float64) if weights is None else _load(links, weights, None, n_links)
        self.used = np.zeros(n_links + 1)
        self.dq = np.zeros(0, np.int64) if demand is None else np.argsort(demand, kind="stable")
        self.dpos, self.n_open = 0, self.rows.size - (0 if self.pre is None else int(np.count_nonzero(self.pre)))
        self.csc: tuple[np.ndarray, np.ndarray] | None = None
        self.dead = np.zeros(0, dtype=bool)  # the flows (of rows) the last scan round froze
        self.first = np.zeros(0, dtype=np.int64)  # with csc: scratch, each row's first candidate rank

    def run(self) -> np.ndarray:
        """Rounds until every flow is frozen; returns the rates."""
        while self.n_open:
            live = np.flatnonzero(self.cnt[: self.n_links] > 0)
            share = (self.cap[live] - self.used[live]) / self.wsum[live]
            m = float(share.min()) if live.size else np.inf
            while self.dpos < self.dq.size and self.frozen[self.dq[self.dpos]]:
                self.dpos += 1
            assert self.dq.size == 0 or self.demand is not None
            dmin = float(self.demand[self.dq[self.dpos]]) if self.dpos < self.dq.size else np.inf
            level = max(min(m, dmin), 0.0)
            if level == np.inf:  # only uncapped flows on infinite-capacity links remain
                self.rate[~self.frozen] = np.inf
                break
            thr = level * (1.0 + SHARE_RTOL)
            done = []
            scan = self.csc is None
            if m <= thr:
                hit = self._saturated(live, share, thr, level, dmin)
                if hit is None:
                    break
                done.append(hit)
            if dmin <= thr:
                done.append(self._capped(thr, level))
            one_level = scan and self.csc is None and dmin > thr
            self._retire(np.concatenate(done), level if one_level else None)
        return self.rate

    def _saturated(self, live: np.ndarray, share: np.ndarray, thr: float, level: float,
                   dmin: float) -> np.ndarray | None:
        """Freeze the open flows on the links of ``live`` whose ``share`` is at most ``thr``, at
        ``level``; None when that was all of them."""
        sat_ids = live[share <= thr]
        if self.csc is None and CSC_FACTOR * int(self.cnt[sat_ids].sum()) < self.links.shape[0] * self.n_open:
            self.csc = _by_link(self.links, self.n_links)  # by position in rows, fixed from now on
            self.first = np.full(self.rows.size, NO_RANK)
        if self.csc is not None:
            return self._saturated_by_link(live, share, thr, level, dmin)
        sat = np.zeros(self.n_links + 1, dtype=bool)
        sat[sat_ids] = True
        dead = _touches(sat, self.links)
        if dmin > thr and dead.all():
            self.rate[self.rows] = level
            return None
        self.dead = dead
        if self.rows.size == self.rate.size:  # rows is arange; dead and the frozen are all frozen
            if self.pre is None:  # the first round
                hit = np.flatnonzero(dead)
                self.frozen = dead
            else:
                hit = np.flatnonzero(dead & ~self.frozen)
                self.frozen |= dead
            if 2 * hit.size >= dead.size:  # the open ones get their rates later
                self.rate.fill(level)
            else:
                self.rate[hit] = level
            return hit
        hit = self.rows[dead]
        self.rate[hit] = level
        self.frozen[hit] = True
        return hit

    def _saturated_by_link(self, live: np.ndarray, share: np.ndarray, thr: float, level: float,
                           dmin: float) -> np.ndarray:
        """As ``_saturated``, then, in share order, also every further link none of whose open
        flows is frozen earlier in this round, at its own share: freezing flows at a level below a
        link's share only raises that share, so an untouched link is the next to saturate."""
        assert self.csc is not None
        k = max(min(live.size, CANDIDATES), int((share <= thr).sum()))
        idx = np.argpartition(share, k - 1)[:k] if k < live.size else np.arange(live.size)
        idx = idx[np.argsort(share[idx], kind="stable")]
        cand, lvl = live[idx], share[idx]
        n_tie = int(np.searchsorted(lvl, thr, side="right"))
        lvl[:n_tie] = level
        ranks = np.arange(k)
        ranks[:n_tie] = 0  # the ties freeze together whatever they share
        ptr, index = self.csc
        starts = ptr[cand]
        lens = ptr[cand + 1] - starts
        ends = np.cumsum(lens)
        pos = index[np.repeat(starts - (ends - lens), lens) + np.arange(int(ends[-1]))]  # in rows
        rank = np.repeat(ranks, lens)
        keep = ~self.frozen[self.rows[pos]]
        pos, rank = pos[keep], rank[keep]
        np.minimum.at(self.first, pos, rank)
        first = self.first[pos]
        earlier = rank[first < rank]  # candidates sharing a flow with an earlier one
        stop = min(int(earlier.min()) if earlier.size else k, max(n_tie, int(np.searchsorted(lvl, dmin))))
        sel = pos[first < stop]
        if 16 * sel.size < self.rows.size:
            sel = np.unique(sel)
        else:
            mark = np.zeros(self.rows.size, dtype=bool)
            mark[sel] = True
            sel = np.flatnonzero(mark)
        hit = self.rows[sel]  # ascending, as rows
        self.rate[hit] = lvl[self.first[sel]]
        self.frozen[hit] = True
        self.first[pos] = NO_RANK
        return hit

    def _capped(self, thr: float, level: float) -> np.ndarray:
        """Freeze the open flows whose demand cap is at most ``thr``, at their cap."""
        assert self.demand is not None
        k = int(np.searchsorted(self.demand[self.dq], thr, side="right"))
        capped = self.dq[self.dpos:k]
        capped = capped[~self.frozen[capped]]
        self.rate[capped] = np.minimum(self.demand[capped], level)
        self.frozen[capped] = True
        self.dpos = k
        return capped

    def _retire(self, done: np.ndarray, level: float | None) -> None:
        """Move the just-frozen flows ``done`` from the open counts to the frozen load (``level``:
        their common rate, when they all froze on saturated links in scan mode)."""
        self.n_open -= done.size
        if not self.n_open:
            return
        if self.csc is None:  # with ``level``, this round froze exactly the scan's ``dead``
            ident = self.rows.size == self.rate.size
            if level is not None and not (ident and self.pre is not None):
                ki = np.flatnonzero(~self.dead)
            else:
                ki = np.flatnonzero(~(self.frozen if ident else self.frozen[self.rows]))
            self.rows = ki if self.rows.size == self.rate.size else self.rows[ki]  # arange[ki] = ki
            self.links = np.take(self.links, ki, axis=1)
            self.weights = None if self.weights is None else np.take(self.weights, ki, axis=1)
            if level is not None and ki.size < done.size:  # cheaper to recount the open flows
                cnt = _load(self.links, None, None, self.n_links)
                wsum = cnt if self.weights is None else _load(self.links, self.weights, None, self.n_links)
                self.used += level * (self.wsum - wsum)
                self.cnt, self.wsum = cnt.astype(np.int64), wsum
                return
        dl = np.take(self.links0, done, axis=1)
        dw = None if self.weights0 is None else np.take(self.weights0, done, axis=1)
        if dl.size < 1 << 16:  # ``_load``'s one bincount over all slots, inlined: same sums
            flat, n = dl.ravel(), self.n_links + 1
            x = np.broadcast_to(self.rate[done], dl.shape)
            dc = np.bincount(flat, minlength=n)
            self.cnt -= dc
            if dw is None:
                self.wsum -= dc
                self.used += np.bincount(flat, x.ravel(), minlength=n)
            else:
                dw = np.broadcast_to(dw, dl.shape)
                self.wsum -= np.bincount(flat, dw.ravel(), minlength=n)
                self.used += np.bincount(flat, (dw * x).ravel(), minlength=n)
            return
        dc = _load(dl, None, None, self.n_links)
        self.cnt -= dc.astype(np.int64)
        self.wsum -= dc if dw is None else _load(dl, dw, None, self.n_links)
        self.used += _load(dl, dw, self.rate[done], self.n_links)
