"""Network faults during a run: traffic reroutes or slows from the fault time; partitions are reported."""

from __future__ import annotations

import pytest

from moesim.config.load import load_scenario
from moesim.core.errors import TopologyError
from moesim.engine.run import run

BASE = ["workload.duration_s=12", "workload.rate_per_s=15"]


def _fault(kind: str, target: str, at_s: float, factor: float | None = None) -> str:
    extra = f", factor: {factor}" if factor is not None else ""
    return f"hardware.faults=[{{at_s: {at_s}, kind: {kind}, target: '{target}'{extra}}}]"


def test_a_degraded_nvlink_slows_communication_from_the_fault_on() -> None:
    healthy = run(load_scenario("default", BASE))
    degraded = run(load_scenario("default", [*BASE, _fault("degrade", "gpu0<->node0.nvswitch", 6.0, 0.05)]))
    done_h = healthy.requests[healthy.requests["finish_s"] < 6.0]
    done_d = degraded.requests[degraded.requests["finish_s"] < 6.0]
    assert len(done_h) > 0 and done_h.equals(done_d)                 # nothing changes before the fault
    assert degraded.summary["comm_fraction"] > 1.5 * healthy.summary["comm_fraction"]
    assert degraded.summary["tpot_mean_s"] > healthy.summary["tpot_mean_s"]


def test_a_fault_that_cuts_a_gpu_off_is_reported_at_setup() -> None:
    with pytest.raises(TopologyError, match="gpu0"):
        run(load_scenario("default", [*BASE, _fault("fail", "gpu0<->node0.nvswitch", 3.0)]))


def test_fast_forward_stays_exact_across_a_fault() -> None:
    sets = [*BASE, _fault("degrade", "gpu1<->node0.nvswitch", 4.0, 0.2)]
    fast = run(load_scenario("default", [*sets, "engine.fast_forward=true"]))
    step = run(load_scenario("default", [*sets, "engine.fast_forward=false"]))
    assert fast.requests.equals(step.requests)
