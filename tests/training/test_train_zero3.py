"""ZeRO-3: memory and communication-volume closed forms, exposure that vanishes behind long compute."""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import TINY_DENSE, FixedCollectives, dense_scenario, moe_scenario

from moesim.config.training import OptimizerCfg
from moesim.engine.training import run_training
from moesim.engine.training.setup import build_training
from moesim.engine.training.steps import BREAKDOWN

BF16, FP32 = 2.0, 4.0


def test_memory_closed_form() -> None:
    """Parameters, gradients and optimizer states all divided by dp x cp, plus the gathered working
    set: the largest unit (here the embedding / LM head) twice in bf16 and its fp32 gradients."""
    z0 = build_training(dense_scenario(optimizer={"zero": 0})).memory_table
    z3s = build_training(dense_scenario(optimizer={"zero": 3}))
    z3 = z3s.memory_table
    dp = z3s.mesh.dp * z3s.mesh.cp
    assert dp == 4
    for key in ("weights", "grads", "optimizer"):
        assert z3[key] == pytest.approx(z0[key] / dp)
    d, v = TINY_DENSE["hidden_size"], TINY_DENSE["vocab_size"]
    layer = d * 128 * (2 * 8 + 2 * 8) + 3 * d * TINY_DENSE["dense_intermediate"]
    unit = max(layer, v * d)
    assert z3s.memory.gathered == pytest.approx([unit * (2 * BF16 + FP32)] * 2)
    assert z3["workspace"] == pytest.approx(z0["workspace"] + z3s.memory.gathered)
    assert np.all(z3["total"] < z0["total"])


def test_communication_volume_is_three_times_zero1_parameter_bytes() -> None:
    """Per micro-batch: 2 all-gathers + 1 reduce-scatter of the parameters; with bf16 gradients
    that is 3x ZeRO-1's once-per-step parameter all-gather, per micro-batch."""
    kw = {"optimizer": {"grad_dtype": "bf16"}, "data": {"global_batch_seqs": 4}}     # one micro-batch
    z1 = build_training(dense_scenario(**{**kw, "optimizer": {"zero": 1, "grad_dtype": "bf16"}}))
    z3 = build_training(dense_scenario(**{**kw, "optimizer": {"zero": 3, "grad_dtype": "bf16"}}))
    assert z3.mesh.micro_batches == 1
    z1_params = z1.sync.param_gather_bytes
    assert np.all(z1_params > 0)
    assert z3.zero3.gather_bytes + z3.zero3.reduce_bytes == pytest.approx(3 * z1_params)
    assert z3.sync.param_gather_bytes == pytest.approx(0.0) and not any(b[0].size for b in z3.sync.buckets)
    m8 = build_training(dense_scenario(optimizer={"zero": 3}))                        # 8 micro-batches, fp32 grads
    params = z1_params / BF16
    assert m8.zero3.gather_bytes == pytest.approx(8 * 2 * params * BF16)
    assert m8.zero3.reduce_bytes == pytest.approx(8 * params * FP32)
    summary = run_training(dense_scenario(optimizer={"zero": 3})).summary
    assert summary["dp_comm_bytes_per_step"] == pytest.approx(float(np.max(8 * params * (2 * BF16 + FP32))))


def test_exposure_closed_form() -> None:
    z3 = build_training(dense_scenario(optimizer={"zero": 3, "overlap_param_gather": True})).zero3
    k, m, c = 2, 8, 2
    ag, rs = z3.gather_s, z3.reduce_s
    long_ops = np.full((k, m, c), 10 * float(ag.max() + rs.max()))
    g, r = z3.exposure(long_ops)
    assert np.allclose(g, 0.0) and np.allclose(r, 0.0)           # prefetched behind long compute
    g, r = z3.exposure(np.zeros((k, m, c)))
    assert np.allclose(g[0], ag) and np.allclose(g[1], ag) and np.allclose(r[0], 0.0) and np.allclose(r[1], rs)
    half = np.broadcast_to((ag + rs) / 2, (k, m, c)).copy()
    g, r = z3.exposure(half)                                     # backward: (ag + rs) / 2 left, shared pro rata
    assert np.allclose(g[1] + r[1], (ag + rs) / 2) and np.allclose(g[1] / r[1], ag / rs)
    blocking = build_training(dense_scenario(optimizer={"zero": 3, "overlap_param_gather": False,
                                                        "overlap_grad_reduce": False})).zero3
    g, r = blocking.exposure(long_ops)
    assert np.allclose(g[0], ag) and np.allclose(r[1], rs)     # nothing overlaps: all exposed


def test_exposure_vanishes_in_the_engine_when_compute_is_long() -> None:
    opt = {"zero": 3, "overlap_param_gather": True, "overlap_grad_reduce": True}

    def summary(gather_s: float) -> dict:
        return run_training(dense_scenario(optimizer=opt), collectives=FixedCollectives(gather_s=gather_s)).summary

    short, long_ = summary(1e-6), summary(5e-3)
    assert short["step_param_gather_s"] == pytest.approx(0.0, abs=1e-15)
    assert short["step_dp_exposed_s"] == pytest.approx(0.0, abs=1e-15)
    assert long_["step_param_gather_s"] > 0 and long_["step_dp_exposed_s"] > 0
    assert long_["step_time_mean_s"] > short["step_time_mean_s"]
    blocking = run_training(dense_scenario(optimizer={"zero": 3, "overlap_param_gather": False}),
                            collectives=FixedCollectives(gather_s=1e-6)).summary
    assert blocking["step_param_gather_s"] > 0


@pytest.mark.parametrize("schedule", [{"kind": "1f1b"}, {"kind": "dualpipe"}])
def test_zero3_runs_and_adds_up(schedule: dict) -> None:
    res = run_training(moe_scenario(parallel={"pp": 4, "ep": 2}, schedule=schedule,
                                    optimizer={"zero": 3, "overlap_param_gather": True}))
    st = res.train_steps
    parts = st[[f"{k}_s" for k in BREAKDOWN]]
    assert (parts.to_numpy() >= -1e-9).all()
    assert np.allclose(parts.sum(axis=1), st["step_s"], rtol=1e-9)
    assert "ZeRO-3" in res.summary["parallelism"]
    z1 = build_training(moe_scenario(parallel={"pp": 4, "ep": 2}, schedule=schedule)).memory_table
    z3 = res.train_memory
    assert np.all(z3["weights"].to_numpy() < z1["weights"])     # dense parameters sharded over dp (= 2)


def test_config_accepts_zero3() -> None:
    assert OptimizerCfg(zero=3).zero == 3
    with pytest.raises(ValueError):
        OptimizerCfg(zero=4)  # type: ignore[arg-type]
