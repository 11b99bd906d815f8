"""Flow-level network: GPU→GPU transfers as flows over link paths sharing links max-min fairly.

**Routes.** ``FlowNetwork(topology)`` uses ``topology.flow_router(max_paths=, ecmp=)`` when the
topology has one: ``generators.FatTree`` (vectorised, over ECMP trunks), and ``Topology``, which
returns that same vectorised router for leaf-spine / fat-tree topologies of its model and a
``GraphRouter`` otherwise. ``GraphRouter`` takes the routed shortest-hop paths of
``Topology.routed_edge_paths`` (its routing policy: GPUs are never transit vertices except a PXN
proxy, traffic inside a host stays inside it and prefers NVLink, traffic between hosts leaves and
enters at the GPUs' own NICs; see ``topology``), at most ``max_paths`` of them (a cap against path
explosion; with more equal-cost paths only the first ``max_paths`` share the flow), the flow split
evenly over them (fractional incidence, see ``maxmin``) or, with ``ecmp="hash"``, sent on one of
them, a fixed function of (src, dst) as per-flow ECMP hashing does. So on ``h100-4node-rail`` (PXN)
a cross-rail transfer crosses NVLink to the proxy and then one NIC. Paths are cached per (src,
dst) pair, and the incidence of a whole group (all its ordered pairs) per group.

**Time of a batch.** The flows of a batch start together; ``batch.simulate_batch`` gives each
flow's finish time ``f_i`` (link capacities are ``bytes_per_s × efficiency``). Flow ``i``'s last
byte lands ``lat_i`` later (its path latency: the sum of hop latencies, the largest over its ECMP
paths), so the batch takes ``max_i (f_i + lat_i) + per_message_latency_s`` (0 s without bytes).

**Scale and cache.** Max-min rates do not depend on sizes, so scaling every flow by ``x`` scales
every finish time by ``x``. A batch is therefore solved once per *shape*: its bytes divided by the
largest entry and rounded to multiples of 2⁻²⁰ (a non-zero entry to at least one), keyed by the
hash of that matrix and the group.
``Profile.time_s(x)`` then gives the time at any scale, vectorised. Cached shapes hold per latency
class the latest finish, which keeps the latency term exact.

**Accounting.** Every transfer adds ``Σ_flows weight × bytes`` to each link it crosses (the bytes
of its cached shape: each flow to within 2⁻²⁰ of the batch's largest flow):
``link_bytes()`` per router link, ``edge_bytes()`` per graph edge (a trunk's bytes split evenly
over its parallel edges), ``utilisation(elapsed_s)`` = bytes / (nominal capacity × elapsed).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

from moesim.network.batch import simulate_batch
from moesim.network.maxmin import Incidence

if TYPE_CHECKING:
    from moesim.network.topology import Topology

__all__ = ["FlowNetwork", "GraphRouter", "Profile", "Routes"]

_SHAPE_STEPS = 2.0**20
"""A batch's bytes are rounded to multiples of (largest entry) / 2**20 for the cache key."""


@dataclass(frozen=True)
class Routes:
    """Link paths of F flows: ``incidence`` (flow × router link weights) and ``latency_s [F]``."""

    incidence: Incidence
    latency_s: np.ndarray


class GraphRouter:
    """ECMP routes on ``topology.graph`` (the topology's routing policy where it has one, see the
    module doc); its links are the graph's directed edges, in ``topology.edge_list`` order."""

    def __init__(self, topology: Topology, *, max_paths: int = 64, ecmp: str = "split") -> None:
        if max_paths < 1:
            raise ValueError(f"max_paths must be >= 1, got {max_paths}")
        if ecmp not in ("split", "hash"):
            raise ValueError(f"ecmp must be 'split' or 'hash', got {ecmp!r}")
        self.topology, self.max_paths, self.ecmp = topology, max_paths, ecmp
        graph = topology.graph
        self.edges: list[tuple[str, str]] = list(getattr(topology, "edge_list", None) or graph.edges)
        self._index = {e: i for i, e in enumerate(self.edges)}
        self.capacity_bytes_per_s = np.array([graph.edges[e]["bytes_per_s"] for e in self.edges], float)
        self._latency_s = np.array([graph.edges[e]["latency_s"] for e in self.edges], float)
        self.tier = np.array([graph.edges[u, v].get("tier") or _tier(graph, u, v) for u, v in self.edges])
        self._pairs: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, float]] = {}

    def pair(self, src: int, dst: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``(links [k], weights [k], latency s)`` of one GPU pair (cached)."""
        hit = self._pairs.get((src, dst))
        if hit is None:
            if src == dst:
                hit = (np.zeros(0, np.int64), np.zeros(0), 0.0)
            else:
                ids = self._paths(src, dst)
                if self.ecmp == "hash":  # one path per pair, picked by a fixed hash of (src, dst)
                    ids = [ids[(src * 1_000_003 + dst) % len(ids)]]
                links, inverse = np.unique(np.concatenate(ids), return_inverse=True)
                weights = np.bincount(inverse, minlength=links.size) / len(ids)
                lat = max(float(self._latency_s[i].sum()) for i in ids)
                hit = (links.astype(np.int64), weights, lat)
            self._pairs[(src, dst)] = hit
        return hit

    def _paths(self, src: int, dst: int) -> list[np.ndarray]:
        """Edge-index paths of one pair: the topology's routed paths, or (objects without a routing
        policy) shortest-hop paths on the graph that do not cross another GPU."""
        routed = getattr(self.topology, "routed_edge_paths", None)
        if routed is not None:
            return [np.asarray(p, dtype=np.int64) for p in routed(src, dst, self.max_paths)]
        graph, names = self.topology.graph, self.topology.gpu_names
        ends = {names[src], names[dst]}
        view = nx.subgraph_view(graph, filter_node=lambda v: v in ends or graph.nodes[v].get("kind") != "gpu")
        paths = list(islice(nx.all_shortest_paths(view, names[src], names[dst]), self.max_paths))
        return [np.array([self._index[e] for e in zip(p[:-1], p[1:])]) for p in paths]

    def route(self, src: np.ndarray, dst: np.ndarray) -> Routes:
        """Routes of the flows ``src[k] → dst[k]`` (GPU indices)."""
        parts = [self.pair(int(s), int(d)) for s, d in zip(src, dst)]
        inc = Incidence.from_rows([p[0] for p in parts], self.capacity_bytes_per_s.shape[0],
                                  [p[1] for p in parts])
        return Routes(inc, np.array([p[2] for p in parts], float))

    def edges_of(self, link: int) -> list[tuple[str, str]]:
        """The graph edge of router link ``link``."""
        return [self.edges[link]]


def _tier(graph: nx.DiGraph, u: str, v: str) -> str:
    """Reporting tier of an edge: nvlink / pcie inside a host, nic, or fabric."""
    for x in (u, v):
        if graph.nodes[x]["kind"] == "switch" and x.endswith(("nvswitch", "pcie")):
            return "nvlink" if x.endswith("nvswitch") else "pcie"
    return "nic" if "nic" in (graph.nodes[u]["kind"], graph.nodes[v]["kind"]) else "fabric"


def _latest_by_latency(latency_s: np.ndarray, finish_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(latency [k], latest finish [k])`` over the flows of each distinct path latency (1 ns bins,
    a bin keeping its largest latency)."""
    if not latency_s.size:
        return np.zeros(0), np.zeros(0)
    ns = np.rint(latency_s * 1e9).astype(np.int64)
    lo, span = int(ns.min()), int(ns.max() - ns.min()) + 1
    if span > 1 << 22:  # widely spread latencies: sort instead of binning
        _, idx = np.unique(ns, return_inverse=True)
        span, idx = int(idx.max()) + 1, idx.ravel()
    else:
        idx = ns - lo
    lat, fin = np.full(span, -np.inf), np.full(span, -np.inf)
    np.maximum.at(lat, idx, latency_s)
    np.maximum.at(fin, idx, finish_s)
    keep = lat > -np.inf
    return lat[keep], fin[keep]


@dataclass(frozen=True)
class Profile:
    """A batch of flows solved at scale 1; ``time_s(x)`` is its time with every size × ``x``.

    Attributes:
        finish_s: ``[k]`` latest finish (s) at scale 1 among the flows of each latency class.
        latency_s: ``[k]`` that class's path latency (s).
        per_message_latency_s: added once to a batch that moves bytes.
        link_ids, link_bytes: ``[m]`` links crossed and their bytes at scale 1.
        n_flows: flows with bytes; n_events: rate re-solves; lower_bound_s: max link bytes /
            capacity at scale 1.
    """

    finish_s: np.ndarray
    latency_s: np.ndarray
    per_message_latency_s: float
    link_ids: np.ndarray
    link_bytes: np.ndarray
    n_flows: int
    n_events: int
    lower_bound_s: float

    def time_s(self, scale: ArrayLike = 1.0) -> float | np.ndarray:
        """Seconds for the batch with every size multiplied by ``scale`` (any shape, >= 0)."""
        x = np.asarray(scale, dtype=np.float64)
        if self.n_flows == 0:
            out = np.zeros_like(x)
        else:
            t = (x[..., None] * self.finish_s + self.latency_s).max(axis=-1) + self.per_message_latency_s
            out = np.where(x > 0, t, 0.0)
        return float(out) if out.ndim == 0 else out


class FlowNetwork:
    """Flow-level transfers on a topology (see the module doc).

    Args:
        topology: ``Topology`` or any object with ``n_gpus``, ``gpu_names``, ``graph`` (and
            optionally ``flow_router()``).
        efficiency: achieved / nominal link bandwidth, in (0, 1].
        per_message_latency_s: software cost per batch (launch, handshake), s.
        rtol, window_frac: completion coalescing of ``batch.simulate_batch``.
        max_paths: ECMP paths enumerated per pair by ``GraphRouter``.
        ecmp: ``GraphRouter``'s use of equal-cost paths: ``split`` evenly over them, or ``hash``
            (one path per pair, a fixed function of (src, dst), as per-flow ECMP hashing does).
        cache_size: batch shapes kept (LRU).
    """

    def __init__(self, topology: Any, *, efficiency: float = 1.0, per_message_latency_s: float = 0.0,
                 rtol: float = 1e-3, window_frac: float = 1e-2, max_paths: int = 64,
                 ecmp: str = "split", cache_size: int = 256) -> None:
        if not 0.0 < efficiency <= 1.0:
            raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")
        if per_message_latency_s < 0:
            raise ValueError(f"per_message_latency_s must be >= 0, got {per_message_latency_s}")
        make = getattr(topology, "flow_router", None)
        self.topology = topology
        self.router = (make(max_paths=max_paths, ecmp=ecmp) if callable(make)
                       else GraphRouter(topology, max_paths=max_paths, ecmp=ecmp))
        self.nominal_bytes_per_s = self.router.capacity_bytes_per_s
        self.capacity_bytes_per_s = self.nominal_bytes_per_s * efficiency
        self.tier: np.ndarray = self.router.tier
        self.efficiency, self.per_message_latency_s = float(efficiency), float(per_message_latency_s)
        self.rtol, self.window_frac, self.cache_size = rtol, window_frac, cache_size
        self._link_bytes = np.zeros(self.n_links)
        self._groups: OrderedDict[tuple[int, ...], Routes] = OrderedDict()
        self._profiles: OrderedDict[tuple[Any, ...], Profile] = OrderedDict()
        self.cache_hits = self.cache_misses = 0

    @property
    def n_links(self) -> int:
        """L, the router's links."""
        return int(self.capacity_bytes_per_s.shape[0])

    # ----------------------------------------------------------------- routes
    def routes(self, src: ArrayLike, dst: ArrayLike) -> Routes:
        """Routes of flows ``src[k] → dst[k]`` (global GPU indices)."""
        s, d = np.asarray(src, np.int64).ravel(), np.asarray(dst, np.int64).ravel()
        n = self.topology.n_gpus
        if s.shape != d.shape or (s.size and (min(s.min(), d.min()) < 0 or max(s.max(), d.max()) >= n)):
            raise ValueError(f"src and dst must be equal-length GPU indices in [0, {n})")
        return self.router.route(s, d)

    def group_routes(self, group: tuple[int, ...]) -> Routes:
        """Routes of all ``n²`` ordered pairs of ``group`` in row-major order (cached, LRU of 8)."""
        hit = self._groups.get(group)
        if hit is None:
            g = np.asarray(group, np.int64)
            if len(set(group)) != len(group):
                raise ValueError(f"group {group} lists a GPU more than once")
            hit = self._groups[group] = self.routes(np.repeat(g, g.size), np.tile(g, g.size))
            while len(self._groups) > 8:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(group)
        return hit

    # ----------------------------------------------------------------- batches
    def simulate(self, routes: Routes, nbytes: ArrayLike) -> Profile:
        """Solve flows of ``nbytes [F]`` on ``routes`` (uncached, not accounted)."""
        b = np.asarray(nbytes, dtype=np.float64)
        bt = simulate_batch(self.capacity_bytes_per_s, routes.incidence, b, rtol=self.rtol,
                            window_frac=self.window_frac)
        moving = b > 0
        lat, fin = _latest_by_latency(routes.latency_s[moving], bt.finish_s[moving])
        ids = np.flatnonzero(bt.link_bytes)
        return Profile(fin, lat, self.per_message_latency_s, ids, bt.link_bytes[ids],
                       int(moving.sum()), bt.n_events, bt.lower_bound_s)

    def transfer(self, pair_bytes: ArrayLike, group: tuple[int, ...], *,
                 account: bool = True) -> tuple[Profile, float]:
        """``(profile, scale)`` of simultaneous flows ``pair_bytes[i, j]`` from ``group[i]`` to
        ``group[j]`` (bytes, diagonal ignored): the batch takes ``profile.time_s(scale)`` seconds."""
        group = tuple(int(x) for x in group)
        pb = np.array(pair_bytes, dtype=np.float64)
        n = len(group)
        if pb.shape != (n, n):
            raise ValueError(f"pair_bytes must have shape [{n}, {n}] for a group of {n}, got {pb.shape}")
        if np.any(pb < 0) or not np.all(np.isfinite(pb)):
            raise ValueError("pair_bytes must be finite and >= 0")
        np.fill_diagonal(pb, 0.0)
        scale = float(pb.max()) / _SHAPE_STEPS if pb.size else 0.0
        shape = np.zeros(pb.shape, np.int64)
        if scale > 0:  # a tiny flow keeps one step, so that its path latency still counts
            shape = np.maximum(np.rint(pb / scale).astype(np.int64), pb > 0)
        key = (group, hashlib.blake2b(shape.tobytes(), digest_size=16).digest())
        prof = self._profiles.get(key)
        if prof is None:
            self.cache_misses += 1
            nz = np.flatnonzero(shape)
            if 4 * nz.size < shape.size:  # sparse (rings, p2p): route only the flows that move
                g = np.asarray(group, np.int64)
                prof = self.simulate(self.routes(g[nz // n], g[nz % n]), shape.ravel()[nz].astype(np.float64))
            else:
                prof = self.simulate(self.group_routes(group), shape.ravel().astype(np.float64))
            self._profiles[key] = prof
            while len(self._profiles) > self.cache_size:
                self._profiles.popitem(last=False)
        else:
            self.cache_hits += 1
            self._profiles.move_to_end(key)
        if account:
            self.account(prof, scale)
        return prof, scale

    def transfer_flows(self, src: ArrayLike, dst: ArrayLike, nbytes: ArrayLike, *,
                       account: bool = True) -> Profile:
        """Simultaneous flows ``src[k] → dst[k]`` of ``nbytes[k]`` bytes (uncached; any number of
        groups at once); the batch takes ``profile.time_s()`` seconds."""
        b = np.asarray(nbytes, dtype=np.float64).ravel()
        s, d = np.asarray(src, np.int64).ravel(), np.asarray(dst, np.int64).ravel()
        if b.shape != s.shape or np.any(b < 0) or not np.all(np.isfinite(b)):
            raise ValueError("nbytes must give one finite value >= 0 per flow")
        prof = self.simulate(self.routes(s, d), np.where(s == d, 0.0, b))
        if account:
            self.account(prof)
        return prof

    def transfer_time_s(self, pair_bytes: ArrayLike, group: tuple[int, ...]) -> float:
        """Seconds until every flow ``pair_bytes[i, j]`` (group[i] → group[j]) has landed."""
        prof, scale = self.transfer(pair_bytes, group)
        return float(prof.time_s(scale))

    # ----------------------------------------------------------------- accounting
    def account(self, profile: Profile, scale: ArrayLike = 1.0) -> None:
        """Add ``profile``'s link bytes × Σ ``scale`` to the link counters."""
        self._link_bytes[profile.link_ids] += profile.link_bytes * float(np.sum(scale))

    def link_bytes(self) -> np.ndarray:
        """``[L]`` bytes carried by each router link so far (a copy)."""
        return self._link_bytes.copy()

    def reset_link_bytes(self) -> None:
        """Zero the link counters."""
        self._link_bytes[:] = 0.0

    def utilisation(self, elapsed_s: float) -> np.ndarray:
        """``[L]`` link bytes / (nominal capacity × ``elapsed_s``)."""
        return self._link_bytes / (self.nominal_bytes_per_s * elapsed_s)

    def edge_bytes(self) -> dict[tuple[str, str], float]:
        """Bytes per graph edge (u, v); a trunk's bytes split evenly over its parallel edges."""
        out: dict[tuple[str, str], float] = {}
        for link in np.flatnonzero(self._link_bytes):
            edges = self.router.edges_of(int(link))
            for e in edges:
                out[e] = out.get(e, 0.0) + float(self._link_bytes[link]) / len(edges)
        return out
