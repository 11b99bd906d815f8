"""Large rail-optimised fat-trees built directly, with a vectorised flow router.

``FatTree`` carries what ``FlowNetwork`` / ``FlowCollectives`` use (``name``, ``gpu``, ``graph``,
``gpu_names``, ``gpu_index``, ``n_gpus``, ``node_of``, ``n_nodes``) plus ``flow_router()``, and no
pair matrices; ``to_topology()`` gives a ``Topology`` on the same graph. YAML topologies with
``fabric.kind: leaf_spine`` / ``fat_tree`` are built by ``Topology.from_spec`` on this layout (same
vertex names, NICs as vertices ``node{n}.nic{j}``); where their hosts match this router's model
(one NIC per GPU on the GPU, an NVSwitch), the ``Topology``'s ``flow_router()`` is this router
built with ``nic_vertices=True``, so large fabrics never search the graph.

**Shape.** ``n_gpus / gpus_per_node`` hosts; inside a host every GPU has an NVLink port into one
NVSwitch. Every GPU has one NIC port (``nic_bytes_per_s`` per direction) into a leaf switch, rail
aligned: a *scalable unit* (SU) is ``leaf_down`` hosts, and leaf ``su · gpus_per_node + i`` takes GPU
``i`` of every host of SU ``su``. A leaf has ``leaf_radix`` ports: ``leaf_down`` down and
``leaf_up`` up, ``leaf_down / leaf_up ≈ oversubscription``. All switch ports run at
``nic_bytes_per_s``.

``leaf_down`` / ``leaf_up`` may also be given directly (a leaf-spine whose spines have as many ports
as there are leaves: ``spine_radix``). Switch-to-switch links run at ``link_bytes_per_s`` (default
``nic_bytes_per_s``).

* two tiers (at most ``spine_radix`` leaves, default ``leaf_radix``): ``leaf_up`` spines, one link
  from every leaf to each;
* three tiers (more leaves): pods of ``leaf_radix // 2`` leaves with ``leaf_up`` aggregation
  switches each (one link from every leaf of the pod to each); aggregation switch ``a`` of every
  pod links to each of the ``leaf_radix // 2`` core switches of plane ``a``. At most
  ``leaf_radix`` pods (the core radix): 16,384 GPUs at radix 64 and 1:1 make 512 leaves, 16 pods,
  512 aggregation and 1,024 core switches.

Vertex names: ``gpu{g}``, ``node{n}.nvswitch``, ``leaf{l}``, ``spine{j}`` or ``pod{p}.agg{a}`` and
``core{a}.{c}``. GPU↔leaf edges are the NICs, or with ``nic_vertices`` GPU ``n·g + j`` links to
``node{n}.nic{j}`` which links to the leaf (each hop half of ``nic_latency_s``). Fabric switches
have ``node=None``; GPUs and NICs carry ``rail`` (the local index). Edges carry ``tier``: nvlink,
nic, leaf (leaf↔spine / aggregation), core (aggregation↔core).

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

from moesim.network.flows import GraphRouter, Routes
from moesim.network.maxmin import Incidence
from moesim.network.topology import Topology

__all__ = ["FatTree", "FatTreeRouter", "fat_tree"]


class FatTree:
    """A rail-optimised two- or three-tier fat-tree (see the module doc); build with ``fat_tree``."""

    def __init__(self, *, n_gpus: int, gpus_per_node: int, nic_bytes_per_s: float,
                 nvlink_bytes_per_s: float, leaf_radix: int, oversubscription: float, pxn: bool,
                 nvlink_latency_s: float, hop_latency_s: float, build_graph: bool, name: str,
                 gpu: str, leaf_down: int | None = None, leaf_up: int | None = None,
                 spine_radix: int | None = None, nic_latency_s: float | None = None,
                 link_bytes_per_s: float | None = None, nic_vertices: bool = False) -> None:
        g = gpus_per_node
        self.name, self.gpu, self.gpus_per_node, self.pxn = name, gpu, g, pxn
        self.n_gpus = n_gpus
        self.nic_bytes_per_s, self.nvlink_bytes_per_s = float(nic_bytes_per_s), float(nvlink_bytes_per_s)
        self.link_bytes_per_s = float(link_bytes_per_s or nic_bytes_per_s)
        self.nvlink_latency_s, self.hop_latency_s = float(nvlink_latency_s), float(hop_latency_s)
        self.nic_latency_s = float(hop_latency_s if nic_latency_s is None else nic_latency_s)
        self.nic_vertices = bool(nic_vertices)
        if leaf_down is not None or leaf_up is not None:
            if leaf_down is None or leaf_up is None or leaf_down < 1 or leaf_up < 1:
                raise ValueError(f"give leaf_down >= 1 and leaf_up >= 1 together, got {leaf_down}, {leaf_up}")
            self.leaf_down, self.leaf_up = int(leaf_down), int(leaf_up)
            leaf_radix = self.leaf_down + self.leaf_up
        else:
            self.leaf_down = int(round(leaf_radix * oversubscription / (1.0 + oversubscription)))
            self.leaf_up = leaf_radix - self.leaf_down
        self.leaf_radix = leaf_radix
        if not (1 <= self.leaf_down < leaf_radix):
            raise ValueError(f"leaf_radix={leaf_radix} with oversubscription={oversubscription} "
                             "leaves no down or no up port")
        self.oversubscription = self.leaf_down * self.nic_bytes_per_s / (self.leaf_up * self.link_bytes_per_s)
        n_nodes = n_gpus // g
        self.n_leaves = math.ceil(n_nodes / self.leaf_down) * g
        self.spine_radix = int(spine_radix or leaf_radix)
        two_tier = self.n_leaves <= self.spine_radix
        self.pod_leaves = self.n_leaves if two_tier else leaf_radix // 2
        self.n_pods = 0 if two_tier else math.ceil(self.n_leaves / self.pod_leaves)
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
        self._link_of_edge: dict[tuple[str, str], int] | None = None

    @property
    def n_nodes(self) -> int:
        """Number of hosts."""
        return self.n_gpus // self.gpus_per_node

    def flow_router(self, *, max_paths: int = 64, ecmp: str = "split") -> FatTreeRouter | GraphRouter:
        """The vectorised router ``FlowNetwork`` uses instead of graph search (ECMP ``split`` over
        trunks); ``ecmp="hash"`` (one path per pair) searches the graph instead (``GraphRouter``)."""
        if ecmp == "split":
            return FatTreeRouter(self)
        return GraphRouter(self.to_topology(), max_paths=max_paths, ecmp=ecmp)

    def to_topology(self) -> Topology:
        """A ``Topology`` on the same graph (routed by graph search; pair matrices lazy when large)."""
        if self.graph is None:
            raise ValueError("built with build_graph=False; rebuild with the graph")
        return Topology(name=self.name, gpu=self.gpu, graph=self.graph, gpu_names=self.gpu_names, pxn=self.pxn)

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

    def link_of_edge(self) -> dict[tuple[str, str], int]:
        """The ``FatTreeRouter`` link each graph edge belongs to (built once; for fault updates)."""
        if self._link_of_edge is None:
            router = FatTreeRouter(self)
            self._link_of_edge = {e: link for link in range(router.capacity_bytes_per_s.size)
                                  for e in router.edges_of(link)}
        return self._link_of_edge

    def nic_name(self, i: int) -> str:
        """The NIC vertex of GPU ``i`` (``nic_vertices``)."""
        return f"node{i // self.gpus_per_node}.nic{i % self.gpus_per_node}"

    def fabric_edges(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """``(leaf up edges, core up edges)`` of the used leaves and pods (one direction)."""
        used = np.unique(self.leaf_of)
        if self.tiers == 2 and used.size <= 1:
            return [], []
        ups = [e for leaf in used for e in self.uplink_edges(int(leaf))]
        if self.tiers == 2:
            return ups, []
        return ups, [e for p in np.unique(used // self.pod_leaves) for e in self.core_edges(int(p))]

    def _build_graph(self) -> nx.DiGraph:
        g, G = self.gpus_per_node, self.n_gpus
        graph = nx.DiGraph()
        graph.add_nodes_from(((n, {"kind": "gpu", "node": i // g, "rail": i % g}) for i, n in enumerate(self.gpu_names)))
        nvl = {"bytes_per_s": self.nvlink_bytes_per_s, "latency_s": self.nvlink_latency_s / 2, "tier": "nvlink"}
        link = {"bytes_per_s": self.link_bytes_per_s, "latency_s": self.hop_latency_s}
        if g > 1:
            graph.add_nodes_from(((f"node{n}.nvswitch", {"kind": "switch", "node": n})
                                  for n in range(self.n_nodes)))
            _duplex(graph, ((f"gpu{i}", f"node{i // g}.nvswitch") for i in range(G)), nvl)
        graph.add_nodes_from(((f"leaf{i}", {"kind": "switch", "node": None}) for i in range(self.n_leaves)))
        if self.nic_vertices:
            half = {"bytes_per_s": self.nic_bytes_per_s, "latency_s": self.nic_latency_s / 2, "tier": "nic"}
            graph.add_nodes_from(((self.nic_name(i), {"kind": "nic", "node": i // g, "rail": i % g}) for i in range(G)))
            _duplex(graph, ((f"gpu{i}", self.nic_name(i)) for i in range(G)), half)
            _duplex(graph, ((self.nic_name(i), f"leaf{self.leaf_of[i]}") for i in range(G)), half)
        else:
            nic = {"bytes_per_s": self.nic_bytes_per_s, "latency_s": self.nic_latency_s, "tier": "nic"}
            _duplex(graph, ((f"gpu{i}", f"leaf{self.leaf_of[i]}") for i in range(G)), nic)
        ups, cores = self.fabric_edges()
        _duplex(graph, iter(ups), {**link, "tier": "leaf"})
        _duplex(graph, iter(cores), {**link, "tier": "core"})
        for v, kind in graph.nodes(data="kind"):
            if kind is None:
                graph.nodes[v].update(kind="switch", node=None)
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
    trunks, nL leaf down trunks, nP pod up trunks, nP pod down trunks. With ``nic_vertices`` the
    NIC ranges are GPU→NIC and NIC→GPU, followed by ``[4G, 5G)`` NIC→leaf and ``[5G, 6G)``
    leaf→NIC before the trunks (a flow between hosts then crosses two more links of the same capacity).
    """

    def __init__(self, tree: FatTree) -> None:
        self.tree = t = tree
        G, nL, nP = t.n_gpus, t.n_leaves, t.n_pods
        base = 6 * G if t.nic_vertices else 4 * G
        self.leaf_up0, self.leaf_dn0 = base, base + nL
        self.pod_up0, self.pod_dn0 = base + 2 * nL, base + 2 * nL + nP
        n = base + 2 * nL + 2 * nP
        cap = np.empty(n)
        cap[: 2 * G], cap[2 * G: base] = t.nvlink_bytes_per_s, t.nic_bytes_per_s
        cap[base: base + 2 * nL] = t.leaf_up * t.link_bytes_per_s
        cap[base + 2 * nL:] = t.leaf_up * t.pod_leaves * t.link_bytes_per_s
        self.capacity_bytes_per_s = cap
        self.tier = np.array(["nvlink"] * (2 * G) + ["nic"] * (base - 2 * G) + ["leaf"] * (2 * nL)
                             + ["core"] * (2 * nP))

    def route(self, src: np.ndarray, dst: np.ndarray) -> Routes:
        """Routes of the flows ``src[k] → dst[k]`` (GPU indices); ``src == dst`` gets no link."""
        t, L = self.tree, self.capacity_bytes_per_s.shape[0]
        src, dst = np.asarray(src, np.int32), np.asarray(dst, np.int32)
        G, g = t.n_gpus, t.gpus_per_node
        moving = src != dst
        if g & (g - 1):
            rs, rd = src % g, dst % g
        else:  # a power of two: the same remainders by a mask
            rs, rd = src & (g - 1), dst & (g - 1)
        other = (src - rs) != (dst - rd)  # different hosts
        pxn = other & (rs != rd) if t.pxn else np.zeros_like(other)
        via = src + (rd - rs) * pxn  # the GPU whose NIC carries the flow
        nvl = (~other | pxn) & moving
        ls, ld = t.leaf_of[via], t.leaf_of[dst]
        cross_leaf = other & (ls != ld)
        cols = [(src, nvl), (G + np.where(other, via, dst), nvl), (2 * G + via, other),
                (self.leaf_up0 + ls, cross_leaf), (self.leaf_dn0 + ld, cross_leaf), (3 * G + dst, other)]
        if t.nic_vertices:
            cols += [(4 * G + via, other), (5 * G + dst, other)]
        hops = 2 * cross_leaf
        if t.tiers == 3:
            cross_pod = cross_leaf & (ls // t.pod_leaves != ld // t.pod_leaves)
            cols += [(self.pod_up0 + ls // t.pod_leaves, cross_pod), (self.pod_dn0 + ld // t.pod_leaves, cross_pod)]
            hops += 2 * cross_pod
        links = np.empty((len(cols), src.shape[0]), dtype=np.int32)
        for c, (link, ok) in enumerate(cols):
            links[c] = link
            np.copyto(links[c], L, where=~ok)
        # latency by kind of path (nvl, other, hops): a table of the same sums, then one gather
        kind = nvl.view(np.uint8) + 2 * other.view(np.uint8) + 4 * hops.astype(np.uint8)
        n_nvl, n_other, n_hops = np.arange(2)[:, None, None], np.arange(2)[None, :, None], np.arange(5)[None, None, :]
        table = (n_nvl.astype(bool) * t.nvlink_latency_s + 2 * n_other.astype(bool) * t.nic_latency_s
                 + n_hops * t.hop_latency_s)
        latency = np.take(table.transpose(2, 1, 0).ravel(), kind)
        return Routes(Incidence(links, None, L), latency)

    def edges_of(self, link: int) -> list[tuple[str, str]]:
        """The graph edges link ``link`` stands for (a trunk: all its parallel edges)."""
        t, G, g = self.tree, self.tree.n_gpus, self.tree.gpus_per_node
        kind, i = divmod(link, G) if link < self.leaf_up0 else (None, link)
        nic = t.nic_name(i) if t.nic_vertices else f"leaf{t.leaf_of[i]}" if kind is not None else ""
        if kind == 0:
            return [(f"gpu{i}", f"node{i // g}.nvswitch")]
        if kind == 1:
            return [(f"node{i // g}.nvswitch", f"gpu{i}")]
        if kind == 2:
            return [(f"gpu{i}", nic)]
        if kind == 3:
            return [(nic, f"gpu{i}")]
        if kind == 4:
            return [(nic, f"leaf{t.leaf_of[i]}")]
        if kind == 5:
            return [(f"leaf{t.leaf_of[i]}", nic)]
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
             build_graph: bool = True, name: str | None = None, gpu: str = "h100-sxm",
             leaf_down: int | None = None, leaf_up: int | None = None, spine_radix: int | None = None,
             nic_latency_s: float | None = None, link_bytes_per_s: float | None = None,
             nic_vertices: bool = False) -> FatTree:
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
        leaf_down, leaf_up: the leaf's down / up port counts instead of ``leaf_radix`` and
            ``oversubscription``.
        spine_radix: most leaves a two-tier tree may have (default ``leaf_radix``).
        nic_latency_s: one-way GPU↔leaf latency through the NIC (default ``hop_latency_s``).
        link_bytes_per_s: per direction, of every switch-to-switch link (default ``nic_bytes_per_s``).
        nic_vertices: NICs as graph vertices ``node{n}.nic{j}`` between GPU and leaf.
    """
    if n_gpus <= 0 or gpus_per_node <= 0 or n_gpus % gpus_per_node:
        raise ValueError(f"n_gpus={n_gpus} must be a positive multiple of gpus_per_node={gpus_per_node}")
    if not (nic_bytes_per_s > 0 and nvlink_bytes_per_s > 0 and oversubscription > 0):
        raise ValueError("bandwidths and oversubscription must be > 0")
    if min(nvlink_latency_s, hop_latency_s, nic_latency_s or 0.0) < 0:
        raise ValueError("latencies must be >= 0 s")
    return FatTree(n_gpus=n_gpus, gpus_per_node=gpus_per_node, nic_bytes_per_s=nic_bytes_per_s,
                   nvlink_bytes_per_s=nvlink_bytes_per_s, leaf_radix=leaf_radix,
                   oversubscription=oversubscription, pxn=pxn, nvlink_latency_s=nvlink_latency_s,
                   hop_latency_s=hop_latency_s, build_graph=build_graph,
                   name=name or f"fat-tree-{n_gpus}", gpu=gpu, leaf_down=leaf_down, leaf_up=leaf_up,
                   spine_radix=spine_radix, nic_latency_s=nic_latency_s, link_bytes_per_s=link_bytes_per_s,
                   nic_vertices=nic_vertices)
