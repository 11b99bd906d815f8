"""A ``TopologySpec`` as a directed graph, with the routing policy and GPU-pair bottleneck / latency.

**Graph.** Vertices are GPUs, switches, NICs and CPUs (attribute ``kind``); GPUs, NICs, CPUs and
host-internal switches carry ``node`` (the host index), fabric switches ``node=None``; GPUs and NICs
may carry ``rail`` (the NIC index, for PXN). Every directed edge carries ``bytes_per_s`` (capacity
in that direction), ``latency_s`` (one-way latency of the hop) and ``tier`` (nvlink, pcie, c2c,
host, nic, leaf, core, fabric). A duplex link is two edges. Vertex names: ``spec_graph``.

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

**Modules.** ``Topology`` (here) holds the graph's arrays, the host and fabric structure and the
public queries; the work is done by concept:

* ``graph_arrays``: the graph as arrays (``_Net``), edge tiers, ``infer_tier``;
* ``spec_graph``: a ``TopologySpec`` → graph (parametric expansion, explicit devices and links);
* ``host_tables``: per-host routing tables (intra-host routes, PXN proxies, exit / entry ports);
* ``fabric``: the search of the fabric between ports (vectorised breadth-first search, cached);
* ``pair_matrices``: GPU-pair bottleneck / latency (``compute_pairs``) and ``LazyPairMatrix``;
* ``paths``: routed edge paths between two GPUs (``flows.GraphRouter``'s);
* ``reachability``: the partition check at build time.

**Checks.** Building raises ``TopologyError`` for bad capacities and ``PartitionError`` (a
``TopologyError``) when some GPU pair has no path under the policy; the error names the GPUs cut
off (``reachability``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from moesim.config.topology import TopologySpec
from moesim.core.errors import TopologyError
from moesim.network.graph_arrays import TIERS, _Net, _net_from_graph, infer_tier
from moesim.network.host_tables import _Local, _Tables
from moesim.network.pair_matrices import LazyPairMatrix, compute_pairs
from moesim.network.paths import routed_edge_paths
from moesim.network.reachability import PartitionError, check_reachable
from moesim.network.spec_graph import _build_graph, _expand

if TYPE_CHECKING:
    from moesim.network.generators import FatTree

__all__ = ["EAGER_MAX_GPUS", "TIERS", "LazyPairMatrix", "PartitionError", "Topology", "infer_tier"]

EAGER_MAX_GPUS = 1024
"""Topologies with more GPUs are lazy: no ``[G, G]`` matrices are built (see module doc)."""


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
            bw, lat = compute_pairs(self, np.arange(self.n_gpus))
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
            hit = self._pair_cache[key] = compute_pairs(self, g)
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
        return routed_edge_paths(self, src, dst, limit)

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

    # ----------------------------------------------------------------- reachability
    def _check_reachable(self) -> None:
        """PartitionError naming the cut-off GPUs when some GPU pair has no routed path
        (``reachability.check_reachable``)."""
        check_reachable(self)
