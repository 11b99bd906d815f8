"""``run(scenario) -> RunResult``: the inference serving simulation. No file I/O."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import pandas as pd
import simpy

import moesim
from moesim.config.load import scenario_hash
from moesim.config.schema import Scenario
from moesim.core.errors import ConfigError
from moesim.core.rng import RngStreams
from moesim.engine.build import Deployment, build_collectives, build_deployment
from moesim.engine.moe_setup import build_moe_runtime, plan_placement
from moesim.engine.moe_summary import moe_outcome
from moesim.engine.disagg import KvHandoff
from moesim.engine.live_flows import LiveFlows
from moesim.engine.replan import Replanner
from moesim.engine.pass_time import PassCostModel
from moesim.engine.replica import Replica
from moesim.engine.sampler import PassSampler
from moesim.engine.traffic import LinkStats, SharedLinks, link_tables
from moesim.hardware.calibrated import CalibratedCost
from moesim.metrics.recorder import LevelLog, PassLog, RequestLog
from moesim.metrics.result import RunResult
from moesim.metrics.summary import batch_histogram, percentiles, request_kpis, request_table, timeseries_table
from moesim.policies.router import ROUTERS
from moesim.workload import build_requests, build_routing

__all__ = ["run"]

Progress = Callable[[float, float], None]
"""Called with (simulated seconds done, simulated seconds expected)."""


def _pass_models(scenario: Scenario, d: Deployment, streams: RngStreams) -> list[PassCostModel]:
    """One PassCostModel per replica. Replicas on identical network positions share one (and its
    caches), which is exact because their costs are then identical — unless placements are
    re-planned from each replica's own observations, or routing is non-stationary (every pass a
    fresh draw), when every replica keeps its own."""
    m = d.model
    routing = None
    if m.moe is not None:
        routing = build_routing(scenario.routing, n_layers=m.n_moe_layers, n_experts=m.moe.n_routed_experts,
                                top_k=m.moe.top_k, rng=streams.get("routing"))
    share = scenario.placement.replan_interval_s is None and (routing is None or routing.stationary)
    models: list[PassCostModel] = []
    seen: dict[bytes, PassCostModel] = {}
    topo = d.topology
    for gpus in d.replica_gpus:
        ix = np.ix_(gpus, gpus)
        key = topo.bottleneck_bytes_per_s[ix].tobytes() + topo.latency_s[ix].tobytes()
        if not share or key not in seen:
            moe = build_moe_runtime(scenario, d, gpus, routing) if routing is not None else None
            seen[key] = PassCostModel(shape=d.shape, deployment=scenario.deployment, cost=d.cost,
                                      collectives=d.collectives, gpus=gpus, moe=moe)
        models.append(seen[key])
    return models


def run(scenario: Scenario, *, progress: Progress | None = None) -> RunResult:
    """Simulate ``scenario`` and return its records, summary and provenance."""
    if scenario.training is not None:  # the training simulator (issue 6)
        from moesim.engine.training import run_training
        return run_training(scenario, progress=progress)
    wall0 = time.perf_counter()
    d = build_deployment(scenario)
    streams = RngStreams(scenario.seed)
    req = build_requests(scenario.workload, streams.get("arrivals"))
    env = simpy.Environment()
    log, queue = RequestLog(len(req)), LevelLog()
    pass_logs = [PassLog() for _ in d.replica_gpus]
    pcms = _pass_models(scenario, d, streams)
    dep, sched = scenario.deployment, scenario.scheduler
    kv_blocks = d.budget.kv_capacity_tokens // sched.kv_block_tokens
    net = getattr(d.collectives, "network", None)
    shared = (SharedLinks(net, d.replica_gpus)
              if net is not None and dep.replicas > 1 and scenario.hardware.network.contention else None)
    live = LiveFlows(env, net) if net is not None else None
    n_pre = dep.prefill_replicas          # replicas 0 .. n_pre - 1 only prefill (disaggregated serving)
    handoff = None
    if n_pre:
        handoff = KvHandoff(env, decode=[], replica_gpus=d.replica_gpus, dp_groups=dep.attention_dp,
                            kv_bytes_per_token=d.budget.kv_bytes_per_token, router=ROUTERS.build(scenario.router.kind),
                            collectives=d.collectives, live=live, log=log)
    replicas = [
        Replica(index=i, env=env, cfg=sched, pcm=pcms[i], handoff=handoff if i < n_pre else None,
                sampler=PassSampler(streams.get(f"routing/replica{i}"), scenario.routing.samples_per_shape),
                requests=req, log=log, passes=pass_logs[i], queue=queue, dp_groups=dep.attention_dp,
                kv_blocks_per_group=kv_blocks, max_context=d.model.max_context,
                fast_forward=scenario.engine.fast_forward, horizon_s=scenario.engine.horizon_s,
                replanner=_replanner(scenario, d, pcms[i], d.replica_gpus[i], live),
                timeseries_bin_s=scenario.engine.timeseries_bin_s, shared=shared)
        for i in range(dep.replicas)
    ]
    if d.faults:
        for r in replicas:
            r.fault_times = tuple(t for t, _ in d.faults)
        env.process(_apply_faults(env, scenario, d, pcms, replicas, live))
    if handoff is not None:
        handoff.decode.extend(replicas[n_pre:])
    router = ROUTERS.build(scenario.router.kind)
    env.process(_arrivals(env, req.arrival_s, replicas[:n_pre] if n_pre else replicas, router))
    _advance(env, scenario.engine.horizon_s, float(req.arrival_s[-1]) if len(req) else 0.0, progress)

    sim_time = scenario.engine.horizon_s if scenario.engine.horizon_s is not None else env.now
    requests = request_table(req.arrival_s, req.prompt_tokens, req.output_tokens, log,
                             ttft_slo_s=scenario.slo.ttft_s, tpot_slo_s=scenario.slo.tpot_s)
    summary = _summary(scenario, d, requests, pass_logs, pcms, replicas, sim_time)
    if handoff is not None:
        summary.update(percentiles("kv_transfer", requests["kv_transfer_s"].to_numpy(dtype=float)))
        summary.update({"kv_transfers": handoff.transfers, "kv_transfer_bytes": handoff.bytes_moved,
                        "prefill_replicas": n_pre})
    if isinstance(d.cost, CalibratedCost):
        summary.update(calibration_summary(d.cost, summary))
    busy = float(sum(p.column("duration_s").sum() for p in pass_logs))
    summary["comm_fraction"] = (float(sum(p.column("comm_s").sum() for p in pass_logs)) / busy) if busy else None
    links = links_ts = None
    stats = [r.links for r in replicas if r.links is not None]
    if live is not None and live.transfers and stats:
        flows = LinkStats(net.tier, bin_s=scenario.engine.timeseries_bin_s)
        for rec in live.transfers:
            if rec.link_bytes is not None:
                flows.record(rec.link_bytes, np.array([rec.start_s]))
        stats.append(flows)
        summary["flow_transfers"] = len(live.transfers)
        summary["flow_rate_solves"] = live.solves
    if stats:
        links, links_ts, link_summary = link_tables(stats, d.collectives.network, sim_time_s=sim_time)
        summary.update(link_summary)
    moe = moe_outcome(replicas, busy)
    summary["expert_imbalance_mean"] = None
    summary.update(moe.summary)
    provenance = {
        "moesim_version": moesim.__version__, "seed": scenario.seed, "scenario_hash": scenario_hash(scenario),
        "calibration_hashes": _calibration_hashes(scenario, d), "cost_model": d.cost.name, "network_model": type(d.collectives).__name__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - wall0, 3),
    }
    config = scenario.model_dump(mode="json")
    config["resolved"] = {"model": d.model.model_dump(mode="json"), "gpu": d.gpu.model_dump(mode="json"),
                          "topology": d.topology.name}
    return RunResult(
        config=config, provenance=provenance, summary=summary, requests=requests,
        timeseries=timeseries_table(pass_logs, queue, kv_capacity_blocks=kv_blocks * dep.attention_dp,
                                    bin_s=scenario.engine.timeseries_bin_s, end_s=max(sim_time, 1e-9)),
        batch_hist=batch_histogram(pass_logs), expert_load=moe.expert_load, rank_load=moe.rank_load,
        imbalance=moe.imbalance, placements=moe.placements, migrations=moe.migrations,
        rank_timeseries=moe.rank_timeseries, oom=moe.oom,
        links=links if links is not None else pd.DataFrame(),
        link_timeseries=links_ts if links_ts is not None else pd.DataFrame())


def _calibration_hashes(scenario: Scenario, d: Deployment) -> dict[str, str]:
    if isinstance(d.cost, CalibratedCost) and scenario.hardware.calibration:
        return {scenario.hardware.calibration: d.cost.profile_hash}
    return {}


BAND_KEYS = ("ttft_p50_s", "tpot_p50_s", "e2e_p50_s", "output_tokens_per_s")
"""Headline KPIs that get a ± band from the calibration's measured spread."""


def calibration_summary(cost: CalibratedCost, summary: dict[str, object]) -> dict[str, object]:
    """Out-of-domain query counts per op, and a first-order ± band on headline KPIs.

    The band scales each KPI by the time-weighted relative spread of the operator measurements
    (errors taken as fully correlated); queueing can amplify pass-time changes, so treat it as
    the measurement's contribution, not a confidence interval of the whole run.
    """
    ood, queries = cost.out_of_domain, cost.queries
    spread = cost.effective_spread()
    out: dict[str, object] = {
        "calibration_queries": int(sum(queries.values())),
        "calibration_out_of_domain": int(sum(ood.values())),
        "calibration_spread_rel": float(spread),
    }
    out.update({f"calibration_out_of_domain_{op}": int(n) for op, n in ood.items()})
    for k in BAND_KEYS:
        v = summary.get(k)
        if isinstance(v, (int, float)):
            out[f"{k}_pm"] = float(abs(v) * spread)
    return out


def _replanner(scenario: Scenario, d: Deployment, pcm: PassCostModel, gpus: tuple[int, ...],
               live: LiveFlows | None) -> Replanner | None:
    pc = scenario.placement
    if pc.replan_interval_steps is not None:
        raise ConfigError("placement.replan_interval_steps is for training runs; serving re-plans by time: "
                          "set placement.replan_interval_s", field="placement.replan_interval_steps")
    if pc.replan_interval_s is None or pcm.moe is None:
        return None
    return Replanner(interval_s=pc.replan_interval_s, delay_s=pc.replan_delay_s, ema_decay=pc.ema_decay,
                     planner=lambda load: plan_placement(scenario, d, gpus, load), moe=pcm.moe,
                     collectives=d.collectives, live=live)


def _apply_faults(env: simpy.Environment, scenario: Scenario, d: Deployment, pcms: list[PassCostModel],
                  replicas: list[Replica], live: LiveFlows | None):  # noqa: ANN202 - SimPy process
    """Process: at each fault time, cost communication on the faulted topology from then on."""
    base = getattr(d.collectives, "network", None)
    index = {e: i for i, e in enumerate(base.router.edges)} if base is not None else {}
    for t, topology in d.faults:
        if t > env.now:
            yield env.timeout(t - env.now)
        coll = build_collectives(scenario, topology)
        net = getattr(coll, "network", None)
        link_map = np.array([index[e] for e in net.router.edges]) if net is not None and index else None
        for pcm in {id(p): p for p in pcms}.values():
            pcm.use_collectives(coll, link_map)
        if live is not None and net is not None:
            live.reroute(net, link_map)
        if net is not None and len(replicas) > 1 and scenario.hardware.network.contention:
            shared = SharedLinks(net, d.replica_gpus)
            for r in replicas:
                r.shared = shared if shared.contended[r.index] else None


def _arrivals(env: simpy.Environment, arrival_s: np.ndarray, replicas: list[Replica], router: object):  # noqa: ANN202
    """Process: release each request at its arrival time to the replica the router picks."""
    for rid, t in enumerate(arrival_s.tolist()):
        if t > env.now:
            yield env.timeout(t - env.now)
        i = router.choose([r.outstanding for r in replicas])  # type: ignore[attr-defined]
        replicas[i].submit(rid)


def _advance(env: simpy.Environment, horizon: float | None, expected: float, progress: Progress | None) -> None:
    """Run to the horizon (or until nothing is left), reporting progress in sim-time steps."""
    if progress is None:
        env.run(until=horizon)
        return
    target = horizon if horizon is not None else expected
    for k in range(1, 101):
        t = target * k / 100
        if t > env.now and env.peek() < float("inf"):
            env.run(until=t)
        progress(env.now, target)
    if horizon is None:
        env.run()
    progress(env.now, max(env.now, target))


def _summary(scenario: Scenario, d: Deployment, requests: pd.DataFrame, pass_logs: list[PassLog],
             pcms: list[PassCostModel], replicas: list[Replica], sim_time: float) -> dict[str, object]:
    gpus = scenario.deployment.replicas * scenario.deployment.gpus_per_replica
    s: dict[str, object] = {
        "scenario": scenario.name, "model": d.model.name, "gpu": d.gpu.name, "topology": d.topology.name,
        "gpus": gpus, "replicas": scenario.deployment.replicas, "sim_time_s": float(sim_time),
    }
    s.update(request_kpis(requests, sim_time_s=sim_time, gpus=gpus))
    busy = [float(p.column("duration_s").sum()) / max(sim_time, 1e-12) for p in pass_logs]
    batch = np.concatenate([p.column("batch_size") for p in pass_logs])
    kv = np.concatenate([p.column("kv_blocks") for p in pass_logs])
    cap = d.budget.kv_capacity_tokens // scenario.scheduler.kv_block_tokens * scenario.deployment.attention_dp
    s.update({
        "forward_passes": int(sum(p.passes for p in pass_logs)),
        "des_events": int(sum(r.events for r in replicas) + len(requests)),
        "busy_fraction_mean": float(np.mean(busy)),
        "batch_size_mean": float(batch.mean()) if batch.size else None,
        "kv_occupancy_mean": float(kv.mean() / cap) if kv.size else None,
        "kv_occupancy_max": float(kv.max() / cap) if kv.size else None,
        "kv_capacity_tokens": int(d.budget.kv_capacity_tokens),
        "weight_bytes_per_gpu": float(d.budget.weight_bytes),
    })
    return s


