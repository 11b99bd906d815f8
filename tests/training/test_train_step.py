"""Training-step closed forms: zero communication, DP-sync overlap, breakdown, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from train_helpers import dense_scenario, moe_scenario

from moesim.engine.build import ZeroCollectives
from moesim.engine.training import run_training
from moesim.engine.training.pipeline import PipelineRun
from moesim.engine.training.setup import build_training
from moesim.engine.training.steps import BREAKDOWN, StepLoop


def test_zero_communication_step_is_the_compute_sum() -> None:
    scenario = dense_scenario(parallel={"pp": 1})
    setup = build_training(scenario, collectives=ZeroCollectives())
    mb = setup.micro_batch_tokens
    tokens = np.full((1, setup.mesh.micro_batches), float(mb))
    s = setup.cfg.data.seq_len
    pairs = np.full_like(tokens, s * (s + 1) / 2)
    d = setup.dense.costs(tokens, pairs)
    expected = float(d.compute_f.sum() + d.compute_b.sum()) + float(setup.sync.optimizer_s.max())
    out = StepLoop(setup).step(0)
    assert out.step_s == pytest.approx(expected, rel=1e-12)
    assert out.breakdown["bubble"] == pytest.approx(0.0, abs=1e-12)


def test_zero_communication_moe_step_has_no_comm_parts() -> None:
    res = run_training(moe_scenario(parallel={"pp": 1, "ep": 8}), collectives=ZeroCollectives())
    st = res.train_steps
    for part in ("tp_comm", "ep_comm", "pp_comm", "dp_exposed", "param_gather", "bubble"):
        assert np.allclose(st[f"{part}_s"], 0.0, atol=1e-12), part
    compute = st[["compute_s", "recompute_s", "gate_s", "imbalance_wait_s", "optimizer_s"]].sum(axis=1)
    assert np.allclose(compute, st["step_s"], rtol=1e-12)


def test_breakdown_sums_to_step_time() -> None:
    res = run_training(moe_scenario(stragglers={"slow_gpus": 1, "jitter_cv": 0.05},
                                    data={"documents": {"kind": "lognormal", "mean": 600, "cv": 1.0}}))
    st = res.train_steps
    parts = st[[f"{k}_s" for k in BREAKDOWN]]
    assert (parts.to_numpy() >= -1e-9).all()
    assert np.allclose(parts.sum(axis=1), st["step_s"], rtol=1e-9)
    assert (st["straggler_wait_s"] > 0).all() and (st["imbalance_wait_s"] > 0).all()


def _sync_exposed(setup, backward_s: float) -> tuple[float, float, float]:
    """(exposed, one bucket, all buckets) seconds on stage 0 when its last backward lasts ``backward_s``."""
    plan, sync = setup.plan, setup.sync
    n = plan.n_ops
    start, end = [0.0] * n, [0.0] * n
    last = plan.op_id(1, plan.micro_batches - 1, 0)
    end[last] = backward_s
    run = PipelineRun(start=start, end=end, stage_end=[backward_s] * plan.pp, makespan=backward_s, events=0)
    frac, secs = sync.buckets[0]
    return float(sync.sync_end(run)[0]) - backward_s, float(secs.max()), float(secs.sum())


def test_dp_exposure_vanishes_when_backward_hides_it() -> None:
    setup = build_training(dense_scenario(parallel={"pp": 1}, optimizer={"zero": 0, "bucket_params": 2_000_000}))
    _, one, total = _sync_exposed(setup, 1.0)
    n = len(setup.sync.buckets[0][1])
    assert n > 10
    long_exposed, _, _ = _sync_exposed(setup, 10 * total)
    assert long_exposed == pytest.approx(one)                 # only the last bucket is left
    assert long_exposed < total / n * 1.0001
    short_exposed, _, _ = _sync_exposed(setup, total / 10)
    b = total / 10
    assert short_exposed == pytest.approx(b / n + total - b, rel=1e-9)   # first bucket ready at b/n, then back to back
    no_overlap = build_training(dense_scenario(parallel={"pp": 1}, optimizer={"zero": 0, "bucket_params": 2_000_000,
                                                                                "overlap_grad_reduce": False}))
    exposed, _, total2 = _sync_exposed(no_overlap, 10 * total)
    assert exposed == pytest.approx(total2)


def test_dp_exposure_in_the_engine_is_smaller_with_overlap() -> None:
    on = run_training(dense_scenario(optimizer={"zero": 0})).summary["step_dp_exposed_s"]
    off = run_training(dense_scenario(optimizer={"zero": 0, "overlap_grad_reduce": False})).summary["step_dp_exposed_s"]
    assert 0 <= on < off


@pytest.mark.parametrize("schedule", [{"kind": "gpipe"}, {"kind": "interleaved_1f1b", "virtual_stages": 2}])
def test_schedules_run_end_to_end(schedule: dict) -> None:
    res = run_training(dense_scenario(schedule=schedule, data={"global_batch_seqs": 32}))
    assert res.summary["step_time_mean_s"] > 0 and res.summary["schedule"].startswith(schedule["kind"])


def test_interleaving_reduces_the_bubble() -> None:
    plain = run_training(dense_scenario(parallel={"pp": 4})).summary
    inter = run_training(dense_scenario(parallel={"pp": 4}, schedule={"kind": "interleaved_1f1b",
                                                                      "virtual_stages": 2})).summary
    assert inter["step_bubble_s"] < plain["step_bubble_s"]


def test_same_seed_same_records_and_seed_matters() -> None:
    a = run_training(moe_scenario(router={"drift_sigma": 0.3, "microbatch_concentration": 20}))
    b = run_training(moe_scenario(router={"drift_sigma": 0.3, "microbatch_concentration": 20}))
    pd.testing.assert_frame_equal(a.train_steps, b.train_steps)
    pd.testing.assert_frame_equal(a.train_timeline, b.train_timeline)
    assert a.summary == {**b.summary}
    c = run_training(moe_scenario(router={"drift_sigma": 0.3, "microbatch_concentration": 20}).model_copy(
        update={"seed": 1}))
    assert not np.allclose(a.train_steps["step_s"], c.train_steps["step_s"])


def test_slow_gpu_and_degraded_link_slow_the_step() -> None:
    base = run_training(moe_scenario()).summary["step_time_mean_s"]
    slow = run_training(moe_scenario(stragglers={"slow_gpu_ids": [5], "slow_factor": 2.0})).summary
    assert slow["step_time_mean_s"] > base * 1.2 and slow["straggler_slowdown"] > 1.2
    from train_helpers import merge
    from moesim.config.schema import Scenario
    tree = moe_scenario().model_dump()
    tree["hardware"]["topology"] = "h100-4node-rail"
    tree = merge(tree, {"training": {"parallel": {"pp": 2, "ep": 16}, "data": {"global_batch_seqs": 64}}})
    fast = run_training(Scenario.model_validate(tree)).summary["step_ep_comm_s"]
    tree["training"]["stragglers"] = {"slow_link_nodes": [0], "link_factor": 0.25}
    degraded = run_training(Scenario.model_validate(tree)).summary["step_ep_comm_s"]
    assert degraded > fast * 1.5


def test_variable_length_data_and_length_aware_balance() -> None:
    docs = {"kind": "lognormal", "mean": 700, "cv": 1.5, "low": 16, "high": 16384}
    plain = run_training(moe_scenario(steps=4, parallel={"pp": 1, "ep": 8}, data={"documents": docs})).summary
    aware = run_training(moe_scenario(steps=4, parallel={"pp": 1, "ep": 8},
                                      data={"documents": docs, "balance": "length_aware"})).summary
    assert aware["step_imbalance_wait_s"] < plain["step_imbalance_wait_s"]
    unpacked = run_training(moe_scenario(steps=2, data={"documents": docs, "packing": False})).summary
    assert unpacked["step_time_mean_s"] > 0
