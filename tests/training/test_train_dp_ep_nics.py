"""DP gradient buckets overlapped with backward share the NICs with that backward's EP all-to-all."""

from __future__ import annotations

import pytest

from moesim.config.load import load_scenario
from moesim.engine.training.setup import build_training
from moesim.engine.training.steps import StepLoop


def _dp_exposed(*sets: str, ep_cross: float | None = None) -> tuple[float, float]:
    loop = StepLoop(build_training(load_scenario("scenarios/qwen3-30b-train.yaml", ["training.steps=1", *sets])))
    if ep_cross is not None:          # pretend the EP group spans hosts (qwen3's EP8 sits in one host)
        loop.ep_cross = ep_cross
    out = loop.step(0)
    return out.breakdown["dp_exposed"], loop.ep_cross


def test_an_ep_group_inside_one_host_leaves_the_nics_to_dp() -> None:
    _, cross = _dp_exposed()
    assert cross == 0.0


def test_buckets_during_an_all_to_all_over_the_nics_take_longer() -> None:
    alone, _ = _dp_exposed()
    shared, _ = _dp_exposed(ep_cross=1.0)
    assert shared > alone


def test_buckets_reduced_after_backward_do_not_meet_the_all_to_all() -> None:
    off = "training.optimizer.overlap_grad_reduce=false"
    assert _dp_exposed(off)[0] == pytest.approx(_dp_exposed(off, ep_cross=1.0)[0], rel=1e-12)
