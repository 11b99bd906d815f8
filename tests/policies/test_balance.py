"""Tests for moesim.policies.balance: none, capacity dropping, replica selection, conservation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.core.errors import ConfigError
from moesim.policies.balance import BALANCERS, BalanceDecision
from moesim.policies.balance.capacity import expert_capacity
from moesim.policies.balance.replica_select import water_fill
from moesim.policies.placement import PLACEMENTS, Placement

EPLB_LOAD = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                      [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])


def eplb() -> Placement:
    return PLACEMENTS.build("eplb", n_groups=4, n_nodes=2).place(EPLB_LOAD, n_gpus=8, slots_per_gpu=2)


def test_registry_lists_every_balance_kind() -> None:
    assert BALANCERS.kinds() == ["capacity", "llep", "none", "replica_select"]


def test_none_is_plain_ep_with_an_even_split() -> None:
    p = eplb()
    counts = EPLB_LOAD * 2                                 # even, so replicas split exactly
    d = BALANCERS.build("none").balance(counts, p)
    assert d.gpu_tokens.tolist() == p.gpu_load(counts).astype(int).tolist()
    assert not d.dropped.any() and d.transfers.shape == (0, 4)
    # one GEMM per (expert, GPU) pair that got tokens; co-located replicas share one
    pairs = {(l, e, int(g)) for l in range(2) for e in range(12) for g in p.expert_gpus(l, e)}
    assert d.active_experts.sum() == len(pairs)


def test_capacity_drops_only_the_overflow() -> None:
    p = PLACEMENTS.build("contiguous").place(np.ones((1, 4)), n_gpus=2, slots_per_gpu=2)
    counts = np.array([[70, 10, 10, 10]])                  # T*k = 100, E = 4
    d = BALANCERS.build("capacity", capacity_factor=1.0).balance(counts, p)
    assert expert_capacity(counts, 1.0).tolist() == [25]
    assert d.dropped.tolist() == [45] and d.gpu_tokens.tolist() == [[35, 20]]
    big = BALANCERS.build("capacity", capacity_factor=2.8).balance(counts, p)   # cap 70
    assert big.dropped.tolist() == [0] and big.gpu_tokens.tolist() == [[80, 20]]
    assert expert_capacity(np.array([[100] * 10]), 1.1).tolist() == [110]   # no float creep
    with pytest.raises(ConfigError):
        BALANCERS.build("capacity", capacity_factor=0.0)


def test_round_robin_rotates_the_extra_token() -> None:
    p = Placement.from_phy2log(np.array([[0, 1, 0, 1, 0, 1]]), n_experts=2, n_gpus=3)
    rr = BALANCERS.build("replica_select", strategy="round_robin")
    seen = [rr.balance(np.array([[1, 0]]), p).gpu_tokens[0].tolist() for _ in range(3)]
    assert seen == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    uniform = BALANCERS.build("replica_select", strategy="uniform")
    assert uniform.balance(np.array([[7, 0]]), p).gpu_tokens[0].tolist() == [3, 2, 2]


def test_least_loaded_fills_the_idle_replica_first() -> None:
    # expert 0 on GPUs 0 and 1; expert 1 (single copy) already loads GPU 0 with 30 tokens
    p = Placement.from_phy2log(np.array([[0, 1, 0, 2]]), n_experts=3, n_gpus=2)
    d = BALANCERS.build("replica_select", strategy="least_loaded").balance(np.array([[50, 30, 0]]), p)
    assert d.gpu_tokens[0].tolist() == [40, 40]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=5), st.integers(0, 60))
def test_water_fill_minimises_the_max(base: list[int], tokens: int) -> None:
    arr = np.array(base)
    add = water_fill(arr, tokens)
    assert (add >= 0).all() and add.sum() == tokens
    best = min(max(a + x for a, x in zip(base, split))
               for split in itertools.product(range(tokens + 1), repeat=len(base))
               if sum(split) == tokens) if len(base) <= 3 and tokens <= 20 else None
    if best is not None:
        assert (arr + add).max() == best


def test_decision_is_frozen_and_checked() -> None:
    d = BALANCERS.build("none").balance(EPLB_LOAD, eplb())
    with pytest.raises(ValueError):
        d.gpu_tokens[0, 0] = 1
    with pytest.raises(ValueError, match="shapes"):
        BalanceDecision(gpu_tokens=np.zeros((2, 3)), dropped=np.zeros(3), transfers=np.zeros((0, 4)),
                        active_experts=np.zeros((2, 3)), chunks=np.zeros((0, 4)))


BALANCE_KINDS = [("none", {}), ("capacity", {"capacity_factor": 0.8}), ("capacity", {}),
                 ("replica_select", {"strategy": "uniform"}),
                 ("replica_select", {"strategy": "round_robin"}),
                 ("replica_select", {"strategy": "least_loaded"}),
                 ("llep", {"min_tokens": 4, "threshold": None}), ("llep", {"alpha": 1.1})]


@st.composite
def passes(draw: st.DrawFn) -> tuple[Placement, np.ndarray, bool]:
    n_gpus = draw(st.integers(1, 5))
    n_experts = n_gpus * draw(st.integers(1, 4))
    layers = draw(st.integers(1, 3))
    replicated = draw(st.booleans())
    slots = n_experts // n_gpus + (draw(st.integers(0, 2)) if replicated else 0)
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    # clip before scaling: a heavy-tailed zipf draw can be near 2**63 and overflow when multiplied
    counts = (np.minimum(rng.zipf(draw(st.floats(1.1, 3.0)), size=(layers, n_experts)), 10_000) *
              draw(st.integers(0, 50))).clip(max=10_000)
    kind = "eplb" if replicated else draw(st.sampled_from(["contiguous", "round_robin"]))
    p = PLACEMENTS.build(kind).place(counts.astype(float), n_gpus=n_gpus, slots_per_gpu=slots)
    return p, counts.astype(np.int64), bool((p.logcnt == 1).all())


@settings(max_examples=120, deadline=None)
@given(passes())
def test_tokens_are_conserved_through_every_balancer(case: tuple[Placement, np.ndarray, bool]) -> None:
    p, counts, single = case
    for kind, kw in BALANCE_KINDS:
        if kind == "llep" and not single:
            continue
        d = BALANCERS.build(kind, **kw).balance(counts, p)
        assert (d.gpu_tokens.sum(axis=1) + d.dropped == counts.sum(axis=1)).all(), kind
        assert d.gpu_tokens.shape == (p.n_layers, p.n_gpus) and (d.gpu_tokens >= 0).all()
        assert (d.active_experts <= d.gpu_tokens).all()
        moved = {(int(l), int(e), int(dst)) for l, e, _src, dst in d.transfers}
        for l, e, g, _n in d.chunks:
            assert int(g) in p.expert_gpus(int(l), int(e)).tolist() or (int(l), int(e), int(g)) in moved
        per_expert = np.zeros_like(counts)
        np.add.at(per_expert, (d.chunks[:, 0], d.chunks[:, 1]), d.chunks[:, 3])
        assert (per_expert <= counts).all()
