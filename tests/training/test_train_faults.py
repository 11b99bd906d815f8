"""Failures over a training run: injected failures lose exactly the work since the last checkpoint;
Poisson failures lose, on average, the renewal-theory expectation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from train_helpers import moe_scenario

from moesim.engine.training import run_training
from moesim.engine.training.faults import simulate_run

KW = {"steps": 100, "step_s": 10.0, "interval": 10, "block_s": 5.0, "commit_s": 5.0, "restart_s": 100.0,
      "tokens_per_step": 1.0}


def test_injected_failure_loses_the_work_since_the_checkpoint() -> None:
    # segments of 10 steps + a 5 s checkpoint = 105 s; a failure at 237 s hits the third segment
    out = simulate_run(rate_per_s=0.0, inject_at_s=(237.0,), rng=np.random.default_rng(0), **KW)
    f = out.failures.iloc[0]
    assert f["lost_s"] == pytest.approx(237.0 - 210.0)
    assert (f["step"], f["restored_step"]) == (22, 20)
    s = out.summary
    assert s["time_to_train_s"] == pytest.approx(1000.0 + 9 * 5.0 + 27.0 + 100.0)
    assert s["goodput"] == pytest.approx(1000.0 / s["time_to_train_s"])


def test_failure_during_an_uncommitted_checkpoint_falls_back() -> None:
    # async checkpoint: blocks 5 s but commits 60 s after the snapshot starts; a failure 20 s after
    # the second snapshot restores the first checkpoint
    out = simulate_run(rate_per_s=0.0, inject_at_s=(230.0,), rng=np.random.default_rng(0),
                       **{**KW, "commit_s": 60.0})
    f = out.failures.iloc[0]
    assert f["restored_step"] == 10 and f["lost_s"] == pytest.approx(230.0 - 105.0)


def test_failure_during_restart_loses_nothing_more() -> None:
    out = simulate_run(rate_per_s=0.0, inject_at_s=(237.0, 300.0), rng=np.random.default_rng(0), **KW)
    assert list(out.failures["lost_s"]) == pytest.approx([27.0, 0.0])
    assert out.summary["time_to_train_s"] == pytest.approx(1000.0 + 9 * 5.0 + 27.0 + (300.0 - 237.0) + 100.0)


def test_poisson_failures_match_the_expected_lost_work() -> None:
    lam, seg = 1 / 2000.0, 10 * 10.0 + 5.0
    out = simulate_run(rate_per_s=lam, inject_at_s=(), rng=np.random.default_rng(7),
                       **{**KW, "steps": 100_000, "restart_s": 50.0})
    hit = out.failures[out.failures["lost_s"] > 0]
    expected = 1 / lam - seg * math.exp(-lam * seg) / (1 - math.exp(-lam * seg))   # E[age | failure in segment]
    assert len(hit) > 300
    assert hit["lost_s"].mean() == pytest.approx(expected, rel=0.06)
    # failure count ~ rate x wall time
    assert len(out.failures) == pytest.approx(lam * out.summary["time_to_train_s"], rel=0.1)


def test_same_seed_same_failures() -> None:
    a = simulate_run(rate_per_s=1e-3, inject_at_s=(), rng=np.random.default_rng(3), **KW)
    b = simulate_run(rate_per_s=1e-3, inject_at_s=(), rng=np.random.default_rng(3), **KW)
    assert a.failures.equals(b.failures) and a.summary == b.summary


def test_engine_time_to_train_and_goodput() -> None:
    clean = run_training(moe_scenario(train_tokens=2e9)).summary
    assert clean["failures"] == 0 and clean["goodput"] > 0.99
    faulty = run_training(moe_scenario(train_tokens=2e9, failures={"gpu_mtbf_hours": 2.0, "restart_s": 300},
                                       checkpoint={"interval_steps": 50})).summary
    assert faulty["failures"] > 0 and faulty["time_to_train_s"] > clean["time_to_train_s"]
    assert faulty["goodput"] < clean["goodput"]
    assert faulty["gpu_hours"] == pytest.approx(faulty["time_to_train_s"] * 8 / 3600)
