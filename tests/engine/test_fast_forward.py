"""Advancing a run of unchanged decode passes in one event gives exactly the stepped result."""

from __future__ import annotations

import pandas as pd
import pytest

from moesim.config.load import load_scenario
from moesim.engine.run import run

CASES = {
    "default": [],
    "dp-attention-horizon": ["deployment.attention_tp=2", "deployment.attention_dp=2", "engine.horizon_s=12"],
    "preemptions": ["scheduler.gpu_memory_utilization=0.05", "workload.rate_per_s=40"],
    "no-chunking": ["scheduler.chunked_prefill=false", "router.kind=round_robin"],
    "eplb-replanning": ["placement.kind=eplb", "placement.redundant_experts=4", "placement.replan_interval_s=4",
                        "placement.replan_delay_s=1", "placement.plan_from=uniform"],
    "llep": ["routing.kind=hot_experts", "routing.hot_fraction=0.8", "routing.hot_experts=8",
             "routing.shuffle_per_layer=false", "balance.kind=llep", "balance.min_tokens=64"],
}


@pytest.mark.parametrize("name", CASES)
def test_fast_forward_equals_stepping(name: str) -> None:
    base = ["workload.duration_s=15", *CASES[name]]
    fast = run(load_scenario("default", [*base, "engine.fast_forward=true"]))
    step = run(load_scenario("default", [*base, "engine.fast_forward=false"]))
    pd.testing.assert_frame_equal(fast.requests, step.requests, check_exact=True)
    pd.testing.assert_frame_equal(fast.timeseries, step.timeseries, check_exact=True)
    pd.testing.assert_frame_equal(fast.batch_hist, step.batch_hist, check_exact=True)
    differs = {k for k in fast.summary if k != "des_events" and fast.summary[k] != step.summary[k]}
    assert not differs
    assert fast.summary["des_events"] < step.summary["des_events"]
    if name == "preemptions":
        assert fast.summary["preemptions"] > 0, "the scenario must exercise preemption"
