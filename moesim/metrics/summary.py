"""Records → tidy tables and headline KPIs (documented in docs/metrics.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from moesim.metrics.recorder import LevelLog, PassLog, RequestLog

__all__ = ["batch_histogram", "request_table", "request_kpis", "timeseries_table", "percentiles"]


def percentiles(prefix: str, values: np.ndarray) -> dict[str, float | None]:
    """``{prefix}_mean_s, _p50_s, _p90_s, _p99_s`` of the finite values (None when empty)."""
    v = values[np.isfinite(values)]
    keys = ("mean", "p50", "p90", "p99")
    if v.size == 0:
        return {f"{prefix}_{k}_s": None for k in keys}
    stats = (v.mean(), *np.percentile(v, [50, 90, 99]))
    return {f"{prefix}_{k}_s": float(x) for k, x in zip(keys, stats)}


def request_table(arrival_s: np.ndarray, prompt: np.ndarray, output: np.ndarray, log: RequestLog,
                  *, ttft_slo_s: float, tpot_slo_s: float) -> pd.DataFrame:
    """One row per request with TTFT, TPOT (mean time per output token after the first) and E2E."""
    ttft = log.first_token_s - arrival_s
    e2e = log.finish_s - arrival_s
    finished = np.isfinite(log.finish_s)
    steps = np.maximum(log.generated - 1, 1)
    tpot = np.where(finished & (log.generated > 1), (log.finish_s - log.first_token_s) / steps, np.nan)
    tpot_ok = np.where(np.isnan(tpot), True, tpot <= tpot_slo_s)
    return pd.DataFrame({
        "request_id": np.arange(arrival_s.size), "replica": log.replica, "arrival_s": arrival_s,
        "first_token_s": log.first_token_s, "finish_s": log.finish_s, "prompt_tokens": prompt,
        "output_tokens": output, "generated_tokens": log.generated, "preemptions": log.preemptions,
        "rejected": log.rejected, "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "finished": finished,
        "slo_met": finished & (ttft <= ttft_slo_s) & tpot_ok,
        "decode_replica": log.decode_replica, "kv_transfer_s": log.kv_transfer_s,
    })


def request_kpis(req: pd.DataFrame, *, sim_time_s: float, gpus: int) -> dict[str, Any]:
    """Latency percentiles, throughput, goodput and request counts."""
    span = max(sim_time_s, 1e-12)
    started = np.isfinite(req["first_token_s"].to_numpy())
    out: dict[str, Any] = {
        "requests_arrived": int(len(req)),
        "requests_finished": int(req["finished"].sum()),
        "requests_unfinished": int((~req["finished"] & ~req["rejected"]).sum()),
        "requests_rejected": int(req["rejected"].sum()),
        "preemptions": int(req["preemptions"].sum()),
    }
    for name in ("ttft", "tpot", "e2e"):
        out.update(percentiles(name, req[f"{name}_s"].to_numpy(dtype=float)))
    out["input_tokens_per_s"] = float(req["prompt_tokens"].to_numpy()[started].sum() / span)
    out["output_tokens_per_s"] = float(req["generated_tokens"].sum() / span)
    out["output_tokens_per_s_per_gpu"] = out["output_tokens_per_s"] / gpus
    out["goodput_requests_per_s"] = float(req["slo_met"].sum() / span)
    out["slo_attainment"] = float(req["slo_met"].mean()) if len(req) else None
    return out


def timeseries_table(passes: list[PassLog], queue: LevelLog, *, kv_capacity_blocks: int, bin_s: float,
                     end_s: float) -> pd.DataFrame:
    """One row per (time bin, replica): busy fraction, passes, mean batch size, tokens, KV
    occupancy (mean over passes starting in the bin) and queue depth (time-weighted)."""
    n_bins = max(1, int(np.ceil(end_s / bin_s)))
    edges = np.arange(n_bins + 1) * bin_s
    frames = []
    q_t, q_r, q_v = (np.asarray(queue.time_s), np.asarray(queue.replica, np.int64), np.asarray(queue.value))
    for r, log in enumerate(passes):
        start, dur = log.column("start_s"), log.column("duration_s")
        b = np.minimum((start / bin_s).astype(np.int64), n_bins - 1) if start.size else np.zeros(0, np.int64)
        cnt = np.bincount(b, minlength=n_bins)
        safe = np.maximum(cnt, 1)
        busy = _overlap(start, start + dur, edges) / bin_s
        frames.append(pd.DataFrame({
            "t_s": edges[:-1], "replica": r, "busy_frac": np.minimum(busy, 1.0), "passes": cnt,
            "batch_size_mean": np.bincount(b, log.column("batch_size"), n_bins) / safe,
            "prefill_tokens": np.bincount(b, log.column("prefill_tokens"), n_bins),
            "decode_tokens": np.bincount(b, log.column("decode_tokens"), n_bins),
            "kv_occupancy": np.bincount(b, log.column("kv_blocks"), n_bins) / safe / kv_capacity_blocks,
            "queue_depth": _level_mean(q_t[q_r == r], q_v[q_r == r], edges),
        }))
    return pd.concat(frames, ignore_index=True)


def _overlap(start: np.ndarray, end: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Seconds of the intervals [start, end) inside each bin of ``edges``."""
    if start.size == 0:
        return np.zeros(edges.size - 1)
    order = np.argsort(start, kind="stable")
    s, e = start[order], end[order]
    cum = np.concatenate(([0.0], np.cumsum(e - s)))

    def busy_until(t: np.ndarray) -> np.ndarray:
        i = np.searchsorted(s, t, side="right")           # intervals starting before t
        full = cum[i]
        last = np.clip(i - 1, 0, s.size - 1)
        excess = np.where(i > 0, np.maximum(e[last] - t, 0.0), 0.0)
        return full - excess

    return np.diff(busy_until(edges))


def _level_mean(t: np.ndarray, v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Time-weighted mean per bin of a piecewise-constant level with change points (t, v), 0 before."""
    if t.size == 0:
        return np.zeros(edges.size - 1)
    times = np.concatenate((t, [edges[-1]]))
    times = np.maximum.accumulate(np.minimum(times, edges[-1]))
    area = np.concatenate(([0.0], np.cumsum(v * np.diff(times))))

    def area_until(x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(times, x, side="right") - 1
        inside = i >= 0
        ic = np.clip(i, 0, t.size - 1)
        return np.where(inside, area[np.minimum(ic, area.size - 1)] + v[ic] * (x - times[ic]), 0.0)

    return np.diff(area_until(edges)) / np.diff(edges)


def batch_histogram(passes: list[PassLog]) -> pd.DataFrame:
    """Passes per (replica, batch size)."""
    rows = []
    for r, log in enumerate(passes):
        sizes, counts = np.unique(log.column("batch_size").astype(np.int64), return_counts=True)
        rows.append(pd.DataFrame({"replica": r, "batch_size": sizes, "passes": counts}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["replica", "batch_size", "passes"])
