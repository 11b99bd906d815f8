"""Max-min fair bandwidth sharing by progressive filling, and the completion times of a batch.

**Model.** ``L`` directed links with capacities ``c [L]`` bytes/s and ``F`` flows. Flow ``f``
crosses link ``l`` with a *weight* ``w_fl > 0``: at rate ``r_f`` (bytes/s) it loads the link with
``w_fl · r_f`` bytes/s. The incidence is sparse (CSR over flows, see ``Incidence``):

* a flow on one path has weight 1 on each of its links;
* a flow that ECMP splits evenly over ``k`` paths is *one* flow with fractional incidence: weight
  ``1/k`` on each path's links, summed where paths share a link (so its first and last hops usually
  keep weight 1). Its rate is the total over its paths;
* ``m`` identical flows can be given as one flow of weight ``m``; its rate is then the per-member rate.

**Progressive filling** (``solve_maxmin``). All unfrozen flows rise together at a common level
``λ``. Link ``l`` admits ``λ ≤ (c_l − frozen load on l) / Σ_{unfrozen f on l} w_fl`` (its fair share
of the remaining capacity; with unit weights: remaining capacity / number of unfrozen flows), and a
flow's demand cap bounds its own rate. Each round the smallest bound wins: every link whose share is
within relative 1e-12 of the round minimum saturates at once and freezes all its unfrozen flows at
``λ``; flows whose cap is reached freeze at their cap. The result is the unique max-min fair
allocation: no link exceeds its capacity, and every flow not at its cap crosses a saturated link on
which no flow has a larger rate. A round costs ``O(L)`` plus ``O(entries of unfrozen flows)``;
entries of frozen flows are dropped, so the work shrinks as flows freeze.

**Completions** (``simulate_batch``). Flows of given sizes start together; rates are re-solved when
flows finish. To bound the number of re-solves, completions are coalesced: at each event the flows
finishing by ``(t + t_min)(1 + rtol)`` or by ``t + t_min + window_frac · LB`` finish in that event
(``t_min``: earliest finish under the current rates, ``LB``: the largest link load / capacity, a
lower bound of the makespan); everyone runs at the current rates until the last of them finishes,
then rates are re-solved. Finish times are exact under the rates in force, so the result is exact
when no two distinct completions fall in one window; otherwise the bandwidth a flow frees is
handed on up to one window late. Windows do not overlap while rates stay put, so there are about
``makespan / (window_frac · LB)`` events at most (``window_frac = 0``: one event per distinct
completion time).
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
    """Sparse flow × link incidence in CSR form.

    Attributes:
        indptr: ``[F + 1]`` int64; flow ``f`` owns entries ``indptr[f]:indptr[f + 1]``.
        links: ``[nnz]`` int64 link index of each entry.
        weights: ``[nnz]`` float64 load per unit of flow rate, or None for all ones.
        n_links: L.
    """

    indptr: np.ndarray
    links: np.ndarray
    weights: np.ndarray | None
    n_links: int

    @property
    def n_flows(self) -> int:
        """F."""
        return int(self.indptr.shape[0] - 1)

    def flow_ids(self) -> np.ndarray:
        """``[nnz]`` flow index of each entry."""
        return np.repeat(np.arange(self.n_flows, dtype=np.int64), np.diff(self.indptr))

    def link_load(self, per_flow: np.ndarray) -> np.ndarray:
        """``[L]`` Σ_f w_fl · x_f for a per-flow quantity ``x [F]`` (rates → bytes/s, bytes → bytes)."""
        x = np.asarray(per_flow, dtype=np.float64)[self.flow_ids()]
        if self.weights is not None:
            x = x * self.weights
        return np.bincount(self.links, weights=x, minlength=self.n_links)

    def dense(self) -> np.ndarray:
        """``[F, L]`` dense weights (for tests and small cases)."""
        out = np.zeros((self.n_flows, self.n_links))
        w = np.ones(self.links.shape[0]) if self.weights is None else self.weights
        np.add.at(out, (self.flow_ids(), self.links), w)
        return out


def as_incidence(flow_links: Any, n_links: int) -> Incidence:
    """An ``Incidence`` from one, from a scipy.sparse ``[F, L]`` matrix (values = weights), or from
    a list of per-flow link-index sequences (weight 1 per listed entry; a repeat adds up)."""
    if isinstance(flow_links, Incidence):
        inc = flow_links
    elif hasattr(flow_links, "tocsr"):
        m = flow_links.tocsr()
        inc = Incidence(np.asarray(m.indptr, np.int64), np.asarray(m.indices, np.int64),
                        np.asarray(m.data, np.float64), int(m.shape[1]))
    else:
        rows: Sequence[Sequence[int]] = flow_links
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        links = (np.concatenate([np.asarray(r, np.int64) for r in rows]) if lens.sum()
                 else np.zeros(0, np.int64))
        inc = Incidence(np.concatenate([[0], np.cumsum(lens)]), links, None, n_links)
    if inc.n_links != n_links:
        raise ValueError(f"incidence has {inc.n_links} links but link_capacity has {n_links}")
    if inc.links.size and not (0 <= inc.links.min() and inc.links.max() < n_links):
        raise ValueError(f"link indices must lie in [0, {n_links})")
    if inc.weights is not None and np.any(inc.weights <= 0):
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
    rate = np.empty(inc.n_flows)
    flows = np.arange(inc.n_flows, dtype=np.int64)
    _fill(cap, inc.flow_ids(), inc.links, inc.weights, rate, flows, demand)
    return rate


def _fill(cap: np.ndarray, e_flow: np.ndarray, e_link: np.ndarray, e_w: np.ndarray | None,
          rate: np.ndarray, flows: np.ndarray, demand: np.ndarray | None) -> None:
    """Progressive filling over the entries ``(e_flow, e_link, e_w)`` of ``flows``; writes ``rate``.

    Every entry must belong to a flow in ``flows``; ``rate`` is ``[F]`` and only ``rate[flows]``
    is written.
    """
    n_links = cap.shape[0]
    frozen = np.zeros(rate.shape[0], dtype=bool)
    on_link = np.zeros(rate.shape[0], dtype=bool)
    on_link[e_flow] = True
    lone = flows[~on_link[flows]]
    rate[lone] = np.inf if demand is None else demand[lone]
    frozen[lone] = True
    cnt = np.bincount(e_link, minlength=n_links)
    wsum = cnt.astype(np.float64) if e_w is None else np.bincount(e_link, e_w, minlength=n_links)
    used = np.zeros(n_links)
    if demand is not None:
        dq = flows[np.argsort(demand[flows], kind="stable")]
        dv = demand[dq]
    else:
        dq = dv = np.zeros(0)
    dpos = 0
    while e_flow.size:
        live = np.flatnonzero(cnt > 0)
        share = (cap[live] - used[live]) / wsum[live]
        m = float(share.min())
        while dpos < dq.size and frozen[dq[dpos]]:
            dpos += 1
        dmin = float(dv[dpos]) if dpos < dq.size else np.inf
        level = max(min(m, dmin), 0.0)
        if level == np.inf:  # only uncapped flows on infinite-capacity links remain
            rate[e_flow] = np.inf
            return
        thr = level * (1.0 + SHARE_RTOL)
        if m <= thr:
            sat = np.zeros(n_links, dtype=bool)
            sat[live[share <= thr]] = True
            hit = e_flow[sat[e_link]]
            rate[hit] = level
            frozen[hit] = True
        if dmin <= thr:
            assert demand is not None
            k = int(np.searchsorted(dv, thr, side="right"))
            capped = dq[dpos:k]
            capped = capped[~frozen[capped]]
            rate[capped] = np.minimum(demand[capped], level)
            frozen[capped] = True
            dpos = k
        dead = frozen[e_flow]
        if dead.all():
            return
        dl, df = e_link[dead], e_flow[dead]
        dw = np.ones(dl.shape[0]) if e_w is None else e_w[dead]
        cnt -= np.bincount(dl, minlength=n_links)
        wsum -= np.bincount(dl, dw, minlength=n_links)
        used += np.bincount(dl, dw * rate[df], minlength=n_links)
        keep = ~dead
        e_flow, e_link = e_flow[keep], e_link[keep]
        e_w = None if e_w is None else e_w[keep]


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
    flow_of = inc.flow_ids()
    link_bytes = inc.link_load(rem)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(link_bytes > 0, link_bytes / cap, 0.0)
    lower = float(ratio.max()) if ratio.size else 0.0
    finish = np.zeros(inc.n_flows)
    active = (rem > 0) & (np.diff(inc.indptr) > 0)
    keep = active[flow_of]
    e_flow, e_link = flow_of[keep], inc.links[keep]
    e_w = None if inc.weights is None else inc.weights[keep]
    act = np.flatnonzero(active)
    rate = np.empty(inc.n_flows)
    t, events, floor = 0.0, 0, window_frac * lower
    while act.size:
        _fill(cap, e_flow, e_link, e_w, rate, act, None)
        events += 1
        r = rate[act]
        with np.errstate(divide="ignore"):
            tf = rem[act] / r
        t_min = float(tf.min())
        if t_min == np.inf:
            finish[act] = np.inf
            break
        done = tf <= max(t_min + rtol * (t + t_min), t_min + floor)
        dt = float(tf[done].max())
        finish[act[done]] = t + tf[done]
        run = ~done
        rem[act[run]] -= r[run] * dt
        t += dt
        active[act[done]] = False
        act = act[run]
        keep = active[e_flow]
        e_flow, e_link = e_flow[keep], e_link[keep]
        e_w = None if e_w is None else e_w[keep]
    makespan = float(finish.max()) if finish.size else 0.0
    return BatchTimes(finish, makespan, events, link_bytes, lower)
