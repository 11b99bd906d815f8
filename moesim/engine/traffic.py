"""Network traffic of costed work: link bytes captured from a flow-level collective model.

The flow model (``FlowCollectives``) adds the bytes of every collective it costs to its network's
per-link counters. Costs are cached (per token count, per routing draw), so the engine captures
the bytes a costing step adds once, stores them with the cached cost, and adds them again for
every pass that uses it (``LinkStats``). The closed-form models have no links: nothing is captured.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import numpy as np
import pandas as pd

from moesim.network.collectives import CollectiveCost

__all__ = ["LinkStats", "SharedLinks", "capture_link_bytes", "link_tables"]

T = TypeVar("T")


def capture_link_bytes(coll: CollectiveCost, work: Callable[[], T]) -> tuple[T, np.ndarray | None]:
    """Run ``work`` and return its result with the link bytes ``[n_links]`` it added (None
    without a flow network)."""
    net = getattr(coll, "network", None)
    if net is None:
        return work(), None
    before = net.link_bytes().copy()
    result = work()
    return result, net.link_bytes() - before


class LinkStats:
    """Bytes one replica's passes put on each link, in total and per (time bin, tier)."""

    def __init__(self, tiers: np.ndarray, *, bin_s: float) -> None:
        self.names, self.tier_of = np.unique(tiers, return_inverse=True)
        self.bin_s = bin_s
        self.total = np.zeros(tiers.size)
        self.bins = np.zeros((0, self.names.size))

    def record(self, links: np.ndarray, start_s: np.ndarray) -> None:
        """Add ``links [n_links]`` bytes for each pass starting at ``start_s [k]``."""
        self.total += links * start_s.size
        per_tier = np.bincount(self.tier_of, weights=links, minlength=self.names.size)
        bins = (start_s // self.bin_s).astype(np.int64)
        if bins[-1] >= self.bins.shape[0]:
            grow = np.zeros((bins[-1] + 1 - self.bins.shape[0] + 64, self.names.size))
            self.bins = np.concatenate([self.bins, grow])
        np.add.at(self.bins, bins, per_tier)


def link_tables(stats: list[LinkStats], network: object, *, sim_time_s: float) -> tuple[object, object, dict[str, float]]:
    """``(links, link_timeseries, summary)`` over all replicas.

    links: one row per link that carried bytes: ``link, src, dst, tier, bytes, utilisation``
    (bytes / (nominal capacity x simulated time)); link_timeseries: one row per (time bin, tier):
    ``t_s, tier, bytes, utilisation`` (bytes / (tier's total nominal capacity x bin)); summary:
    ``link_utilisation_max`` and ``link_utilisation_<tier>`` (time-averaged, whole run).
    """
    cap = network.nominal_bytes_per_s  # type: ignore[attr-defined]
    edges = network.router.edges  # type: ignore[attr-defined]
    total = np.sum([s.total for s in stats], axis=0)
    span = max(sim_time_s, 1e-12)
    used = np.flatnonzero(total)
    links = pd.DataFrame({"link": used, "src": [edges[i][0] for i in used], "dst": [edges[i][1] for i in used],
                          "tier": network.tier[used], "bytes": total[used],  # type: ignore[attr-defined]
                          "utilisation": total[used] / (cap[used] * span)})
    names = stats[0].names
    tier_cap = np.array([cap[stats[0].tier_of == i].sum() for i in range(names.size)])
    nb = max(s.bins.shape[0] for s in stats)
    bins = np.zeros((nb, names.size))
    for s in stats:
        bins[: s.bins.shape[0]] += s.bins
    bin_s = stats[0].bin_s
    ts = pd.DataFrame({"t_s": np.repeat(np.arange(nb) * bin_s, names.size), "tier": np.tile(names, nb),
                       "bytes": bins.ravel(), "utilisation": (bins / (tier_cap * bin_s)).ravel()})
    ts = ts[ts["t_s"] < span]
    summary = {"link_utilisation_max": float(links["utilisation"].max()) if len(links) else 0.0}
    for i, name in enumerate(names):
        summary[f"link_utilisation_{name}"] = float(bins[:, i].sum() / (tier_cap[i] * span))
    return links, ts, summary


class SharedLinks:
    """Links that more than one replica's traffic can cross, and the traffic in flight on them.

    Replicas whose GPU groups share no link never interact and keep fast-forwarding. A replica
    that shares links registers, for each pass, its link rates (bytes / pass time) while the pass
    runs; another replica starting a pass then sees on each shared link the others' load and gets
    ``max(1 - others / capacity, 1 / (1 + other users))`` of it (at least its max-min fair share).
    Its communication time is stretched by the worst such link among those it loads most.
    """

    def __init__(self, network: object, replica_gpus: tuple[tuple[int, ...], ...]) -> None:
        self.capacity = network.capacity_bytes_per_s  # type: ignore[attr-defined]
        foot = np.zeros((len(replica_gpus), self.capacity.size), bool)
        for r, gpus in enumerate(replica_gpus):
            inc = network.group_routes(gpus).incidence  # type: ignore[attr-defined]
            used = inc.links[inc.links < inc.n_links]
            foot[r, used] = True
        self.shared = foot.sum(axis=0) > 1
        self.contended = (foot & self.shared).any(axis=1)
        """``[replicas]`` whether a replica's traffic can meet another's."""
        self.rate = np.zeros(self.capacity.size)
        self.users = np.zeros(self.capacity.size, np.int64)
        self._active: dict[int, np.ndarray] = {}

    def slowdown(self, replica: int, links: np.ndarray) -> float:
        """Factor (>= 1) by which this pass's communication stretches under the others' traffic."""
        own = self._active.get(replica)
        others = self.rate - (own if own is not None else 0.0)
        users = self.users - (own > 0 if own is not None else 0)
        mine = (links > 0) & self.shared & (users > 0)
        if not mine.any():
            return 1.0
        load = links / self.capacity
        avail = np.maximum(1.0 - others[mine] / self.capacity[mine], 1.0 / (1.0 + users[mine]))
        return float(max(1.0, (load[mine] / avail).max() / load.max()))

    def begin(self, replica: int, links: np.ndarray, duration_s: float) -> None:
        """Register a pass's traffic (bytes ``links`` over ``duration_s``) on the shared links."""
        self.end(replica)
        rate = np.where(self.shared, links / max(duration_s, 1e-12), 0.0)
        self._active[replica] = rate
        self.rate += rate
        self.users += rate > 0

    def end(self, replica: int) -> None:
        """The replica's pass is over: remove its traffic."""
        rate = self._active.pop(replica, None)
        if rate is not None:
            self.rate -= rate
            self.users -= rate > 0
