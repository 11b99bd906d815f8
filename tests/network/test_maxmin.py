"""Max-min fair sharing (``maxmin``): closed forms, the max-min certificate; and the completion event
loop (``batch``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.network import maxmin
from moesim.network.batch import simulate_batch
from moesim.network.maxmin import Incidence, as_incidence, solve_maxmin

REL = 1e-9


def test_n_to_1_incast_shares_the_receiver_link_equally() -> None:
    # flow i: its own sender link i (cap 100), then the shared receiver link 8 (cap 40)
    n = 8
    cap = np.array([100.0] * n + [40.0])
    rates = solve_maxmin(cap, [[i, n] for i in range(n)])
    assert rates == pytest.approx(np.full(n, 40.0 / n))


def test_two_flows_on_a_shared_link_and_one_alone() -> None:
    rates = solve_maxmin(np.array([10.0, 10.0]), [[0], [0], [1]])
    assert rates == pytest.approx([5.0, 5.0, 10.0])


def test_a_flow_limited_elsewhere_leaves_its_share_to_the_others() -> None:
    # f0 on A (10); f1 on A and B (4); f2 on B: B saturates first at 2 each, f0 takes the rest of A
    rates = solve_maxmin(np.array([10.0, 4.0]), [[0], [0, 1], [1]])
    assert rates == pytest.approx([8.0, 2.0, 2.0])


def test_ecmp_split_over_two_links_doubles_a_flows_rate() -> None:
    inc = Incidence.from_rows([[0, 1]], 2, weights=[[0.5, 0.5]])
    assert solve_maxmin(np.array([10.0, 10.0]), inc) == pytest.approx([20.0])
    # a bundle of 3 identical flows given as weight 3: the rate is per member
    bundle = Incidence.from_rows([[0], [0]], 1, weights=[[3.0], [1.0]])
    assert solve_maxmin(np.array([12.0]), bundle) == pytest.approx([3.0, 3.0])


def test_demand_caps_free_capacity_for_the_others() -> None:
    rates = solve_maxmin(np.array([10.0]), [[0], [0], [0]], np.array([1.0, np.inf, 2.0]))
    assert rates == pytest.approx([1.0, 7.0, 2.0])


def test_flows_on_no_link_get_their_cap_and_failed_links_starve() -> None:
    rates = solve_maxmin(np.array([0.0, 5.0]), [[], [0, 1], [1]], np.array([3.0, np.inf, np.inf]))
    assert rates == pytest.approx([3.0, 0.0, 5.0])
    times = simulate_batch(np.array([0.0, 5.0]), [[0, 1], [1]], np.array([1.0, 10.0]))
    assert times.finish_s[0] == np.inf and times.finish_s[1] == pytest.approx(2.0)


def test_scipy_sparse_input_matches_lists() -> None:
    sparse = pytest.importorskip("scipy.sparse")
    m = sparse.csr_matrix(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    assert solve_maxmin(np.array([10.0, 4.0]), m) == pytest.approx([8.0, 2.0, 2.0])


def test_completions_hand_bandwidth_on() -> None:
    # f0 (10 B) and f1 (20 B) share A; f2 (5 B) alone on B: f0 ends at 2 s, then f1 runs at 10 B/s
    t = simulate_batch(np.array([10.0, 10.0]), [[0], [0], [1]], np.array([10.0, 20.0, 5.0]))
    assert t.finish_s == pytest.approx([2.0, 3.0, 0.5])
    assert t.makespan_s == pytest.approx(3.0) and t.lower_bound_s == pytest.approx(3.0)
    assert t.link_bytes == pytest.approx([30.0, 5.0])


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="link indices"):
        solve_maxmin(np.array([1.0]), [[3]])
    with pytest.raises(ValueError, match="capacity"):
        solve_maxmin(np.array([-1.0]), [[0]])
    with pytest.raises(ValueError, match="nbytes"):
        simulate_batch(np.array([1.0]), [[0]], np.array([1.0, 2.0]))


# --------------------------------------------------------------------------- properties
@st.composite
def instances(draw: st.DrawFn) -> tuple[np.ndarray, Incidence, np.ndarray | None]:
    n_links = draw(st.integers(1, 8))
    n_flows = draw(st.integers(1, 25))
    cap = np.array(draw(st.lists(st.floats(0.5, 100.0), min_size=n_links, max_size=n_links)))
    rows = [draw(st.lists(st.integers(0, n_links - 1), min_size=1, max_size=4, unique=True))
            for _ in range(n_flows)]
    weighted = draw(st.booleans())
    weights = [[draw(st.sampled_from([0.25, 0.5, 1.0, 2.0])) for _ in r] for r in rows] if weighted else None
    capped = draw(st.booleans())
    demand = np.array(draw(st.lists(st.one_of(st.just(np.inf), st.floats(0.1, 50.0)),
                                    min_size=n_flows, max_size=n_flows))) if capped else None
    return cap, Incidence.from_rows(rows, n_links, weights), demand


def _reference(cap: np.ndarray, w: np.ndarray, demand: np.ndarray | None) -> np.ndarray:
    """Textbook progressive filling, one bottleneck at a time, on a dense [F, L] weight matrix."""
    n_flows = w.shape[0]
    rate, frozen, level = np.zeros(n_flows), np.zeros(n_flows, bool), 0.0
    dem = np.full(n_flows, np.inf) if demand is None else demand
    while not frozen.all():
        open_w = w[~frozen].sum(axis=0)
        slack = cap - w[frozen].T @ rate[frozen]
        shares = [slack[j] / open_w[j] for j in range(len(cap)) if open_w[j] > 0]
        level = min(shares + [dem[~frozen].min()])
        for j in range(len(cap)):
            if open_w[j] > 0 and slack[j] / open_w[j] <= level * (1 + 1e-12):
                hit = ~frozen & (w[:, j] > 0)
                rate[hit], frozen[hit] = level, True
        hit = ~frozen & (dem <= level * (1 + 1e-12))
        rate[hit], frozen[hit] = dem[hit], True
    return rate


@settings(max_examples=200, deadline=None)
@given(instances())
def test_maxmin_certificate_and_capacities(inst: tuple[np.ndarray, Incidence, np.ndarray | None]) -> None:
    cap, inc, demand = inst
    rates = solve_maxmin(cap, inc, demand)
    w = inc.dense()
    load = w.T @ rates
    assert np.all(load <= cap * (1 + REL))  # no link above capacity
    saturated = load >= cap * (1 - REL)
    for f in range(inc.n_flows):
        if demand is not None and rates[f] >= demand[f] * (1 - REL):
            continue
        on = w[f] > 0
        # max-min: a saturated link on f's path where no flow has a larger rate than f
        bottleneck = [j for j in np.flatnonzero(on & saturated)
                      if rates[f] >= rates[w[:, j] > 0].max() * (1 - REL)]
        assert bottleneck, f"flow {f} (rate {rates[f]}) has no bottleneck link"
    assert rates == pytest.approx(_reference(cap, w, demand), rel=1e-9)


@pytest.mark.parametrize("candidates", [1, 3, 256])
@settings(max_examples=100, deadline=None)
@given(inst=instances())
def test_link_index_rounds_match_the_reference(inst: tuple[np.ndarray, Incidence, np.ndarray | None],
                                               candidates: int) -> None:
    # force the link -> flows index from the first round, with several links frozen per round
    cap, inc, demand = inst
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(maxmin, "CSC_FACTOR", 10**9)
        mp.setattr(maxmin, "CANDIDATES", candidates)
        rates = solve_maxmin(cap, inc, demand)
    assert rates == pytest.approx(_reference(cap, inc.dense(), demand), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(inst=instances())
def test_the_few_flows_solver_matches_the_reference(inst: tuple[np.ndarray, Incidence, np.ndarray | None]) -> None:
    cap, inc, _ = inst
    w = np.ones(inc.links.shape) if inc.weights is None else inc.weights
    rates = maxmin.solve_maxmin_few(cap, inc.links.T.astype(np.int64), w.T)
    assert rates == pytest.approx(_reference(cap, inc.dense(), None), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(instances(), st.data())
def test_batch_times_are_bounded_and_bytes_add_up(inst: tuple[np.ndarray, Incidence, np.ndarray | None],
                                                  data: st.DataObject) -> None:
    cap, inc, _ = inst
    nbytes = np.array(data.draw(st.lists(st.floats(0.0, 1e3), min_size=inc.n_flows, max_size=inc.n_flows)))
    exact = simulate_batch(cap, inc, nbytes, rtol=0.0, window_frac=0.0)
    w = inc.dense()
    assert exact.link_bytes == pytest.approx(w.T @ nbytes)  # bytes conserved on every link
    assert exact.makespan_s >= exact.lower_bound_s * (1 - REL)
    alone = np.array([min(cap[j] / w[f, j] for j in np.flatnonzero(w[f])) for f in range(inc.n_flows)])
    assert np.all(exact.finish_s >= nbytes / alone * (1 - REL))  # no flow beats running alone
    coarse = simulate_batch(cap, inc, nbytes)
    assert coarse.makespan_s == pytest.approx(exact.makespan_s, rel=0.05)


def test_as_incidence_passes_an_incidence_through() -> None:
    inc = Incidence.from_rows([[0, 1], [1]], 2)
    assert as_incidence(inc, 2) is inc
    assert inc.links.shape == (2, 2) and inc.links[1, 1] == 2  # slot-major, unused slot = L
    assert inc.dense() == pytest.approx(np.array([[1.0, 1.0], [0.0, 1.0]]))


def _on_links(inc: Incidence, demand: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(links, weights, demand) of the flows that name a link (what ``counts`` promises)."""
    real = (inc.links < inc.n_links).any(axis=0)
    return (inc.links[:, real], None if inc.weights is None else inc.weights[:, real],
            None if demand is None else demand[real])


@settings(max_examples=100, deadline=None)
@given(instances(), st.data())
def test_one_weight_per_flow_and_given_sums_fill_alike(inst: tuple[np.ndarray, Incidence, np.ndarray | None],
                                                      data: st.DataObject) -> None:
    # the grouped completion loop passes weights [1, F] (a group's members on every slot) and the
    # weight per link it keeps itself: the same rates, to the bit, as the full [K, F] weights
    cap, inc, _ = inst
    links = _on_links(inc, None)[0]
    m = np.array(data.draw(st.lists(st.integers(1, 9), min_size=links.shape[1], max_size=links.shape[1])), float)
    counts = maxmin._load(links, None, None, inc.n_links).astype(np.int64)
    full = maxmin._Filling(cap, links, np.broadcast_to(m, links.shape), None, counts).run()
    wsum = maxmin._load(links, m[None, :], None, inc.n_links)
    assert np.array_equal(maxmin._Filling(cap, links, m[None, :], None, counts, wsum).run(), full)
    assert np.array_equal(maxmin._Filling(cap, links, m[None, :], None, None).run(), full)
    assert full == pytest.approx(_reference(cap, np.diag(m) @ Incidence(links, None, inc.n_links).dense(), None), rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(instances(), st.data())
def test_flows_frozen_from_the_start_are_left_out_bit_for_bit(inst: tuple[np.ndarray, Incidence, np.ndarray | None],
                                                              data: st.DataObject) -> None:
    # the grouped completion loop leaves finished groups in place as frozen flows until it compacts
    cap, inc, demand = inst
    links, weights, demand = _on_links(inc, demand)
    gone = np.array(data.draw(st.lists(st.booleans(), min_size=links.shape[1], max_size=links.shape[1])), bool)
    if gone.all():
        gone[0] = False
    keep = np.flatnonzero(~gone)
    kl, kw = links[:, keep], None if weights is None else weights[:, keep]
    kd = None if demand is None else demand[keep]
    counts = maxmin._load(kl, None, None, inc.n_links).astype(np.int64)
    expect = maxmin._Filling(cap, kl, kw, kd, counts).run()
    wsum = None if weights is None else maxmin._load(kl, kw, None, inc.n_links)
    got = maxmin._Filling(cap, links, weights, demand, counts, wsum, gone).run()
    assert np.array_equal(got[keep], expect)
    assert np.isfinite(got[gone]).all()
