"""Link and device faults: degrade (capacity × factor) or fail, giving a new ``Topology``.

A fault (``moesim.config.topology.FaultSpec``: ``{at_s, kind: degrade|fail, target, factor}``)
names its target as

* ``"a->b"``: one direction of a link (the directed edge a → b);
* ``"a<->b"``: both directions of a link (whichever of a → b and b → a exist);
* a device name (a NIC such as ``node3.nic5``, a switch such as ``leaf7`` or ``spine2``, a CPU):
  every link touching it, in both directions; a failed device is removed with its links.

GPUs are not fault targets (fail their links instead, e.g. ``gpu3<->node0.nvswitch``).

``apply_fault(topology, fault)`` returns a new ``Topology`` (the graph arrays are copied; the
original is untouched) with the degraded capacities or without the failed links. Routes are
recomputed from the changed graph, so traffic moves to the remaining shortest paths (a failed
spine uplink: the other uplinks; a failed NVLink port: the host's PCIe path, or the network). When
some GPU pair is left without any path, the new topology raises ``PartitionError`` (a
``TopologyError``) whose message starts with the fault and names the GPUs cut off
(``error.cut_off``).

On leaf-spine / fat-tree topologies whose flows use the vectorised ``FatTreeRouter`` (ECMP
trunks), a degrade leaves every route and the even ECMP split in place, so that router is kept
with each affected trunk's capacity set to ``members × the narrowest member`` (the even split
saturates the degraded member first; exact). After a failure ECMP splits hop by hop over the
survivors, which makes a trunk's usable capacity depend on the destination, so the topology
switches to graph routing (``flows.GraphRouter``, exact; slower for large all-to-alls).

``FaultSet`` orders faults in simulated time: ``topology_at(base, t)`` is the topology with
every fault of ``at_s <= t`` applied (cached per prefix), ``changes`` the distinct fault times,
and ``schedule(base)`` the whole sequence of (time, topology) changes (every partition raised up
front). An engine calls ``schedule`` at setup and swaps its network model at each time (a
``FlowNetwork`` per topology; ``FlowNetwork.edge_bytes()`` keeps link bytes comparable across
them because router link numbering changes when links fail).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from moesim.config.topology import FaultSpec, parse_faults
from moesim.core.errors import TopologyError
from moesim.network.topology import PartitionError, Topology, _Net

__all__ = ["FaultSet", "FaultSpec", "apply_fault", "apply_faults", "describe", "fault_edges"]

def describe(fault: FaultSpec) -> str:
    """``"fail of leaf3<->spine1 at 2.5 s"``-style words for messages."""
    what = fault.kind if fault.kind == "fail" else f"degrade x{fault.factor:g}"
    return f"{what} of {fault.target!r} at {fault.at_s:g} s"


def fault_edges(topology: Topology, target: str) -> tuple[np.ndarray, int | None]:
    """``(edge ids, device vertex or None)`` a target names (see the module doc); TopologyError
    naming close matches when it names nothing."""
    net = topology._net
    vid = topology._vid
    if "<->" in target or "->" in target:
        both = "<->" in target
        a, b = (x.strip() for x in target.split("<->" if both else "->", 1))
        for end in (a, b):
            _vertex(topology, end, target)
        ia, ib = vid[a], vid[b]
        fwd = np.flatnonzero((net.eu == ia) & (net.ev == ib))
        back = np.flatnonzero((net.eu == ib) & (net.ev == ia)) if both else np.zeros(0, np.int64)
        edges = np.concatenate([fwd, back])
        if not edges.size:
            raise TopologyError(f"fault target {target!r}: {a!r} and {b!r} are not linked"
                                + ("" if both else " in that direction"))
        return edges, None
    v = _vertex(topology, target, target)
    if v < topology.n_gpus:
        raise TopologyError(f"fault target {target!r} is a GPU; faults apply to links, NICs and switches "
                            f"(fail its links instead, e.g. '{target}<->...')")
    return np.flatnonzero((net.eu == v) | (net.ev == v)), v


def _vertex(topology: Topology, name: str, target: str) -> int:
    v = topology._vid.get(name)
    if v is None:
        close = difflib.get_close_matches(name, topology._vnames, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise TopologyError(f"fault target {target!r}: no device {name!r} in topology {topology.name!r}{hint}")
    return v


def apply_fault(topology: Topology, fault: FaultSpec | dict[str, Any]) -> Topology:
    """A new topology with ``fault`` applied (its ``at_s`` is not looked at here); PartitionError
    (starting with the fault) when some GPU pair is left without a path."""
    f = fault if isinstance(fault, FaultSpec) else FaultSpec.model_validate(fault)
    net = topology._net
    edges, device = fault_edges(topology, f.target)
    cap = net.cap.copy()
    keep_e = np.ones(net.eu.size, dtype=bool)
    keep_v = np.ones(len(net.names), dtype=bool)
    if f.kind == "degrade":
        assert f.factor is not None
        cap[edges] *= f.factor
    else:
        keep_e[edges] = False
        if device is not None:
            keep_v[device] = False
    new_id = np.cumsum(keep_v) - 1
    new = _Net([n for n, k in zip(net.names, keep_v.tolist()) if k], net.kind[keep_v], net.node[keep_v],
               net.rail[keep_v], new_id[net.eu[keep_e]], new_id[net.ev[keep_e]], cap[keep_e], net.lat[keep_e].copy(),
               net.tier[keep_e])
    tree, caps = _router_after(topology, f, edges, new)
    try:
        return Topology(name=topology.name, gpu=topology.gpu, net=new, gpu_names=topology.gpu_names,
                        pxn=topology.pxn, lazy=topology.lazy, fat_tree=tree, router_caps=caps,
                        faults=topology.faults + (f,))
    except PartitionError as e:
        raise PartitionError(f"after {describe(f)}: {e}", cut_off=e.cut_off, n_unreachable=e.n_unreachable,
                             example=e.example) from None


def apply_faults(topology: Topology, faults: Iterable[FaultSpec | dict[str, Any]]) -> Topology:
    """``apply_fault`` of each fault in turn (in the order given)."""
    for f in faults:
        topology = apply_fault(topology, f)
    return topology


def _router_after(old: Topology, fault: FaultSpec, edges: np.ndarray, new: _Net) -> tuple[Any, np.ndarray | None]:
    """``(FatTree, router capacities)`` to keep the vectorised fat-tree router after ``fault``, or
    ``(None, None)`` when the fault changes routes (see the module doc)."""
    tree = old._fat_tree
    if tree is None:
        return None, None
    if fault.kind == "fail":
        return None, None
    router = tree.flow_router()
    names, old_names = new.names, old._net.names
    index = {(names[u], names[v]): i for i, (u, v) in enumerate(zip(new.eu.tolist(), new.ev.tolist()))}
    before = {(old_names[u], old_names[v]) for u, v in zip(old._net.eu[edges].tolist(), old._net.ev[edges].tolist())}
    caps = (old._router_caps if old._router_caps is not None else router.capacity_bytes_per_s).copy()
    link_of = tree.link_of_edge()
    for link in sorted({link_of[e] for e in before if e in link_of}):  # the router links the fault touches
        alive = [index[e] for e in router.edges_of(link) if e in index]
        if not alive:
            return None, None
        caps[link] = len(alive) * float(new.cap[alive].min())
    return tree, caps


class FaultSet:
    """Faults ordered in simulated time (see the module doc).

    Args:
        faults: ``FaultSpec``s or mappings ``{at_s, kind, target, factor}`` (a YAML list).
    """

    def __init__(self, faults: Sequence[FaultSpec | dict[str, Any]] | None) -> None:
        self.faults: tuple[FaultSpec, ...] = parse_faults(list(faults or ()))
        self._cache: dict[int, tuple[Topology, list[Topology]]] = {}

    @property
    def changes(self) -> tuple[float, ...]:
        """The distinct simulated times (s) at which the set of active faults changes."""
        return tuple(sorted({f.at_s for f in self.faults}))

    def active(self, t: float) -> tuple[FaultSpec, ...]:
        """The faults in force at simulated time ``t`` (``at_s <= t``)."""
        return tuple(f for f in self.faults if f.at_s <= t)

    def topology_at(self, base: Topology, t: float) -> Topology:
        """``base`` with every fault active at ``t`` applied (cached per number of active faults)."""
        k = len(self.active(t))
        entry = self._cache.get(id(base))
        if entry is None or entry[0] is not base:
            entry = self._cache[id(base)] = (base, [base])
        chain = entry[1]  # chain[i]: base with the first i faults applied
        while len(chain) <= k:
            chain.append(apply_fault(chain[-1], self.faults[len(chain) - 1]))
        return chain[k]

    def schedule(self, base: Topology) -> list[tuple[float, Topology]]:
        """``[(time, topology from that time on)]`` for every change time (partitions raised now)."""
        return [(t, self.topology_at(base, t)) for t in self.changes]

    def __len__(self) -> int:
        return len(self.faults)

    def __repr__(self) -> str:
        return f"FaultSet({', '.join(describe(f) for f in self.faults)})"
