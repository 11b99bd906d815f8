"""A seeded factory for realistic small ``RunResult`` objects, so report tests need no engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from moesim.metrics.result import RunResult

__all__ = ["make_result"]

TTFT_SLO_S = 0.5
TPOT_SLO_S = 0.05


def _requests(rng: np.random.Generator, *, n: int, replicas: int,
              sim_time_s: float) -> pd.DataFrame:
    """One row per request, about 5 % unfinished at the end of the run."""
    arrival = np.sort(rng.uniform(0.0, 0.85 * sim_time_s, n))
    prompt = np.clip(rng.lognormal(np.log(600), 0.7, n), 16, 8192).astype(np.int64)
    output = np.clip(rng.lognormal(np.log(150), 0.6, n), 1, 2048).astype(np.int64)
    ttft = rng.lognormal(np.log(0.12), 0.6, n)
    tpot = rng.lognormal(np.log(0.025), 0.3, n)
    finished = rng.random(n) > 0.05
    started = finished | (rng.random(n) > 0.5)
    generated = np.where(finished, output, np.where(started, output // 2, 0))
    first_token = np.where(started, arrival + ttft, np.nan)
    e2e = ttft + tpot * np.maximum(output - 1, 0)
    finish = np.where(finished, arrival + e2e, np.nan)
    tpot = np.where(finished & (output > 1), tpot, np.nan)
    return pd.DataFrame({
        "request_id": np.arange(n, dtype=np.int64),
        "replica": np.arange(n, dtype=np.int64) % replicas,
        "arrival_s": arrival,
        "first_token_s": first_token,
        "finish_s": finish,
        "prompt_tokens": prompt,
        "output_tokens": output,
        "generated_tokens": generated,
        "preemptions": rng.poisson(0.05, n).astype(np.int64),
        "ttft_s": np.where(started, ttft, np.nan),
        "tpot_s": tpot,
        "e2e_s": np.where(finished, e2e, np.nan),
        "finished": finished,
        "slo_met": finished & (ttft <= TTFT_SLO_S) & ~(tpot > TPOT_SLO_S),
    })


def _timeseries(rng: np.random.Generator, *, replicas: int, sim_time_s: float,
                bin_s: float) -> pd.DataFrame:
    """One row per (time bin, replica) with a load wave, as the engine's binned levels."""
    t = np.arange(0.0, sim_time_s, bin_s)
    frames = []
    for r in range(replicas):
        wave = 0.55 + 0.3 * np.sin(2 * np.pi * t / sim_time_s + r)
        busy = np.clip(wave + rng.normal(0, 0.05, t.size), 0.0, 1.0)
        passes = np.round(busy * bin_s / 0.03).astype(np.int64)
        batch = np.clip(busy * 48 + rng.normal(0, 3, t.size), 1, None)
        frames.append(pd.DataFrame({
            "t_s": t,
            "replica": np.full(t.size, r, dtype=np.int64),
            "busy_frac": busy,
            "passes": passes,
            "batch_size_mean": batch,
            "prefill_tokens": rng.poisson(2000 * busy).astype(np.int64),
            "decode_tokens": np.round(passes * batch).astype(np.int64),
            "kv_occupancy": np.clip(0.1 + 0.8 * busy + rng.normal(0, 0.03, t.size), 0.0, 1.0),
            "queue_depth": rng.poisson(4 * busy**3).astype(np.int64),
        }))
    return pd.concat(frames, ignore_index=True).sort_values(["t_s", "replica"],
                                                            ignore_index=True)


def _batch_hist(rng: np.random.Generator, *, replicas: int) -> pd.DataFrame:
    """Passes per batch size per replica (a bump around 30 plus a tail of small batches)."""
    rows = []
    for r in range(replicas):
        sizes = np.concatenate([rng.normal(30, 8, 1500), rng.integers(1, 8, 300)])
        counts = pd.Series(np.clip(np.round(sizes), 1, 64).astype(np.int64)).value_counts()
        rows += [(r, int(b), int(p)) for b, p in sorted(counts.items())]
    return pd.DataFrame(rows, columns=["replica", "batch_size", "passes"]).astype(np.int64)


def _moe_loads(rng: np.random.Generator, *, replicas: int, layers: int, experts: int,
               ranks: int) -> tuple[list[np.ndarray], list[np.ndarray], pd.DataFrame]:
    """Skewed expert loads, their contiguous-rank sums, and a per-replica imbalance table
    (routed = of the contiguous layout; after balancing a bit lower, as a balancer would get)."""
    expert_load, rank_load, rows = [], [], []
    for r in range(replicas):
        pairs = int(rng.integers(200_000, 400_000))
        load = np.stack([rng.multinomial(pairs, rng.dirichlet(np.full(experts, 2.0)))
                         for _ in range(layers)]).astype(np.int64)
        per_rank = load.reshape(layers, ranks, experts // ranks).sum(axis=2)
        ratio = per_rank.max(axis=1) / per_rank.mean(axis=1)
        expert_load.append(load)
        rank_load.append(per_rank)
        routed = float(ratio.mean())
        rows.append((r, 1.0 + 0.4 * (routed - 1.0), float(ratio.max()) * 1.3, routed))
    table = pd.DataFrame(rows, columns=["replica", "imbalance_mean", "imbalance_p99",
                                        "imbalance_routed_mean"])
    return expert_load, rank_load, table


def _placements(expert_load: list[np.ndarray], *, ranks: int,
                redundant: int) -> list[np.ndarray]:
    """EPLB-like ``[layers, experts + redundant]`` slot maps per replica: copies of the hottest
    ``redundant - 1`` experts of each layer plus one empty slot (-1), spread over the ranks."""
    out = []
    for load in expert_load:
        layers, experts = load.shape
        slots = experts + redundant
        assert slots % ranks == 0, "experts + redundant must divide over the ranks"
        rows = []
        for layer in range(layers):
            hot = np.argsort(-load[layer], kind="stable")[:max(redundant - 1, 0)]
            logical = np.concatenate((np.arange(experts), hot, [-1] * min(redundant, 1)))
            # deal the load-sorted items round-robin over ranks, so copies land on other ranks
            order = np.argsort(-np.where(logical >= 0, load[layer][logical], -1), kind="stable")
            grid = logical[order].reshape(slots // ranks, ranks).T
            rows.append(grid.reshape(-1))
        out.append(np.stack(rows).astype(np.int64))
    return out


def _rank_timeseries(rng: np.random.Generator, *, replicas: int, ranks: int, sim_time_s: float,
                     bin_s: float, replan_s: float) -> pd.DataFrame:
    """(token, slot) pairs per (bin, replica, rank): skewed until the first re-plan, then even."""
    t = np.arange(0.0, sim_time_s, bin_s)
    frames = []
    for r in range(replicas):
        weights = np.where((t < replan_s)[:, None], np.linspace(1.5, 0.6, ranks)[None, :], 1.0)
        tokens = rng.poisson(4000 * weights * (1.2 + np.sin(t / 7 + r))[:, None])
        frames.append(pd.DataFrame({"t_s": np.repeat(t, ranks), "replica": r,
                                    "rank": np.tile(np.arange(ranks), t.size),
                                    "tokens": tokens.ravel().astype(np.int64)}))
    return pd.concat(frames, ignore_index=True)


def _migrations(rng: np.random.Generator, *, replicas: int, sim_time_s: float,
                replan_s: float) -> pd.DataFrame:
    """One placement change per re-plan per replica (replicas a few ms apart)."""
    times = np.arange(replan_s, sim_time_s, replan_s)
    rows = []
    for r in range(replicas):
        for t in times:
            nbytes = float(rng.uniform(1e9, 6e9))
            rows.append((r, float(t + rng.uniform(0, 0.005)), nbytes, nbytes / 400e9))
    return pd.DataFrame(rows, columns=["replica", "time_s", "bytes", "pause_s"])


def _oom(rng: np.random.Generator, *, replicas: int, oom_passes: int,
         sim_time_s: float) -> pd.DataFrame:
    """Per replica OOM passes (all on replica 0), first OOM time (None without) and peak bytes."""
    rows = []
    for r in range(replicas):
        n = oom_passes if r == 0 else 0
        first = float(rng.uniform(0.1, 0.5) * sim_time_s) if n else None
        rows.append((r, n, first, float(rng.uniform(2e9, 9e9))))
    return pd.DataFrame(rows, columns=["replica", "oom_passes", "first_oom_s",
                                       "peak_moe_activation_bytes"])


def _moe_summary(imbalance: pd.DataFrame, migrations: pd.DataFrame, oom: pd.DataFrame,
                 *, dropped: int) -> dict[str, Any]:
    """The MoE summary keys the engine adds (``moe_summary.moe_outcome``)."""
    return {
        "expert_imbalance_mean": float(imbalance["imbalance_mean"].mean()),
        "expert_imbalance_placed_mean": float(imbalance["imbalance_routed_mean"].mean()),
        "tokens_dropped": dropped,
        "expert_weight_bytes_moved": float(migrations["bytes"].sum()) if len(migrations) else 0.0,
        "moe_comm_fraction": 0.183,
        "replans": len(migrations),
        "migration_pause_s": float(migrations["pause_s"].sum()) if len(migrations) else 0.0,
        "oom_passes": int(oom["oom_passes"].sum()),
        "peak_moe_activation_bytes": float(oom["peak_moe_activation_bytes"].max()),
    }


def _calibration_summary(summary: dict[str, Any], spread: float = 0.04) -> dict[str, Any]:
    """Keys a run with ``hardware.calibration`` adds: query counts and ± bands."""
    out: dict[str, Any] = {
        "calibration_queries": 48_213, "calibration_out_of_domain": 17,
        "calibration_out_of_domain_gemm": 12, "calibration_out_of_domain_attention": 5,
        "calibration_spread_rel": spread,
    }
    for key in ("ttft_p50_s", "tpot_p50_s", "e2e_p50_s", "output_tokens_per_s"):
        out[f"{key}_pm"] = abs(float(summary[key])) * spread
    return out


def _summary(req: pd.DataFrame, ts: pd.DataFrame, *, replicas: int, gpus_per_replica: int,
             sim_time_s: float, moe: bool) -> dict[str, Any]:
    """The flat KPI dict the engine produces, computed from the fake tables."""
    gpus = replicas * gpus_per_replica
    s: dict[str, Any] = {
        "scenario": "fake-chat-serving", "model": "tiny-moe" if moe else "tiny-dense",
        "gpu": "H100-SXM", "gpus": gpus, "replicas": replicas, "sim_time_s": sim_time_s,
        "requests_arrived": len(req), "requests_finished": int(req["finished"].sum()),
        "requests_unfinished": int((~req["finished"]).sum()),
        "preemptions": int(req["preemptions"].sum()),
    }
    for metric in ("ttft", "tpot", "e2e"):
        values = req[f"{metric}_s"].dropna().to_numpy()
        s[f"{metric}_mean_s"] = float(values.mean())
        for p in (50, 90, 99):
            s[f"{metric}_p{p}_s"] = float(np.percentile(values, p))
    out_rate = float(ts["decode_tokens"].sum()) / sim_time_s
    s |= {
        "input_tokens_per_s": float(ts["prefill_tokens"].sum()) / sim_time_s,
        "output_tokens_per_s": out_rate, "output_tokens_per_s_per_gpu": out_rate / gpus,
        "goodput_requests_per_s": float(req["slo_met"].sum()) / sim_time_s,
        "slo_attainment": float(req["slo_met"].mean()),
        "forward_passes": int(ts["passes"].sum()), "des_events": int(ts["passes"].sum()) * 3,
        "busy_fraction_mean": float(ts["busy_frac"].mean()),
        "batch_size_mean": float(ts["batch_size_mean"].mean()),
        "kv_occupancy_mean": float(ts["kv_occupancy"].mean()),
        "kv_occupancy_max": float(ts["kv_occupancy"].max()),
        "kv_capacity_tokens": 1_234_567,
    }
    return s


def make_result(*, seed: int = 0, replicas: int = 2, n_requests: int = 300, moe: bool = True,
                sim_time_s: float = 60.0, bin_s: float = 1.0, moe_layers: int = 6,
                experts: int = 32, ep_ranks: int = 8, redundant_experts: int = 8,
                replan_s: float | None = 15.0, oom_passes: int = 0, tokens_dropped: int = 0,
                calibrated: bool = False) -> RunResult:
    """Build a seeded, internally consistent RunResult; ``moe=False`` gives a dense model.

    MoE runs get an EPLB-like placement with ``redundant_experts`` extra slots per layer (one of
    them left empty), re-planned every ``replan_s`` seconds (``None``: static, no migrations),
    ``oom_passes`` passes over HBM on replica 0 and ``tokens_dropped`` dropped tokens.
    ``calibrated`` adds the keys of a run with a calibration profile (± bands included).
    """
    rng = np.random.default_rng(seed)
    req = _requests(rng, n=n_requests, replicas=replicas, sim_time_s=sim_time_s)
    ts = _timeseries(rng, replicas=replicas, sim_time_s=sim_time_s, bin_s=bin_s)
    summary = _summary(req, ts, replicas=replicas, gpus_per_replica=ep_ranks,
                       sim_time_s=sim_time_s, moe=moe)
    expert_load: list[np.ndarray] = []
    rank_load: list[np.ndarray] = []
    imbalance = pd.DataFrame()
    placements: list[np.ndarray] = []
    migrations = pd.DataFrame()
    rank_ts = pd.DataFrame()
    oom = pd.DataFrame()
    if moe:
        expert_load, rank_load, imbalance = _moe_loads(
            rng, replicas=replicas, layers=moe_layers, experts=experts, ranks=ep_ranks)
        placements = _placements(expert_load, ranks=ep_ranks, redundant=redundant_experts)
        rank_ts = _rank_timeseries(rng, replicas=replicas, ranks=ep_ranks, sim_time_s=sim_time_s,
                                   bin_s=bin_s, replan_s=replan_s or sim_time_s)
        migrations = (_migrations(rng, replicas=replicas, sim_time_s=sim_time_s, replan_s=replan_s)
                      if replan_s else pd.DataFrame(columns=["replica", "time_s", "bytes",
                                                             "pause_s"]))
        oom = _oom(rng, replicas=replicas, oom_passes=oom_passes, sim_time_s=sim_time_s)
        summary |= _moe_summary(imbalance, migrations, oom, dropped=tokens_dropped)
    if calibrated:
        summary |= _calibration_summary(summary)
    config = {
        "name": summary["scenario"], "seed": seed,
        "model": {"preset": summary["model"], "moe_layers": moe_layers if moe else 0,
                  "experts": experts if moe else 0, "top_k": 2 if moe else 0},
        "cluster": {"gpu": "H100-SXM", "replicas": replicas, "ep": ep_ranks},
        "workload": {"kind": "poisson", "rate_per_s": n_requests / sim_time_s},
        "slo": {"ttft_s": TTFT_SLO_S, "tpot_s": TPOT_SLO_S},
    }
    provenance = {
        "moesim_version": "0.1.0", "seed": seed, "scenario_hash": f"{seed:08x}deadbeef",
        "calibration_hashes": {"h100-sxm/vllm-0.6": "9f2c4e1a"},
        "created_at": "2025-01-01T00:00:00+00:00", "wall_s": 1.75,
    }
    return RunResult(config=config, provenance=provenance, summary=summary, requests=req,
                     timeseries=ts, batch_hist=_batch_hist(rng, replicas=replicas),
                     expert_load=expert_load, rank_load=rank_load, imbalance=imbalance,
                     placements=placements, migrations=migrations, rank_timeseries=rank_ts,
                     oom=oom)
