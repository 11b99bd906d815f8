"""Checkpoints through the memory / storage tiers: bytes per GPU and host from the memory model,
closed-form copy and drain times, async blocking, drain back-pressure, and failures that hit an
unfinished drain."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from train_helpers import dense_scenario, merge

from moesim.config.schema import Scenario
from moesim.engine.build import ZeroCollectives
from moesim.engine.training import run_training
from moesim.engine.training.checkpoint import checkpoint_plan
from moesim.engine.training.setup import build_training

PCIE = 64e9          # h100-sxm host link, per direction
NIC = 8 * 50e9       # h100-4node-rail: 8 x 400 Gb/s per host
BYTES_PER_PARAM = 2.0 + 4.0 + 2 * 4.0      # bf16 parameter, fp32 master, two fp32 Adam moments


def _setup(**training):
    return build_training(dense_scenario(**training), collectives=ZeroCollectives())


def _rail_setup(**training):
    tree = {"name": "t-rail", "seed": 0, "model": "olmoe-1b-7b",
            "hardware": {"gpu": "h100-sxm", "topology": "h100-4node-rail"},
            "training": merge({"parallel": {"pp": 2, "ep": 8},
                               "data": {"seq_len": 2048, "global_batch_seqs": 32}, "steps": 1}, training)}
    return build_training(Scenario.model_validate(tree), collectives=ZeroCollectives())


def test_bytes_are_every_parameter_and_its_state_once() -> None:
    setup = _setup()
    plan = checkpoint_plan(setup)
    assert plan.bytes_total == pytest.approx(setup.shape.total_params() * BYTES_PER_PARAM, rel=1e-12)
    # fully parallel save: the stage's unique bytes split evenly over its dp copies
    per_stage = setup.memory.weights / 2.0 * BYTES_PER_PARAM / setup.mesh.dp       # weights: bf16 bytes held
    assert plan.gpu_bytes == pytest.approx(np.repeat(per_stage, setup.mesh.stage_gpus), rel=1e-12)
    assert plan.host_bytes.sum() == pytest.approx(plan.bytes_total)


@pytest.mark.parametrize("zero", [0, 1])
def test_first_rank_writes_what_it_holds_without_parallel_save(zero: int) -> None:
    setup = _setup(optimizer={"zero": zero}, checkpoint={"parallel_save": False})
    plan, mem, mesh = checkpoint_plan(setup), setup.memory, setup.mesh
    for stage in range(mesh.pp):
        first = stage * mesh.stage_gpus
        assert plan.gpu_bytes[first] == pytest.approx(mem.weights[stage] + mem.optimizer[stage], rel=1e-12)
        others = plan.gpu_bytes[first + 1:first + mesh.stage_gpus]
        # ZeRO-0: the other copies write nothing; ZeRO-1: each writes its optimizer shard
        assert others == pytest.approx(np.full(mesh.stage_gpus - 1, 0.0 if zero == 0 else mem.optimizer[stage]))
    assert plan.bytes_total == pytest.approx(setup.shape.total_params() * BYTES_PER_PARAM, rel=1e-12)


def test_closed_form_times_remote_without_nics() -> None:
    setup = _setup(checkpoint={"storage_bytes_per_s": "2GB/s", "async_save": False})
    plan = checkpoint_plan(setup)
    assert plan.snapshot_s == pytest.approx(plan.gpu_bytes.max() / PCIE)
    assert plan.drain_s == pytest.approx(plan.bytes_total / 2e9)        # one host, no NICs: the store's cap
    assert plan.block_s == pytest.approx(plan.snapshot_s + plan.drain_s)
    assert plan.reload_s == pytest.approx(plan.snapshot_s + plan.drain_s)


def test_closed_form_times_local_nvme_and_remote_nics() -> None:
    nvme = checkpoint_plan(_rail_setup(checkpoint={"target": "local_nvme", "nvme_bytes_per_s": "10GB/s"}))
    assert len(nvme.host_bytes) == 4
    assert nvme.drain_s == pytest.approx(nvme.host_bytes.max() / 10e9)
    remote = checkpoint_plan(_rail_setup(checkpoint={"storage_bytes_per_s": "10TB/s"}))
    assert remote.drain_s == pytest.approx(max(remote.host_bytes.max() / (NIC * 0.8), remote.bytes_total / 1e13))
    assert remote.drain_s == pytest.approx(remote.host_bytes.max() / (NIC * 0.8))    # NIC-bound here
    slow = checkpoint_plan(_rail_setup(checkpoint={"storage_bytes_per_s": "10GB/s"}))
    assert slow.drain_s == pytest.approx(slow.bytes_total / 10e9)                       # store-bound


def test_gpus_under_one_pcie_switch_share_its_uplink() -> None:
    tree = dense_scenario().model_dump(mode="json")
    tree["hardware"]["topology"] = "hgx-h100-node"            # 2 GPUs per PCIe switch, 64 GB/s uplinks
    setup = build_training(Scenario.model_validate(tree), collectives=ZeroCollectives())
    plan = checkpoint_plan(setup)
    pair = plan.gpu_bytes.reshape(-1, 2).sum(axis=1).max()
    assert plan.snapshot_s == pytest.approx(pair / 64e9) and plan.snapshot_s > plan.gpu_bytes.max() / 64e9


def test_async_blocks_only_for_the_snapshot() -> None:
    kw = {"train_tokens": 65536 * 400, "checkpoint": {"interval_steps": 50, "storage_bytes_per_s": "5GB/s"}}
    sync = run_training(dense_scenario(**merge(kw, {"checkpoint": {"async_save": False}}))).summary
    asyn = run_training(dense_scenario(**kw)).summary
    assert asyn["checkpoint_block_s"] == pytest.approx(asyn["checkpoint_snapshot_s"])
    assert sync["checkpoint_block_s"] == pytest.approx(sync["checkpoint_snapshot_s"] + sync["checkpoint_drain_s"])
    assert sync["checkpoints"] == asyn["checkpoints"] == 7
    assert asyn["checkpoint_blocking_s"] == pytest.approx(7 * asyn["checkpoint_snapshot_s"])
    assert sync["checkpoint_blocking_s"] == pytest.approx(7 * sync["checkpoint_write_s"])
    assert asyn["checkpoint_blocking_s"] < sync["checkpoint_blocking_s"]
    assert asyn["time_to_train_s"] < sync["time_to_train_s"]


def test_a_drain_longer_than_the_interval_holds_the_next_snapshot() -> None:
    out = run_training(dense_scenario(train_tokens=65536 * 40,
                                      checkpoint={"interval_steps": 5, "storage_bytes_per_s": "0.5GB/s"})).summary
    gap = out["checkpoint_drain_s"] - 5 * out["step_time_mean_s"]
    assert gap > 0 and out["checkpoints"] == 7
    assert out["checkpoint_drain_wait_s"] == pytest.approx(6 * gap)
    assert out["checkpoint_blocking_s"] == pytest.approx(7 * out["checkpoint_snapshot_s"] + 6 * gap)


def test_failure_before_the_drain_ends_restores_the_previous_checkpoint() -> None:
    kw = {"train_tokens": 65536 * 100, "checkpoint": {"interval_steps": 10, "storage_bytes_per_s": "2GB/s"},
          "failures": {"restart_s": 30.0}}
    clean = run_training(dense_scenario(**kw)).summary
    step, snap, drain = clean["step_time_mean_s"], clean["checkpoint_snapshot_s"], clean["checkpoint_drain_s"]
    assert drain > 2 * step
    first_done = 10 * step + snap                     # the first snapshot ends, its drain starts
    during = first_done + drain / 2
    after = first_done + drain + step / 2
    res = run_training(dense_scenario(**merge(kw, {"failures": {"inject_at_s": (during,)}})))
    f = res.train_failures.iloc[0]
    assert f["restored_step"] == 0 and f["lost_s"] == pytest.approx(during)
    assert f["restart_s"] == pytest.approx(30.0 + clean["checkpoint_reload_s"])
    res = run_training(dense_scenario(**merge(kw, {"failures": {"inject_at_s": (after,)}})))
    f = res.train_failures.iloc[0]
    assert f["restored_step"] == 10 and f["lost_s"] == pytest.approx(after - first_done)
    assert res.summary["restart_total_s"] == pytest.approx(30.0 + clean["checkpoint_reload_s"])


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ValidationError, match="needs nvme_bytes_per_s"):
        dense_scenario(checkpoint={"target": "local_nvme"})
    with pytest.raises(ValidationError, match="only used with target=local_nvme"):
        dense_scenario(checkpoint={"nvme_bytes_per_s": "10GB/s"})
