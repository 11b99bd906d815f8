"""A ``TopologySpec`` as a directed graph, with precomputed GPU-to-GPU bottleneck and latency.

Vertices are GPUs, switches and NICs (attribute ``kind``; GPUs and NICs also ``node``, the host
index). Every directed edge carries ``bytes_per_s`` (capacity in that direction) and ``latency_s``
(one-way latency of the hop). A duplex link is two edges.

Vertex names of the parametric form: GPUs ``gpu{g}`` numbered 0..G-1 globally (host-major, so
host n holds ``gpu{n*gpus_per_node}`` ... ), host switches ``node{n}.nvswitch`` / ``node{n}.pcie``,
NICs ``node{n}.nic{j}``, rail switches ``rail{j}``, the single fabric switch ``fabric.switch``.
In the explicit form the names are the file's device names and GPUs are numbered in list order.

Between each GPU pair the *simple* network model keeps one number for bandwidth and one for
latency, both over shortest-hop paths (the paths ECMP would use):

* ``bottleneck_bytes_per_s[i, j]``: the widest shortest-hop path's narrowest edge (bytes/s);
* ``latency_s[i, j]``: the smallest sum of hop latencies among shortest-hop paths (s).

Sharing of links by concurrent transfers is not modelled here (the flow-level model does that).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import networkx as nx
import numpy as np

from moesim.config.topology import DeviceSpec, LinkSpec, TopologySpec
from moesim.core.errors import TopologyError

__all__ = ["Topology"]


class Topology:
    """A cluster network: graph plus ``[G, G]`` bottleneck bandwidth and latency matrices.

    Attributes:
        name: topology name.
        gpu: GPU preset name of every GPU.
        graph: ``networkx.DiGraph``; edges have ``bytes_per_s`` and ``latency_s``. Do not mutate.
        gpu_names: ``(G,)`` graph vertex of each GPU index.
        n_gpus: G.
        node_of: ``[G]`` int, host index of each GPU.
        bottleneck_bytes_per_s: ``[G, G]`` bytes/s, ``inf`` on the diagonal.
        latency_s: ``[G, G]`` seconds, 0 on the diagonal.
    """

    def __init__(self, *, name: str, gpu: str, graph: nx.DiGraph, gpu_names: tuple[str, ...]) -> None:
        self.name = name
        self.gpu = gpu
        self.graph = graph
        self.gpu_names = gpu_names
        self.n_gpus = len(gpu_names)
        self.gpu_index = {g: i for i, g in enumerate(gpu_names)}
        self.node_of = np.array([graph.nodes[g]["node"] for g in gpu_names], dtype=np.int64)
        self.node_of.setflags(write=False)
        self.bottleneck_bytes_per_s, self.latency_s = _pair_matrices(graph, gpu_names)
        self.bottleneck_bytes_per_s.setflags(write=False)
        self.latency_s.setflags(write=False)

    @classmethod
    def from_spec(cls, spec: TopologySpec) -> Topology:
        """Build and check the graph; TopologyError names the device or link at fault."""
        devices, links = (spec.devices, spec.links) if spec.is_explicit else _expand(spec)
        assert devices is not None and links is not None
        graph = _build_graph(devices, links)
        gpu_names = tuple(d.name for d in devices if d.kind == "gpu")
        return cls(name=spec.name, gpu=spec.gpu, graph=graph, gpu_names=gpu_names)

    @property
    def n_nodes(self) -> int:
        """Number of hosts (distinct ``node_of`` values)."""
        return len(np.unique(self.node_of))

    def shortest_paths(self, src: int, dst: int) -> Iterator[list[str]]:
        """Every shortest-hop path (vertex names) from GPU ``src`` to GPU ``dst``."""
        return nx.all_shortest_paths(self.graph, self.gpu_names[src], self.gpu_names[dst])

    def __repr__(self) -> str:
        return (f"Topology({self.name!r}, gpus={self.n_gpus}, nodes={self.n_nodes}, "
                f"vertices={self.graph.number_of_nodes()}, edges={self.graph.number_of_edges()})")


# --------------------------------------------------------------------------- parametric → explicit
def _expand(spec: TopologySpec) -> tuple[list[DeviceSpec], list[LinkSpec]]:
    """The devices and links of a parametric spec (see the module doc for the names)."""
    assert spec.nodes is not None
    g, k = spec.gpus_per_node, spec.nics_per_node
    intra, fabric = spec.intra_node, spec.fabric
    if intra is not None and not intra.bandwidth > 0:
        raise TopologyError(f"topology {spec.name!r}: intra_node.bandwidth must be > 0 bytes/s, got {intra.bandwidth}")
    if k and not (spec.nic_bandwidth is not None and spec.nic_bandwidth > 0):
        raise TopologyError(f"topology {spec.name!r}: nic_bandwidth must be > 0 bytes/s, got {spec.nic_bandwidth}")
    nic_bw = spec.nic_bandwidth or 0.0
    devices: list[DeviceSpec] = []
    links: list[LinkSpec] = []
    hop_s = fabric.latency / 4.0  # GPU→NIC→switch→NIC→GPU
    for n in range(spec.nodes):
        gpus = [f"gpu{n * g + i}" for i in range(g)]
        devices += [DeviceSpec(name=name, kind="gpu", node=n) for name in gpus]
        if g > 1 and intra is not None:
            sw = f"node{n}.{intra.kind}"
            devices.append(DeviceSpec(name=sw, kind="switch", node=n))
            links += [LinkSpec(src=name, dst=sw, bandwidth=intra.bandwidth, latency=intra.latency / 2.0)
                      for name in gpus]
        for j in range(k):
            devices.append(DeviceSpec(name=f"node{n}.nic{j}", kind="nic", node=n))
        for i, name in enumerate(gpus[: g if k else 0]):
            links.append(LinkSpec(src=name, dst=f"node{n}.nic{i // (g // k)}", bandwidth=nic_bw,
                                  latency=hop_s))
    if fabric.kind == "single_switch":
        devices.append(DeviceSpec(name="fabric.switch", kind="switch"))
    elif fabric.kind == "rail_optimized":
        devices += [DeviceSpec(name=f"rail{j}", kind="switch") for j in range(k)]
    if fabric.kind != "none":
        for n in range(spec.nodes):
            for j in range(k):
                sw = "fabric.switch" if fabric.kind == "single_switch" else f"rail{j}"
                links.append(LinkSpec(src=f"node{n}.nic{j}", dst=sw, bandwidth=nic_bw, latency=hop_s))
    return devices, links


# --------------------------------------------------------------------------- graph + checks
def _build_graph(devices: tuple[DeviceSpec, ...] | list[DeviceSpec],
                 links: tuple[LinkSpec, ...] | list[LinkSpec]) -> nx.DiGraph:
    """A DiGraph of the devices and links; TopologyError on duplicates, dangling or bad links."""
    graph = nx.DiGraph()
    for d in devices:
        if d.name in graph:
            raise TopologyError(f"device {d.name!r} is defined twice")
        graph.add_node(d.name, kind=d.kind, node=d.node)
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
        for u, v in pairs:
            if graph.has_edge(u, v):
                raise TopologyError(f"{where}: devices {u!r} -> {v!r} are already linked; merge the links")
            graph.add_edge(u, v, bytes_per_s=float(link.bandwidth), latency_s=float(link.latency))
    for d in devices:
        if d.kind != "gpu" and graph.degree(d.name) == 0:
            raise TopologyError(f"{d.kind} {d.name!r} has no links (dangling); connect it or remove it")
    return graph


def _pair_matrices(graph: nx.DiGraph, gpu_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``[G, G]`` widest-shortest-hop bottleneck (bytes/s) and min latency over those paths (s)."""
    n = len(gpu_names)
    for g in gpu_names:
        if n > 1 and graph.degree(g) == 0:
            raise TopologyError(f"gpu {g!r} has no links, so no other GPU can reach it; connect it")
    bottleneck = np.full((n, n), np.inf)
    latency = np.zeros((n, n))
    for i, src in enumerate(gpu_names):
        hops = nx.single_source_shortest_path_length(graph, src)
        width: dict[str, float] = {src: math.inf}
        delay: dict[str, float] = {src: 0.0}
        for v in sorted(hops, key=hops.__getitem__)[1:]:
            preds = [u for u in graph.predecessors(v) if hops.get(u) == hops[v] - 1]
            width[v] = max(min(width[u], graph.edges[u, v]["bytes_per_s"]) for u in preds)
            delay[v] = min(delay[u] + graph.edges[u, v]["latency_s"] for u in preds)
        for j, dst in enumerate(gpu_names):
            if dst not in hops:
                raise TopologyError(f"gpu {dst!r} is unreachable from gpu {src!r}; check the links of {dst!r}")
            if j != i:
                bottleneck[i, j] = width[dst]
                latency[i, j] = delay[dst]
    return bottleneck, latency
