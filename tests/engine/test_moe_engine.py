"""Placement and balancing inside the serving simulation: what they change, and what is reported."""

from __future__ import annotations

import typing

import pytest

from moesim.config.load import load_scenario
from moesim.config.moe import BalanceCfg, PlacementCfg
from moesim.engine.run import run
from moesim.policies.balance import BALANCERS
from moesim.policies.placement import PLACEMENTS

SKEW = ["routing.kind=hot_experts", "routing.hot_fraction=0.95", "routing.hot_experts=8",
        "routing.shuffle_per_layer=false"]


def _kinds(model: type, field: str) -> set[str]:
    return set(typing.get_args(model.model_fields[field].annotation))


def test_config_kinds_match_the_registries() -> None:
    assert _kinds(PlacementCfg, "kind") == set(PLACEMENTS.kinds())
    assert _kinds(BalanceCfg, "kind") == set(BALANCERS.kinds())


def test_plain_ep_under_extreme_skew_runs_out_of_memory_where_llep_mostly_does_not() -> None:
    """As the LLEP paper reports: the overloaded rank's activations overflow HBM; spilling avoids it."""
    base = ["workload.duration_s=6", "workload.rate_per_s=60", "scheduler.gpu_memory_utilization=1.0", *SKEW]
    ep = run(load_scenario("default", base)).summary
    llep = run(load_scenario("default", [*base, "balance.kind=llep"])).summary
    assert ep["oom_passes"] > 10 * max(llep["oom_passes"], 1)
    assert llep["expert_imbalance_mean"] < 1.1 < 3.0 < ep["expert_imbalance_mean"]
    assert llep["expert_weight_bytes_moved"] > 0 == ep["expert_weight_bytes_moved"]
    assert llep["peak_moe_activation_bytes"] < ep["peak_moe_activation_bytes"]


def test_capacity_dropping_is_counted_and_absent_with_ample_capacity() -> None:
    tight = run(load_scenario("default", ["workload.duration_s=5", *SKEW, "balance.kind=capacity",
                                          "balance.capacity_factor=1.0"])).summary
    ample = run(load_scenario("default", ["workload.duration_s=5", *SKEW, "balance.kind=capacity",
                                          "balance.capacity_factor=64"])).summary
    assert tight["tokens_dropped"] > 0
    assert ample["tokens_dropped"] == 0


def test_redundant_experts_lower_the_placed_imbalance() -> None:
    sets = ["workload.duration_s=5", "routing.zipf_s=1.4"]
    plain = run(load_scenario("default", sets)).summary
    eplb = run(load_scenario("default", [*sets, "placement.kind=eplb", "placement.redundant_experts=8"])).summary
    assert eplb["expert_imbalance_mean"] < plain["expert_imbalance_mean"]


def test_periodic_replanning_migrates_weights_and_reports_it() -> None:
    res = run(load_scenario("default", ["workload.duration_s=20", "placement.kind=eplb",
                                        "placement.redundant_experts=4", "placement.plan_from=uniform",
                                        "placement.replan_interval_s=5", "placement.replan_delay_s=1",
                                        "routing.zipf_s=1.2"]))
    s = res.summary
    assert s["replans"] >= 2 * 3 and s["migration_pause_s"] > 0
    assert len(res.migrations) >= 2 and (res.migrations["time_s"] >= 6).all()   # first plan at 5 s, +1 s delay
    assert s["expert_weight_bytes_moved"] == pytest.approx(res.migrations["bytes"].sum())


def test_llep_with_replicas_is_a_clear_config_error() -> None:
    from moesim.core.errors import ConfigError

    with pytest.raises(ConfigError, match="replica"):
        run(load_scenario("default", ["workload.duration_s=2", "placement.kind=eplb",
                                      "placement.redundant_experts=4", "balance.kind=llep"]))
