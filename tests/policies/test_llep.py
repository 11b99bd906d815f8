"""Tests for moesim.policies.balance.llep against POLICIES.md B1 (worked example, cases, gate)."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.core.errors import ConfigError
from moesim.policies.balance import BALANCERS
from moesim.policies.balance.llep import llep_layer
from moesim.policies.placement import PLACEMENTS, Placement


def contiguous(n_experts: int, n_gpus: int, layers: int = 1) -> Placement:
    return PLACEMENTS.build("contiguous").place(np.ones((layers, n_experts)), n_gpus=n_gpus,
                                                slots_per_gpu=n_experts // n_gpus)


def plan(counts: list[int], n_gpus: int, **kw: object):  # noqa: ANN201
    return BALANCERS.build("llep", **kw).balance(np.array([counts]), contiguous(len(counts), n_gpus))


def test_worked_example_from_policies_md() -> None:
    # P=4, M=2, loads [100,10,...], alpha=1, m=1 -> cap 42; EP would give [110,20,20,20]
    d = plan([100, 10, 10, 10, 10, 10, 10, 10], 4, alpha=1.0, min_tokens=1, threshold=None)
    assert d.gpu_tokens.tolist() == [[44, 42, 42, 42]]
    expert0 = {int(g): int(n) for _l, e, g, n in d.chunks if e == 0}
    assert expert0 == {0: 32, 1: 22 + 2, 2: 22, 3: 22}        # 22/22/22 then 2 more to GPU1
    # expert 2 (native GPU1) then finds GPU1 at 34 with 10 to place: keeps 8, forces 2 to GPU0
    expert2 = {int(g): int(n) for _l, e, g, n in d.chunks if e == 2}
    assert expert2 == {1: 8, 0: 2}
    assert sorted(map(tuple, d.transfers.tolist())) == [(0, 0, 0, 1), (0, 0, 0, 2), (0, 0, 0, 3),
                                                         (0, 2, 1, 0)]
    assert d.dropped.tolist() == [0]
    assert d.active_experts.tolist() == [[3, 3, 3, 3]]


def test_gate_runs_plain_ep_below_the_threshold() -> None:
    counts = [30, 20, 25, 25, 20, 30, 25, 25]                 # native loads 50/50/50/50: IR 1
    d = plan(counts, 4, threshold=1.3, min_tokens=1)
    assert d.gpu_tokens.tolist() == [[50, 50, 50, 50]] and d.transfers.shape == (0, 4)
    skewed = plan([100, 10, 10, 10, 10, 10, 10, 10], 4, threshold=3.0, min_tokens=1)  # IR 2.59
    assert skewed.gpu_tokens.tolist() == [[110, 20, 20, 20]]
    assert plan([100, 10, 10, 10, 10, 10, 10, 10], 4, threshold=2.5, min_tokens=1
                ).gpu_tokens.tolist() == [[44, 42, 42, 42]]


def test_case3_spills_everything_when_the_native_gpu_is_full() -> None:
    # P=2, M=2: GPU0 holds experts 0 and 1 (50 each), cap = 50
    chunks, transfers = llep_layer(np.array([50, 50, 0, 0]), np.array([0, 0, 1, 1]), n_gpus=2,
                                   alpha=1.0, min_tokens=1, threshold=None)
    # expert 0: pending 50 leaves room 0 -> case 3, all 50 to GPU1; expert 1 then stays home
    assert chunks == [(0, 1, 50), (1, 0, 50)] and transfers == [(0, 1)]


def test_min_tokens_skips_small_chunks_then_forces() -> None:
    # cap 27; expert 0 keeps 17 (10 still pending home), 83 to spill; helpers have room 27
    # but m=30 makes every 27-token chunk too small while more remains: forced onto GPU1
    d = plan([100, 10, 0, 0, 0, 0, 0, 0], 4, alpha=1.0, min_tokens=30, threshold=None)
    assert d.gpu_tokens.tolist() == [[27, 83, 0, 0]] and d.transfers.tolist() == [[0, 0, 0, 1]]
    # with m=27 the chunks qualify: 27 to GPUs 1 and 2, 27 to GPU3, the last 2 forced to GPU1
    d = plan([100, 10, 0, 0, 0, 0, 0, 0], 4, alpha=1.0, min_tokens=27, threshold=None)
    assert d.gpu_tokens.tolist() == [[27, 29, 27, 27]] and len(d.transfers) == 3


def test_single_gpu_keeps_everything() -> None:
    d = plan([5, 7], 1, threshold=None, min_tokens=1)
    assert d.gpu_tokens.tolist() == [[12]] and d.transfers.shape == (0, 4)


def test_llep_beats_ep_on_skewed_multi_layer_counts() -> None:
    rng = np.random.default_rng(0)
    counts = np.zeros((3, 16), dtype=np.int64)
    counts[:, 0] = 5000
    counts += rng.integers(0, 100, size=(3, 16))
    p = contiguous(16, 8, layers=3)
    ep = BALANCERS.build("none").balance(counts, p)
    llep = BALANCERS.build("llep", alpha=1.0, min_tokens=64).balance(counts, p)
    assert (llep.gpu_tokens.max(axis=1) < ep.gpu_tokens.max(axis=1)).all()
    assert (llep.gpu_tokens.sum(axis=1) == counts.sum(axis=1)).all()
    assert llep.imbalance().max() < 1.1


def test_replicated_placement_is_rejected() -> None:
    p = Placement.from_phy2log(np.array([[0, 1, 0, 1]]), n_experts=2, n_gpus=2)
    with pytest.raises(ConfigError, match="one slot per expert"):
        BALANCERS.build("llep").balance(np.array([[3, 4]]), p)
    with pytest.raises(ConfigError):
        BALANCERS.build("llep", alpha=0.0)
