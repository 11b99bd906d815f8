"""Completion times of a batch of flows that start together, at max-min fair rates (``maxmin``).

**Completions** (``simulate_batch``). Flows of given sizes start together; rates are re-solved as
flows finish, coalesced into windows: the flows finishing by ``(t + t_min)(1 + rtol)`` or by
``t + t_min + window_frac · LB`` leave together (``t_min``: earliest finish at the current rates;
``LB``: max link bytes / capacity, a lower bound of the makespan). Finish times are exact at the
rates in force; the window's flows stop loading links at the midpoint of its first and last finish
(the early ones hold their share a little long, the late ones free it a little early: the errors
largely cancel, but the schedule is not strictly feasible and a coarse window can even end below
``LB``). ``window_frac = rtol = 0`` is the exact loop; otherwise there are at most about
``2 · makespan / (window_frac · LB)`` events. Against the exact loop on 64- and 128-GPU fat-trees
(per-destination lognormal, Zipf, i.i.d. exponential all-to-alls) the makespan is within 0.6 % at
the default ``window_frac = 1e-2`` (81–109 events vs 4,032–16,246), 1.1 % at 3e-2, 3.7 % at 0.1;
holding each window's flows to its last finish instead (always feasible) errs +0.7–1.4 % at 1e-2.

**Exact reductions** (long batches of unit-weight flows: at least ``REDUCE_MIN_FLOWS`` open flows
whose first finish times fill ``FEW_WINDOWS`` windows or more). After the first event, links whose
constraint the others imply are dropped (``_redundant_links``: e.g. a fat-tree's trunks, fed by
NICs of the same total capacity, and, once the intra-host flows are done, the NVLink ports, fed by
at most 7 NICs), which leaves the feasible set and so the max-min rates unchanged; flows whose
remaining link rows are then identical are merged into one flow of weight m (``_grouped_events``:
identical flows get identical max-min rates, so this is exact too), which turns the 1,024-GPU
all-to-all's 1M flows into 130k NIC-pair groups. Finish times, windows and events are those of the
flat loop up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.network.maxmin import _capacity, _Filling, _load, as_incidence, radix_argsort

__all__ = ["BatchTimes", "simulate_batch"]

REDUCE_MIN_FLOWS = 1 << 14
"""``simulate_batch`` drops redundant links and merges identical flows only for batches of at least
this many open flows (and again each time the open flows halve, down to twice this)."""
GROUP_FACTOR = 2
"""Merge identical flows only when that divides the flows by at least this much."""
FEW_WINDOWS = 16
"""A batch whose first finish times fill fewer coalescing windows than this is not reduced."""
COMPACT = 8
"""``_grouped_events`` drops the groups whose members are all done once they are over 1/COMPACT of
the groups; until then the solves leave them out as frozen flows (rate 0 or any finite one, so they
never finish again)."""
SAMPLE_STRIDE = 17
"""``_redundant_links`` first tests its candidates on every this-many-th flow (a prime, against
periodic flow orders; when there are at
least its square), and only those that pass there on all the flows."""


def _redundant_links(cap: np.ndarray, links: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """``[L + 1]`` bool: links of the unit-weight flows ``links [K, F]`` whose capacity constraint the
    others imply, so that dropping them leaves the max-min rates unchanged (``[L]`` is False).

    **Rule.** Link ``l`` (finite capacity, on no flow twice) is dropped *via slot k* when no flow
    names it in slot ``k``, every flow on ``l`` names a link in slot ``k`` (its *feeder*), and
    ``Σ_{distinct feeders g} c_g ≤ c_l``, each feeder ``(c_g, g) < (c_l, l)`` (lexicographically).

    **Proof.** At rates ``r ≥ 0`` that respect every feeder, the load of ``l`` is
    ``Σ_{f on l} r_f = Σ_g Σ_{f on l, feeder g} r_f ≤ Σ_g (load of g) ≤ Σ_g c_g ≤ c_l``, so ``l``'s
    constraint is implied by its feeders'. Feeders precede ``l`` in the strict order
    ``(c, index)``; by induction along it, every dropped link's constraint is implied by those of
    the kept links, and every flow keeps a link (a dropped link's flows cross its feeders). The
    feasible set ``{r ≥ 0 : load ≤ c}`` is therefore unchanged, and the max-min fair allocation is a
    function of the feasible set alone (it is its unique leximin-maximal point), so the rates are
    the same. Flows only leave a batch, and fewer flows keep the rule true (fewer distinct
    feeders), so a link dropped once stays droppable for the rest of the batch.

    Distinct feeders are counted per (slot of ``l``, ``k``) and summed over the slots ``l``
    appears in (over-counting only makes the test stricter). Cost: a bincount per slot, then per
    (candidate slot, feeder slot) one gather, one add and one bitmap of the (link, feeder) keys over
    the entries; the feeder slots are tried in order of their largest capacity."""
    n_links, n_slots = cap.shape[0], links.shape[0]
    capx = np.append(cap, np.inf)
    present = _slot_links(links, n_links) if present is None else present
    cand = present.any(axis=0) & np.isfinite(capx)
    for j in range(n_slots):  # a link twice on a flow has weight 2 there: keep it
        for j2 in range(j + 1, n_slots):
            if (present[j] & present[j2]).any():
                cand[links[j][links[j] == links[j2]]] = False
    removed = np.zeros(n_links + 1, dtype=bool)
    cmax = [float(capx[present[k]].max()) if present[k].any() else np.inf for k in range(n_slots)]
    for k in sorted(range(n_slots), key=lambda k: cmax[k]):
        if cmax[k] == np.inf:
            continue
        ck = cand & ~present[k] & (capx >= capx[present[k]].min())
        if not ck.any():
            continue
        if links.shape[1] >= SAMPLE_STRIDE * SAMPLE_STRIDE:  # links failing on a sample of the flows
            ck &= _implied(capx, np.ascontiguousarray(links[:, ::SAMPLE_STRIDE]), k, ck, present)
            if not ck.any():
                continue
        proven = _implied(capx, links, k, ck, present)
        removed |= proven
        cand &= ~proven
    return removed


def _implied(capx: np.ndarray, links: np.ndarray, k: int, ck: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``[L + 1]`` bool: the links of ``ck`` whose constraint their feeders in slot ``k`` imply by
    ``_redundant_links``'s rule, judged on the flows ``links [K, F]`` (``present [K, L + 1]``: the
    links named in each slot, of these flows or more). On a subset of the flows the (link, feeder)
    pairs are a subset, so a link that fails there fails on all of them."""
    n_links, n_slots = capx.shape[0] - 1, links.shape[0]
    ids_g = np.append(np.flatnonzero(present[k]), n_links)  # feeders, the padding last
    n_g = ids_g.size
    rank_g = np.full(n_links + 1, n_g - 1)
    rank_g[ids_g] = np.arange(n_g)
    g_of: dict[type, np.ndarray] = {}  # each flow's feeder rank, by dtype
    bound, fail = np.zeros(n_links + 1), np.zeros(n_links + 1, dtype=bool)
    for j in range(n_slots):
        cj = ck & present[j]
        if j == k or not cj.any():
            continue
        ids = np.flatnonzero(cj)
        n_pairs = ids.size * n_g  # (link, feeder) keys; the other links of slot j key above
        dtype = np.int32 if n_pairs + n_g < 1 << 31 else np.int64
        if dtype not in g_of:
            g_of[dtype] = np.take(rank_g.astype(dtype), links[k])
        base = np.full(n_links + 1, n_pairs, dtype=dtype)
        base[ids] = np.arange(ids.size, dtype=dtype) * n_g
        key = np.take(base, links[j])
        key += g_of[dtype]
        if n_pairs + n_g <= max(1 << 22, 4 * key.size):  # distinct (l, g) pairs by a bitmap
            mark = np.zeros(n_pairs + n_g, dtype=bool)
            mark[key] = True
            key = np.flatnonzero(mark[:n_pairs])
        else:
            key = np.sort(key[key < n_pairs])
            key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        pl, pg = ids[key // n_g], ids_g[key % n_g]  # the distinct (link, feeder) pairs
        cl, cg = capx[pl], capx[pg]
        fail[pl[(pg == n_links) | (cg > cl) | ((cg == cl) & (pg >= pl))]] = True
        bound += np.bincount(pl, np.where(pg < n_links, cg, 0.0), minlength=n_links + 1)
    return ck & ~fail & (bound <= capx)


def _slot_links(links: np.ndarray, n_links: int) -> np.ndarray:
    """``[K, L + 1]`` bool: the links named in each slot of ``links [K, F]`` (never the padding)."""
    present = np.zeros((links.shape[0], n_links + 1), dtype=bool)
    for k, row in enumerate(links):
        present[k] = np.bincount(row, minlength=n_links + 1) > 0
    present[:, n_links] = False
    return present


def _drop_links(links: np.ndarray, removed: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """``links`` with the links ``removed [L + 1]`` replaced by the padding, empty slots dropped
    (``present``: ``_slot_links(links)``, if known, saves scanning the slots that keep all or none
    of their links)."""
    pad = removed.shape[0] - 1
    if not links.shape[1]:
        return links[:0]
    code = np.where(removed, 2, 0).astype(np.uint8)  # 0 kept, 1 padding, 2 dropped
    code[pad] = 1
    rows = []
    for k, row in enumerate(links):
        if present is not None:
            hit = (present[k] & removed).any()
            if not (present[k] & ~removed).any():
                continue  # no link kept: the slot goes
            if not hit:
                rows.append(row)
                continue
        c = np.take(code, row)
        if c.min() == 0:  # the slot keeps a link
            rows.append(np.where(c == 2, pad, row).astype(links.dtype, copy=False) if c.max() == 2 else row)
    return np.array(rows, dtype=links.dtype).reshape(len(rows), links.shape[1])


def _groups(links: np.ndarray, n_links: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(order [F], ptr [G + 1])``: the columns of ``links [K, F]`` sorted so that identical ones
    are contiguous, group ``i`` being ``order[ptr[i]:ptr[i + 1]]``; None if a column does not fit
    a 63-bit key."""
    n_slots, n = links.shape
    bits = int(n_links).bit_length()
    if n_slots * bits > 63 or not n:
        return None
    key = links[0].astype(np.int32 if n_slots * bits < 32 else np.int64)
    for k in range(1, n_slots):
        key <<= bits
        key |= links[k]
    order = radix_argsort(key, n_slots * bits)
    sk = key[order]
    start = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1])))
    return order, np.append(start, n)


def _few_windows(tf: np.ndarray, t_min: float, thr: float) -> bool:
    """Whether the finish times ``tf`` at the first rates fill fewer than ``FEW_WINDOWS`` coalescing
    windows of width ``thr - t_min`` (a short batch, not worth the reductions)."""
    width = thr - t_min
    if not 0 < width < np.inf:
        return width > 0  # an infinite window ends the batch at once; a zero one is the exact loop
    with np.errstate(invalid="ignore"):
        bins = np.minimum((tf - t_min) / width, 4096.0)
    return int(np.count_nonzero(np.bincount(bins.astype(np.int64), minlength=1))) < FEW_WINDOWS


def _sort_segments(x: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """A permutation that sorts ``x [N]`` within each segment ``[ptr[i], ptr[i + 1])``, by one
    row-wise argsort per segment length (ties in any order)."""
    sizes = np.diff(ptr)
    if sizes.size and sizes.min() == sizes.max() > 0:  # one length: a row-wise sort in place
        size = int(sizes[0])
        return (np.argsort(x.reshape(-1, size), axis=1) + ptr[:-1, None]).ravel()
    perm = np.arange(x.size)
    by_size = np.argsort(sizes, kind="stable")
    bounds = np.flatnonzero(np.diff(sizes[by_size])) + 1
    for part in np.split(by_size, bounds):
        size = int(sizes[part[0]]) if part.size else 0
        if size < 2:
            continue
        cols = ptr[part][:, None] + np.arange(size)
        perm[cols] = np.take_along_axis(cols, np.argsort(x[cols], axis=1), axis=1)
    return perm


def _grouped_events(cap: np.ndarray, links: np.ndarray, act: np.ndarray, rem: np.ndarray,
                    grouped: tuple[np.ndarray, np.ndarray], finish: np.ndarray, t: float, events: int,
                    floor: float, rtol: float) -> int:
    """The rest of ``simulate_batch``'s event loop with the flows merged into groups of identical
    link rows (``_groups``): a group of ``m`` open members is one flow of weight ``m`` whose rate
    is per member. Members of a group move at the same rate, so a group keeps the bytes ``s`` each
    member has sent since the switch (a member's remainder is ``rem - s``), and its members sorted
    by ``rem`` once: they finish in that order (``(rem - s) / r`` is monotone in ``rem``), so a
    window steps from each group's ``first`` open member through the finishing ones only, up to an
    ``inf`` sentinel after the group. The link counts and weight sums are kept up to date (integers,
    so exact). Same events, windows and finish times as the flat loop (up to rounding; bit for bit
    those of the unsorted scan). Fills ``finish``; returns events."""
    order, ptr = grouped
    n_links, n_groups = cap.shape[0], ptr.size - 1
    order = order[_sort_segments(rem[order], ptr)]
    at = np.arange(order.size) + np.repeat(np.arange(n_groups), np.diff(ptr))  # group i's members
    b = np.full(order.size + n_groups, np.inf)  # lie at ptr[i] + i, ..., then an inf sentinel
    b[at] = rem[order]
    fin = np.full(b.size, np.inf)  # each member's finish (inf: starved)
    glinks = np.take(links, order[ptr[:-1]], axis=1)
    first = ptr[:-1] + np.arange(n_groups)  # each alive group's first open member
    state = np.array([np.diff(ptr), np.zeros(n_groups), b[first]], dtype=np.float64)
    m, s, bmin = state  # open members, bytes sent by each since the switch, first open remainder
    counts = _load(glinks, None, None, n_links).astype(np.int64)
    wsum = _load(glinks, m[None, :], None, n_links)  # integers: exact however summed
    gone, n_gone = np.zeros(n_groups, dtype=bool), 0  # groups with no open member, until compacted
    with np.errstate(divide="ignore", invalid="ignore"):
        while m.size > n_gone:
            r = _Filling(cap, glinks, m[None, :], None, counts, wsum, gone if n_gone else None).run()
            events += 1
            tf = (bmin - s) / r
            t_min = float(tf.min())
            if t_min == np.inf:
                break
            thr = max(t_min + rtol * (t + t_min), t_min + floor)
            aff = np.flatnonzero(tf <= thr)
            f0 = first[aff]
            tm = tf[aff]  # their first open members finish
            t_last = float(tm.max())
            fin[f0] = t + tm
            g, p = aff, f0 + 1
            first[g] = p
            while g.size:  # then their next ones, while those finish too (never a sentinel)
                tm = (b[p] - s[g]) / r[g]
                dn = tm <= thr
                g, p, tm = g[dn], p[dn], tm[dn]
                if g.size:
                    fin[p] = t + tm
                    t_last = max(t_last, float(tm.max()))
                    p = p + 1
                    first[g] = p
            nxt = first[aff]
            dt = 0.5 * (t_min + t_last)
            t += dt
            dm = (nxt - f0).astype(np.float64)
            for row in glinks:  # integers again
                wsum -= np.bincount(row[aff], dm, minlength=n_links + 1)
            m[aff] -= dm
            bmin[aff] = b[nxt]
            s += r * dt
            dead = aff[m[aff] == 0]
            if dead.size:
                for row in glinks:
                    counts -= np.bincount(row[dead], minlength=n_links + 1)
                gone[dead] = True
                n_gone += dead.size
                if COMPACT * n_gone > m.size:
                    live = np.flatnonzero(~gone)
                    state, first, glinks = np.take(state, live, axis=1), first[live], np.take(glinks, live, axis=1)
                    m, s, bmin = state
                    gone, n_gone = np.zeros(live.size, dtype=bool), 0
    finish[act[order]] = fin[at]
    return events


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
    ``window_frac``, and for the exact reductions applied to long batches)."""
    cap = _capacity(link_capacity)
    inc = as_incidence(flow_links, cap.shape[0])
    rem = np.array(nbytes, dtype=np.float64)
    if rem.shape != (inc.n_flows,) or np.any(np.isnan(rem)) or np.any(rem < 0):
        raise ValueError(f"nbytes must be {inc.n_flows} values >= 0")
    if rtol < 0 or window_frac < 0:
        raise ValueError("rtol and window_frac must be >= 0")
    n_links = cap.shape[0]
    link_bytes = inc.link_load(rem)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(link_bytes > 0, link_bytes / cap, 0.0)
    lower = float(ratio.max()) if ratio.size else 0.0
    finish = np.zeros(inc.n_flows)
    on_link = inc.links.min(axis=0) < n_links if inc.links.shape[0] else np.zeros(inc.n_flows, dtype=bool)
    act = np.flatnonzero((rem > 0) & on_link)  # a flow on no link takes 0 s
    if act.size == inc.n_flows:  # all of them (only read from here on)
        links, weights = inc.links, inc.weights
    else:
        links = np.take(inc.links, act, axis=1)
        weights = None if inc.weights is None else np.take(inc.weights, act, axis=1)
    rem = rem[act]
    t, events, floor = 0.0, 0, window_frac * lower
    counts = _load(links, None, None, n_links).astype(np.int64)
    reduce_at = act.size if weights is None and act.size >= REDUCE_MIN_FLOWS else -1
    while act.size:
        r = _Filling(cap, links, weights, None, counts).run()
        events += 1
        with np.errstate(divide="ignore"):
            tf = rem / r
        t_min = float(tf.min())
        if t_min == np.inf:
            finish[act] = np.inf
            break
        thr = max(t_min + rtol * (t + t_min), t_min + floor)
        if act.size <= reduce_at and events == 1 and _few_windows(tf, t_min, thr):
            reduce_at = -1  # a short batch: the reductions would not pay
        done = tf <= thr
        dt = 0.5 * (t_min + float(tf[done].max()))
        finish[act[done]] = t + tf[done]
        t += dt
        run = np.flatnonzero(~done)
        if run.size:
            counts -= _load(np.take(links, np.flatnonzero(done), axis=1), None, None, n_links).astype(np.int64)
        act, rem, links = act[run], rem[run] - r[run] * dt, np.take(links, run, axis=1)
        weights = None if weights is None else np.take(weights, run, axis=1)
        if 0 < act.size <= reduce_at:
            reduce_at = act.size // 2 if act.size >= 2 * REDUCE_MIN_FLOWS else -1
            present = _slot_links(links, n_links)
            removed = _redundant_links(cap, links, present)
            dropped = bool(removed[:n_links].any())
            if dropped:
                links = _drop_links(links, removed, present)
            grouped = _groups(links, n_links)
            if grouped is not None and GROUP_FACTOR * (grouped[1].size - 1) <= act.size:
                events = _grouped_events(cap, links, act, rem, grouped, finish, t, events, floor, rtol)
                break
            if dropped:
                counts = _load(links, None, None, n_links).astype(np.int64)
    makespan = float(finish.max()) if finish.size else 0.0
    return BatchTimes(finish, makespan, events, link_bytes, lower)
