"""Tests for moesim.policies.placement.base and the load-blind placements (contiguous, round_robin)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.core.errors import InfeasiblePlacement
from moesim.policies.placement import PLACEMENTS, Placement


def test_registry_lists_every_placement_kind() -> None:
    assert PLACEMENTS.kinds() == ["contiguous", "eplb", "ilp", "round_robin"]


def test_contiguous_layout_and_empty_slots() -> None:
    load = np.ones((2, 8))
    p = PLACEMENTS.build("contiguous").place(load, n_gpus=4, slots_per_gpu=3)
    assert p.phy2log[0].tolist() == [0, 1, -1, 2, 3, -1, 4, 5, -1, 6, 7, -1]
    assert (p.logcnt == 1).all() and p.slots_per_gpu == 3 and p.n_slots == 12
    assert p.expert_gpus(1, 5).tolist() == [2]
    assert p.gpu_of_slot(7) == 2
    assert p.experts_per_gpu().tolist() == [[2, 2, 2, 2]] * 2


def test_contiguous_needs_divisible_experts() -> None:
    with pytest.raises(InfeasiblePlacement, match="divisible"):
        PLACEMENTS.build("contiguous").place(np.ones((1, 6)), n_gpus=4, slots_per_gpu=2)


def test_round_robin_layout() -> None:
    p = PLACEMENTS.build("round_robin").place(np.ones((1, 10)), n_gpus=4, slots_per_gpu=3)
    assert p.phy2log[0].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, -1, 3, 7, -1]
    assert [int(p.expert_gpus(0, e)[0]) for e in range(10)] == [e % 4 for e in range(10)]


def test_too_few_slots_names_the_shortfall() -> None:
    with pytest.raises(InfeasiblePlacement, match=r"gpu 0.*need >= 3 slots.*short by 1 slots"):
        PLACEMENTS.build("round_robin").place(np.ones((1, 9)), n_gpus=4, slots_per_gpu=2)


def test_hbm_too_small_names_gpu_and_bytes() -> None:
    load = np.ones((3, 8))
    hbm = np.array([6e9, 6e9, 5e9, 6e9])
    with pytest.raises(InfeasiblePlacement, match=r"gpu 2: .*6 experts.*short by 1e\+09 B"):
        PLACEMENTS.build("contiguous").place(load, n_gpus=4, slots_per_gpu=2,
                                             hbm_free_bytes=hbm, expert_bytes=1e9)


def test_load_helpers_on_a_known_placement() -> None:
    # two GPUs, 2 slots each; expert 0 replicated on both GPUs
    p = Placement.from_phy2log(np.array([[0, 1, 0, 2]]), n_experts=3, n_gpus=2)
    assert p.logcnt.tolist() == [[2, 1, 1]]
    assert p.log2phy[0].tolist() == [[0, 2], [1, -1], [3, -1]]
    load = np.array([[10.0, 4.0, 6.0]])
    assert p.gpu_load(load).tolist() == [[9.0, 11.0]]
    assert p.imbalance(load).tolist() == pytest.approx([11.0 / 10.0])
    assert p.deviation(load).tolist() == [2.0]
    assert p.memory_bytes_per_gpu(3.0).tolist() == [6.0, 6.0]
    assert p.imbalance(np.zeros((1, 3))).tolist() == [1.0]


def test_balanced_placement_has_imbalance_one() -> None:
    p = PLACEMENTS.build("contiguous").place(np.ones((2, 16)), n_gpus=8, slots_per_gpu=2)
    assert p.imbalance(np.full((2, 16), 7.0)).tolist() == [1.0, 1.0]


def test_invariants_are_checked_on_construction() -> None:
    with pytest.raises(ValueError, match="expert 2 of layer 0 has no slot"):
        Placement.from_phy2log(np.array([[0, 1, 0, 1]]), n_experts=3, n_gpus=2)
    with pytest.raises(ValueError, match="not a positive multiple"):
        Placement.from_phy2log(np.array([[0, 1, 2]]), n_experts=3, n_gpus=2)
    good = Placement.from_phy2log(np.array([[0, 1, 2, 0]]), n_experts=3, n_gpus=2)
    with pytest.raises(ValueError, match="logcnt"):
        Placement(phy2log=good.phy2log, log2phy=good.log2phy, logcnt=np.array([[1, 1, 1]]),
                  n_gpus=2)
    bad = good.log2phy.copy()
    bad[0, 0] = [3, 1]
    with pytest.raises(ValueError, match="log2phy"):
        Placement(phy2log=good.phy2log, log2phy=bad, logcnt=good.logcnt, n_gpus=2)
    with pytest.raises(ValueError):
        good.phy2log[0, 0] = 2                       # read-only


@st.composite
def instances(draw: st.DrawFn) -> tuple[str, np.ndarray, int, int]:
    kind = draw(st.sampled_from(["contiguous", "round_robin", "eplb"]))
    n_gpus = draw(st.integers(1, 6))
    per_gpu = draw(st.integers(1, 4))
    n_experts = n_gpus * per_gpu if kind == "contiguous" else draw(st.integers(1, n_gpus * per_gpu))
    slots = draw(st.integers(-(-n_experts // n_gpus), 5))
    layers = draw(st.integers(1, 3))
    load = np.array(draw(st.lists(st.integers(0, 1000), min_size=layers * n_experts,
                                  max_size=layers * n_experts)), dtype=float).reshape(layers, n_experts)
    return kind, load, n_gpus, slots


@settings(max_examples=150, deadline=None)
@given(instances())
def test_every_expert_placed_within_slot_and_hbm_capacity(case: tuple[str, np.ndarray, int, int]) -> None:
    kind, load, n_gpus, slots = case
    p = PLACEMENTS.build(kind).place(load, n_gpus=n_gpus, slots_per_gpu=slots)
    assert (p.logcnt >= 1).all()
    assert sorted(set(p.phy2log[p.phy2log >= 0].tolist())) == list(range(load.shape[1]))
    assert (p.experts_per_gpu() <= slots).all()
    assert p.gpu_load(load).sum(axis=1) == pytest.approx(load.sum(axis=1))
    if kind == "eplb":
        assert (p.phy2log >= 0).all()                # EPLB fills every slot
    # the same placement with exactly its own footprint as free HBM still fits
    hbm = p.memory_bytes_per_gpu(2.0)
    again = PLACEMENTS.build(kind).place(load, n_gpus=n_gpus, slots_per_gpu=slots,
                                         hbm_free_bytes=hbm, expert_bytes=2.0)
    assert (again.memory_bytes_per_gpu(2.0) <= hbm).all()
