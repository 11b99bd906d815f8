"""Expert placement re-planned during training: every N steps, from an EMA of the steps' loads."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.config.load import load_scenario
from moesim.core.errors import ConfigError
from moesim.engine.run import run

BASE = ["training.steps=12", "routing.zipf_s=1.2", "placement.kind=eplb"]


def _run(*extra: str):  # noqa: ANN202
    return run(load_scenario("scenarios/qwen3-30b-train.yaml", [*BASE, *extra]))


@pytest.fixture(scope="module")
def static():  # noqa: ANN201
    return _run()


@pytest.fixture(scope="module")
def replanned():  # noqa: ANN201
    return _run("placement.replan_interval_steps=4")


def test_replans_happen_every_n_steps_and_their_migration_is_charged(static, replanned) -> None:  # noqa: ANN001
    steps, s = replanned.train_steps, replanned.summary
    moved = steps.index[steps["migration_s"] > 0].tolist()
    assert moved == [3, 7, 11] and s["replans"] == 3
    assert s["migration_pause_s"] == pytest.approx(steps["migration_s"].sum())
    assert s["expert_weight_bytes_moved"] > 0
    # until the first re-plan both runs are the same; the step that ends the interval pays the copy
    before = static.train_steps["step_s"].to_numpy()
    assert np.array_equal(steps["step_s"].to_numpy()[:3], before[:3])
    assert steps["step_s"].iloc[3] == pytest.approx(before[3] + steps["migration_s"].iloc[3], rel=1e-12)


def test_replanning_follows_the_load_and_lowers_imbalance(static, replanned) -> None:  # noqa: ANN001
    before = static.train_steps["rank_imbalance"].to_numpy()
    after = replanned.train_steps["rank_imbalance"].to_numpy()
    assert np.array_equal(before[:4], after[:4])                      # same plan until the first re-plan
    assert after[4:].mean() < before[4:].mean()
    assert not np.array_equal(replanned.placements[0], static.placements[0])


def test_optimizer_states_move_with_the_weights() -> None:
    """Bytes per moved expert = weights + the optimizer state held on the rank: unsharded (ZeRO-0)
    versus sharded over the expert-DP group (ZeRO-1)."""
    z0 = _run("placement.replan_interval_steps=4", "training.optimizer.zero=0").summary
    z1 = _run("placement.replan_interval_steps=4", "training.optimizer.zero=1").summary
    edp = int(z1["parallelism"].split("expert DP")[1].split(",")[0])
    w, states = 2.0, 4.0 + 2 * 4.0                                   # bf16 weights; fp32 master + 2 moments
    ratio = (w + states) / (w + states / edp)
    assert z0["expert_weight_bytes_moved"] / z1["expert_weight_bytes_moved"] == pytest.approx(ratio, rel=1e-9)


def test_training_rejects_a_time_based_replan_interval() -> None:
    with pytest.raises(ConfigError, match="replan_interval_steps"):
        _run("placement.replan_interval_s=5")
