"""Large rail-optimised fat-trees built directly, with a vectorised flow router.

Why a separate class: ``moesim.config.topology`` has no leaf-spine fabric, and ``Topology.__init__``
precomputes ``[G, G]`` bottleneck and latency matrices with one BFS per GPU: at 16,384 GPUs that is
2 × 2 GiB and minutes. ``FatTree`` carries what ``FlowNetwork`` / ``FlowCollectives`` use (``name``,
``gpu``, ``graph``, ``gpu_names``, ``gpu_index``, ``n_gpus``, ``node_of``, ``n_nodes``) plus
``flow_router()``, and no pair matrices. ``to_topology()`` gives a full ``Topology`` for small sizes.

**Shape.** ``n_gpus / gpus_per_node`` hosts; inside a host every GPU has an NVLink port into one
NVSwitch. Every GPU has one NIC port (``nic_bytes_per_s`` per direction) into a leaf switch, rail
aligned: a *scalable unit* (SU) is ``leaf_down`` hosts, and leaf ``su · gpus_per_node + i`` takes GPU
``i`` of every host of SU ``su``. A leaf has ``leaf_radix`` ports: ``leaf_down`` down and
``leaf_up`` up, ``leaf_down / leaf_up ≈ oversubscription``. All switch ports run at
``nic_bytes_per_s``.

* two tiers (at most ``leaf_radix`` leaves): ``leaf_up`` spines, one link from every leaf to each;
* three tiers (more leaves): pods of ``leaf_radix // 2`` leaves with ``leaf_up`` aggregation
  switches each (one link from every leaf of the pod to each); aggregation switch ``a`` of every
  pod links to each of the ``leaf_radix // 2`` core switches of plane ``a``. At most
  ``leaf_radix`` pods (the core radix): 16,384 GPUs at radix 64 and 1:1 make 512 leaves, 16 pods,
  512 aggregation and 1,024 core switches.

Vertex names: ``gpu{g}``, ``node{n}.nvswitch``, ``leaf{l}``, ``spine{j}`` or ``pod{p}.agg{a}`` and
``core{a}.{c}``. GPU↔leaf edges are the NICs (no separate NIC vertex).

**Routing** (``FatTreeRouter``): inside a host over NVLink; between hosts up to the lowest common
tier and down. With ``pxn`` (NCCL's PXN, default) a flow to a GPU on another rail first crosses
NVLink to the source host's GPU on the destination's rail and then uses that GPU's NIC, so
scale-out traffic stays rail aligned. ECMP splits a flow evenly over the uplinks of a leaf and
over the aggregation→core links of a pod. Every flow of a leaf spreads in exactly the same way,
so a leaf's uplinks always carry equal loads and behave as one *trunk* link of ``leaf_up``× the
capacity (likewise downlinks, and a pod's core links): the router's links are the GPU ports and
these trunks, each with weight 1 in a flow's path, which gives the same max-min rates as the
per-edge ECMP split with 2–6 entries per flow instead of up to 2 + 4·``leaf_up``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import networkx as nx
import numpy as np

from moesim.network.flows import Routes
from moesim.network.maxmin import Incidence
from moesim.network.topology import Topology

__all__ = ["FatTree", "FatTreeRouter", "fat_tree"]


class FatTree:
    """A rail-optimised two- or three-tier fat-tree (see the module doc); build with ``fat_tree``."""

    def __init__(self, *, n_gpus: int, gpus_per_node: int, nic_bytes_per_s: float,
                 nvlink_bytes_per_s: float, leaf_radix: int, oversubscription: float, pxn: bool,
                 nvlink_latency_s: float, hop_latency_s: float, build_graph: bool, name: str,
                 gpu: str) -> None:
        g = gpus_per_node
        self.name, self.gpu, self.gpus_per_node, self.pxn = name, gpu, g, pxn
        self.n_gpus = n_gpus
        self.nic_bytes_per_s, self.nvlink_bytes_per_s = float(nic_bytes_per_s), float(nvlink_bytes_per_s)
        self.nvlink_latency_s, self.hop_latency_s = float(nvlink_latency_s), float(hop_latency_s)
        self.leaf_radix = leaf_radix
        self.leaf_down = int(round(leaf_radix * oversubscription / (1.0 + oversubscription)))
        self.leaf_up = leaf_radix - self.leaf_down
        if not (1 <= self.leaf_down < leaf_radix):
            raise ValueError(f"leaf_radix={leaf_radix} with oversubscription={oversubscription} "
                             "leaves no down or no up port")
        self.oversubscription = self.leaf_down / self.leaf_up
        n_nodes = n_gpus // g
        self.n_leaves = math.ceil(n_nodes / self.leaf_down) * g
        self.pod_leaves = leaf_radix // 2 if self.n_leaves > leaf_radix else self.n_leaves
        self.n_pods = math.ceil(self.n_leaves / self.pod_leaves) if self.n_leaves > leaf_radix else 0
        if self.n_pods > leaf_radix:
            raise ValueError(f"{n_gpus} GPUs need {self.n_pods} pods > leaf_radix={leaf_radix}; "
                             "raise leaf_radix (a fourth tier is not modelled)")
        self.tiers = 3 if self.n_pods else 2
        self.gpu_names = tuple(f"gpu{i}" for i in range(n_gpus))
        self.gpu_index = {n: i for i, n in enumerate(self.gpu_names)}
        self.node_of = np.arange(n_gpus, dtype=np.int64) // g
        self.node_of.setflags(write=False)
        self.leaf_of = ((self.node_of // self.leaf_down) * g + np.arange(n_gpus) % g).astype(np.int32)
        self.leaf_of.setflags(write=False)
        self.graph = self._build_graph() if build_graph else None

    @property
    def n_nodes(self) -> int:
        """Number of hosts."""
        return self.n_gpus // self.gpus_per_node

    def flow_router(self) -> FatTreeRouter:
        """The vectorised router ``FlowNetwork`` uses instead of graph search."""
        return FatTreeRouter(self)

    def to_topology(self) -> Topology:
        """A full ``Topology`` on the same graph (``[G, G]`` matrices: small sizes only)."""
        if self.graph is None:
            raise ValueError("built with build_graph=False; rebuild with the graph")
        return Topology(name=self.name, gpu=self.gpu, graph=self.graph, gpu_names=self.gpu_names)

    def shortest_paths(self, src: int, dst: int) -> Iterator[list[str]]:
        """Every shortest-hop path (vertex names) between two GPUs on the graph."""
        assert self.graph is not None
        return nx.all_shortest_paths(self.graph, self.gpu_names[src], self.gpu_names[dst])

    def uplink_edges(self, leaf: int) -> list[tuple[str, str]]:
        """Graph edges of leaf ``leaf``'s up trunk."""
        if self.tiers == 2:
            return [(f"leaf{leaf}", f"spine{j}") for j in range(self.leaf_up)]
        return [(f"leaf{leaf}", f"pod{leaf // self.pod_leaves}.agg{a}") for a in range(self.leaf_up)]

    def core_edges(self, pod: int) -> list[tuple[str, str]]:
        """Graph edges of pod ``pod``'s up trunk (aggregation → core)."""
        return [(f"pod{pod}.agg{a}", f"core{a}.{c}") for a in range(self.leaf_up)
                for c in range(self.pod_leaves)]

    def _build_graph(self) -> nx.DiGraph:
        g, G = self.gpus_per_node, self.n_gpus
        graph = nx.DiGraph()
        graph.add_nodes_from(((n, {"kind": "gpu", "node": i // g}) for i, n in enumerate(self.gpu_names)))
        nvl = {"bytes_per_s": self.nvlink_bytes_per_s, "latency_s": self.nvlink_latency_s / 2}
        hop = {"bytes_per_s": self.nic_bytes_per_s, "latency_s": self.hop_latency_s}
        if g > 1:
            graph.add_nodes_from(((f"node{n}.nvswitch", {"kind": "switch", "node": n})
                                  for n in range(self.n_nodes)))
            _duplex(graph, ((f"gpu{i}", f"node{i // g}.nvswitch") for i in range(G)), nvl)
        graph.add_nodes_from(((f"leaf{i}", {"kind": "switch", "node": 0}) for i in range(self.n_leaves)))
        _duplex(graph, ((f"gpu{i}", f"leaf{self.leaf_of[i]}") for i in range(G)), hop)
        used = np.unique(self.leaf_of)
        if self.tiers == 2 and used.size > 1:
            _duplex(graph, (e for leaf in used for e in self.uplink_edges(int(leaf))), hop)
        elif self.tiers == 3:
            _duplex(graph, (e for leaf in used for e in self.uplink_edges(int(leaf))), hop)
            pods = np.unique(used // self.pod_leaves)
            _duplex(graph, (e for p in pods for e in self.core_edges(int(p))), hop)
        for v, kind in graph.nodes(data="kind"):
            if kind is None:
                graph.nodes[v].update(kind="switch", node=0)
        return graph

    def __repr__(self) -> str:
        return (f"FatTree({self.name!r}, gpus={self.n_gpus}, tiers={self.tiers}, leaves={self.n_leaves}, "
                f"pods={self.n_pods}, oversubscription={self.oversubscription:g}, pxn={self.pxn})")


def _duplex(graph: nx.DiGraph, pairs: Iterator[tuple[str, str]], attrs: dict[str, float]) -> None:
    edges = list(pairs)
    graph.add_edges_from(edges, **attrs)
    graph.add_edges_from(((v, u) for u, v in edges), **attrs)


class FatTreeRouter:
    """Vectorised routes on a ``FatTree`` over GPU ports and ECMP trunks (see the module doc).

    Links (index ranges, G GPUs, nL leaves, nP pods): ``[0, G)`` GPU→NVSwitch, ``[G, 2G)``
    NVSwitch→GPU, ``[2G, 3G)`` GPU→leaf (NIC out), ``[3G, 4G)`` leaf→GPU (NIC in), then nL leaf up
    trunks, nL leaf down trunks, nP pod up trunks, nP pod down trunks.
    """

    def __init__(self, tree: FatTree) -> None:
        self.tree = t = tree
        G, nL, nP = t.n_gpus, t.n_leaves, t.n_pods
        self.leaf_up0, self.leaf_dn0 = 4 * G, 4 * G + nL
        self.pod_up0, self.pod_dn0 = 4 * G + 2 * nL, 4 * G + 2 * nL + nP
        n = 4 * G + 2 * nL + 2 * nP
        cap = np.empty(n)
        cap[: 2 * G], cap[2 * G: 4 * G] = t.nvlink_bytes_per_s, t.nic_bytes_per_s
        cap[4 * G: 4 * G + 2 * nL] = t.leaf_up * t.nic_bytes_per_s
        cap[4 * G + 2 * nL:] = t.leaf_up * t.pod_leaves * t.nic_bytes_per_s
        self.capacity_bytes_per_s = cap
        self.tier = np.array(["nvlink"] * (2 * G) + ["nic"] * (2 * G) + ["leaf"] * (2 * nL)
                             + ["core"] * (2 * nP))

    def route(self, src: np.ndarray, dst: np.ndarray) -> Routes:
        """Routes of the flows ``src[k] → dst[k]`` (GPU indices); ``src == dst`` gets no link."""
        t, L = self.tree, self.capacity_bytes_per_s.shape[0]
        src, dst = np.asarray(src, np.int32), np.asarray(dst, np.int32)
        G, g = t.n_gpus, t.gpus_per_node
        moving = src != dst
        rs, rd = src % g, dst % g
        other = (src - rs) != (dst - rd)  # different hosts
        pxn = other & (rs != rd) if t.pxn else np.zeros_like(other)
        via = src + (rd - rs) * pxn  # the GPU whose NIC carries the flow
        nvl = (~other | pxn) & moving
        ls, ld = t.leaf_of[via], t.leaf_of[dst]
        cross_leaf = other & (ls != ld)
        cols = [(src, nvl), (G + np.where(other, via, dst), nvl), (2 * G + via, other),
                (self.leaf_up0 + ls, cross_leaf), (self.leaf_dn0 + ld, cross_leaf), (3 * G + dst, other)]
        hops = 2 * other + 2 * cross_leaf
        if t.tiers == 3:
            cross_pod = cross_leaf & (ls // t.pod_leaves != ld // t.pod_leaves)
            cols += [(self.pod_up0 + ls // t.pod_leaves, cross_pod), (self.pod_dn0 + ld // t.pod_leaves, cross_pod)]
            hops += 2 * cross_pod
        links = np.empty((len(cols), src.shape[0]), dtype=np.int32)
        for c, (link, ok) in enumerate(cols):
            links[c] = np.where(ok, link, L)
        latency = nvl * t.nvlink_latency_s + hops * t.hop_latency_s
        return Routes(Incidence(links, None, L), latency)

    def edges_of(self, link: int) -> list[tuple[str, str]]:
        """The graph edges link ``link`` stands for (a trunk: all its parallel edges)."""
        t, G, g = self.tree, self.tree.n_gpus, self.tree.gpus_per_node
        kind, i = divmod(link, G) if link < 4 * G else (None, link)
        if kind == 0:
            return [(f"gpu{i}", f"node{i // g}.nvswitch")]
        if kind == 1:
            return [(f"node{i // g}.nvswitch", f"gpu{i}")]
        if kind == 2:
            return [(f"gpu{i}", f"leaf{t.leaf_of[i]}")]
        if kind == 3:
            return [(f"leaf{t.leaf_of[i]}", f"gpu{i}")]
        if link < self.leaf_dn0:
            return t.uplink_edges(link - self.leaf_up0)
        if link < self.pod_up0:
            return [(v, u) for u, v in t.uplink_edges(link - self.leaf_dn0)]
        if link < self.pod_dn0:
            return t.core_edges(link - self.pod_up0)
        return [(v, u) for u, v in t.core_edges(link - self.pod_dn0)]


def fat_tree(n_gpus: int, gpus_per_node: int = 8, nic_bytes_per_s: float = 50e9,
             nvlink_bytes_per_s: float = 450e9, leaf_radix: int = 64, oversubscription: float = 1.0,
             *, pxn: bool = True, nvlink_latency_s: float = 1e-6, hop_latency_s: float = 0.75e-6,
             build_graph: bool = True, name: str | None = None, gpu: str = "h100-sxm") -> FatTree:
    """A rail-optimised fat-tree of ``n_gpus`` GPUs (see the module doc).

    Args:
        n_gpus: total GPUs, a multiple of ``gpus_per_node``.
        gpus_per_node: GPUs (and NICs, one per GPU) per host.
        nic_bytes_per_s: per direction, of every NIC and switch port (400 Gb/s = 50e9).
        nvlink_bytes_per_s: per direction, of a GPU's NVLink port into the NVSwitch (H100: 450e9).
        leaf_radix: ports per switch (leaves, spines, aggregation and core).
        oversubscription: leaf down ports / up ports (1.0 = non-blocking).
        pxn: route cross-rail traffic over NVLink to the destination's rail first.
        nvlink_latency_s: one-way GPU→NVSwitch→GPU latency (split over the two hops).
        hop_latency_s: one-way latency of each scale-out hop (GPU↔leaf, leaf↔spine, ...).
        build_graph: also build the ``networkx`` graph (for reports and ``to_topology``).
    """
    if n_gpus <= 0 or gpus_per_node <= 0 or n_gpus % gpus_per_node:
        raise ValueError(f"n_gpus={n_gpus} must be a positive multiple of gpus_per_node={gpus_per_node}")
    if not (nic_bytes_per_s > 0 and nvlink_bytes_per_s > 0 and oversubscription > 0):
        raise ValueError("bandwidths and oversubscription must be > 0")
    if min(nvlink_latency_s, hop_latency_s) < 0:
        raise ValueError("latencies must be >= 0 s")
    return FatTree(n_gpus=n_gpus, gpus_per_node=gpus_per_node, nic_bytes_per_s=nic_bytes_per_s,
                   nvlink_bytes_per_s=nvlink_bytes_per_s, leaf_radix=leaf_radix,
                   oversubscription=oversubscription, pxn=pxn, nvlink_latency_s=nvlink_latency_s,
                   hop_latency_s=hop_latency_s, build_graph=build_graph,
                   name=name or f"fat-tree-{n_gpus}", gpu=gpu)
