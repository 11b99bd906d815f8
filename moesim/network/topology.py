"""A ``TopologySpec`` as a directed graph, with the routing policy and GPU-pair bottleneck / latency.

**Graph.** Vertices are GPUs, switches, NICs and CPUs (attribute ``kind``); GPUs, NICs, CPUs and
host-internal switches carry ``node`` (the host index), fabric switches ``node=None``; GPUs and NICs
may carry ``rail`` (the NIC index, for PXN). Every directed edge carries ``bytes_per_s`` (capacity
in that direction), ``latency_s`` (one-way latency of the hop) and ``tier`` (nvlink, pcie, c2c,
host, nic, leaf, core, fabric). A duplex link is two edges.

Vertex names of the parametric form: GPUs ``gpu{g}`` numbered 0..G-1 globally (host-major, so host
n holds ``gpu{n*gpus_per_node}`` ...), host switches ``node{n}.nvswitch`` / ``node{n}.pcie`` (the
one-switch PCIe shorthand) / ``node{n}.pcie{s}`` (``host`` PCIe switches), CPUs ``node{n}.cpu{c}``,
NICs ``node{n}.nic{j}``, rail switches ``rail{j}``, the single fabric switch ``fabric.switch``,
leaf-spine / fat-tree switches ``leaf{l}``, ``spine{k}``, ``pod{p}.agg{a}``, ``core{a}.{c}`` (the
``generators.FatTree`` layout). In the explicit form the names are the file's device names and
GPUs are numbered in list order.

**Routing policy** (shared by the pair matrices and ``flows.GraphRouter``; shortest-hop paths
under these rules):

* GPUs are never transit vertices: a path touches a GPU only at its ends, and at the PXN proxy.
* Between two GPUs of one host the path stays inside the host: over NVLink edges when NVLink joins
  them, else over the host's other vertices (PCIe switches, CPUs), never through a NIC. Only when
  neither exists (explicit graphs) does it leave through the fabric.
* Between hosts a path leaves its host at the source GPU's *port* and enters the destination's
  host at the destination GPU's port: a port is a host vertex with a link out of the host (a NIC;
  the GPU itself where a GPU links straight to a switch), the GPU's own one (same ``rail``) when
  it can reach it, else the nearest ones. In between it crosses fabric vertices only, never
  the inside of a third host.
* PXN (``pxn=True``): when the two GPUs' rails differ, the source first crosses NVLink to the GPU
  of its own host on the destination's rail (the proxy), which sends as above. Without an NVLink
  path to a proxy, or when the proxy cannot reach the destination, the source sends itself.

**Pair matrices.** Between each GPU pair the simple network model keeps one bandwidth and one
latency over the routed shortest-hop paths: ``bottleneck`` = the widest path's narrowest edge
(bytes/s), ``latency`` = the smallest sum of hop latencies (s). For at most ``EAGER_MAX_GPUS``
GPUs (or ``lazy=False``) they are built at construction as read-only ``[G, G]`` arrays
``bottleneck_bytes_per_s`` / ``latency_s``; above that the topology is *lazy*: those attributes
are ``LazyPairMatrix`` objects computing the indexed entries on demand, and
``pair_matrices(gpus)`` gives the ``[n, n]`` matrices of a GPU subset (what engines should call).
Hosts with identical local wiring share one routing table; the fabric between ports is searched
(vectorised breadth-first search over numpy arrays) once per switch that ports attach to, and
cached. A healthy leaf-spine / fat-tree whose hosts match ``generators.FatTreeRouter``'s model
(an NVSwitch, one NIC per GPU on the GPU) takes its pairs from that router's routes instead:
the same values, without a search (16,384 GPUs: 256 random GPUs in ~0.05 s).

**Representation.** The topology keeps its graph as arrays; topologies built from a spec build
the ``networkx`` graph (``graph``) only when it is first asked for (16,384 GPUs: ~37k vertices,
~164k edges, built in ~1.7 s without it).

**Checks.** Building raises ``TopologyError`` for bad capacities and ``PartitionError`` (a
``TopologyError``) when some GPU pair has no path under the policy (a GPU without links
included); the error names the GPUs cut off. Reachability is decided on classes of GPUs (which
fabric components their ports reach), so it costs no pair search even at 16,384 GPUs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, product
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from moesim.config.topology import DeviceSpec, LinkSpec, TopologySpec, fabric_layout
from moesim.core.errors import TopologyError

if TYPE_CHECKING:
    from moesim.network.generators import FatTree

__all__ = ["EAGER_MAX_GPUS", "TIERS", "LazyPairMatrix", "PartitionError", "Topology"]

EAGER_MAX_GPUS = 1024
"""Topologies with more GPUs are lazy: no ``[G, G]`` matrices are built (see module doc)."""
TIERS = ("nvlink", "pcie", "c2c", "host", "nic", "leaf", "core", "fabric")
"""Edge tiers (attribute ``tier``)."""
_TIER = {t: i for i, t in enumerate(TIERS)}
_NVLINK = _TIER["nvlink"]
_KIND = {"gpu": 0, "switch": 1, "nic": 2, "cpu": 3}
_GPU, _NIC = 0, 2
_INF = math.inf
_FABRIC_CELLS = 1 << 21
"""Search state cells (sources x fabric vertices) per chunk of the fabric search."""


@dataclass(frozen=True)
class _Net:
    """A topology's graph as arrays: vertices (GPUs first, ids 0..G-1) and directed edges."""

    names: list[str]
    kind: np.ndarray  # int8, _KIND codes
    node: np.ndarray  # int64 host, -1 for fabric switches
    rail: np.ndarray  # int64, -1 for none
    eu: np.ndarray
    ev: np.ndarray
    cap: np.ndarray  # bytes/s
    lat: np.ndarray  # s
    tier: np.ndarray  # int8, index into TIERS

    def graph(self) -> nx.DiGraph:
        kinds = {v: k for k, v in _KIND.items()}
        graph = nx.DiGraph()
        for name, k, n, r in zip(self.names, self.kind.tolist(), self.node.tolist(), self.rail.tolist()):
            attrs: dict[str, Any] = {"kind": kinds[k], "node": None if n < 0 else n}
            if r >= 0:
                attrs["rail"] = r
            graph.add_node(name, **attrs)
        nm = self.names
        graph.add_edges_from((nm[u], nm[v], {"bytes_per_s": c, "latency_s": t, "tier": TIERS[i]})
                             for u, v, c, t, i in zip(self.eu.tolist(), self.ev.tolist(), self.cap.tolist(),
                                                      self.lat.tolist(), self.tier.tolist()))
        return graph


def _net_from_graph(graph: nx.DiGraph, gpu_names: Sequence[str]) -> _Net:
    """Arrays of a ``networkx`` graph whose GPUs are ``gpu_names`` (TopologyError on bad attributes)."""
    gi = set(gpu_names)
    for g in gpu_names:
        if g not in graph:
            raise TopologyError(f"gpu {g!r} is not a vertex of the graph")
    names = list(gpu_names) + [v for v in graph.nodes if v not in gi]
    vid = {v: i for i, v in enumerate(names)}
    attrs = graph.nodes
    kinds, nodes, rails = [], [], []
    for v in names:
        a = attrs[v]
        k = a.get("kind")
        if k not in _KIND:
            raise TopologyError(f"vertex {v!r} has kind {k!r}; expected one of {sorted(_KIND)}")
        n = a.get("node")
        kinds.append(_KIND[k])
        nodes.append(-1 if n is None and k == "switch" else int(n or 0))
        r = a.get("rail")
        rails.append(-1 if r is None else int(r))
    edges = list(graph.edges(data=True))
    n_e = len(edges)
    return _Net(names, np.array(kinds, dtype=np.int8), np.array(nodes, dtype=np.int64),
                np.array(rails, dtype=np.int64),
                np.fromiter((vid[u] for u, _, _ in edges), np.int64, n_e),
                np.fromiter((vid[v] for _, v, _ in edges), np.int64, n_e),
                np.fromiter((d["bytes_per_s"] for _, _, d in edges), np.float64, n_e),
                np.fromiter((d["latency_s"] for _, _, d in edges), np.float64, n_e),
                np.fromiter((_TIER[d.get("tier") or infer_tier(graph, u, v)] for u, v, d in edges), np.int8, n_e))


class PartitionError(TopologyError):
    """Some GPU pairs have no path. ``cut_off``: the GPUs cut off (indices); ``n_unreachable``:
    ordered pairs without a path; ``example``: one such ``(src, dst)``."""

    def __init__(self, message: str, *, cut_off: Sequence[int], n_unreachable: int,
                 example: tuple[int, int]) -> None:
        super().__init__(message)
        self.cut_off = tuple(int(g) for g in cut_off)
        self.n_unreachable = int(n_unreachable)
        self.example = (int(example[0]), int(example[1]))


class LazyPairMatrix:
    """A read-only ``[G, G]`` pair matrix of a lazy ``Topology``, computed on indexing.

    ``m[rows, cols]`` with integer (array) indices that broadcast, as numpy fancy indexing
    (``m[i, j]``, ``m[g, nxt]``, ``m[np.ix_(g, g)]``), returns what the full matrix would hold,
    through ``Topology.pair_matrices`` on the GPUs named. ``np.asarray(m)`` materialises it
    (refused above 4,096 GPUs)."""

    def __init__(self, topology: Topology, which: int) -> None:
        self._topology, self._which = topology, which
        self.shape = (topology.n_gpus, topology.n_gpus)
        self.ndim = 2
        self.dtype = np.dtype(np.float64)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError("index a lazy pair matrix with two integer (array) indices, e.g. m[np.ix_(g, g)]")
        n = self.shape[0]
        rows, cols = (np.arange(n)[k] if isinstance(k, slice) else np.asarray(k, dtype=np.int64) for k in key)
        r, c = np.broadcast_arrays(rows, cols)
        if r.size and (min(r.min(), c.min()) < 0 or max(r.max(), c.max()) >= n):
            raise IndexError(f"GPU index out of range [0, {n})")
        u = np.unique(np.concatenate([r.ravel(), c.ravel()]))
        mats = self._topology.pair_matrices(u)
        out = mats[self._which][np.searchsorted(u, r), np.searchsorted(u, c)]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self.shape[0] > 4096:
            raise TopologyError(f"topology {self._topology.name!r} has {self.shape[0]} GPUs; materialising "
                                "its pair matrix is refused; use pair_matrices(gpus) on a subset")
        full = self._topology.pair_matrices(np.arange(self.shape[0]))[self._which]
        return full if dtype is None else full.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyPairMatrix({'bottleneck' if self._which == 0 else 'latency'}, shape={self.shape})"


# --------------------------------------------------------------------------- per-host tables
class _Local:
    """Routing tables of one host's local subgraph, shared by hosts with identical wiring.

    Local vertices are numbered with the host's GPUs first (``q`` of them, in GPU order)."""

    def __init__(self, kinds: np.ndarray, rails: np.ndarray, ports: np.ndarray, lu: np.ndarray, lv: np.ndarray,
                 cap: np.ndarray, lat: np.ndarray, tier: np.ndarray) -> None:
        self.m = len(kinds)
        self.q = int((kinds == _GPU).sum())
        self.kinds, self.rails, self.ports = kinds.tolist(), rails.tolist(), ports.tolist()
        self.cap, self.lat, self.tier = cap.tolist(), lat.tolist(), tier.tolist()
        self.out: list[list[tuple[int, int]]] = [[] for _ in range(self.m)]
        self.inn: list[list[tuple[int, int]]] = [[] for _ in range(self.m)]
        for e, (u, v) in enumerate(zip(lu.tolist(), lv.tolist())):
            self.out[u].append((v, e))
            self.inn[v].append((u, e))
        self._searches: dict[tuple[int, str], tuple[list, list, list, list]] = {}
        self._tables: dict[int, _Tables] = {}

    def search(self, src: int, mode: str) -> tuple[list[float], list[float], list[float], list[list[tuple[int, int]]]]:
        """``(hop, width, latency, preds)`` over local vertices from ``src``.

        Modes: ``nvlink`` (NVLink edges), ``local`` (no NIC), ``exit`` (towards ports), ``entry``
        (reverse: from every vertex *to* ``src``). GPUs other than ``src`` are not expanded.
        ``preds[v]``: ``(u, e)`` one step closer to ``src`` on a shortest path."""
        key = (src, mode)
        hit = self._searches.get(key)
        if hit is not None:
            return hit
        m, kinds, cap, lat, tier = self.m, self.kinds, self.cap, self.lat, self.tier
        adj = self.inn if mode == "entry" else self.out
        hop, width, delay = [_INF] * m, [0.0] * m, [_INF] * m
        preds: list[list[tuple[int, int]]] = [[] for _ in range(m)]
        hop[src], width[src], delay[src] = 0, _INF, 0.0
        frontier, k = [src], 0
        while frontier:
            nxt = []
            for u in frontier:
                for v, e in adj[u]:
                    if hop[v] < k + 1 or (mode == "nvlink" and tier[e] != _NVLINK) or (
                            mode == "local" and kinds[v] == _NIC):
                        continue
                    if hop[v] == _INF:
                        hop[v] = k + 1
                        nxt.append(v)
                    width[v] = max(width[v], min(width[u], cap[e]))
                    delay[v] = min(delay[v], delay[u] + lat[e])
                    preds[v].append((u, e))
            frontier = [v for v in nxt if kinds[v] != _GPU]
            k += 1
        hit = self._searches[key] = (hop, width, delay, preds)
        return hit

    def paths(self, src: int, dst: int, mode: str, limit: int) -> list[list[int]]:
        """Local edge paths ``src → dst`` (mode ``entry``: searched from ``dst``), at most ``limit``."""
        if mode == "entry":
            _, _, _, preds = self.search(dst, mode)
            return list(islice(_walk(preds, src, dst, reverse=False), limit))
        _, _, _, preds = self.search(src, mode)
        return list(islice(_walk(preds, dst, src, reverse=True), limit))

    def tables(self, n_rails: int) -> _Tables:
        hit = self._tables.get(n_rails)
        if hit is None:
            hit = self._tables[n_rails] = _Tables(self, n_rails)
        return hit


class _Tables:
    """Per-host pair tables: intra-host routes, PXN proxies, exit and entry ports."""

    def __init__(self, loc: _Local, n_rails: int) -> None:
        q = loc.q
        self.hop, self.width, self.lat = np.full((q, q), _INF), np.zeros((q, q)), np.full((q, q), _INF)
        self.nvl_hop, self.nvl_width, self.nvl_lat = self.hop.copy(), self.width.copy(), self.lat.copy()
        self.mode = np.full((q, q), "", dtype=object)
        for a in range(q):
            hn, wn, ln, _ = loc.search(a, "nvlink")
            self.nvl_hop[a], self.nvl_width[a], self.nvl_lat[a] = hn[:q], wn[:q], ln[:q]
            need = [b for b in range(q) if hn[b] == _INF]
            hl, wl, ll = (loc.search(a, "local")[:3] if need else (hn, wn, ln))
            for b in range(q):
                src = (hn, wn, ln, "nvlink") if hn[b] < _INF else (hl, wl, ll, "local")
                self.hop[a, b], self.width[a, b], self.lat[a, b], self.mode[a, b] = src[0][b], src[1][b], src[2][b], src[3]
        self.ok = np.isfinite(self.hop)
        # PXN proxy: the local GPU on rail r reachable over NVLink (lowest index), -1 if none
        rails = np.array(loc.rails[:q])
        self.proxy = np.full((q, max(n_rails, 1)), -1, dtype=np.int64)
        for a in range(q):
            for r in range(n_rails):
                cand = np.flatnonzero((rails == r) & np.isfinite(self.nvl_hop[a]))
                if cand.size:
                    self.proxy[a, r] = cand[0]
        self.exits = [_ports(loc, a, "exit") for a in range(q)]
        self.entries = [_ports(loc, a, "entry") for a in range(q)]
        self.exit1 = np.array([e[0][0] if e[0].size == 1 else -1 for e in self.exits], dtype=np.int64)
        self.entry1 = np.array([e[0][0] if e[0].size == 1 else -1 for e in self.entries], dtype=np.int64)


def _ports(loc: _Local, a: int, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(local port ids, hop, width, latency)`` GPU ``a`` leaves (exit) or is entered (entry) by:
    its own rail's ports when reachable, else the nearest ports."""
    hop, width, delay, _ = loc.search(a, mode)
    cand = [v for v in range(loc.m) if loc.ports[v] and hop[v] < _INF and (loc.kinds[v] != _GPU or v == a)]
    own = [v for v in cand if loc.rails[a] >= 0 and loc.rails[v] == loc.rails[a]]
    cand = own or cand
    if cand:
        best = min(hop[v] for v in cand)
        cand = [v for v in cand if hop[v] == best]
    ids = np.array(cand, dtype=np.int64)
    return (ids, np.array([hop[v] for v in cand], float), np.array([width[v] for v in cand], float),
            np.array([delay[v] for v in cand], float))


def _walk(preds: list[list[tuple[int, int]]], start: int, goal: int, *, reverse: bool) -> Iterator[list[int]]:
    """Edge paths from ``start`` following ``preds`` to ``goal`` (reversed when ``reverse``)."""
    stack: list[tuple[int, list[int]]] = [(start, [])]
    while stack:
        v, acc = stack.pop()
        if v == goal:
            yield acc[::-1] if reverse else acc
            continue
        for u, e in reversed(preds[v]):
            stack.append((u, acc + [e]))


# --------------------------------------------------------------------------- the topology
class Topology:
    """A cluster network: graph, routing policy and GPU-pair bottleneck / latency (module doc).

    Attributes:
        name: topology name.
        gpu: GPU preset name of every GPU.
        graph: ``networkx.DiGraph``; edges have ``bytes_per_s``, ``latency_s``, ``tier``. Do not
            mutate (``faults.apply_fault`` makes a changed copy).
        gpu_names: ``(G,)`` graph vertex of each GPU index.
        n_gpus: G.
        node_of: ``[G]`` int, host index of each GPU.
        pxn: whether PXN forwarding is on.
        lazy: True when the pair matrices are computed on demand.
        edge_list: the graph's directed edges in a fixed order (``flows.GraphRouter``'s links).
        bottleneck_bytes_per_s: ``[G, G]`` bytes/s, ``inf`` on the diagonal (``LazyPairMatrix``
            when lazy).
        latency_s: ``[G, G]`` seconds, 0 on the diagonal (``LazyPairMatrix`` when lazy).
        faults: the faults applied to get here (``faults.apply_fault``), oldest first.
    """

    def __init__(self, *, name: str, gpu: str, graph: nx.DiGraph | None = None, gpu_names: Sequence[str],
                 pxn: bool = False, lazy: bool | None = None, fat_tree: FatTree | None = None,
                 faults: tuple[Any, ...] = (), net: _Net | None = None,
                 router_caps: np.ndarray | None = None) -> None:
        self.name = name
        self.gpu = gpu
        if net is None:
            if graph is None:
                raise ValueError("give graph (or net)")
            net = _net_from_graph(graph, gpu_names)
        self._net = net
        self._graph = graph
        self._edge_list: list[tuple[str, str]] | None = None
        self.gpu_names = tuple(gpu_names)
        self.n_gpus = len(self.gpu_names)
        self.gpu_index = {g: i for i, g in enumerate(self.gpu_names)}
        self.pxn = bool(pxn)
        self.lazy = self.n_gpus > EAGER_MAX_GPUS if lazy is None else bool(lazy)
        self.faults = tuple(faults)
        self._fat_tree = fat_tree
        self._router_caps = None if router_caps is None else np.asarray(router_caps, dtype=np.float64)
        self._tree_router: tuple[Any, np.ndarray] | None = None
        self._index()
        self._check_links()
        self._structure()
        self._fabric_cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._port_cache: dict[tuple[int, str], list[tuple[int, float, list[list[int]]]]] = {}
        self._f_adj: tuple[list, list] | None = None
        self._b_of: np.ndarray | None = None
        self._fpath_cache: dict[tuple[int, int], list[list[int]]] = {}
        self._fpath_full: dict[tuple[int, int], int] = {}
        self._pair_cache: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._check_reachable()
        if self.lazy:
            self.bottleneck_bytes_per_s: np.ndarray | LazyPairMatrix = LazyPairMatrix(self, 0)
            self.latency_s: np.ndarray | LazyPairMatrix = LazyPairMatrix(self, 1)
        else:
            bw, lat = self._compute_pairs(np.arange(self.n_gpus))
            bw.setflags(write=False)
            lat.setflags(write=False)
            self.bottleneck_bytes_per_s, self.latency_s = bw, lat

    @classmethod
    def from_spec(cls, spec: TopologySpec, *, lazy: bool | None = None) -> Topology:
        """Build and check the graph; TopologyError names the device, link or GPUs at fault.

        ``lazy``: compute pair matrices on demand (default: above ``EAGER_MAX_GPUS`` GPUs)."""
        if spec.is_explicit:
            assert spec.devices is not None and spec.links is not None
            graph = _build_graph(spec.devices, spec.links)
            gpu_names = tuple(d.name for d in spec.devices if d.kind == "gpu")
            return cls(name=spec.name, gpu=spec.gpu, graph=graph, gpu_names=gpu_names, pxn=spec.pxn, lazy=lazy)
        net, tree = _expand(spec)
        return cls(name=spec.name, gpu=spec.gpu, net=net, gpu_names=net.names[: spec.nodes * spec.gpus_per_node],
                   pxn=spec.fabric.pxn_enabled, lazy=lazy, fat_tree=tree)

    @property
    def graph(self) -> nx.DiGraph:
        """The ``networkx.DiGraph`` (built on first use for topologies built from a spec)."""
        if self._graph is None:
            self._graph = self._net.graph()
        return self._graph

    @property
    def edge_list(self) -> list[tuple[str, str]]:
        """The directed edges ``(u, v)`` in a fixed order: ``flows.GraphRouter``'s links."""
        if self._edge_list is None:
            nm = self._net.names
            self._edge_list = [(nm[u], nm[v]) for u, v in zip(self._net.eu.tolist(), self._net.ev.tolist())]
        return self._edge_list

    def edge_table(self) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray, np.ndarray]:
        """``(edge_list, bytes_per_s [E], latency_s [E], tier names [E])`` (copies)."""
        return (self.edge_list, self._cap.copy(), self._lat.copy(), np.array(TIERS)[self._tier])

    def vertex_names(self) -> list[str]:
        """Every vertex name (GPUs first)."""
        return list(self._net.names)

    @property
    def n_nodes(self) -> int:
        """Number of hosts (distinct ``node_of`` values)."""
        return len(np.unique(self.node_of))

    # ----------------------------------------------------------------- public queries
    def pair_matrices(self, gpus: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(bottleneck [n, n] bytes/s, latency [n, n] s)`` between the GPUs ``gpus`` (in that
        order; inf / 0 on the diagonal). Fresh writable arrays; cached by GPU list when lazy."""
        g = np.asarray(gpus, dtype=np.int64).ravel()
        if g.size and (g.min() < 0 or g.max() >= self.n_gpus):
            raise IndexError(f"GPU index out of range [0, {self.n_gpus})")
        if not self.lazy:
            ix = np.ix_(g, g)
            return np.array(self.bottleneck_bytes_per_s[ix]), np.array(self.latency_s[ix])
        key = g.tobytes()
        hit = self._pair_cache.get(key)
        if hit is None:
            hit = self._pair_cache[key] = self._compute_pairs(g)
            while len(self._pair_cache) > 32:
                self._pair_cache.popitem(last=False)
        else:
            self._pair_cache.move_to_end(key)
        return hit[0].copy(), hit[1].copy()

    def bottleneck(self, gpus: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[n, n]`` bottleneck bytes/s between ``gpus`` (``pair_matrices(gpus)[0]``)."""
        return self.pair_matrices(gpus)[0]

    def latency(self, gpus: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[n, n]`` path latency (s) between ``gpus`` (``pair_matrices(gpus)[1]``)."""
        return self.pair_matrices(gpus)[1]

    def flow_router(self, *, max_paths: int = 64, ecmp: str = "split") -> Any:
        """The router ``flows.FlowNetwork`` uses: the vectorised ``generators.FatTreeRouter`` where
        this topology is a fat-tree of its model (and ECMP splits), else ``flows.GraphRouter``."""
        if self._fat_tree is not None and ecmp == "split":
            router = self._fat_tree.flow_router()
            if self._router_caps is not None:  # after faults that keep every route (faults.py)
                router.capacity_bytes_per_s = self._router_caps.copy()
            return router
        from moesim.network.flows import GraphRouter
        return GraphRouter(self, max_paths=max_paths, ecmp=ecmp)

    def routed_edge_paths(self, src: int, dst: int, limit: int = 64) -> list[list[int]]:
        """Up to ``limit`` routed shortest-hop paths ``src → dst`` as indices into ``edge_list``
        (empty for ``src == dst``); TopologyError if there is none."""
        if src == dst:
            return []
        s_node, d_node = int(self._gnode[src]), int(self._gnode[dst])
        if s_node == d_node:
            tpl = self._tables_of(s_node)
            a, b = int(self._glocal[src]), int(self._glocal[dst])
            if tpl.ok[a, b]:
                loc, edges = self._node_local[s_node], self._node_edges[s_node]
                return [[int(edges[e]) for e in p] for p in loc.paths(a, b, str(tpl.mode[a, b]), limit)]
            return self._cross_paths(src, dst, limit)
        p = self._pxn_candidate(src, dst)
        if p is not None:
            try:
                tail = self._cross_paths(p, dst, limit)
            except TopologyError:  # the proxy cannot reach dst: the source sends itself
                p = None
        if p is None:
            return self._cross_paths(src, dst, limit)
        loc, edges = self._node_local[s_node], self._node_edges[s_node]
        head = [[int(edges[e]) for e in q] for q in loc.paths(int(self._glocal[src]), int(self._glocal[p]), "nvlink", limit)]
        return [h + t for h, t in islice(product(head, tail), limit)]

    def shortest_paths(self, src: int, dst: int) -> Iterator[list[str]]:
        """The routed shortest-hop paths (vertex names) from GPU ``src`` to GPU ``dst``."""
        for path in self.routed_edge_paths(src, dst, limit=1 << 30):
            names = [self.edge_list[path[0]][0]] + [self.edge_list[e][1] for e in path]
            yield names

    def __repr__(self) -> str:
        return (f"Topology({self.name!r}, gpus={self.n_gpus}, nodes={self.n_nodes}, "
                f"vertices={len(self._vnames)}, edges={self._eu.size}"
                f"{', lazy' if self.lazy else ''}{', pxn' if self.pxn else ''})")

    # ----------------------------------------------------------------- indexing
    def _index(self) -> None:
        net = self._net
        self._vnames = net.names
        self._vid = {v: i for i, v in enumerate(net.names)}
        self._kind, self._vnode, self._rail = net.kind, net.node, net.rail
        self._eu, self._ev, self._cap, self._lat, self._tier = net.eu, net.ev, net.cap, net.lat, net.tier
        bad = ~((self._cap > 0) & np.isfinite(self._cap))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TopologyError(f"link {net.names[self._eu[i]]} -> {net.names[self._ev[i]]}: bandwidth must be a "
                                f"finite number > 0 bytes/s, got {self._cap[i]}")
        self.node_of = self._vnode[: self.n_gpus].copy()
        self.node_of.setflags(write=False)
        self._n_rails = int(self._rail[: self.n_gpus].max()) + 1 if self.n_gpus else 0

    def _check_links(self) -> None:
        deg = np.bincount(self._eu, minlength=len(self._vnames)) + np.bincount(self._ev, minlength=len(self._vnames))
        G = self.n_gpus  # GPUs without any link: reported (named) by _check_reachable
        self._isolated = np.flatnonzero(deg[:G] == 0) if G > 1 else np.zeros(0, np.int64)

    def _structure(self) -> None:
        """Hosts (local subgraphs and their shared tables), ports and the fabric search graph."""
        V, G = len(self._vnames), self.n_gpus
        node, eu, ev = self._vnode, self._eu, self._ev
        local_e = (node[eu] >= 0) & (node[eu] == node[ev])
        verts = np.flatnonzero(node >= 0)
        verts = verts[np.argsort(node[verts], kind="stable")]
        values, starts = np.unique(node[verts], return_index=True)
        dense = np.full(int(node.max()) + 2 if node.size else 1, -1, dtype=np.int64)
        dense[values] = np.arange(values.size)
        self._gnode = dense[node[:G]]
        lidx = np.full(V, -1, dtype=np.int64)
        bounds = np.append(starts, verts.size)
        for i in range(values.size):
            lidx[verts[bounds[i]: bounds[i + 1]]] = np.arange(bounds[i + 1] - bounds[i])
        self._glocal = lidx[:G]
        is_port = np.zeros(V, dtype=bool)
        far = ~local_e
        is_port[eu[far & (node[eu] >= 0)]] = True
        is_port[ev[far & (node[ev] >= 0)]] = True
        self._is_port = is_port
        # local edges grouped by host, ordered by (local u, local v)
        le = np.flatnonzero(local_e)
        le = le[np.lexsort((lidx[ev[le]], lidx[eu[le]], node[eu[le]]))]
        e_bounds = np.searchsorted(node[eu[le]], np.append(values, np.iinfo(np.int64).max))
        self._node_verts: list[np.ndarray] = []
        self._node_edges: list[np.ndarray] = []
        self._node_local: list[_Local] = []
        templates: dict[tuple[bytes, ...], _Local] = {}
        for i in range(values.size):
            vs = verts[bounds[i]: bounds[i + 1]]
            es = le[e_bounds[i]: e_bounds[i + 1]]
            parts = (self._kind[vs], self._rail[vs], is_port[vs], lidx[eu[es]], lidx[ev[es]], self._cap[es],
                     self._lat[es], self._tier[es])
            key = tuple(np.ascontiguousarray(p).tobytes() for p in parts)
            loc = templates.get(key)
            if loc is None:
                loc = templates[key] = _Local(*parts)
            self._node_verts.append(vs)
            self._node_edges.append(es)
            self._node_local.append(loc)
        self._templates = list(templates.values())
        ids = {id(loc): i for i, loc in enumerate(self._templates)}
        self._tpl_id = np.array([ids[id(loc)] for loc in self._node_local], dtype=np.int64)
        self._nvl: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._proxy: np.ndarray | None = None
        qmax = max([loc.q for loc in self._node_local] + [1])
        self._host_gpus = np.full((len(self._node_verts), qmax), -1, dtype=np.int64)
        for i, (vs, loc) in enumerate(zip(self._node_verts, self._node_local)):
            self._host_gpus[i, : loc.q] = vs[: loc.q]
        # fabric search graph: fabric vertices and ports; the edges that are not inside one host
        in_f = (node < 0) | is_port
        self._fverts = np.flatnonzero(in_f)
        self._fid = np.full(V, -1, dtype=np.int64)
        self._fid[self._fverts] = np.arange(self._fverts.size)
        fe = np.flatnonzero(far)
        fu, fv = self._fid[eu[fe]], self._fid[ev[fe]]
        order = np.argsort(fu, kind="stable")
        self._f_eid, self._f_dst = fe[order], fv[order]
        self._f_ptr = np.searchsorted(fu[order], np.arange(self._fverts.size + 1))
        rorder = np.argsort(fv, kind="stable")
        self._r_eid, self._r_src = fe[rorder], fu[rorder]
        self._r_ptr = np.searchsorted(fv[rorder], np.arange(self._fverts.size + 1))
        self._f_expand = node[self._fverts] < 0
        into_port = fe[(node[ev[fe]] >= 0) & (node[eu[fe]] < 0)]
        self._attach_in = np.unique(self._fid[eu[into_port]])  # fabric vertices with a link into a port
        self._attach_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._direct_ports = bool(((node[eu[fe]] >= 0) & (node[ev[fe]] >= 0)).any())

    def _tables_of(self, n: int) -> _Tables:
        return self._node_local[n].tables(self._n_rails)

    def _proxy_stack(self) -> np.ndarray:
        """PXN proxy local index ``[templates, q, rails]`` (-1: none), padded."""
        if self._proxy is None:
            q = max(loc.q for loc in self._templates)
            out = np.full((len(self._templates), q, max(self._n_rails, 1)), -1, dtype=np.int64)
            for i, loc in enumerate(self._templates):
                t = loc.tables(self._n_rails)
                out[i, : loc.q] = t.proxy
            self._proxy = out
        return self._proxy

    def _nvl_stack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """NVLink ``(hop, width, latency) [templates, q, q]`` (padded) for vectorised lookups."""
        if self._nvl is None:
            q = max(loc.q for loc in self._templates)
            out = [np.full((len(self._templates), q, q), _INF), np.zeros((len(self._templates), q, q)),
                   np.full((len(self._templates), q, q), _INF)]
            for i, loc in enumerate(self._templates):
                t = loc.tables(self._n_rails)
                out[0][i, : loc.q, : loc.q], out[1][i, : loc.q, : loc.q] = t.nvl_hop, t.nvl_width
                out[2][i, : loc.q, : loc.q] = t.nvl_lat
            self._nvl = (out[0], out[1], out[2])
        return self._nvl

    def _port_lists(self, gpus: np.ndarray, which: str) -> tuple[np.ndarray, ...]:
        """Padded ``[n, A]`` (port vertex id or -1, hop, width, latency) of the GPUs' exits / entries."""
        rows = []
        for g in gpus.tolist():
            n = int(self._gnode[g])
            t = self._tables_of(n)
            ids, h, w, lt = (t.exits if which == "exit" else t.entries)[int(self._glocal[g])]
            rows.append((self._node_verts[n][ids], h, w, lt))
        a = max([len(r[0]) for r in rows] + [1])
        out = [np.full((len(rows), a), -1, np.int64), np.full((len(rows), a), _INF),
               np.zeros((len(rows), a)), np.full((len(rows), a), _INF)]
        for i, r in enumerate(rows):
            k = len(r[0])
            for o, x in zip(out, r):
                o[i, :k] = x
        return tuple(out)

    # ----------------------------------------------------------------- fabric search
    def _fabric_search(self, starts: np.ndarray, keep: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(hop, width, latency) [S, F]`` from fabric-graph vertices ``starts`` (F ids) over the
        fabric graph: fabric vertices are expanded, ports only when they are the start. ``keep``
        ``[F]``: vertices that may be reached at all (default every one)."""
        nf = self._fverts.size
        ptr, dst, eid = self._f_ptr, self._f_dst, self._f_eid
        if keep is not None:
            ok_e = keep[dst]
            counts = np.add.reduceat(ok_e.astype(np.int64), ptr[:-1]) if dst.size else np.zeros(nf, np.int64)
            counts[np.diff(ptr) == 0] = 0
            ptr = np.concatenate([[0], np.cumsum(counts)])
            dst, eid = dst[ok_e], eid[ok_e]
        S = starts.size
        hop = np.full((S, nf), _INF)
        width = np.zeros((S, nf))
        delay = np.full((S, nf), _INF)
        rows = np.arange(S)
        hop[rows, starts], width[rows, starts], delay[rows, starts] = 0.0, _INF, 0.0
        hflat, wflat, lflat = hop.ravel(), width.ravel(), delay.ravel()
        cap, lat = self._cap, self._lat
        fr_s, fr_u, k = rows, starts.astype(np.int64), 0
        while fr_s.size:
            deg = ptr[fr_u + 1] - ptr[fr_u]
            total = int(deg.sum())
            if not total:
                break
            rep_s = np.repeat(fr_s, deg)
            rep_u = np.repeat(fr_u, deg)
            pos = np.repeat(ptr[fr_u] - (np.cumsum(deg) - deg), deg) + np.arange(total)
            flat = rep_s * nf + dst[pos]
            ok = hflat[flat] >= k + 1
            if not ok.any():
                break
            flat, pos, rep_u, rep_s = flat[ok], pos[ok], rep_u[ok], rep_s[ok]
            e = eid[pos]
            hflat[flat] = k + 1
            src_flat = rep_s * nf + rep_u
            np.maximum.at(wflat, flat, np.minimum(wflat[src_flat], cap[e]))
            np.minimum.at(lflat, flat, lflat[src_flat] + lat[e])
            reached = flat[self._f_expand[flat % nf]]
            if reached.size > hflat.size // 8:  # dense level: scan instead of sorting
                grow = np.flatnonzero((hflat == k + 1).reshape(S, nf)[:, self._f_expand].ravel())
                cols_e = np.flatnonzero(self._f_expand)
                fr_s, fr_u = grow // cols_e.size, cols_e[grow % cols_e.size]
            else:
                grow = np.unique(reached)
                fr_s, fr_u = grow // nf, grow % nf
            k += 1
        return hop, width, delay

    def _attach_rows(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fabric-only ``(hop, width, latency) [len(starts), B]`` from fabric vertices ``starts``
        (F ids) to the fabric vertices with a link into a port (``self._attach_in``), cached per start."""
        missing = np.array([a for a in starts.tolist() if a not in self._attach_cache], dtype=np.int64)
        if missing.size:
            nf = max(self._fverts.size, 1)
            step = max(1, _FABRIC_CELLS // nf)
            for lo in range(0, missing.size, step):
                chunk = missing[lo: lo + step]
                h, w, lt = self._fabric_search(chunk, self._f_expand)
                for i, a in enumerate(chunk.tolist()):
                    self._attach_cache[a] = (h[i, self._attach_in], w[i, self._attach_in], lt[i, self._attach_in])
        rows = [self._attach_cache[a] for a in starts.tolist()]
        return (np.array([r[0] for r in rows]).reshape(len(rows), -1), np.array([r[1] for r in rows]).reshape(len(rows), -1),
                np.array([r[2] for r in rows]).reshape(len(rows), -1))

    # ----------------------------------------------------------------- pair metrics
    def _options(self, gpus: np.ndarray, which: str) -> tuple[np.ndarray, ...]:
        """Per GPU, padded ``[n, O]`` ways into (exit) or out of (entry) the fabric: ``(fabric
        vertex F id or -1, hop, width, latency, port vertex, port hop, port width, port latency)``,
        one per (exit / entry port, fabric link of that port), the link included in hop, width and
        latency."""
        ports, ph, pw, pl = self._port_lists(gpus, which)
        ptr, nbr, eid = (self._f_ptr, self._f_dst, self._f_eid) if which == "exit" else (
            self._r_ptr, self._r_src, self._r_eid)
        n = gpus.size
        rows: list[list[tuple]] = [[] for _ in range(n)]
        valid = ports >= 0
        fp = np.where(valid, self._fid[np.maximum(ports, 0)], -1)
        deg = np.where(valid, ptr[fp + 1] - ptr[np.maximum(fp, 0)], 0)
        if deg.size and (deg == 1).all() and valid.all():  # the usual case: one fabric link per port
            pos = ptr[fp]
            f, e = nbr[pos], eid[pos]
            fab = self._f_expand[f]
            out = (np.where(fab, f, -1), np.where(fab, ph + 1.0, _INF), np.minimum(pw, self._cap[e]),
                   pl + self._lat[e], ports, ph, pw, pl)
            return out
        for i in range(n):
            for j in np.flatnonzero(valid[i]).tolist():
                f0 = fp[i, j]
                rows[i].append((-1, _INF, 0.0, _INF, ports[i, j], ph[i, j], pw[i, j], pl[i, j]))
                for k in range(ptr[f0], ptr[f0 + 1]):
                    f, e = int(nbr[k]), int(eid[k])
                    if self._f_expand[f]:
                        rows[i].append((f, ph[i, j] + 1.0, min(pw[i, j], self._cap[e]), pl[i, j] + self._lat[e],
                                        ports[i, j], ph[i, j], pw[i, j], pl[i, j]))
        width_o = max([len(r) for r in rows] + [1])
        out = [np.full((n, width_o), -1, np.int64), np.full((n, width_o), _INF), np.zeros((n, width_o)),
               np.full((n, width_o), _INF), np.full((n, width_o), -1, np.int64), np.full((n, width_o), _INF),
               np.zeros((n, width_o)), np.full((n, width_o), _INF)]
        for i, r in enumerate(rows):
            for j, vals in enumerate(r):
                for o, x in zip(out, vals):
                    o[i, j] = x
        return tuple(out)

    def _cross_pairs(self, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(hop, width, latency) [K]`` of the port-to-port route (no PXN) of pairs ``src[k] →
        dst[k]`` (GPU indices, any hosts): exit port, fabric (cached per attachment switch), entry port."""
        us, inv_s = np.unique(src, return_inverse=True)
        ud, inv_d = np.unique(dst, return_inverse=True)
        return self._cross_idx(us, inv_s.ravel(), ud, inv_d.ravel())

    def _cross_idx(self, us: np.ndarray, inv_s: np.ndarray, ud: np.ndarray, inv_d: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_cross_pairs`` of the pairs ``us[inv_s[k]] → ud[inv_d[k]]``."""
        K = inv_s.size
        hop, width, delay = np.full(K, _INF), np.zeros(K), np.full(K, _INF)
        if not K:
            return hop, width, delay
        src, dst = us[inv_s], ud[inv_d]
        ea, eh, ew, el, ep, eph, epw, epl = self._options(us, "exit")
        ib, ih, iw, il, ip, iph, ipw, ipl = self._options(ud, "entry")
        starts = np.unique(ea[ea >= 0])
        b_of = np.full(self._fverts.size + 1, -1, dtype=np.int64)
        b_of[self._attach_in] = np.arange(self._attach_in.size)
        bi = b_of[ib]  # ib = -1 maps to the sentinel -1
        if starts.size:
            th, tw, tl = self._attach_rows(starts)
            ai = np.searchsorted(starts, np.maximum(ea, 0))
        step = max(1, (1 << 22) // max(1, ea.shape[1] * ib.shape[1]))
        for lo in range(0, K, step):
            s_, d_ = inv_s[lo: lo + step], inv_d[lo: lo + step]
            a_ok = (ea[s_] >= 0)[:, :, None] & (bi[d_] >= 0)[:, None, :]
            cand = []
            if starts.size and a_ok.any():
                A_, B_ = ai[s_][:, :, None], np.maximum(bi[d_], 0)[:, None, :]
                h = np.where(a_ok, eh[s_][:, :, None] + th[A_, B_] + ih[d_][:, None, :], _INF)
                w = np.minimum(np.minimum(ew[s_][:, :, None], tw[A_, B_]), iw[d_][:, None, :])
                lt = el[s_][:, :, None] + tl[A_, B_] + il[d_][:, None, :]
                cand.append((h, w, lt))
            same = (ep[s_][:, :, None] == ip[d_][:, None, :]) & (ep[s_][:, :, None] >= 0)
            if same.any():  # leaving and entering at the same port
                cand.append((np.where(same, eph[s_][:, :, None] + iph[d_][:, None, :], _INF),
                             np.minimum(epw[s_][:, :, None], ipw[d_][:, None, :]),
                             epl[s_][:, :, None] + ipl[d_][:, None, :]))
            if not cand:
                continue
            h = np.concatenate([c[0].reshape(c[0].shape[0], -1) for c in cand], axis=1)
            w = np.concatenate([c[1].reshape(c[1].shape[0], -1) for c in cand], axis=1)
            lt = np.concatenate([c[2].reshape(c[2].shape[0], -1) for c in cand], axis=1)
            best = h.min(axis=1)
            on = (h == best[:, None]) & np.isfinite(h)
            hop[lo: lo + step] = best
            width[lo: lo + step] = np.where(on, w, 0.0).max(axis=1)
            delay[lo: lo + step] = np.where(on, lt, _INF).min(axis=1)
        if self._direct_ports:  # ports linked to ports of other hosts (explicit graphs): per pair
            for k in range(K):
                for h1, w1, l1 in self._direct_routes(int(src[k]), int(dst[k])):
                    if h1 < hop[k]:
                        hop[k], width[k], delay[k] = h1, w1, l1
                    elif h1 == hop[k]:
                        width[k], delay[k] = max(width[k], w1), min(delay[k], l1)
        return hop, width, delay

    def _direct_routes(self, src: int, dst: int) -> list[tuple[float, float, float]]:
        """Routes exit port → (one link) → entry port, for port-to-port links."""
        ep, eh, ew, el = (a[0] for a in self._port_lists(np.array([src]), "exit"))
        ip, ih, iw, il = (a[0] for a in self._port_lists(np.array([dst]), "entry"))
        out = []
        for i in np.flatnonzero(ep >= 0).tolist():
            f = int(self._fid[ep[i]])
            for k in range(self._f_ptr[f], self._f_ptr[f + 1]):
                v = int(self._fverts[self._f_dst[k]])
                e = int(self._f_eid[k])
                for j in np.flatnonzero(ip == v).tolist():
                    out.append((eh[i] + 1.0 + ih[j], min(ew[i], self._cap[e], iw[j]), el[i] + self._lat[e] + il[j]))
        return out

    def _tree_pairs(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_compute_pairs`` of a healthy fat-tree of ``FatTreeRouter``'s model, from its routes:
        the narrowest link member on the route, the route's latency (the same values as the search)."""
        tree = self._fat_tree
        assert tree is not None
        if self._tree_router is None:
            router = tree.flow_router()
            member = np.append(router.capacity_bytes_per_s, _INF)
            member[router.leaf_up0: -1] = tree.link_bytes_per_s  # a trunk's members are single links
            self._tree_router = (router, member)
        router, member = self._tree_router
        n = g.size
        width, delay = np.empty((n, n)), np.empty((n, n))
        step = max(1, (1 << 20) // max(n, 1))
        for lo in range(0, n, step):
            rows = g[lo: lo + step]
            src, dst = np.repeat(rows, n), np.tile(g, rows.size)
            routes = router.route(src, dst)
            width[lo: lo + step] = member[routes.incidence.links].min(axis=0).reshape(rows.size, n)
            delay[lo: lo + step] = routes.latency_s.reshape(rows.size, n)
        np.fill_diagonal(width, _INF)
        np.fill_diagonal(delay, 0.0)
        return width, delay

    def _compute_pairs(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bottleneck and latency ``[n, n]`` between GPUs ``g`` under the routing policy."""
        if self._fat_tree is not None and not self.faults:
            return self._tree_pairs(g)
        n = g.size
        hop, width, delay = np.full((n, n), _INF), np.zeros((n, n)), np.full((n, n), _INF)
        nd = self._gnode[g]
        li = self._glocal[g]
        for host in np.unique(nd):
            idx = np.flatnonzero(nd == host)
            t = self._tables_of(int(host))
            ix, lx = np.ix_(idx, idx), np.ix_(li[idx], li[idx])
            hop[ix], width[ix], delay[ix] = t.hop[lx], t.width[lx], t.lat[lx]
        same = nd[:, None] == nd[None, :]
        need = ~same | ~np.isfinite(hop)
        np.fill_diagonal(need, False)
        if need.any():
            r, c = np.nonzero(need)
            dh, dw, dl = self._cross_idx(g, r, g, c)
            if self.pxn:  # PXN: NVLink to the proxy on the destination's rail, then the proxy's route
                rail = self._rail[g]
                pm = (nd[r] != nd[c]) & (rail[r] >= 0) & (rail[c] >= 0) & (rail[r] != rail[c])
                if pm.any():
                    k = np.flatnonzero(pm)
                    tid = self._tpl_id[nd[r[k]]]
                    loc = self._proxy_stack()[tid, li[r[k]], rail[c[k]]]
                    k, loc = k[loc >= 0], loc[loc >= 0]
                    prox = self._host_gpus[nd[r[k]], loc]
                    up, inv_p = np.unique(prox, return_inverse=True)
                    ph, pw, pl = self._cross_idx(up, inv_p.ravel(), g, c[k])
                    ok = np.isfinite(ph)
                    k, loc, ph, pw, pl = k[ok], loc[ok], ph[ok], pw[ok], pl[ok]
                    sh, sw, sl = self._nvl_stack()
                    t2, la = self._tpl_id[nd[r[k]]], li[r[k]]
                    dh[k] = sh[t2, la, loc] + ph
                    dw[k] = np.minimum(sw[t2, la, loc], pw)
                    dl[k] = sl[t2, la, loc] + pl
            hop[r, c], width[r, c], delay[r, c] = dh, dw, dl
        np.fill_diagonal(width, _INF)
        np.fill_diagonal(delay, 0.0)
        width[~np.isfinite(hop) & ~np.eye(n, dtype=bool)] = 0.0
        return width, delay

    def _pxn_candidate(self, src: int, dst: int) -> int | None:
        """The PXN proxy for ``src → dst`` (different hosts; NVLink-reachable GPU of ``src``'s host
        on ``dst``'s rail), or None when PXN does not apply."""
        if not self.pxn:
            return None
        rs, rd = int(self._rail[src]), int(self._rail[dst])
        if rs < 0 or rd < 0 or rs == rd:
            return None
        n = int(self._gnode[src])
        loc = int(self._tables_of(n).proxy[int(self._glocal[src]), rd])
        return None if loc < 0 else int(self._node_verts[n][loc])

    def _gpu_ports(self, g: int, which: str) -> list[tuple[int, float, list[list[int]]]]:
        """``[(port vertex, hop, local edge paths)]`` GPU ``g`` exits (or is entered) by (cached);
        paths run GPU → port (exit) or port → GPU (entry), as global edge ids."""
        key = (g, which)
        hit = self._port_cache.get(key)
        if hit is None:
            n, a = int(self._gnode[g]), int(self._glocal[g])
            t, loc, verts, edges = self._tables_of(n), self._node_local[n], self._node_verts[n], self._node_edges[n]
            ids, hops, _, _ = (t.exits if which == "exit" else t.entries)[a]
            hit = []
            for lp, h in zip(ids.tolist(), hops.tolist()):
                src, dst = (a, lp) if which == "exit" else (lp, a)
                paths = [[int(edges[e]) for e in q] for q in loc.paths(src, dst, which, 1 << 16)]
                hit.append((int(verts[lp]), h, paths))
            self._port_cache[key] = hit
        return hit

    def _f_links(self, f: int, out: bool) -> list[tuple[int, int]]:
        """Fabric-graph neighbours ``[(F id, edge id)]`` of F vertex ``f`` (out- or in-links)."""
        if self._f_adj is None:
            nf = self._fverts.size
            fo: list[list[tuple[int, int]]] = [[] for _ in range(nf)]
            fi: list[list[tuple[int, int]]] = [[] for _ in range(nf)]
            src_of = np.repeat(np.arange(nf), np.diff(self._f_ptr))
            for u, v, e in zip(src_of.tolist(), self._f_dst.tolist(), self._f_eid.tolist()):
                fo[u].append((v, e))
                fi[v].append((u, e))
            self._f_adj = (fo, fi)
        return self._f_adj[0 if out else 1][f]

    def _cross_paths(self, src: int, dst: int, limit: int) -> list[list[int]]:
        """Port-to-port routed paths ``src → dst`` (edge ids), at most ``limit``; TopologyError if none."""
        exits, entries = self._gpu_ports(src, "exit"), self._gpu_ports(dst, "entry")
        b_of = self._b_index()
        combos: list[tuple[float, int, int, int, int, int, int]] = []  # hop, exit, out edge, a, b, in edge, entry
        for i, (p, hp, _) in enumerate(exits):
            outs = self._f_links(int(self._fid[p]), True)
            fab = [(a, e) for a, e in outs if self._f_expand[a]]
            rows = self._attach_rows(np.array(sorted({a for a, _ in fab}), dtype=np.int64)) if fab else None
            order = {a: k for k, a in enumerate(sorted({a for a, _ in fab}))}
            for j, (x, hx, _) in enumerate(entries):
                if x == p:
                    combos.append((hp + hx, i, -1, -1, -1, -1, j))
                fx = int(self._fid[x])
                for b, eb in self._f_links(fx, False):
                    if self._f_expand[b]:
                        for a, ea in fab:
                            assert rows is not None
                            h = rows[0][order[a], b_of[b]]
                            combos.append((hp + 2.0 + h + hx, i, ea, a, b, eb, j))
                    elif int(self._fverts[b]) == p:  # a port-to-port link
                        combos.append((hp + 1.0 + hx, i, eb, -1, -1, -1, j))
        best = min([c[0] for c in combos] + [_INF])
        if not math.isfinite(best):
            raise TopologyError(f"{self.gpu_names[src]} cannot reach {self.gpu_names[dst]} in topology {self.name!r}")
        out: list[list[int]] = []
        for h, i, ea, a, b, eb, j in combos:
            if h != best:
                continue
            mids = [[ea] + m + [eb] for m in self._fabric_only_paths(a, b, limit)] if a >= 0 else (
                [[ea]] if ea >= 0 else [[]])
            for hd, md, tl in product(exits[i][2], mids, entries[j][2]):
                out.append(hd + md + tl)
                if len(out) >= limit:
                    return out
        return out

    def _b_index(self) -> np.ndarray:
        if self._b_of is None:
            self._b_of = np.full(self._fverts.size + 1, -1, dtype=np.int64)
            self._b_of[self._attach_in] = np.arange(self._attach_in.size)
        return self._b_of

    def _fabric_only_paths(self, a: int, b: int, limit: int) -> list[list[int]]:
        """Shortest fabric-only edge paths between fabric vertices ``a`` and ``b`` (F ids), cached."""
        key = (a, b)
        hit = self._fpath_cache.get(key)
        if hit is None or len(hit) < min(limit, self._fpath_full.get(key, limit)):
            row = self._fabric_row_from(a)
            hit = []
            stack: list[tuple[int, list[int]]] = [(b, [])]
            while stack and len(hit) < limit:
                v, acc = stack.pop()
                if v == a:
                    hit.append(acc[::-1])
                    continue
                for u, e in reversed(self._f_links(v, False)):
                    if self._f_expand[u] and row[u] == row[v] - 1:
                        stack.append((u, acc + [e]))
            self._fpath_full[key] = len(hit) if len(hit) < limit else 1 << 30
            self._fpath_cache[key] = hit
        return hit[:limit]

    def _fabric_row_from(self, a: int) -> np.ndarray:
        """Fabric-only hop row ``[F]`` from fabric vertex ``a`` (LRU cached)."""
        hit = self._fabric_cache.get(a)
        if hit is None:
            hit = self._fabric_cache[a] = self._fabric_search(np.array([a]), self._f_expand)
            while len(self._fabric_cache) > 256:
                self._fabric_cache.popitem(last=False)
        else:
            self._fabric_cache.move_to_end(a)
        return hit[0][0]

    # ----------------------------------------------------------------- reachability
    def _check_reachable(self) -> None:
        """PartitionError naming the cut-off GPUs when some GPU pair has no routed path.

        GPUs are grouped by the fabric components their exit ports reach and their entry ports
        are reached from (and, with PXN, their proxies' exits); pairs are decided per group pair,
        pairs inside one host by the host's tables (or, failing those, through the fabric)."""
        G = self.n_gpus
        if G <= 1:
            return
        leave_cls, reach_cls, sets, index = self._port_classes()
        xs = np.full(G, -1, dtype=np.int64)
        yd = np.full(G, -1, dtype=np.int64)
        R = self._n_rails if self.pxn else 0
        via = np.full((G, max(R, 1)), -1, dtype=np.int64)

        def union(ids: list[int], cls: np.ndarray) -> int:
            tok = frozenset().union(*(sets[int(cls[p])] for p in ids))
            return index.setdefault(tok, len(index)) if tok not in index else index[tok]

        for n, verts in enumerate(self._node_verts):
            t = self._tables_of(n)
            q = t.exit1.size
            gids = verts[:q]
            one = t.exit1 >= 0
            xs[gids[one]] = leave_cls[verts[t.exit1[one]]]
            for a in np.flatnonzero(~one).tolist():
                xs[gids[a]] = union(verts[t.exits[a][0]].tolist(), leave_cls)
            one = t.entry1 >= 0
            yd[gids[one]] = reach_cls[verts[t.entry1[one]]]
            for a in np.flatnonzero(~one).tolist():
                yd[gids[a]] = union(verts[t.entries[a][0]].tolist(), reach_cls)
        while len(sets) < len(index):
            sets.append(frozenset())
        for tok, i in index.items():
            sets[i] = tok
        if R:
            for n, verts in enumerate(self._node_verts):
                t = self._tables_of(n)
                loc = t.proxy[:, :R]
                gids = verts[: loc.shape[0]]
                via[gids, :R] = np.where(loc >= 0, xs[verts[np.maximum(loc, 0)]], -1)
        rail = self._rail[:G] if R else np.full(G, -1, dtype=np.int64)
        meet_cache: dict[tuple[int, int], bool] = {}

        def meet(a: int, b: int) -> bool:
            hit = meet_cache.get((a, b))
            if hit is None:
                hit = meet_cache[(a, b)] = bool(sets[a] & sets[b])
            return hit

        src_rows, s_id = np.unique(np.column_stack([xs, rail, via]), axis=0, return_inverse=True)
        dst_rows, d_id = np.unique(np.column_stack([yd, rail]), axis=0, return_inverse=True)
        s_id, d_id = s_id.ravel(), d_id.ravel()
        good = np.zeros((len(src_rows), len(dst_rows)), dtype=bool)
        for i, (x, rs, *vv) in enumerate(src_rows.tolist()):
            for j, (y, rd) in enumerate(dst_rows.tolist()):
                ok = meet(x, y)
                if not ok and R and rs >= 0 and rd >= 0 and rs != rd and vv[rd] >= 0:
                    ok = meet(vv[rd], y)
                good[i, j] = ok
        n_bad = 0
        row_bad: dict[int, np.ndarray] = {}  # the example source's unreachable GPUs
        bad_out = np.zeros(G, dtype=np.int64)
        bad_in = np.zeros(G, dtype=np.int64)
        example: tuple[int, int] | None = None
        nodes = self._gnode
        n_hosts = len(self._node_verts)
        for i, j in zip(*np.nonzero(~good)):
            A, B = np.flatnonzero(s_id == i), np.flatnonzero(d_id == j)
            cb = np.bincount(nodes[B], minlength=n_hosts)
            ca = np.bincount(nodes[A], minlength=n_hosts)
            out = B.size - cb[nodes[A]]
            if not out.sum():
                continue
            bad_out[A] += out
            bad_in[B] += A.size - ca[nodes[B]]
            n_bad += int(out.sum())
            if example is None:
                a = int(A[np.flatnonzero(out)[0]])
                example = (a, int(B[np.flatnonzero(nodes[B] != nodes[a])[0]]))
            if example[0] in A:
                a = example[0]
                row_bad.setdefault(a, np.zeros(G, dtype=bool))[B[nodes[B] != nodes[a]]] = True
        for h in range(n_hosts):  # pairs inside one host: local route, else through the fabric
            idx = np.flatnonzero(nodes == h)
            if idx.size < 2:
                continue
            t = self._tables_of(h)
            ok = t.ok[np.ix_(self._glocal[idx], self._glocal[idx])]
            if ok.all():
                continue
            for r, c in zip(*np.nonzero(~ok)):
                ok[r, c] = meet(int(xs[idx[r]]), int(yd[idx[c]]))
            if not ok.all():
                r, c = np.nonzero(~ok)
                np.add.at(bad_out, idx[r], 1)
                np.add.at(bad_in, idx[c], 1)
                n_bad += r.size
                if example is None:
                    example = (int(idx[r[0]]), int(idx[c[0]]))
                hit = idx[r] == example[0]
                if hit.any():
                    row_bad.setdefault(example[0], np.zeros(G, dtype=bool))[idx[c[hit]]] = True
        if not n_bad:
            return
        assert example is not None
        unreachable = row_bad.get(example[0], np.zeros(G, dtype=bool))
        raise self._partition_error(bad_out, bad_in, n_bad, example, unreachable)

    def _port_classes(self) -> tuple[np.ndarray, np.ndarray, list[frozenset], dict[frozenset, int]]:
        """Per vertex, the class of the token set a port reaches leaving it (the fabric components
        reachable from its fabric neighbours; ports it links to directly) and of the set reaching
        it (its fabric neighbours' components; itself when a port links to it); -1 off ports.
        Returns ``(leave_cls [V], reach_cls [V], class sets, set -> class)``."""
        fverts, expand = self._fverts, self._f_expand
        ptr, dst, rptr, rsrc = self._f_ptr, self._f_dst, self._r_ptr, self._r_src
        core = np.flatnonzero(expand)
        src_of = np.repeat(np.arange(fverts.size), np.diff(ptr))
        both = expand[src_of] & expand[dst]
        cg = nx.DiGraph()
        cg.add_nodes_from(core.tolist())
        cg.add_edges_from(zip(src_of[both].tolist(), dst[both].tolist()))
        cond = nx.condensation(cg)
        scc = cond.graph["mapping"]
        closure: dict[int, frozenset] = {}

        def reach(c: int) -> frozenset:
            hit = closure.get(c)
            if hit is None:
                hit = closure[c] = frozenset(nx.descendants(cond, c) | {c})
            return hit

        index: dict[frozenset, int] = {}
        V = len(self._vnames)
        leave_cls = np.full(V, -1, dtype=np.int64)
        reach_cls = np.full(V, -1, dtype=np.int64)
        memo_l: dict[tuple, int] = {}
        memo_r: dict[tuple, int] = {}
        for f in np.flatnonzero(~expand).tolist():
            outs = dst[ptr[f]: ptr[f + 1]].tolist()
            key = tuple(scc[v] if expand[v] else -1 - int(fverts[v]) for v in outs)
            c = memo_l.get(key)
            if c is None:
                tok = frozenset().union(*(reach(x) if x >= 0 else {x} for x in key))
                c = memo_l[key] = index.setdefault(tok, len(index))
            leave_cls[fverts[f]] = c
            ins = rsrc[rptr[f]: rptr[f + 1]].tolist()
            key = tuple(sorted({scc[u] for u in ins if expand[u]})) + ((-1 - int(fverts[f]),) if not all(
                expand[u] for u in ins) else ())
            c = memo_r.get(key)
            if c is None:
                c = memo_r[key] = index.setdefault(frozenset(key), len(index))
            reach_cls[fverts[f]] = c
        sets = [frozenset()] * len(index)
        for tok, i in index.items():
            sets[i] = tok
        return leave_cls, reach_cls, sets, index

    def _partition_error(self, bad_out: np.ndarray, bad_in: np.ndarray, n_bad: int,
                         example: tuple[int, int], unreachable: np.ndarray) -> PartitionError:
        """The cut-off GPUs: those in the most unreachable pairs; when that is every GPU (the
        network splits evenly), the side the example's source cannot reach."""
        G = self.n_gpus
        score = bad_out + bad_in
        cut = np.flatnonzero(score == score.max())
        if cut.size == G:
            cut = np.flatnonzero(unreachable) if unreachable.any() else np.array([example[1]])
        names = _name_ranges(self, cut)
        src, dst = example
        alone = ", ".join(repr(self.gpu_names[g]) for g in self._isolated[:8]) + (" ..." if self._isolated.size > 8 else "")
        lead = (f"gpu {alone} {'has' if self._isolated.size == 1 else 'have'} no links, so no other GPU can reach "
                f"{'it' if self._isolated.size == 1 else 'them'}; " if self._isolated.size else "")
        msg = (f"{lead}topology {self.name!r} is partitioned: {names} cut off "
               f"({n_bad} of {G * (G - 1)} ordered GPU pairs unreachable, e.g. "
               f"{self.gpu_names[dst]} is unreachable from {self.gpu_names[src]}); "
               "check the links of the GPUs cut off, their NICs and the fabric between them")
        return PartitionError(msg, cut_off=cut.tolist(), n_unreachable=n_bad, example=example)


def _name_ranges(topo: Topology, gpus: np.ndarray) -> str:
    """``gpu8..gpu15 (host 1)``-style list of GPU names (runs of consecutive indices)."""
    parts: list[str] = []
    gl = sorted(int(g) for g in gpus)
    i = 0
    while i < len(gl):
        j = i
        while j + 1 < len(gl) and gl[j + 1] == gl[j] + 1 and topo.node_of[gl[j + 1]] == topo.node_of[gl[i]]:
            j += 1
        name = topo.gpu_names[gl[i]] if i == j else f"{topo.gpu_names[gl[i]]}..{topo.gpu_names[gl[j]]}"
        parts.append(f"{name} (host {int(topo.node_of[gl[i]])})")
        i = j + 1
    shown = ", ".join(parts[:12]) + (f" and {len(parts) - 12} more runs" if len(parts) > 12 else "")
    return ("GPU " if len(gl) == 1 else "GPUs ") + shown + (" is" if len(gl) == 1 else " are")


def infer_tier(graph: nx.DiGraph, u: str, v: str) -> str:
    """Tier of an edge without a ``tier`` attribute, from its ends' kinds and names."""
    ends = [(x, graph.nodes[x].get("kind")) for x in (u, v)]
    if any(k == "switch" and "nvswitch" in x.lower() for x, k in ends):
        return "nvlink"
    if all(k == "cpu" for _, k in ends):
        return "host"
    if any(k == "cpu" or (k == "switch" and "pcie" in x.lower()) for x, k in ends):
        return "pcie"
    if any(k == "nic" for _, k in ends):
        return "nic"
    return "fabric"


# --------------------------------------------------------------------------- parametric → graph
class _Builder:
    """Vertices and duplex links collected straight into arrays (``_Net``)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        self.kind: list[int] = []
        self.node: list[int] = []
        self.rail: list[int] = []
        self.eu: list[int] = []
        self.ev: list[int] = []
        self.cap: list[float] = []
        self.lat: list[float] = []
        self.tier: list[int] = []

    def vertex(self, name: str, kind: str, node: int | None = None, rail: int | None = None) -> None:
        self.ids[name] = len(self.names)
        self.names.append(name)
        self.kind.append(_KIND[kind])
        self.node.append(-1 if node is None else node)
        self.rail.append(-1 if rail is None else rail)

    def link(self, u: str, v: str, bandwidth: float, latency: float, tier: str) -> None:
        i, j = self.ids[u], self.ids[v]
        self.eu += (i, j)
        self.ev += (j, i)
        self.cap += (bandwidth, bandwidth)
        self.lat += (latency, latency)
        t = _TIER[tier]
        self.tier += (t, t)

    def net(self) -> _Net:
        return _Net(self.names, np.array(self.kind, np.int8), np.array(self.node, np.int64),
                    np.array(self.rail, np.int64), np.array(self.eu, np.int64), np.array(self.ev, np.int64),
                    np.array(self.cap, np.float64), np.array(self.lat, np.float64), np.array(self.tier, np.int8))


def _positive(spec: TopologySpec, field: str, value: float | None) -> float:
    if value is None or not (value > 0 and math.isfinite(value)):
        raise TopologyError(f"topology {spec.name!r}: {field} must be a finite number > 0 bytes/s, got {value}")
    return float(value)


def _expand(spec: TopologySpec) -> tuple[_Net, FatTree | None]:
    """The graph of a parametric spec as arrays (see the module doc for the names; GPUs first), and
    the ``FatTree`` whose router reproduces its routes (leaf-spine / fat-tree of that model) or None."""
    from moesim.network.generators import FatTree

    assert spec.nodes is not None
    N, g, k = spec.nodes, spec.gpus_per_node, spec.nics_per_node
    intra, host, fabric = spec.intra_node, spec.host, spec.fabric
    if intra is not None:
        _positive(spec, "intra_node.bandwidth", intra.bandwidth)
    nic_bw = _positive(spec, "nic_bandwidth", spec.nic_bandwidth) if k else 0.0
    hb = _positive(spec, "host.bandwidth", host.bandwidth) if host is not None else 0.0
    up_bw = (_positive(spec, "host.uplink_bandwidth", hb if host.uplink_bandwidth is None else host.uplink_bandwidth)
             if host is not None else 0.0)
    hn_bw = (_positive(spec, "host.nic_link_bandwidth", hb if host.nic_link_bandwidth is None else host.nic_link_bandwidth)
             if host is not None else 0.0)
    cpu_bw = (_positive(spec, "host.cpu_link_bandwidth", host.cpu_link_bandwidth)
              if host is not None and host.cpu_link_bandwidth is not None else None)
    tiered = fabric.kind in ("leaf_spine", "fat_tree")
    link_bw = (_positive(spec, "fabric.link_bandwidth", nic_bw if fabric.link_bandwidth is None else fabric.link_bandwidth)
               if tiered else 0.0)
    quarter = fabric.latency / 4.0  # GPU→NIC→switch→NIC→GPU
    gpn = g // k if k else g
    b = _Builder()
    pcie_nic_lat = 0.0
    for n in range(N):
        for i in range(g):
            b.vertex(f"gpu{n * g + i}", "gpu", n, rail=i // gpn if k else None)
    for n in range(N):
        gpus = [f"gpu{n * g + i}" for i in range(g)]
        if g > 1 and intra is not None:
            sw = f"node{n}.{intra.kind}"
            b.vertex(sw, "switch", n)
            tier = "nvlink" if intra.kind == "nvswitch" else "pcie"
            for name in gpus:
                b.link(name, sw, intra.bandwidth, intra.latency / 2.0, tier)
        if host is not None:
            per_cpu = host.gpus_per_cpu or g
            for c in range(g // per_cpu):
                b.vertex(f"node{n}.cpu{c}", "cpu", n)
            if host.link == "pcie":
                gps = host.gpus_per_switch
                for s in range(g // gps):
                    b.vertex(f"node{n}.pcie{s}", "switch", n)
                    b.link(f"node{n}.pcie{s}", f"node{n}.cpu{s * gps // per_cpu}", up_bw, host.latency / 2.0, "pcie")
                for i, name in enumerate(gpus):
                    b.link(name, f"node{n}.pcie{i // gps}", hb, host.latency / 2.0, "pcie")
                pcie_nic_lat = max(0.0, quarter - host.latency / 2.0)
            else:
                for i, name in enumerate(gpus):
                    b.link(name, f"node{n}.cpu{i // per_cpu}", hb, host.latency / 2.0, "c2c")
            if cpu_bw is not None:
                n_cpu = g // per_cpu
                for c in range(n_cpu):
                    for c2 in range(c + 1, n_cpu):
                        b.link(f"node{n}.cpu{c}", f"node{n}.cpu{c2}", cpu_bw, host.cpu_link_latency, "host")
        for j in range(k):
            nic = f"node{n}.nic{j}"
            b.vertex(nic, "nic", n, rail=j)
            if host is not None and host.link == "pcie":
                b.link(f"node{n}.pcie{j * gpn // host.gpus_per_switch}", nic, hn_bw, pcie_nic_lat, "pcie")
            else:
                for i in range(j * gpn, (j + 1) * gpn):
                    b.link(gpus[i], nic, nic_bw, quarter, "nic")
    tree: FatTree | None = None
    if fabric.kind == "single_switch":
        b.vertex("fabric.switch", "switch")
        for n in range(N):
            for j in range(k):
                b.link(f"node{n}.nic{j}", "fabric.switch", nic_bw, quarter, "nic")
    elif fabric.kind == "rail_optimized":
        for j in range(k):
            b.vertex(f"rail{j}", "switch")
        for n in range(N):
            for j in range(k):
                b.link(f"node{n}.nic{j}", f"rail{j}", nic_bw, quarter, "nic")
    elif tiered:
        down, up = fabric_layout(fabric, nic_bw)
        radix = fabric.leaf_radix or (down + up if fabric.kind == "leaf_spine" else 64)
        kw = dict(gpus_per_node=k, nic_bytes_per_s=nic_bw, nvlink_bytes_per_s=intra.bandwidth if intra else 1.0,
                  leaf_radix=radix, oversubscription=fabric.oversubscription, pxn=fabric.pxn_enabled,
                  nvlink_latency_s=intra.latency if intra else 0.0, hop_latency_s=fabric.hop_latency,
                  nic_latency_s=fabric.latency / 2.0, link_bytes_per_s=link_bw, leaf_down=down, leaf_up=up,
                  spine_radix=(1 << 62) if fabric.kind == "leaf_spine" else None, build_graph=False,
                  name=spec.name, gpu=spec.gpu)
        try:
            layout = FatTree(n_gpus=N * k, nic_vertices=True, **kw)  # type: ignore[arg-type]
        except ValueError as e:
            raise TopologyError(f"topology {spec.name!r}: {e}") from None
        if fabric.kind == "leaf_spine" and layout.tiers != 2:
            raise TopologyError(f"topology {spec.name!r}: leaf_spine came out with {layout.tiers} tiers")
        for leaf in np.unique(layout.leaf_of).tolist():
            b.vertex(f"leaf{leaf}", "switch")
        for n in range(N):
            for j in range(k):
                b.link(f"node{n}.nic{j}", f"leaf{layout.leaf_of[n * k + j]}", nic_bw, quarter, "nic")
        ups, cores = layout.fabric_edges()
        for name in dict.fromkeys([v for _, v in ups] + [v for _, v in cores]):
            b.vertex(name, "switch")
        for u, v in ups:
            b.link(u, v, link_bw, fabric.hop_latency, "leaf")
        for u, v in cores:
            b.link(u, v, link_bw, fabric.hop_latency, "core")
        compatible = (k == g and (host is None or host.link == "c2c")
                      and (g == 1 or (intra is not None and intra.kind == "nvswitch")))
        if compatible:
            tree = layout  # same layout: GPU i is port i
    return b.net(), tree


# --------------------------------------------------------------------------- explicit → graph
def _build_graph(devices: tuple[DeviceSpec, ...] | list[DeviceSpec],
                 links: tuple[LinkSpec, ...] | list[LinkSpec]) -> nx.DiGraph:
    """A DiGraph of the devices and links; TopologyError on duplicates, dangling or bad links."""
    graph = nx.DiGraph()
    for d in devices:
        if d.name in graph:
            raise TopologyError(f"device {d.name!r} is defined twice")
        node = d.node if d.node is not None or d.kind == "switch" else 0
        attrs: dict[str, Any] = {"kind": d.kind, "node": node}
        if d.rail is not None:
            attrs["rail"] = d.rail
        graph.add_node(d.name, **attrs)
    if not any(d.kind == "gpu" for d in devices):
        raise TopologyError("the topology has no GPU (add a device with kind: gpu)")
    for n, link in enumerate(links):
        where = f"link {n} ({link.src} -> {link.dst})"
        for end in (link.src, link.dst):
            if end not in graph:
                raise TopologyError(f"{where} names undefined device {end!r}; define it under devices")
        if link.src == link.dst:
            raise TopologyError(f"{where} connects device {link.src!r} to itself")
        if not (link.bandwidth > 0 and math.isfinite(link.bandwidth)):
            raise TopologyError(f"{where}: bandwidth must be a finite number > 0 bytes/s, got {link.bandwidth}")
        pairs = [(link.src, link.dst), (link.dst, link.src)] if link.duplex else [(link.src, link.dst)]
        tier = link.tier or infer_tier(graph, link.src, link.dst)
        for u, v in pairs:
            if graph.has_edge(u, v):
                raise TopologyError(f"{where}: devices {u!r} -> {v!r} are already linked; merge the links")
            graph.add_edge(u, v, bytes_per_s=float(link.bandwidth), latency_s=float(link.latency), tier=tier)
    for d in devices:
        if d.kind != "gpu" and graph.degree(d.name) == 0:
            raise TopologyError(f"{d.kind} {d.name!r} has no links (dangling); connect it or remove it")
    return graph
