"""Exact reductions of ``simulate_batch``: redundant links dropped, identical flows merged."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.network import batch
from moesim.network.flows import FlowNetwork
from moesim.network.generators import fat_tree
from moesim.network.batch import simulate_batch
from moesim.network.maxmin import Incidence, solve_maxmin


def _removed(cap: list[float], rows: list[list[int]]) -> list[int]:
    inc = Incidence.from_rows(rows, len(cap))
    return np.flatnonzero(batch._redundant_links(np.array(cap), inc.links)[: len(cap)]).tolist()


def test_a_trunk_no_faster_than_its_ports_is_dropped() -> None:
    # ports 0, 1 (cap 5) feed trunk 2; flows 0->2, 0->2, 1->2
    assert _removed([5.0, 5.0, 10.0], [[0, 2], [0, 2], [1, 2]]) == [2]
    assert _removed([5.0, 5.0, 9.0], [[0, 2], [0, 2], [1, 2]]) == []  # 10 > 9: it can saturate
    # a flow on the trunk without a port in the feeder slot keeps the trunk
    assert _removed([5.0, 5.0, 10.0], [[0, 2], [1, 2], [2]]) == []


def test_the_cheapest_slot_of_feeders_is_found() -> None:
    # trunk 4 (cap 10) in slot 1; slot 0 holds 4 distinct ports (sum 20), slot 2 two ports (sum 10)
    rows = [[0, 4, 5], [1, 4, 5], [2, 4, 6], [3, 4, 6]]
    assert _removed([5.0, 5.0, 5.0, 5.0, 10.0, 5.0, 5.0], rows) == [4]


def test_links_that_imply_each_other_keep_one() -> None:
    # links 0 and 1 carry the same flows at the same capacity: only one may go
    assert len(_removed([3.0, 3.0], [[0, 1], [0, 1]])) == 1
    # a link named twice by a flow has weight 2 there and is kept
    assert _removed([3.0, 10.0], [[0, 1, 1]]) == []


def test_infinite_and_unused_links_are_not_dropped() -> None:
    assert _removed([5.0, np.inf, 7.0], [[0, 1]]) == []


@st.composite
def unit_instances(draw: st.DrawFn) -> tuple[np.ndarray, Incidence]:
    n_links = draw(st.integers(1, 7))
    n_flows = draw(st.integers(1, 20))
    cap = np.array(draw(st.lists(st.sampled_from([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 100.0]),
                                 min_size=n_links, max_size=n_links)))
    rows = [draw(st.lists(st.integers(0, n_links - 1), min_size=1, max_size=4)) for _ in range(n_flows)]
    return cap, Incidence.from_rows(rows, n_links)


@settings(max_examples=300, deadline=None)
@given(unit_instances())
def test_dropping_redundant_links_keeps_the_maxmin_rates(inst: tuple[np.ndarray, Incidence]) -> None:
    cap, inc = inst
    removed = batch._redundant_links(cap, inc.links)
    reduced = batch._drop_links(inc.links, removed)
    assert np.all((reduced < inc.n_links).any(axis=0))  # every flow keeps a link
    full = solve_maxmin(cap, inc)
    assert solve_maxmin(cap, Incidence(reduced, None, inc.n_links)) == pytest.approx(full, rel=1e-9)
    load = inc.dense().T @ full
    assert np.all(load[removed[:-1]] <= cap[removed[:-1]] * (1 + 1e-9))


def _redundant_reference(cap: np.ndarray, links: np.ndarray) -> list[int]:
    """``_redundant_links``'s rule, flow by flow with sets."""
    n_links, (n_slots, n_flows) = cap.size, links.shape
    capx = [*cap.tolist(), np.inf]
    present = [set(links[k].tolist()) - {n_links} for k in range(n_slots)]
    cand = {x for p in present for x in p if capx[x] < np.inf}
    for f in range(n_flows):
        col = links[:, f].tolist()
        cand -= {x for x in col if col.count(x) > 1}
    removed: set[int] = set()
    cmax = [max(capx[x] for x in p) if p else np.inf for p in present]
    for k in sorted(range(n_slots), key=lambda k: cmax[k]):
        if cmax[k] == np.inf:
            continue
        cmin = min(capx[x] for x in present[k])
        proven = set()
        for link in {x for x in cand if x not in present[k] and capx[x] >= cmin}:
            bound, ok = 0.0, True
            for j in range(n_slots):
                feeders = {int(links[k, f]) for f in range(n_flows) if links[j, f] == link}
                ok &= all(g < n_links and (capx[g], g) < (capx[link], link) for g in feeders)
                bound += sum(capx[g] for g in feeders if g < n_links)
            if ok and bound <= capx[link]:
                proven.add(link)
        removed |= proven
        cand -= proven
    return sorted(removed)


@settings(max_examples=300, deadline=None)
@given(unit_instances())
def test_redundant_links_follow_the_rule(inst: tuple[np.ndarray, Incidence]) -> None:
    cap, inc = inst
    assert np.flatnonzero(batch._redundant_links(cap, inc.links)).tolist() == _redundant_reference(cap, inc.links)


@st.composite
def many_flow_instances(draw: st.DrawFn) -> tuple[np.ndarray, Incidence]:
    # enough flows for ``_redundant_links`` to try its candidates on a sample first: ports feeding
    # trunks (droppable or not by capacity), and a few stray flows that may spoil a trunk
    n_ports, n_trunks = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    n_links = n_ports + n_trunks
    n_flows = draw(st.integers(batch.SAMPLE_STRIDE ** 2, batch.SAMPLE_STRIDE ** 2 + 60))
    cap = np.array(draw(st.lists(st.sampled_from([1.0, 2.0]), min_size=n_ports, max_size=n_ports))
                   + draw(st.lists(st.sampled_from([2.0, 4.0, 8.0, 16.0]), min_size=n_trunks, max_size=n_trunks)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    stray = draw(st.sampled_from([0.0, 0.002, 0.05]))
    rows = []
    for _ in range(n_flows):
        if rng.random() < stray:
            rows.append(sorted(set(rng.integers(0, n_links, rng.integers(1, 4)).tolist())))
        else:
            rows.append([int(rng.integers(0, n_ports)), n_ports + int(rng.integers(0, n_trunks))])
    return cap, Incidence.from_rows(rows, n_links)


@settings(max_examples=60, deadline=None)
@given(many_flow_instances())
def test_redundant_links_on_a_sample_first_follow_the_rule(inst: tuple[np.ndarray, Incidence]) -> None:
    cap, inc = inst
    assert np.flatnonzero(batch._redundant_links(cap, inc.links)).tolist() == _redundant_reference(cap, inc.links)


@settings(max_examples=200, deadline=None)
@given(unit_instances(), st.data())
def test_dropping_links_pads_them_and_drops_empty_slots(inst: tuple[np.ndarray, Incidence], data: st.DataObject) -> None:
    cap, inc = inst
    removed = np.array(data.draw(st.lists(st.booleans(), min_size=cap.size, max_size=cap.size)) + [False])
    full = np.where(removed[inc.links], cap.size, inc.links)
    expect = full[(full < cap.size).any(axis=1)]
    out = batch._drop_links(inc.links, removed)
    assert out.dtype == inc.links.dtype and out.shape == expect.shape and (out == expect).all()
    known = batch._drop_links(inc.links, removed, batch._slot_links(inc.links, cap.size))
    assert known.dtype == inc.links.dtype and known.shape == expect.shape and (known == expect).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=30), st.booleans(), st.data())
def test_segments_are_sorted_in_place(sizes: list[int], uniform: bool, data: st.DataObject) -> None:
    sizes = [sizes[0]] * len(sizes) if uniform else sizes
    ptr = np.concatenate(([0], np.cumsum(sizes)))
    x = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.5, 7.0]), min_size=int(ptr[-1]),
                                    max_size=int(ptr[-1]))))
    perm = batch._sort_segments(x, ptr)
    for a, b in zip(ptr[:-1], ptr[1:]):
        assert sorted(perm[a:b].tolist()) == list(range(a, b))
        assert (np.diff(x[perm[a:b]]) >= 0).all()


def _both(cap: np.ndarray, inc: Incidence, nbytes: np.ndarray, **kw: float) -> tuple[batch.BatchTimes, ...]:
    """(reductions off, reductions forced on) of one batch."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch, "REDUCE_MIN_FLOWS", 10**12)
        flat = simulate_batch(cap, inc, nbytes, **kw)
        mp.setattr(batch, "REDUCE_MIN_FLOWS", 1)
        mp.setattr(batch, "FEW_WINDOWS", 0)
        mp.setattr(batch, "GROUP_FACTOR", 1)
        reduced = simulate_batch(cap, inc, nbytes, **kw)
    return flat, reduced


@settings(max_examples=200, deadline=None)
@given(unit_instances(), st.data(), st.sampled_from([(0.0, 0.0), (1e-3, 1e-2), (1e-3, 0.1)]))
def test_reduced_batches_match_the_flat_loop(inst: tuple[np.ndarray, Incidence], data: st.DataObject,
                                             tol: tuple[float, float]) -> None:
    cap, inc = inst
    nbytes = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, 7.5]),
                                         min_size=inc.n_flows, max_size=inc.n_flows)))
    flat, reduced = _both(cap, inc, nbytes, rtol=tol[0], window_frac=tol[1])
    # same finish times; the event counts may differ by finishes that tie only up to rounding
    assert reduced.finish_s == pytest.approx(flat.finish_s, rel=1e-9)


@pytest.mark.parametrize("window_frac", [0.0, 1e-2])
def test_a_fat_tree_all_to_all_is_reduced_exactly(window_frac: float) -> None:
    n = 64
    tree = fat_tree(n, leaf_radix=8, build_graph=False)
    net = FlowNetwork(tree)
    inc = net.routes(np.repeat(np.arange(n), n), np.tile(np.arange(n), n)).incidence
    rng = np.random.default_rng(1)
    nbytes = np.rint(1e3 * rng.lognormal(0.0, 0.5, n)[None, :] * rng.uniform(0.8, 1.2, (n, n))).ravel()
    removed = batch._redundant_links(net.capacity_bytes_per_s, inc.links)
    assert removed[tree.flow_router().leaf_up0:-1].all()  # every trunk is fed by its NICs
    flat, reduced = _both(net.capacity_bytes_per_s, inc, nbytes, rtol=0.0 if window_frac == 0 else 1e-3,
                          window_frac=window_frac)
    assert reduced.finish_s == pytest.approx(flat.finish_s, rel=1e-9)
    assert reduced.n_events == flat.n_events


def test_failed_links_starve_their_flows_in_a_reduced_batch() -> None:
    cap = np.array([5.0, 5.0, 10.0, 0.0])
    rows = [[0, 2], [1, 2], [0, 2], [1, 3]]
    flat, reduced = _both(cap, Incidence.from_rows(rows, 4), np.array([1.0, 2.0, 3.0, 1.0]))
    assert np.isinf(reduced.finish_s[3])
    assert reduced.finish_s == pytest.approx(flat.finish_s, rel=1e-9)
