"""A ``TopologySpec`` → graph: the parametric form expanded straight into arrays (``_expand``),
the explicit form (devices and links) into a ``networkx`` graph (``_build_graph``).

Vertex names of the parametric form: GPUs ``gpu{g}`` numbered 0..G-1 globally (host-major, so host
n holds ``gpu{n*gpus_per_node}`` ...), host switches ``node{n}.nvswitch`` / ``node{n}.pcie`` (the
one-switch PCIe shorthand) / ``node{n}.pcie{s}`` (``host`` PCIe switches), CPUs ``node{n}.cpu{c}``,
NICs ``node{n}.nic{j}``, rail switches ``rail{j}``, the single fabric switch ``fabric.switch``,
leaf-spine / fat-tree switches ``leaf{l}``, ``spine{k}``, ``pod{p}.agg{a}``, ``core{a}.{c}`` (the
``generators.FatTree`` layout). In the explicit form the names are the file's device names and
GPUs are numbered in list order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from moesim.config.topology import DeviceSpec, LinkSpec, TopologySpec, fabric_layout
from moesim.core.errors import TopologyError
from moesim.network.graph_arrays import _KIND, _TIER, _Net, infer_tier

if TYPE_CHECKING:
    from moesim.network.generators import FatTree


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
