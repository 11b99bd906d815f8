"""Tests for moesim.policies.placement.eplb: the DeepSeek README vector and the primitives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.core.errors import ConfigError
from moesim.policies.placement import PLACEMENTS
from moesim.policies.placement.eplb import eplb_phy2log, pack, replicate

README_LOAD = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                        [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]], dtype=float)
README_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                  [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def test_readme_test_vector_exactly() -> None:
    # 2 layers, 12 experts, R=16, G=4, N=2, P=8 (hierarchical: 4 % 2 == 0)
    p = PLACEMENTS.build("eplb", n_groups=4, n_nodes=2).place(README_LOAD, n_gpus=8, slots_per_gpu=2)
    assert p.phy2log.tolist() == README_PHY2LOG
    assert p.logcnt.sum(axis=1).tolist() == [16, 16]
    for l in range(2):
        for e in range(12):
            slots = p.log2phy[l, e][p.log2phy[l, e] >= 0]
            assert (p.phy2log[l, slots] == e).all()


def test_hierarchical_keeps_each_group_on_one_node() -> None:
    p = PLACEMENTS.build("eplb", n_groups=4, n_nodes=2).place(README_LOAD, n_gpus=8, slots_per_gpu=2)
    for l in range(2):
        for group in range(4):
            nodes = {int(g) // 4 for e in range(group * 3, group * 3 + 3) for g in p.expert_gpus(l, e)}
            assert len(nodes) == 1


def test_global_policy_when_groups_do_not_divide_nodes() -> None:
    # G=3, N=2: 3 % 2 != 0, so EPLB falls back to the global policy (G = N = 1)
    got = eplb_phy2log(README_LOAD, n_slots=16, n_groups=3, n_nodes=2, n_gpus=8)
    assert np.array_equal(got, eplb_phy2log(README_LOAD, n_slots=16, n_groups=1, n_nodes=1, n_gpus=8))


def test_pack_is_cardinality_constrained_lpt() -> None:
    w = np.array([[5.0, 9.0, 1.0, 7.0, 3.0, 3.0]])
    pack_of, rank = pack(w, 3)
    # descending: 9->p0, 7->p1, 5->p2, 3(idx4)->p2 (lightest 5), 3(idx5)->p1 (7<9), 1->p0
    assert pack_of.tolist() == [[2, 0, 0, 1, 2, 1]]
    assert rank.tolist() == [[0, 0, 1, 0, 1, 1]]
    ident, zero = pack(w, 6)
    assert ident.tolist() == [list(range(6))] and not zero.any()


def test_replicate_minimises_the_largest_share() -> None:
    slot_item, count = replicate(np.array([[10.0, 4.0, 6.0]]), 5)
    assert slot_item.tolist() == [[0, 1, 2, 0, 2]]     # 10 -> 5 | 6 -> 3 beats 5
    assert count.tolist() == [[2, 1, 2]]


def test_bad_shapes_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="groups"):
        PLACEMENTS.build("eplb", n_groups=5, n_nodes=1).place(README_LOAD, n_gpus=8, slots_per_gpu=2)
    with pytest.raises(ConfigError, match="nodes"):
        PLACEMENTS.build("eplb", n_groups=3, n_nodes=3).place(README_LOAD, n_gpus=8, slots_per_gpu=2)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 6), st.integers(0, 2**31))
def test_more_redundancy_never_raises_the_hottest_replica(n_gpus: int, per_gpu: int, extra: int,
                                                          seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_experts = n_gpus * per_gpu
    load = rng.zipf(1.3, size=(2, n_experts)).astype(float)
    hottest = []
    for slots in (per_gpu, per_gpu + extra):
        p = PLACEMENTS.build("eplb").place(load, n_gpus=n_gpus, slots_per_gpu=slots)
        assert (p.phy2log >= 0).all() and (p.logcnt >= 1).all()
        hottest.append((load / p.logcnt).max(axis=1))
    assert (hottest[1] <= hottest[0] + 1e-9).all()
