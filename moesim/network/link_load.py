"""Flow collectives whose all-to-alls are costed by the congestion bound on the real paths.

Inside a forward pass the engine costs thousands of distinct dispatch / combine matrices (one
per routing draw and layer). Solving each as a max-min batch with completions costs ~ms; this
class instead loads every link with the bytes its flows carry (one matrix product, vectorised over
all draws and layers) and takes ``max over links (bytes / achieved capacity)`` plus the largest
path latency and the per-message latency. That is the makespan's lower bound, which the exact
max-min solution reaches when the bottleneck link stays busy (measured within 0.1 % for a hot
rank receiving 4x; ``benchmarks/network_scale.py``); skew spread over several links is where the
exact solution can be longer. Ring collectives and point-to-point stay on ``FlowCollectives``.

The per-pair incidence is dense (``n² × links``), which is fine for expert-parallel groups of tens
of GPUs but not for a thousand. On a ``FatTree`` router (generated fat-trees, YAML leaf-spine and
fat-tree fabrics) a group whose incidence would pass ``DENSE_LIMIT`` entries has its link bytes
summed from the pair matrix by ``fat_tree_loads.all_to_all_link_bytes`` instead (same bytes, no
routes): a skewed all-pairs all-to-all over 16,384 GPUs costs ~0.4 s (``benchmarks/network_scale.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moesim.network.collectives import Seconds
from moesim.network.flow_collectives import FlowCollectives
from moesim.network.fat_tree_loads import all_to_all_link_bytes, max_pair_latency_s
from moesim.network.flows import Profile
from moesim.network.generators import FatTreeRouter

__all__ = ["DENSE_LIMIT", "LinkLoadCollectives"]

DENSE_LIMIT = 1 << 27
"""Largest dense group incidence (pairs × links entries, 1 GiB of float64) built; larger groups on
a fat-tree router are loaded by reductions over the pair matrix."""


class LinkLoadCollectives(FlowCollectives):
    """``FlowCollectives`` with vectorised congestion-bound all-to-alls (see the module doc)."""

    def __init__(self, topology: Any, **kwargs: Any) -> None:
        super().__init__(topology, **kwargs)
        self._dense: dict[tuple[int, ...], tuple[np.ndarray, float]] = {}
        self._group_latency: dict[tuple[int, ...], float] = {}

    def _group_incidence(self, group: tuple[int, ...]) -> tuple[np.ndarray, float]:
        """``([n*n, n_links] link load per byte of each ordered pair, largest pair latency s)``."""
        hit = self._dense.get(group)
        if hit is None:
            routes = self.network.group_routes(group)
            inc = routes.incidence
            n_links = self.network.n_links
            dense = np.zeros((inc.n_flows, n_links + 1))
            flows = np.broadcast_to(np.arange(inc.n_flows), inc.links.shape)
            weights = np.ones(inc.links.shape) if inc.weights is None else inc.weights
            np.add.at(dense, (flows, inc.links), weights)
            n = len(group)
            off = ~np.eye(n, dtype=bool).ravel()
            lat = float(routes.latency_s[off].max()) if n > 1 else 0.0
            hit = self._dense[group] = (dense[:, :n_links], lat)
        return hit

    def all_to_all_s(self, group: tuple[int, ...], pair_bytes: ArrayLike) -> Seconds:
        """All-to-all of ``pair_bytes [..., n, n]`` (i → j, diagonal ignored) → ``[...]`` seconds."""
        g = self._check(group)
        n = len(g)
        pb = np.array(pair_bytes, dtype=np.float64)
        if pb.ndim < 2 or pb.shape[-2:] != (n, n):
            raise ValueError(f"pair_bytes must have shape [..., {n}, {n}] for a group of {n}, got {pb.shape}")
        if np.any(pb < 0):
            raise ValueError("byte counts must be >= 0")
        lead = pb.shape[:-2]
        if n == 1:
            return np.zeros(lead) if lead else 0.0
        pb[..., np.arange(n), np.arange(n)] = 0.0
        flat = pb.reshape(-1, n * n)
        router = self.network.router
        if isinstance(router, FatTreeRouter) and n * n * (self.network.n_links + 1) > DENSE_LIMIT:
            loads = np.array([all_to_all_link_bytes(router, g, m.reshape(n, n))[0] for m in flat])
            lat = self._group_latency.get(g)
            if lat is None:
                lat = self._group_latency[g] = max_pair_latency_s(router, g)
        else:
            dense, lat = self._group_incidence(g)
            loads = flat @ dense                                                # [M, n_links] bytes
        t = (loads / self.network.capacity_bytes_per_s).max(axis=1)
        moving = flat.sum(axis=1) > 0
        out = np.where(moving, t + lat + self.per_message_latency_s, 0.0).reshape(lead)
        if self.account and moving.any():
            ids = np.arange(self.network.n_links)
            self.network.account(Profile(np.zeros(0), np.zeros(0), 0.0, ids, loads.sum(axis=0), 0, 0, 0.0), 1.0)
        return float(out) if out.ndim == 0 else out
