"""Tests for moesim.policies.placement.ilp (two-stage ILP; small instances, short time limits)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.core.errors import ConfigError, InfeasiblePlacement
from moesim.policies.placement import PLACEMENTS, Placement


def ilp(**kw: object):  # noqa: ANN201
    return PLACEMENTS.build("ilp", time_limit_s=kw.pop("time_limit_s", 4.0), **kw)


@settings(max_examples=12, deadline=None)
@given(st.sampled_from([(4, 2), (8, 4), (6, 3), (8, 2)]), st.booleans(), st.integers(0, 2**31))
def test_ilp_objective_never_worse_than_greedy(shape: tuple[int, int], balanced: bool,
                                               seed: int) -> None:
    n_experts, n_gpus = shape
    load = np.random.default_rng(seed).zipf(1.4, size=(2, n_experts)).astype(float).clip(max=500)
    per_gpu = n_experts // n_gpus
    p = ilp(cluster_sizes="balanced" if balanced else "free").place(
        load, n_gpus=n_gpus, slots_per_gpu=per_gpu + 1)
    contiguous = PLACEMENTS.build("contiguous").place(load, n_gpus=n_gpus, slots_per_gpu=per_gpu)
    greedy = PLACEMENTS.build("eplb").place(load, n_gpus=n_gpus, slots_per_gpu=per_gpu)
    ours = p.deviation(load).sum()
    assert ours <= contiguous.deviation(load).sum() + 1e-6
    assert ours <= greedy.deviation(load).sum() + 1e-6
    assert p.report is not None and p.report.objective == pytest.approx(ours)
    assert (p.logcnt == 1).all() and (p.experts_per_gpu() <= per_gpu + 1).all()
    totals = p.experts_per_gpu().sum(axis=0)
    assert totals.max() - totals.min() <= 1              # balanced total experts per GPU


def test_report_gives_status_bound_and_gap() -> None:
    load = np.tile([90.0, 10, 10, 10, 10, 10, 30, 30], (2, 1))
    p = ilp().place(load, n_gpus=4, slots_per_gpu=3)
    r = p.report
    assert r is not None and r.status == "optimal" and r.gap == 0.0 and r.notes == ()
    assert r.bound == pytest.approx(r.objective) and r.objective == pytest.approx(160.0)
    assert [s.stage for s in r.solves] == ["cluster", "cluster"]      # no traffic: no stage-2 solve
    # free cluster sizes: the hot expert 0 sits alone (load 90 against a mean of 50), which is
    # optimal (>= 2 * (90 - 50) per layer); equal-size clusters cannot do better than 100
    assert p.gpu_load(load).max(axis=1).tolist() == [90.0, 90.0]
    assert p.experts_per_gpu().sum(axis=0).tolist() == [4, 4, 4, 4]
    balanced = ilp(cluster_sizes="balanced").place(load, n_gpus=4, slots_per_gpu=3)
    assert balanced.deviation(load).tolist() == [100.0, 100.0]


def test_replicas_split_hot_experts() -> None:
    load = np.array([[400.0, 10, 10, 10, 10, 10, 10, 10]])
    without = ilp(cluster_sizes="balanced").place(load, n_gpus=4, slots_per_gpu=3)
    with_rep = ilp(replicas=3, cluster_sizes="balanced").place(load, n_gpus=4, slots_per_gpu=3)
    assert with_rep.logcnt[0, 0] == 4 and (with_rep.logcnt[0, 1:] == 1).all()
    assert with_rep.deviation(load).sum() < without.deviation(load).sum()
    assert sorted(with_rep.gpu_load(load)[0].tolist()) == [110.0, 120.0, 120.0, 120.0]  # optimal


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(2, 6), min_size=3, max_size=3), st.integers(0, 2), st.integers(0, 2**31))
def test_hbm_is_never_exceeded(caps: list[int], replicas: int, seed: int) -> None:
    load = np.random.default_rng(seed).integers(0, 100, size=(2, 6)).astype(float)
    hbm = np.array(caps, dtype=float) * 1e9
    try:
        p = ilp(replicas=replicas).place(load, n_gpus=3, slots_per_gpu=3, hbm_free_bytes=hbm,
                                         expert_bytes=1e9)
    except InfeasiblePlacement as err:
        # 12 experts over 3 GPUs need 4 each: only then may it refuse, naming a short GPU
        assert min(caps) < 4 and f"gpu {caps.index(min(caps))}:" in str(err)
        return
    assert (p.memory_bytes_per_gpu(1e9) <= hbm).all() and (p.logcnt >= 1).all()
    assert (p.experts_per_gpu() <= 3).all()


def test_hbm_too_small_names_gpu_and_shortfall() -> None:
    load = np.ones((2, 8))
    hbm = np.array([8e9, 8e9, 3e9, 8e9])               # each GPU must hold 2*8/4 = 4 experts
    with pytest.raises(InfeasiblePlacement, match=r"gpu 2: .*4 experts.*short by 1e\+09 B"):
        ilp().place(load, n_gpus=4, slots_per_gpu=3, hbm_free_bytes=hbm, expert_bytes=1e9)


def test_uneven_hbm_gets_the_extra_experts_on_the_big_gpus() -> None:
    load = np.random.default_rng(3).integers(1, 100, size=(3, 6)).astype(float)
    hbm = np.array([5.0, 4.0, 5.0, 4.0])               # 18 experts: two GPUs take 5
    p = ilp().place(load, n_gpus=4, slots_per_gpu=3, hbm_free_bytes=hbm, expert_bytes=1.0)
    assert (p.memory_bytes_per_gpu(1.0) <= hbm).all()


def test_replica_budget_is_cut_to_fit_hbm() -> None:
    load = np.array([[400.0, 10, 10, 10, 10, 10, 10, 10]])
    p = ilp(replicas=4).place(load, n_gpus=4, slots_per_gpu=3,
                              hbm_free_bytes=np.full(4, 2.5), expert_bytes=1.0)
    assert (p.memory_bytes_per_gpu(1.0) <= 2.5).all() and (p.logcnt == 1).all()
    assert p.report is not None and any("replica budget cut from 4 to 0" in n for n in p.report.notes)


def _best_traffic(p: Placement, transitions: np.ndarray, bw: np.ndarray) -> float:
    """Brute force over per-layer GPU permutations of the placement's clusters."""
    n_layers, n_gpus = p.n_layers, p.n_gpus
    member = [np.zeros((p.n_experts, n_gpus)) for _ in range(n_layers)]
    for l in range(n_layers):
        for e in range(p.n_experts):
            member[l][e, p.expert_gpus(l, e)] = 1.0
    sizes = [m.sum(axis=0) for m in member]
    total = sum(s.sum() for s in sizes)
    best = np.inf
    for perms in itertools.product(itertools.permutations(range(n_gpus)), repeat=n_layers):
        tot = sum(np.bincount(perm, weights=s, minlength=n_gpus) for perm, s in zip(perms, sizes))
        if tot.max() - tot.min() > 1 or tot.max() > -(-total // n_gpus):
            continue
        cost = 0.0
        for t in range(n_layers - 1):
            a = member[t][:, np.argsort(perms[t])]
            b = member[t + 1][:, np.argsort(perms[t + 1])]
            gpu = a.T @ transitions[t] @ b
            np.fill_diagonal(gpu, 0.0)
            cost += (gpu / bw).max()
        best = min(best, cost)
    return best


def test_stage2_maps_clusters_to_minimise_the_slowest_pair() -> None:
    rng = np.random.default_rng(7)
    load = np.full((3, 6), 10.0)
    transitions = rng.integers(0, 50, size=(2, 6, 6)).astype(float)
    bw = np.array([[1.0, 2.0, 1.0], [2.0, 1.0, 4.0], [1.0, 4.0, 1.0]])
    p = ilp().place(load, n_gpus=3, slots_per_gpu=2, transitions=transitions, bandwidth=bw)
    assert p.report is not None and p.report.traffic_objective is not None
    assert p.report.traffic_objective == pytest.approx(_best_traffic(p, transitions, bw), rel=1e-6)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        ilp().place(np.ones((1, 4)), n_gpus=2, slots_per_gpu=2, bandwidth=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="transitions"):
        ilp().place(np.ones((2, 4)), n_gpus=2, slots_per_gpu=2, transitions=np.ones((2, 4, 4)))
    with pytest.raises(ConfigError, match="max_experts"):
        ilp(max_experts=4).place(np.ones((1, 8)), n_gpus=2, slots_per_gpu=4)
