"""RunResult: everything a run produced, with no file I/O.

Tables are pandas DataFrames with one row per entity; their columns are documented in
``docs/metrics.md``. ``summary`` is a flat, JSON-safe mapping of headline KPIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["RunResult"]


@dataclass(frozen=True)
class RunResult:
    """The outcome of one simulation.

    Attributes:
        config: the resolved scenario (JSON-safe dict; presets expanded).
        provenance: moesim version, seed, scenario hash, calibration hashes.
        summary: headline KPIs (flat JSON-safe dict; see docs/metrics.md).
        requests: one row per request: ``request_id, replica, arrival_s, first_token_s, finish_s,
            prompt_tokens, output_tokens, generated_tokens, preemptions, rejected, ttft_s, tpot_s, e2e_s,
            finished, slo_met, decode_replica, kv_transfer_s`` (the last two for disaggregated
            prefill / decode: -1 and NaN otherwise).
        timeseries: one row per (time bin, replica): ``t_s, replica, busy_frac, passes,
            batch_size_mean, prefill_tokens, decode_tokens, kv_occupancy, queue_depth``.
        batch_hist: one row per (replica, batch_size): ``replica, batch_size, passes``.
        expert_load: per replica, ``[moe_layers, experts]`` int64 total routed (token, slot) pairs.
        rank_load: per replica, ``[moe_layers, ep_ranks]`` int64 total (token, slot) pairs per rank.
        imbalance: one row per replica: ``replica, imbalance_mean, imbalance_p99,
            imbalance_routed_mean`` where imbalance is max/mean EP-rank load of a layer in a pass
            after balancing (token-weighted over passes, averaged over layers), and the routed one
            is that of the replica's total load under its final placement before balancing.
        placements: per replica, ``[moe_layers, slots]`` logical expert in each physical slot of
            the placement in force at the end (rank r holds slots r*S .. (r+1)*S-1).
        migrations: one row per placement change: ``replica, time_s, bytes, pause_s``.
        rank_timeseries: one row per (time bin, replica, EP rank): ``t_s, replica, rank, tokens``
            (token, slot) pairs the rank computed in the bin, summed over MoE layers.
        oom: one row per replica: ``replica, oom_passes, first_oom_s, peak_moe_activation_bytes``:
            passes whose MoE activations + spilled weights exceed the HBM left after weights and
            the KV pool on some GPU (the run goes on; a real server would have crashed).
        links: one row per network link that carried bytes (flow network model): ``link, src,
            dst, tier, bytes, utilisation`` (bytes / (nominal capacity x simulated time)).
        link_timeseries: one row per (time bin, tier: nvlink / pcie / nic / fabric): ``t_s, tier,
            bytes, utilisation`` (bytes / (tier's summed nominal capacity x bin)).
    """

    config: dict[str, Any]
    provenance: dict[str, Any]
    summary: dict[str, Any]
    requests: pd.DataFrame
    timeseries: pd.DataFrame
    batch_hist: pd.DataFrame
    expert_load: list[np.ndarray] = field(default_factory=list)
    rank_load: list[np.ndarray] = field(default_factory=list)
    imbalance: pd.DataFrame = field(default_factory=pd.DataFrame)
    placements: list[np.ndarray] = field(default_factory=list)
    migrations: pd.DataFrame = field(default_factory=pd.DataFrame)
    train_steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    train_timeline: pd.DataFrame = field(default_factory=pd.DataFrame)
    train_memory: pd.DataFrame = field(default_factory=pd.DataFrame)
    train_failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    train_progress: pd.DataFrame = field(default_factory=pd.DataFrame)
    rank_timeseries: pd.DataFrame = field(default_factory=pd.DataFrame)
    oom: pd.DataFrame = field(default_factory=pd.DataFrame)
    links: pd.DataFrame = field(default_factory=pd.DataFrame)
    link_timeseries: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_json_dict(self) -> dict[str, Any]:
        """What ``run.json`` holds: config, provenance and summary."""
        return {"config": self.config, "provenance": self.provenance, "summary": self.summary}
