"""Max-min fair bandwidth sharing by progressive filling, and the completion times of a batch.

**Model.** ``L`` directed links with capacities ``c [L]`` bytes/s and ``F`` flows. Flow ``f``
crosses link ``l`` with a *weight* ``w_fl > 0``: at rate ``r_f`` (bytes/s) it loads the link with
``w_fl · r_f`` bytes/s.

* a flow on one path has weight 1 on each of its links;
* a flow that ECMP splits evenly over ``k`` paths is *one* flow with fractional incidence: weight
  ``1/k`` on each path's links, summed where paths share a link (so its first and last hops usually
  keep weight 1). Its rate is the total over its paths;
* ``m`` identical flows can be given as one flow of weight ``m``; its rate is then the per-member rate.

The incidence is sparse, stored padded and slot-major: ``links [K, F]`` int32, row ``k`` holding
the ``k``-th link of every flow and ``L`` in unused slots, with ``weights [K, F]`` or None for all
ones (``Incidence``). Every step is then a loop over the K slots of contiguous ``[F]`` gathers and
``bincount``s; frozen or finished flows are dropped by taking columns.

**Progressive filling** (``solve_maxmin``). All unfrozen flows rise together at a common level
``λ``. Link ``l`` admits ``λ ≤ (c_l − frozen load on l) / Σ_{unfrozen f on l} w_fl`` (its fair share
of the remaining capacity; with unit weights: remaining capacity / number of unfrozen flows), and a
flow's demand cap bounds its own rate. Each round the smallest bound wins: every link whose share is
within relative 1e-12 of the round minimum saturates at once and freezes all its unfrozen flows at
``λ``; flows whose cap is reached freeze at their cap. The result is the unique max-min fair
allocation: no link exceeds its capacity, and every flow not at its cap crosses a saturated link on
which no flow has a larger rate. A round costs ``O(L)`` plus ``O(slots of unfrozen flows)``; frozen
flows are dropped, so the work shrinks as flows freeze.

**Completions** (``simulate_batch``). Flows of given sizes start together; rates are re-solved when
flows finish. To bound the number of re-solves, completions are coalesced into windows: at each
event the flows finishing by ``(t + t_min)(1 + rtol)`` or by ``t + t_min + window_frac · LB`` leave
together (``t_min``: earliest finish under the current rates; ``LB``: the largest link bytes /
capacity, a lower bound of the makespan). Each flow's finish time is exact under the rates in
force; the window's flows stop loading links at the midpoint between its first and last finish, so
the earlier ones hold their share a little too long and the later ones free it a little early,
errors that largely cancel (the schedule is then not strictly feasible, and a very coarse window
can even end below ``LB``); then rates are re-solved. With one distinct finish time per window
(``window_frac = rtol = 0``) this is the exact event loop; there are at most about
``2 · makespan / (window_frac · LB)`` events. Measured against the exact loop on a 64-GPU
fat-tree (4,032 flows, ~4,000 exact events) for per-destination lognormal, Zipf and i.i.d.
exponential all-to-alls: makespan within 0.2 % at the default ``window_frac = 1e-2`` (81–97
events), within 1.1 % at 3e-2, within 3.6 % at 0.1; holding every window's flows to its last
finish instead (always feasible) errs +0.7–1.4 % at 1e-2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BatchTimes", "Incidence", "as_incidence", "simulate_batch", "solve_maxmin"]

SHARE_RTOL = 1e-12
"""Links whose fair share is within this relative distance of the round minimum saturate together."""


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
    """``[L + 1]`` Σ over slots of ``bincount(links[k], weights[k] · x)`` (None: ones)."""
    if links.size < 1 << 16:  # few entries: one bincount over all slots
        w = None if x is None else np.broadcast_to(x, links.shape)
        w = w if weights is None else (weights if w is None else weights * w)
        return np.bincount(links.ravel(), None if w is None else np.ravel(w), minlength=n_links + 1) * 1.0
    out = np.zeros(n_links + 1)
    for k in range(links.shape[0]):
        wk = x if weights is None else (weights[k] if x is None else weights[k] * x)
        out += np.bincount(links[k], wk, minlength=n_links + 1)
    return out


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
    return _fill(cap, inc.links, inc.weights, demand)


def _by_link(links: np.ndarray, rows: np.ndarray, n_links: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ptr [L + 2], flows [nnz])``: the flows (ids from ``rows``) on each link, link-sorted."""
    flat = links.ravel()
    if n_links < 1 << 16:  # numpy's stable sort of 16-bit keys is a radix sort
        order = np.argsort(flat.astype(np.uint16), kind="stable")
    else:  # two 16-bit radix passes, low half then high half
        order = np.argsort((flat & 0xFFFF).astype(np.uint16), kind="stable")
        order = order[np.argsort((flat[order] >> 16).astype(np.uint16), kind="stable")]
    ptr = np.zeros(n_links + 2, dtype=np.int64)
    np.cumsum(np.bincount(flat, minlength=n_links + 1), out=ptr[1:])
    return ptr, rows[order % rows.shape[0]]


def _flows_on(csc: tuple[np.ndarray, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Flows on the links ``ids`` (with repeats) from a ``_by_link`` index."""
    ptr, flows = csc
    starts, lens = ptr[ids], ptr[ids + 1] - ptr[ids]
    offsets = np.cumsum(lens) - lens
    return flows[np.repeat(starts - offsets, lens) + np.arange(int(lens.sum()))]


def _fill(cap: np.ndarray, links: np.ndarray, weights: np.ndarray | None,
          demand: np.ndarray | None, *, counts: np.ndarray | None = None) -> np.ndarray:
    """``[F]`` max-min rates of the flows ``links [K, F]`` (padded with L), see ``solve_maxmin``.

    ``counts``: ``[L + 1]`` entries per link of ``links``, given by a caller that also guarantees
    every flow names a link (skips the count and that check).
    """
    return _Filling(cap, links, weights, demand, counts).run()


class _Filling:
    """One progressive filling. The flows of the saturated links are found by scanning the open
    flows' slots (bulk rounds; open flows kept compacted) until a round's saturated links hold few
    open entries compared with all open ones; then a link → flows index is built and used."""

    def __init__(self, cap: np.ndarray, links: np.ndarray, weights: np.ndarray | None,
                 demand: np.ndarray | None, counts: np.ndarray | None) -> None:
        n_links, n_flows = cap.shape[0], links.shape[1]
        slots = [k for k in range(links.shape[0]) if np.any(links[k] < n_links)]  # drop empty slots
        if len(slots) < links.shape[0]:
            links, weights = links[slots], None if weights is None else weights[slots]
        self.cap, self.n_links, self.demand = cap, n_links, demand
        self.links0, self.weights0 = links, weights  # indexed by flow id
        self.rate, self.frozen = np.empty(n_flows), np.zeros(n_flows, dtype=bool)
        self.rows = np.arange(n_flows)  # open flows, in the column order of links / weights
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
        self.wsum = self.cnt.astype(np.float64) if weights is None else _load(links, weights, None, n_links)
        self.used = np.zeros(n_links + 1)
        self.dq = np.zeros(0, np.int64) if demand is None else np.argsort(demand, kind="stable")
        self.dpos, self.n_open = 0, self.rows.size
        self.csc: tuple[np.ndarray, np.ndarray] | None = None

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
            if m <= thr:
                hit = self._saturated(live[share <= thr], level, last=dmin > thr)
                if hit is None:
                    break
                done.append(hit)
            if dmin <= thr:
                done.append(self._capped(thr, level))
            self._retire(np.concatenate(done))
        return self.rate

    def _saturated(self, sat_ids: np.ndarray, level: float, *, last: bool) -> np.ndarray | None:
        """Freeze the open flows on links ``sat_ids`` at ``level``; None when that was all of them."""
        if self.csc is None and 8 * int(self.cnt[sat_ids].sum()) < self.links.size:
            self.csc = _by_link(self.links, self.rows, self.n_links)
        if self.csc is None:
            sat = np.zeros(self.n_links + 1, dtype=bool)
            sat[sat_ids] = True
            dead = _touches(sat, self.links)
            if last and dead.all():
                self.rate[self.rows] = level
                return None
            hit = self.rows[dead]
        else:
            hit = np.sort(_flows_on(self.csc, sat_ids))
            hit = hit[~self.frozen[hit] & np.concatenate(([True], hit[1:] != hit[:-1]))]
        self.rate[hit] = level
        self.frozen[hit] = True
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

    def _retire(self, done: np.ndarray) -> None:
        """Move the just-frozen flows ``done`` from the open counts to the frozen load."""
        self.n_open -= done.size
        if not self.n_open:
            return
        dl = np.take(self.links0, done, axis=1)
        dw = None if self.weights0 is None else np.take(self.weights0, done, axis=1)
        dc = _load(dl, None, None, self.n_links)
        self.cnt -= dc.astype(np.int64)
        self.wsum -= dc if dw is None else _load(dl, dw, None, self.n_links)
        self.used += _load(dl, dw, self.rate[done], self.n_links)
        if self.csc is None:
            ki = np.flatnonzero(~self.frozen[self.rows])
            self.rows, self.links = self.rows[ki], np.take(self.links, ki, axis=1)
            self.weights = None if self.weights is None else np.take(self.weights, ki, axis=1)


@dataclass(frozen=True)
class BatchTimes:
    """Completion of a batch of flows that start together.

    Attributes:
        finish_s: ``[F]`` seconds from the start until each flow's last byte leaves (0 for a flow of
            0 bytes or on no link; ``inf`` if a failed link starves it).
        makespan_s: ``max(finish_s)`` (0 for no flows).
        n_events: rate re-solves.
        link_bytes: ``[L]`` bytes each link carries (Σ_f w_fl · bytes_f).
        lower_bound_s: ``max_l link_bytes / capacity``, a lower bound of the makespan.
    """

    finish_s: np.ndarray
    makespan_s: float
    n_events: int
    link_bytes: np.ndarray
    lower_bound_s: float


def simulate_batch(link_capacity: np.ndarray, flow_links: Any, nbytes: np.ndarray, *,
                   rtol: float = 1e-3, window_frac: float = 1e-2) -> BatchTimes:
    """Finish times of flows of ``nbytes [F]`` bytes that start together (event loop over coalesced
    completions, re-solving max-min rates each event; see the module doc for ``rtol`` and
    ``window_frac``)."""
    cap = _capacity(link_capacity)
    inc = as_incidence(flow_links, cap.shape[0])
    rem = np.array(nbytes, dtype=np.float64)
    if rem.shape != (inc.n_flows,) or np.any(np.isnan(rem)) or np.any(rem < 0):
        raise ValueError(f"nbytes must be {inc.n_flows} values >= 0")
    if rtol < 0 or window_frac < 0:
        raise ValueError("rtol and window_frac must be >= 0")
    link_bytes = inc.link_load(rem)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(link_bytes > 0, link_bytes / cap, 0.0)
    lower = float(ratio.max()) if ratio.size else 0.0
    finish = np.zeros(inc.n_flows)
    real = np.ones(cap.shape[0] + 1, dtype=bool)
    real[-1] = False
    act = np.flatnonzero((rem > 0) & _touches(real, inc.links))  # a flow on no link takes 0 s
    links = np.take(inc.links, act, axis=1)
    weights = None if inc.weights is None else np.take(inc.weights, act, axis=1)
    rem = rem[act]
    t, events, floor = 0.0, 0, window_frac * lower
    counts = _load(links, None, None, cap.shape[0]).astype(np.int64)
    while act.size:
        r = _fill(cap, links, weights, None, counts=counts)
        events += 1
        with np.errstate(divide="ignore"):
            tf = rem / r
        t_min = float(tf.min())
        if t_min == np.inf:
            finish[act] = np.inf
            break
        done = tf <= max(t_min + rtol * (t + t_min), t_min + floor)
        dt = 0.5 * (t_min + float(tf[done].max()))
        finish[act[done]] = t + tf[done]
        t += dt
        run = np.flatnonzero(~done)
        if run.size:
            counts -= _load(np.take(links, np.flatnonzero(done), axis=1), None, None, cap.shape[0]).astype(np.int64)
        act, rem, links = act[run], rem[run] - r[run] * dt, np.take(links, run, axis=1)
        weights = None if weights is None else np.take(weights, run, axis=1)
    makespan = float(finish.max()) if finish.size else 0.0
    return BatchTimes(finish, makespan, events, link_bytes, lower)
