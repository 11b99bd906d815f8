"""``run_training(scenario) -> RunResult``: simulate training steps, then the whole run. No file I/O.

1. ``build_training``: mesh, layout, schedule, costs, memory check (ConfigError when it does not fit).
2. ``training.steps`` steps, each a SimPy run of the simulated pipeline (``steps.StepLoop``) with
   its own routing, data and jitter draws; the gate policies carry state from step to step.
3. The whole run (``training.train_tokens``) through checkpoints and failures with the mean
   simulated step time (``faults.simulate_run``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

import moesim
from moesim.config.load import scenario_hash
from moesim.config.schema import Scenario
from moesim.engine.training.checkpoint import checkpoint_plan
from moesim.engine.training.faults import RunOutcome, simulate_run
from moesim.engine.training.mtp import mtp_flops_params
from moesim.engine.training.setup import TrainingSetup, build_training
from moesim.engine.training.steps import BREAKDOWN, StepLoop, StepOutcome
from moesim.hardware.calibrated import CalibratedCost
from moesim.metrics.result import RunResult
from moesim.network.collectives import CollectiveCost
from moesim.workload.training_data import training_batch

__all__ = ["run_training"]

Progress = Callable[[float, float], None]
_HOUR = 3600.0


def run_training(scenario: Scenario, *, progress: Progress | None = None,
                 collectives: CollectiveCost | None = None) -> RunResult:
    """Simulate the training scenario (``scenario.training`` set) and return its records and summary.

    ``collectives``: a network model to use instead of the topology's (see ``build_training``).
    """
    wall0 = time.perf_counter()
    setup = build_training(scenario, collectives=collectives)
    cfg = setup.cfg
    loop = StepLoop(setup)
    outcomes: list[StepOutcome] = []
    rows: list[dict[str, Any]] = []
    expert_load = rank_load = None
    clock = 0.0
    for k in range(cfg.steps):
        out = loop.step(k, record_timeline=cfg.detail_step == k)
        peak = loop.runtime_memory(out.max_rank_slots) if out.max_rank_slots is not None else \
            float(setup.memory_table["total"].max())
        rows.append({"step": k, "start_s": clock, "step_s": out.step_s, "makespan_s": out.makespan_s,
                     **{f"{name}_s": v for name, v in out.breakdown.items()}, **out.stats,
                     "memory_peak_bytes": peak, "oom": peak > setup.memory.capacity, "des_events": out.events})
        clock += out.step_s
        if out.expert_load is not None:
            expert_load = out.expert_load.astype(np.float64) if expert_load is None else expert_load + out.expert_load
            rank_load = out.rank_load.astype(np.float64) if rank_load is None else rank_load + out.rank_load
        outcomes.append(out)
        if progress is not None:
            progress(float(k + 1), float(cfg.steps))
    steps = pd.DataFrame(rows)
    run = _whole_run(setup, steps)
    summary = _summary(setup, steps, run)
    timeline = next((pd.DataFrame(o.timeline) for o in outcomes if o.timeline is not None), pd.DataFrame())
    provenance = {
        "moesim_version": moesim.__version__, "seed": scenario.seed, "scenario_hash": scenario_hash(scenario),
        "calibration_hashes": ({scenario.hardware.calibration: setup.cost.profile_hash}
                               if isinstance(setup.cost, CalibratedCost) and scenario.hardware.calibration else {}),
        "cost_model": setup.cost.name, "network_model": type(setup.coll).__name__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - wall0, 3),
    }
    config = scenario.model_dump(mode="json")
    config["resolved"] = {"model": setup.model.model_dump(mode="json"), "gpu": setup.gpu.model_dump(mode="json"),
                          "topology": setup.topology.name}
    imb = steps["rank_imbalance"].to_numpy() if "rank_imbalance" in steps else np.ones(len(steps))
    imbalance = pd.DataFrame()
    if setup.moe is not None:
        imbalance = pd.DataFrame({"replica": [0], "imbalance_mean": [float(imb.mean())],
                                  "imbalance_p99": [float(np.percentile(imb, 99))],
                                  "imbalance_routed_mean": [float(imb.mean())]})
    mem = pd.DataFrame({k: v for k, v in setup.memory_table.items()})
    return RunResult(
        config=config, provenance=provenance, summary=summary, requests=pd.DataFrame(), timeseries=pd.DataFrame(),
        batch_hist=pd.DataFrame(), expert_load=[expert_load] if expert_load is not None else [],
        rank_load=[rank_load] if rank_load is not None else [], imbalance=imbalance,
        placements=[np.asarray(setup.moe.placement.phy2log)] if setup.moe is not None else [],
        train_steps=steps, train_timeline=timeline, train_memory=mem, train_failures=run.failures,
        train_progress=run.progress)


def _whole_run(setup: TrainingSetup, steps: pd.DataFrame) -> RunOutcome:
    """Checkpoints (``checkpoint.py``: written through host memory to storage, reloaded on a
    restart) and failures over the run (``train_tokens``, else the simulated steps)."""
    cfg, mesh = setup.cfg, setup.mesh
    tokens_per_step = cfg.data.global_batch_seqs * cfg.data.seq_len
    n_steps = math.ceil(cfg.train_tokens / tokens_per_step) if cfg.train_tokens else cfg.steps
    ck, fl = cfg.checkpoint, cfg.failures
    plan = checkpoint_plan(setup)
    nodes = mesh.gpus / mesh.gpus_per_node
    rate = (mesh.gpus / (fl.gpu_mtbf_hours * _HOUR) if fl.gpu_mtbf_hours else 0.0) \
        + (nodes / (fl.node_mtbf_hours * _HOUR) if fl.node_mtbf_hours else 0.0)
    out = simulate_run(steps=n_steps, step_s=float(steps["step_s"].mean()), interval=ck.interval_steps,
                       block_s=plan.block_s, commit_s=plan.commit_s, restart_s=fl.restart_s + plan.reload_s,
                       rate_per_s=rate, inject_at_s=fl.inject_at_s, rng=setup.streams.get("failures"),
                       tokens_per_step=tokens_per_step)
    out.summary.update(plan.summary())
    return out


def _summary(setup: TrainingSetup, steps: pd.DataFrame, run: RunOutcome) -> dict[str, Any]:
    cfg, mesh, model = setup.cfg, setup.mesh, setup.model
    step_s = steps["step_s"].to_numpy()
    mean = float(step_s.mean())
    tokens = cfg.data.global_batch_seqs * cfg.data.seq_len
    par = cfg.parallel
    s: dict[str, Any] = {
        "scenario": setup.scenario.name, "mode": "training", "model": model.name, "gpu": setup.gpu.name,
        "topology": setup.topology.name, "gpus": mesh.gpus, "replicas": mesh.dp,
        "parallelism": (f"DP{mesh.dp} x TP{mesh.tp} x PP{mesh.pp} x EP{mesh.ep} x CP{mesh.cp}"
                        f" (expert TP{par.expert_tp}, expert DP{mesh.edp}, ZeRO-{cfg.optimizer.zero})"),
        "schedule": cfg.schedule.kind + (f" x{cfg.schedule.virtual_stages}" if cfg.schedule.virtual_stages > 1 else ""),
        "micro_batches": mesh.micro_batches, "steps": int(len(steps)), "detail_step": cfg.detail_step,
        "sim_time_s": float(step_s.sum()),
        "step_time_mean_s": mean, "step_time_p50_s": float(np.percentile(step_s, 50)),
        "step_time_p99_s": float(np.percentile(step_s, 99)),
        "tokens_per_step": tokens, "tokens_per_s": tokens / mean, "tokens_per_s_per_gpu": tokens / mean / mesh.gpus,
    }
    flops = model_flops_per_step(setup)
    peak = setup.gpu.flops_for(cfg.optimizer.compute_dtype)
    s.update(model_flops_per_step=flops, mfu=flops / (mean * mesh.gpus * peak))
    for name in BREAKDOWN:
        s[f"step_{name}_s"] = float(steps[f"{name}_s"].mean())
    s["bubble_fraction"] = s["step_bubble_s"] / mean if mean > 0 else 0.0
    s["step_ep_comm_hidden_s"] = float(steps["ep_comm_hidden_s"].mean())
    z3 = setup.zero3
    s["dp_comm_bytes_per_step"] = float(np.max(z3.gather_bytes + z3.reduce_bytes if z3 is not None
                                               else setup.sync.bytes_per_step))
    s["memory_peak_bytes"] = float(setup.memory_table["total"].max())
    s["memory_peak_runtime_bytes"] = float(steps["memory_peak_bytes"].max())
    s["memory_capacity_bytes"] = float(setup.memory.capacity)
    s["oom_steps"] = int(steps["oom"].sum())
    if setup.moe is not None:
        s.update(gate=cfg.gate.kind, expert_imbalance_mean=float(steps["rank_imbalance"].mean()),
                 maxvio_global_first=float(steps["maxvio_global"].iloc[0]),
                 maxvio_global_last=float(steps["maxvio_global"].iloc[-1]),
                 maxvio_micro_mean=float(steps["maxvio_micro"].mean()),
                 dropped_fraction=float(steps["dropped_fraction"].mean()),
                 dispatch=cfg.dispatch.kind + (f" (max {cfg.dispatch.max_nodes} nodes)"
                                               if cfg.dispatch.max_nodes else ""),
                 ep_internode_bytes_per_token=float(np.mean(setup.moe.internode_bytes)))
    if setup.replanner is not None:
        mig = setup.replanner.migrations
        s.update(replans=len(mig), expert_weight_bytes_moved=float(sum(m.bytes for m in mig)),
                 migration_pause_s=float(sum(m.seconds for m in mig)), step_migration_s=float(steps["migration_s"].mean()))
    r = run.summary
    ideal_step = float((steps["step_s"] - steps["straggler_wait_s"]).mean())
    n_steps = r["useful_work_s"] / mean if mean > 0 else 0.0
    s.update(train_tokens=float(cfg.train_tokens or tokens * len(steps)), train_steps=int(round(n_steps)),
             time_to_train_s=r["time_to_train_s"], time_to_train_days=r["time_to_train_s"] / 86400.0,
             time_to_train_ideal_s=n_steps * ideal_step, gpu_hours=r["time_to_train_s"] * mesh.gpus / _HOUR,
             goodput=r["goodput"], failures=int(r["failures"]), lost_work_s=r["lost_work_s"],
             restart_total_s=r["restart_total_s"], checkpoint_blocking_s=r["checkpoint_blocking_s"],
             checkpoints=int(r["checkpoints"]),
             straggler_slowdown=mean / ideal_step if ideal_step > 0 else 1.0,
             des_events=int(steps["des_events"].sum()))
    s.update({k: v for k, v in r.items() if k.startswith("checkpoint_") and k not in s})   # checkpoint.py
    return s


def model_flops_per_step(setup: TrainingSetup) -> float:
    """Model FLOPs of one step: 6 x active non-embedding parameters x tokens, plus 3 x the forward
    attention-core FLOPs of the step's causal pairs (recomputation not counted); MTP modules count
    their blocks (layers of ``setup.model``), projections and head passes (``mtp.py``)."""
    cfg, sh = setup.cfg, setup.shape
    m = sh.model
    tokens = cfg.data.global_batch_seqs * cfg.data.seq_len
    active = sh.active_params() - m.vocab_size * m.hidden_size + mtp_flops_params(m, cfg.mtp_depth)
    if cfg.data.documents is None:
        pairs = cfg.data.global_batch_seqs * cfg.data.seq_len * (cfg.data.seq_len + 1) / 2
    else:  # mean causal pairs per token of a fresh batch (fixed seed), scaled to the step
        b = training_batch(cfg.data, ranks=1, micro_batches=max(8, setup.mesh.micro_batches),
                           rng=np.random.default_rng(0))
        pairs = float(b.pairs.sum() / b.tokens.sum()) * tokens
    return 6.0 * active * tokens + 3.0 * sh.attn_flops_per_pair(decode=False) * pairs * m.n_layers
