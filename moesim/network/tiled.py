"""Pair matrices of a large *parametric* topology without a graph search per GPU.

``Topology.from_spec`` runs a breadth-first search from every GPU (about 80 s for 256 hosts x 8
GPUs). In a parametric topology every host is identical and the fabric (``single_switch`` or
``rail_optimized``) treats every pair of hosts alike, so the bottleneck and latency between two
GPUs depend only on whether they share a host and on their local indices. ``tiled_topology``
therefore builds the real graph for **two** hosts and tiles its ``[2g, 2g]`` GPU-pair matrices
over all hosts (exact: a shortest-hop path between two hosts never visits a third one;
``tests/training/test_tiled_topology.py`` compares it with the full build).

The result has the attributes ``SimpleCollectives`` uses (``name``, ``gpu``, ``n_gpus``,
``node_of``, ``bottleneck_bytes_per_s``, ``latency_s``, ``n_nodes``). The two matrices are
``PairMatrix`` objects that compute entries on indexing, so setup is O(1) in the GPU count; its
``graph`` is the two-host graph, so flow-level models that route on the graph need the full
``Topology``.

Tiling is exact only where every pair of hosts is alike: fabrics ``none``, ``single_switch`` and
``rail_optimized``. Under a ``leaf_spine`` or ``fat_tree`` fabric two hosts may share a leaf or sit
under different leaves / pods (more hops, more latency), so ``fast_topology`` builds the full
``Topology`` for them (its pair matrices are lazy above 1,024 GPUs: 0.04 s for 2,048 H800) and wraps
it in the same ``TiledTopology`` interface.

``degrade_nodes`` returns a copy whose inter-host pairs touching given hosts are capped at a
fraction of the NIC bandwidth (a degraded NIC or cable; used by the training straggler model).
"""

from __future__ import annotations

import numpy as np

from moesim.config.topology import TopologySpec
from moesim.network.topology import Topology

__all__ = ["CappedPairs", "PairMatrix", "TiledTopology", "fast_topology", "tiled_topology"]

TILEABLE_FABRICS = ("none", "single_switch", "rail_optimized")
"""Fabrics under which every pair of hosts is alike, so that two hosts tile exactly."""


class PairMatrix:
    """A read-only ``[G, G]`` GPU-pair matrix computed on indexing from a two-host block.

    ``m[rows, cols]`` with integer (array) indices that broadcast, as numpy fancy indexing
    (``m[g, nxt]``, ``m[np.ix_(g, g)]``, ``m[i, j]``), returns what the full matrix would hold:
    ``block[li, lj]`` for two GPUs on one host, ``block[li, g + lj]`` across hosts (capped at
    ``cap`` where an end is on a degraded host), ``diagonal`` where ``i == j``. ``np.asarray(m)``
    materialises the whole matrix.
    """

    def __init__(self, block: np.ndarray, *, gpus_per_node: int, n_gpus: int, diagonal: float,
                 degraded: np.ndarray | None = None, cap: float = np.inf) -> None:
        self.block, self.g, self.n_gpus, self.diagonal = block, gpus_per_node, n_gpus, diagonal
        self.degraded, self.cap = degraded, cap
        self.shape = (n_gpus, n_gpus)
        self.ndim = 2

    def __getitem__(self, key: tuple[object, object]) -> np.ndarray:
        rows, cols = (np.asarray(k, dtype=np.int64) for k in key)
        if ((rows < 0) | (rows >= self.n_gpus)).any() or ((cols < 0) | (cols >= self.n_gpus)).any():
            raise IndexError(f"GPU index out of range [0, {self.n_gpus})")
        g = self.g
        ni, nj, li, lj = rows // g, cols // g, rows % g, cols % g
        cross = ni != nj
        out = self.block[li, np.where(cross, g + lj, lj)]
        if self.degraded is not None:
            touch = cross & (self.degraded[ni] | self.degraded[nj])
            out = np.where(touch, np.minimum(out, self.cap), out)
        return np.where(rows == cols, self.diagonal, out)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        idx = np.arange(self.n_gpus)
        full = self[idx[:, None], idx[None, :]]
        return full if dtype is None else full.astype(dtype)


class CappedPairs:
    """Any ``[G, G]`` pair matrix (indexable like numpy) with its inter-host pairs that touch a
    ``degraded`` host capped at ``cap`` (bytes/s); indexing and ``np.asarray`` as ``PairMatrix``."""

    def __init__(self, base: object, node_of: np.ndarray, degraded: np.ndarray, cap: float) -> None:
        self.base, self.node_of, self.degraded, self.cap = base, np.asarray(node_of), degraded, cap
        self.shape = (self.node_of.size, self.node_of.size)
        self.ndim = 2

    def __getitem__(self, key: tuple[object, object]) -> np.ndarray:
        rows, cols = (np.asarray(k, dtype=np.int64) for k in key)
        out = np.asarray(self.base[rows, cols], dtype=np.float64)  # type: ignore[index]
        ni, nj = self.node_of[rows], self.node_of[cols]
        touch = (ni != nj) & (self.degraded[ni] | self.degraded[nj])
        return np.where(touch, np.minimum(out, self.cap), out)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        idx = np.arange(self.shape[0])
        full = self[idx[:, None], idx[None, :]]
        return full if dtype is None else full.astype(dtype)


class TiledTopology:
    """GPU-pair bottleneck / latency matrices of a homogeneous cluster (see the module doc).

    Attributes:
        name, gpu: topology and GPU preset names.
        n_gpus: G; node_of ``[G]`` host of each GPU; gpus_per_node.
        bottleneck_bytes_per_s, latency_s: ``PairMatrix`` ``[G, G]`` (inf / 0 on the diagonal),
            computed on indexing (no G x G array is built).
        nic_bytes_per_s: one NIC's bandwidth (0 without a fabric).
        graph: the two-host graph the matrices are tiled from (a wrapped full ``Topology``'s graph,
            built on first use, for leaf-spine / fat-tree fabrics).
    """

    def __init__(self, *, name: str, gpu: str, gpus_per_node: int, n_nodes: int, bottleneck: object,
                 latency: object, nic_bytes_per_s: float, graph: object) -> None:
        self.name, self.gpu = name, gpu
        self.gpus_per_node = gpus_per_node
        self.n_gpus = gpus_per_node * n_nodes
        self.node_of = np.repeat(np.arange(n_nodes), gpus_per_node)
        self.node_of.setflags(write=False)
        self.bottleneck_bytes_per_s = bottleneck
        self.latency_s = latency
        self.nic_bytes_per_s = nic_bytes_per_s
        self._graph = graph

    @property
    def graph(self) -> object:
        """The graph the matrices come from: the two-host graph, or the wrapped full topology's."""
        return self._graph.graph if isinstance(self._graph, Topology) else self._graph

    @property
    def n_nodes(self) -> int:
        """Number of hosts."""
        return self.n_gpus // self.gpus_per_node

    def degrade_nodes(self, nodes: list[int] | tuple[int, ...], factor: float) -> TiledTopology:
        """A copy where every inter-host pair with an end on ``nodes`` gets at most
        ``factor x nic_bytes_per_s`` (the degraded NICs are that pair's bottleneck)."""
        if not len(nodes) or factor >= 1.0 or self.nic_bytes_per_s <= 0:
            return self
        bad = np.zeros(self.n_nodes, bool)
        bad[np.asarray(nodes, dtype=np.int64)] = True
        old = self.bottleneck_bytes_per_s
        cap = factor * self.nic_bytes_per_s
        if isinstance(old, PairMatrix):
            bw: object = PairMatrix(old.block, gpus_per_node=old.g, n_gpus=old.n_gpus, diagonal=old.diagonal,
                                    degraded=bad, cap=cap)
        else:
            bw = CappedPairs(old.base if isinstance(old, CappedPairs) else old, self.node_of, bad, cap)
        return TiledTopology(name=f"{self.name}+degraded", gpu=self.gpu, gpus_per_node=self.gpus_per_node,
                             n_nodes=self.n_nodes, bottleneck=bw, latency=self.latency_s,
                             nic_bytes_per_s=self.nic_bytes_per_s, graph=self._graph)

    def __repr__(self) -> str:
        return f"TiledTopology({self.name!r}, gpus={self.n_gpus}, nodes={self.n_nodes})"


def tiled_topology(spec: TopologySpec) -> TiledTopology:
    """Matrices of a parametric ``spec`` tiled from a two-host build (ValueError for explicit specs)."""
    if spec.is_explicit or spec.nodes is None:
        raise ValueError(f"topology {spec.name!r} is explicit; build it with Topology.from_spec")
    g, n = spec.gpus_per_node, spec.nodes
    small = Topology.from_spec(spec.model_copy(update={"nodes": min(n, 2)}))
    bw, lat = np.array(small.bottleneck_bytes_per_s), np.array(small.latency_s)
    if n == 1:  # pad so that the cross-host half of the block exists (never read)
        bw, lat = np.concatenate([bw, bw], axis=1), np.concatenate([lat, lat], axis=1)
    bw, lat = bw[:g], lat[:g]
    kw = {"gpus_per_node": g, "n_gpus": g * n}
    return TiledTopology(name=spec.name, gpu=spec.gpu, gpus_per_node=g, n_nodes=n,
                         bottleneck=PairMatrix(bw, diagonal=np.inf, **kw), latency=PairMatrix(lat, diagonal=0.0, **kw),
                         nic_bytes_per_s=float(spec.nic_bandwidth or 0.0), graph=small.graph)


def fast_topology(spec: TopologySpec) -> TiledTopology | Topology:
    """``tiled_topology`` for parametric specs whose fabric tiles exactly, the full ``Topology`` in
    the ``TiledTopology`` interface for leaf-spine / fat-tree fabrics, the full ``Topology`` for
    explicit specs."""
    if spec.is_explicit:
        return Topology.from_spec(spec)
    if spec.fabric is None or spec.fabric.kind in TILEABLE_FABRICS:
        return tiled_topology(spec)
    full = Topology.from_spec(spec)
    return TiledTopology(name=spec.name, gpu=spec.gpu, gpus_per_node=spec.gpus_per_node, n_nodes=int(spec.nodes or 1),
                         bottleneck=full.bottleneck_bytes_per_s, latency=full.latency_s,
                         nic_bytes_per_s=float(spec.nic_bandwidth or 0.0), graph=full)
