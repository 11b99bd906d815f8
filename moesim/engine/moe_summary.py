"""MoE outcome of a run: per-replica expert / rank loads, imbalance before and after balancing,
dropped tokens, weight bytes moved, re-plans and migrations, placements in force at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from moesim.engine.replica import Replica

__all__ = ["MoeOutcome", "moe_outcome"]


class MoeOutcome:
    """Tables and summary keys for the MoE side of a run (empty for a dense model)."""

    def __init__(self) -> None:
        self.expert_load: list[np.ndarray] = []
        self.rank_load: list[np.ndarray] = []
        self.placements: list[np.ndarray] = []
        self.imbalance = pd.DataFrame(columns=["replica", "imbalance_mean", "imbalance_p99",
                                               "imbalance_routed_mean"])
        self.migrations = pd.DataFrame(columns=["replica", "time_s", "bytes", "pause_s"])
        self.rank_timeseries = pd.DataFrame(columns=["t_s", "replica", "rank", "tokens"])
        self.oom = pd.DataFrame(columns=["replica", "oom_passes", "first_oom_s", "peak_moe_activation_bytes"])
        self.summary: dict[str, Any] = {}


def moe_outcome(replicas: list[Replica], busy_s: float) -> MoeOutcome:
    """Collect the MoE records of every replica; ``busy_s`` is the replicas' summed pass time."""
    out = MoeOutcome()
    rows, mig, ranks, ooms = [], [], [], []
    weights = imbalance_sum = routed_sum = 0.0
    dropped = moved = comm = 0.0
    replans = 0
    for r in replicas:
        st = r.moe_stats
        if st is None or st.passes == 0:
            continue
        tokens = r.passes.column("tokens")
        imb = r.passes.column("imbalance")
        moe_passes = tokens > 0
        w, v = tokens[moe_passes], imb[moe_passes]
        expert_load = st.expert_load
        routed = r.pcm.moe.placement.imbalance(expert_load.astype(np.float64)).mean() if r.pcm.moe else 1.0
        rows.append({"replica": r.index, "imbalance_mean": float(np.average(v, weights=w)),
                     "imbalance_p99": float(np.percentile(v, 99)), "imbalance_routed_mean": float(routed)})
        weights += float(w.sum())
        imbalance_sum += float((v * w).sum())
        routed_sum += float(routed) * float(w.sum())
        out.expert_load.append(expert_load)
        out.rank_load.append(st.rank_load.copy())
        out.placements.append(np.asarray(r.pcm.moe.placement.phy2log))
        nb, p = st.rank_bins.shape
        ranks.append(pd.DataFrame({"t_s": np.repeat(np.arange(nb) * st.bin_s, p), "replica": r.index,
                                   "rank": np.tile(np.arange(p), nb), "tokens": st.rank_bins.ravel()}))
        ooms.append({"replica": r.index, "oom_passes": st.oom_passes, "first_oom_s": st.first_oom_s,
                     "peak_moe_activation_bytes": st.peak_act_bytes})
        dropped += st.dropped
        moved += st.moved_bytes
        comm += float(r.passes.column("moe_comm_s").sum())
        if r.replanner is not None:
            replans += r.replanner.replans
            mig += [{"replica": r.index, "time_s": m.time_s, "bytes": m.bytes, "pause_s": m.pause_s}
                    for m in r.replanner.migrations]
    if not rows:
        return out
    out.imbalance = pd.DataFrame(rows)
    out.oom = pd.DataFrame(ooms)
    out.rank_timeseries = pd.concat(ranks, ignore_index=True)
    if mig:
        out.migrations = pd.DataFrame(mig)
    out.summary = {
        "expert_imbalance_mean": imbalance_sum / weights,
        "expert_imbalance_placed_mean": routed_sum / weights,
        "tokens_dropped": int(dropped),
        "expert_weight_bytes_moved": moved + float(out.migrations["bytes"].sum()),
        "moe_comm_fraction": comm / busy_s if busy_s > 0 else None,
        "replans": replans,
        "migration_pause_s": float(out.migrations["pause_s"].sum()),
        "oom_passes": int(out.oom["oom_passes"].sum()),
        "peak_moe_activation_bytes": float(out.oom["peak_moe_activation_bytes"].max()),
    }
    return out
