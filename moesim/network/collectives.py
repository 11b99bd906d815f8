"""Closed-form collective times on a ``Topology`` (the *simple* network model).

Each collective is costed from the topology's precomputed GPU-pair bottleneck bandwidth and
latency; concurrent traffic does not share links here. The flow-level model
(``flow_collectives.FlowCollectives``) replaces this class behind the same ``CollectiveCost``
protocol and the same algorithm names.

A *group* is a tuple of global GPU indices; for ring collectives its order is the ring order.
Byte arguments may be numpy arrays of any shape: the result has the same leading shape (a Python
``float`` when the input is a scalar). A group of one GPU costs 0 s for everything.

**Default formulas** (one ``Protocol()``: no launch cost, full bandwidth; n = group size, S =
bytes, B = bottleneck bandwidth x efficiency, L = per-step latency = ``per_message_latency_s`` +
the largest path latency between the GPUs that step involves):

* all-reduce, ``ring``: ``2(n-1)/n · S / B + 2(n-1) · L``, S = buffer bytes on each rank;
* all-reduce, ``tree`` (double binary tree, as NCCL's): two complementary binary trees over the
  group (heap order and its mirror), each reducing and broadcasting half the buffer, pipelined:
  ``2 · depth · L + S · max_i max(Σ_out 1/2 / B, Σ_in 1/2 / B)``, depth = ⌊log2 n⌋ (so
  ``2 log2(n)`` latency terms for a power of two); the bandwidth term sums, for every rank, half
  the buffer per tree neighbour (at most ``2 S / B``, rings' ``2(n-1)/n S / B`` asymptotically);
* all-reduce, ``nvls`` (NVLink SHARP, one NVSwitch domain only): the switch reduces and
  multicasts, so every GPU sends and receives ``(n+1)/n · S``: ``(n+1)/n · S / B + 2 L``;
* all-reduce, ``auto``: the cheapest of ring, tree, two-shot (direct reduce-scatter + all-gather:
  ``2(n-1)/n · S / B_a2a + 2 L``), one-shot (every rank reads all buffers: ``(n-1) · S / B_a2a +
  L``) and, with ``nvls=True`` on a one-node group, nvls — as NCCL's NVLS/tree and vLLM's custom
  all-reduce pick per size; ``nccl``: NCCL's own choice: ring, nvls (``nvls=True``, one node)
  and tree (groups spanning several nodes; NCCL's tree is an inter-node algorithm);
* all-gather / reduce-scatter (ring): ``(n-1)/n · S / B + (n-1) · L``, S = total output bytes;
* all-to-all, ``direct`` (every pair at once): ``max_i max_tier max(send_i / B_out_i,
  recv_i / B_in_i) + L`` over the two tiers of a rank's peers, the same host (NVLink / PCIe) and
  other hosts (NIC), whose ports move bytes at the same time: ``send_i`` are the bytes rank i
  sends to that tier's peers, ``B_out_i`` its narrowest bottleneck towards them (x efficiency),
  likewise ``recv_i`` and ``B_in_i``; L uses the largest pair latency in the group;
* all-to-all, ``low_latency`` (DeepEP's low-latency kernels: every GPU writes straight into
  every destination GPU, over RDMA across hosts, no NVLink forwarding, one step): the same
  closed form as ``direct`` here (the flow model routes it without PXN);
* all-to-all, ``hierarchical`` (DeepEP's normal kernels): bytes for a GPU on another host first
  cross RDMA to the GPU of that host with the sender's local rank (rail aligned), once per
  destination host (``node_bytes`` gives those de-duplicated bytes; without it the per-pair bytes
  are summed), then NVLink to the destination GPU; same-host pairs use NVLink. Every *leg*
  (u → v) loads u's out-port and v's in-port of its tier (NVLink inside a host, NIC across)
  for bytes / B(u, v); the time is the largest port load plus the RDMA and NVLink path latencies
  (two steps when anything is forwarded). ``forward_at="source"`` mirrors it (combine: NVLink to
  the rail GPU on the sender's host first, then RDMA);
* point-to-point: ``S / B(src, dst) + latency(src, dst) + per_message_latency_s``;
  ``transfers_s`` costs many at once (a GPU's transfers share its port: their times add).

**Protocols.** ``protocols`` replaces the default by NCCL-like protocols (``Protocol``: LL,
Simple, ...): each adds its ``launch_s`` once per ring/tree collective (``a2a_launch_s`` once per
all-to-all or point-to-point batch) and moves bytes at ``bw_fraction`` of the bandwidth above,
and a collective takes the fastest protocol — NCCL's tuner model — except that all-to-alls and
point-to-point use a protocol only for messages up to its ``p2p_max_bytes`` per peer (NCCL's
LL threshold for p2p). ``injection_bytes_per_s`` caps
what one GPU's kernel can send or receive per second (an SM-count limit, used by DeepEP
kernels); it applies to all-to-alls and point-to-point transfers. ``NCCL_CALIBRATION`` holds
protocol sets fitted to measured NCCL tables (``nccl_calibration``, ``SimpleCollectives.calibrated``).

**Efficiency** is ``efficiency`` for pairs inside a host and ``inter_node_efficiency`` (default:
the same) for pairs on different hosts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import reduce
from typing import TYPE_CHECKING, Any, Protocol as _TypingProtocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

from moesim.network.hierarchical import Legs, Rails, _LegPlan, _leg_cells, hierarchical_legs

if TYPE_CHECKING:
    from moesim.network.topology import Topology

__all__ = ["ALL_REDUCE_ALGORITHMS", "ALL_TO_ALL_ALGORITHMS", "NCCL_CALIBRATION", "CollectiveCost", "Legs",
           "NcclCalibration", "Protocol", "Rails", "SimpleCollectives", "double_binary_tree", "hierarchical_legs",
           "nccl_calibration", "tree_unit_bytes"]

Seconds = float | np.ndarray
"""A float for scalar input, else an array with the input's leading shape."""

ALL_REDUCE_ALGORITHMS = ("ring", "tree", "nvls", "auto", "nccl")
ALL_TO_ALL_ALGORITHMS = ("direct", "hierarchical", "low_latency")


@runtime_checkable
class CollectiveCost(_TypingProtocol):
    """Durations (seconds) of collectives over a group of GPUs (global indices)."""

    def all_reduce_s(self, group: tuple[int, ...], nbytes: ArrayLike) -> Seconds:
        """All-reduce of a ``nbytes`` buffer held by every rank. ``nbytes``: any shape, bytes."""
        ...

    def all_gather_s(self, group: tuple[int, ...], nbytes: ArrayLike) -> Seconds:
        """All-gather whose gathered output is ``nbytes`` in total (per rank: nbytes / n in)."""
        ...

    def reduce_scatter_s(self, group: tuple[int, ...], nbytes: ArrayLike) -> Seconds:
        """Reduce-scatter of an ``nbytes`` input per rank (each rank keeps nbytes / n)."""
        ...

    def all_to_all_s(self, group: tuple[int, ...], pair_bytes: ArrayLike) -> Seconds:
        """All-to-all; ``pair_bytes[..., i, j]`` bytes go from rank i to rank j → ``[...]`` s."""
        ...

    def p2p_s(self, src: int, dst: int, nbytes: ArrayLike) -> Seconds:
        """One transfer of ``nbytes`` (any shape) from GPU ``src`` to GPU ``dst``."""
        ...


# --------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class Protocol:
    """How a collective's messages move: fixed costs and achieved bandwidth (see module doc).

    Attributes:
        name: label (``LL``, ``Simple``, ``deepep-ll`` ...).
        launch_s: once per ring / tree / nvls collective (kernel launch, set-up, final sync), s.
        a2a_launch_s: once per all-to-all or point-to-point batch (send/recv rendezvous), s.
        bw_fraction: achieved share of the (efficiency-scaled) link bandwidth, in (0, 1].
        injection_bytes_per_s: most bytes/s one GPU's kernel sends or receives (SM copy limit);
            all-to-alls and point-to-point only.
        p2p_max_bytes: largest message to one peer this protocol carries in all-to-alls and
            point-to-point (NCCL uses LL for p2p only up to ``NCCL_P2P_LL_THRESHOLD`` = 16 KiB,
            whatever the tuner says); at least one protocol of a set carries any size.
    """

    name: str = "simple"
    launch_s: float = 0.0
    a2a_launch_s: float = 0.0
    bw_fraction: float = 1.0
    injection_bytes_per_s: float = math.inf
    p2p_max_bytes: float = math.inf

    def __post_init__(self) -> None:
        if not 0.0 < self.bw_fraction <= 1.0:
            raise ValueError(f"protocol {self.name!r}: bw_fraction must be in (0, 1], got {self.bw_fraction}")
        if self.launch_s < 0 or self.a2a_launch_s < 0:
            raise ValueError(f"protocol {self.name!r}: launch latencies must be >= 0 s")
        if not self.injection_bytes_per_s > 0:
            raise ValueError(f"protocol {self.name!r}: injection_bytes_per_s must be > 0")


def _protocols(protocols: tuple[Protocol, ...] | list[Protocol] | None) -> tuple[Protocol, ...]:
    if protocols is None:
        return (Protocol(),)
    out = tuple(protocols)
    if not out or not all(isinstance(p, Protocol) for p in out):
        raise ValueError("protocols must be a non-empty sequence of Protocol")
    if not any(math.isinf(p.p2p_max_bytes) for p in out):
        raise ValueError("one protocol must carry messages of any size (p2p_max_bytes = inf)")
    return out


def _bulk(protocols: tuple[Protocol, ...]) -> Protocol:
    """The highest-bandwidth protocol (NVLS runs on Simple only)."""
    return max(protocols, key=lambda p: p.bw_fraction)


@dataclass(frozen=True)
class NcclCalibration:
    """NCCL knobs of one GPU model, fitted to nccl-tests tables (``benchmarks/collectives_vs_measured.py``).

    Attributes:
        gpu: GPU preset name.
        efficiency: NVLink bus efficiency (achieved / per-direction nominal, Simple protocol).
        nvlink_latency_s: one-way GPU→GPU latency of a ring step inside a host as NCCL sees it
            (hardware + LL flag handshake): the ``intra_node.latency`` a topology should carry
            for the step terms to come out right (the collectives add the topology's path latency
            per step and no extra ``per_message_latency_s``).
        protocols: the protocol set (LL, Simple) with their launch costs and bandwidth shares.
        inter_node_efficiency: achieved / nominal RDMA bandwidth; not fitted (the measured tables
            are single-host), DeepSeek-V3's report: ~40 of 50 GB/s per 400 Gb/s NIC.
        nvls: the host's NVSwitch does NVLink SHARP (all-reduce in the switch).
        source: what the numbers were fitted to.
    """

    gpu: str
    efficiency: float
    nvlink_latency_s: float
    protocols: tuple[Protocol, ...]
    inter_node_efficiency: float = 0.8
    nvls: bool = True
    source: str = ""

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``SimpleCollectives`` / ``FlowCollectives`` for this calibration."""
        return {"efficiency": self.efficiency, "per_message_latency_s": 0.0, "protocols": self.protocols,
                "inter_node_efficiency": self.inter_node_efficiency, "nvls": self.nvls}


_AIC = ("aiconfigurator nccl_perf (NCCL 2.29.2, nccl-tests out-of-place, 2/4/8 GPUs of one host, "
        "fp16 + int8, 256 B - 512 MiB), fitted on every other message size")

_P2P_LL = 16384.0
"""NCCL_P2P_LL_THRESHOLD default: send/recv use LL only for messages up to 16 KiB."""
_H100 = NcclCalibration(  # H100 SXM, NVLink 4 (450 GB/s per direction): fitted on h100_sxm
    gpu="h100-sxm", efficiency=0.642, nvlink_latency_s=0.777e-6,
    protocols=(Protocol("LL", launch_s=5.14e-6, a2a_launch_s=6.71e-6, bw_fraction=0.408, p2p_max_bytes=_P2P_LL),
               Protocol("Simple", launch_s=18.5e-6, a2a_launch_s=12.4e-6, bw_fraction=1.0)),
    source=_AIC + " (h100_sxm)")
_B200 = NcclCalibration(  # B200, NVLink 5 (900 GB/s per direction): fitted on b200_sxm
    gpu="b200", efficiency=0.571, nvlink_latency_s=1.26e-6,
    protocols=(Protocol("LL", launch_s=8.10e-6, a2a_launch_s=9.44e-6, bw_fraction=0.437, p2p_max_bytes=_P2P_LL),
               Protocol("Simple", launch_s=24.0e-6, a2a_launch_s=15.9e-6, bw_fraction=1.0)),
    source=_AIC + " (b200_sxm)")

NCCL_CALIBRATION: dict[str, NcclCalibration] = {
    "h100-sxm": _H100,
    # same NVLink 4 / NVSwitch generation and SMs as H100: H100's values (the H200 table is
    # predicted out of sample with them)
    "h200": replace(_H100, gpu="h200", source="h100-sxm values (same NVLink 4 fabric); validated on h200_sxm"),
    "h800": replace(_H100, gpu="h800", source="h100-sxm values (same GH100 SMs and NVLink 4 links, fewer of them)"),
    "b200": _B200,
}
"""Fitted NCCL knobs per GPU preset (see ``NcclCalibration``; the benchmark's ``--fit`` prints them).
Values as NCCL 2.29 sees them: H100 reaches 64 % of NVLink's per-direction rate with Simple
(18.5 us launch; 12.4 us for send/recv), LL moves 41 % of that after a 5.1 us launch, a ring step
costs 0.78 us (the topology's NVLink latency); B200: 57 %, LL 44 %, 1.26 us per step."""


def nccl_calibration(gpu: str) -> NcclCalibration:
    """The ``NcclCalibration`` of GPU preset ``gpu``; ValueError naming the known ones."""
    try:
        return NCCL_CALIBRATION[gpu]
    except KeyError:
        raise ValueError(f"no NCCL calibration for GPU {gpu!r}; known: {sorted(NCCL_CALIBRATION)}") from None


# --------------------------------------------------------------------------- shared structure
def double_binary_tree(n: int) -> tuple[np.ndarray, int]:
    """``(edges [2(n-1), 2] (child, parent) group positions, depth)`` of NCCL-style double binary
    trees: tree A in heap order (parent of p is (p-1)//2), tree B its mirror (position p → n-1-p),
    so that A's leaves are B's inner ranks. depth = ⌊log2 n⌋ hops from the root to the deepest leaf."""
    p = np.arange(1, n)
    a = np.stack([p, (p - 1) // 2], axis=1)
    return np.concatenate([a, (n - 1) - a]), (int(math.floor(math.log2(n))) if n > 1 else 0)


def tree_unit_bytes(n: int) -> np.ndarray:
    """``[n, n]`` bytes per byte of buffer of a double-binary-tree all-reduce: every tree edge
    carries half the buffer each way (reduce up, broadcast down, pipelined)."""
    edges, _ = double_binary_tree(n)
    out = np.zeros((n, n))
    np.add.at(out, (edges[:, 0], edges[:, 1]), 0.5)
    np.add.at(out, (edges[:, 1], edges[:, 0]), 0.5)
    return out


def _out(x: np.ndarray) -> Seconds:
    return float(x) if x.ndim == 0 else x


_Tier = tuple[np.ndarray | None, np.ndarray, np.ndarray]
"""A direct all-to-all's peers of one tier: (mask [n, n] or None for all pairs, B_out [n], B_in [n])."""


def _fastest(protocols: tuple[Protocol, ...], cost: Any, peer_bytes: ArrayLike | None = None) -> np.ndarray:
    """Elementwise minimum of ``cost(protocol)`` over the protocols; with ``peer_bytes`` (the
    largest message to one peer, all-to-all / p2p) only over those that carry that size."""
    def one(p: Protocol) -> np.ndarray:
        c = np.asarray(cost(p), dtype=np.float64)
        return c if peer_bytes is None else np.where(np.asarray(peer_bytes) <= p.p2p_max_bytes, c, np.inf)
    return reduce(np.minimum, (one(p) for p in protocols))


def check_group(topology: Any, group: tuple[int, ...]) -> tuple[int, ...]:
    """``group`` as a tuple of ints; ValueError if empty, repeated or outside ``topology``."""
    g = tuple(int(x) for x in group)
    if not g:
        raise ValueError("a collective needs a non-empty group of GPU indices")
    if len(set(g)) != len(g):
        raise ValueError(f"group {g} lists a GPU more than once")
    bad = [x for x in g if not 0 <= x < topology.n_gpus]
    if bad:
        raise ValueError(f"group {g}: GPUs {bad} are not in topology {topology.name!r} "
                         f"with {topology.n_gpus} GPUs")
    return g


def all_reduce_args(coll: Any, group: tuple[int, ...], nbytes: ArrayLike,
                    algorithm: str | None) -> tuple[str, tuple[int, ...], np.ndarray]:
    """``(algorithm, checked group, bytes array)`` of an all-reduce call on ``coll`` (either model)."""
    algo = coll.all_reduce_algorithm if algorithm is None else algorithm
    if algo not in ALL_REDUCE_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALL_REDUCE_ALGORITHMS}, got {algo!r}")
    return algo, check_group(coll.topology, group), _as_bytes(nbytes)


class SimpleCollectives:
    """``CollectiveCost`` from closed forms on the topology's pair bottlenecks (see module doc).

    Args:
        topology: the cluster network.
        efficiency: achieved / nominal bandwidth, in (0, 1] (pairs inside a host).
        per_message_latency_s: software cost of each message step (kernel launch, protocol
            handshake), seconds, added to the path latency.
        all_reduce_algorithm: ``ring``, ``tree``, ``nvls``, ``auto`` or ``nccl`` (module doc).
        protocols: NCCL-like protocols (``Protocol``); default one with no launch cost.
        inter_node_efficiency: efficiency of pairs on different hosts (default ``efficiency``).
        nvls: the NVSwitch can reduce (NVLink SHARP): ``auto`` / ``nccl`` may pick ``nvls``.
    """

    def __init__(self, topology: Topology, *, efficiency: float = 0.8,
                 per_message_latency_s: float = 5e-6, all_reduce_algorithm: str = "ring",
                 protocols: tuple[Protocol, ...] | None = None, inter_node_efficiency: float | None = None,
                 nvls: bool = False) -> None:
        if all_reduce_algorithm not in ALL_REDUCE_ALGORITHMS:
            raise ValueError(f"all_reduce_algorithm must be one of {ALL_REDUCE_ALGORITHMS}, "
                             f"got {all_reduce_algorithm!r}")
        self.all_reduce_algorithm = all_reduce_algorithm
        inter = efficiency if inter_node_efficiency is None else inter_node_efficiency
        for name, e in (("efficiency", efficiency), ("inter_node_efficiency", inter)):
            if not 0.0 < e <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {e}")
        if per_message_latency_s < 0:
            raise ValueError(f"per_message_latency_s must be >= 0, got {per_message_latency_s}")
        self.topology = topology
        self.efficiency = float(efficiency)
        self.inter_node_efficiency = float(inter)
        self.per_message_latency_s = float(per_message_latency_s)
        self.protocols = _protocols(protocols)
        self.nvls = bool(nvls)
        self._ring_cache: dict[tuple[int, ...], tuple[float, float]] = {}
        self._a2a_cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, float]] = {}
        self._a2a_tier_cache: dict[tuple[int, ...], tuple[list[_Tier], float]] = {}
        self._tree_cache: dict[tuple[int, ...], tuple[float, float, int]] = {}
        self._rails: Rails | None = None
        self._cells: dict[tuple[tuple[int, ...], str], tuple[np.ndarray, ...]] = {}

    @classmethod
    def calibrated(cls, topology: Topology, gpu: str | None = None, **overrides: Any) -> SimpleCollectives:
        """Collectives with ``NCCL_CALIBRATION[gpu or topology.gpu]``'s knobs (``overrides`` win)."""
        return cls(topology, **{**nccl_calibration(gpu or topology.gpu).kwargs(), **overrides})

    # ----------------------------------------------------------------- group properties
    def _check(self, group: tuple[int, ...]) -> tuple[int, ...]:
        return check_group(self.topology, group)

    def _pair_bw(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Bottleneck x efficiency (intra- or inter-host) of GPU pairs (broadcast)."""
        node = self.topology.node_of
        eff = np.where(node[src] == node[dst], self.efficiency, self.inter_node_efficiency)
        return self.topology.bottleneck_bytes_per_s[src, dst] * eff

    def ring(self, group: tuple[int, ...]) -> tuple[float, float]:
        """``(bandwidth bytes/s, step latency s)`` of the ring in ``group`` order (cached)."""
        hit = self._ring_cache.get(group)
        if hit is None:
            g = np.asarray(self._check(group))
            nxt = np.roll(g, -1)
            bw = float(self._pair_bw(g, nxt).min())
            lat = float(self.topology.latency_s[g, nxt].max()) + self.per_message_latency_s
            hit = self._ring_cache[group] = (bw, lat)
        return hit

    def _a2a(self, group: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, float]:
        """``([n] B_out bytes/s, [n] B_in bytes/s, latency s)`` of an all-to-all over ``group``."""
        hit = self._a2a_cache.get(group)
        if hit is None:
            g = np.asarray(self._check(group))
            bw = self._pair_bw(g[:, None], g[None, :])  # inf on the diagonal
            b_out = bw.min(axis=1)
            b_in = bw.min(axis=0)
            lat = float(self.topology.latency_s[np.ix_(g, g)].max()) + self.per_message_latency_s
            hit = self._a2a_cache[group] = (b_out, b_in, lat)
        return hit

    def _a2a_tiers(self, group: tuple[int, ...]) -> tuple[list[_Tier], float]:
        """``([(peer mask [n, n] or None for all pairs, B_out [n], B_in [n] bytes/s)], latency s)``
        of a direct all-to-all over ``group``, per tier present: the same host's members, then the
        other hosts' (``inf`` where a rank has no peer of that tier)."""
        hit = self._a2a_tier_cache.get(group)
        if hit is None:
            g = np.asarray(self._check(group))
            bw = self._pair_bw(g[:, None], g[None, :])  # inf on the diagonal
            node = self.topology.node_of[g]
            same = node[:, None] == node[None, :]
            local, remote = same & ~np.eye(g.size, dtype=bool), ~same
            tiers = []
            for peers, other in ((local, remote), (remote, local)):
                if peers.any():
                    b = np.where(peers, bw, np.inf)
                    tiers.append((peers if other.any() else None, b.min(axis=1), b.min(axis=0)))
            hit = self._a2a_tier_cache[group] = (tiers, self._a2a(group)[2])
        return hit

    def tree(self, group: tuple[int, ...]) -> tuple[float, float, int]:
        """``(seconds per buffer byte, step latency s, depth)`` of the double binary tree (cached)."""
        hit = self._tree_cache.get(group)
        if hit is None:
            g = np.asarray(self._check(group))
            unit = tree_unit_bytes(g.size)
            with np.errstate(divide="ignore"):
                per = np.where(unit > 0, unit / self._pair_bw(g[:, None], g[None, :]), 0.0)
            coef = float(max(per.sum(axis=1).max(), per.sum(axis=0).max()))
            lat = float(self.topology.latency_s[np.ix_(g, g)][unit > 0].max()) + self.per_message_latency_s
            hit = self._tree_cache[group] = (coef, lat, double_binary_tree(g.size)[1])
        return hit

    def _one_host(self, group: tuple[int, ...]) -> bool:
        return len(set(self.topology.node_of[list(group)].tolist())) == 1

    # ----------------------------------------------------------------- collectives
    def all_reduce_s(self, group: tuple[int, ...], nbytes: ArrayLike, algorithm: str | None = None) -> Seconds:
        """All-reduce of ``nbytes`` per rank with ``algorithm`` (default ``all_reduce_algorithm``),
        same shape as ``nbytes``."""
        algo, g, s = all_reduce_args(self, group, nbytes, algorithm)
        n = len(g)
        if n == 1:
            return _out(np.zeros_like(s))
        if algo == "ring":
            return self._ring_time(g, s, passes=2)
        if algo == "tree":
            return _out(self._tree_time(g, s))
        if algo == "nvls":
            if not self._one_host(g):
                raise ValueError(f"nvls all-reduce needs a group inside one NVSwitch host, got {g}")
            return _out(self._nvls_time(g, s))
        nvls = self.nvls and n > 2 and self._one_host(g)
        cands = [np.asarray(self._ring_time(g, s, passes=2))]
        if algo == "nccl":
            if nvls:
                cands.append(self._nvls_time(g, s))
            if not self._one_host(g):
                cands.append(self._tree_time(g, s))
            return _out(reduce(np.minimum, cands))
        if n <= 2:  # auto
            return _out(cands[0])
        b_out, b_in, lat = self._a2a(g)
        bw = float(min(b_out.min(), b_in.min()))
        cands.append(self._tree_time(g, s))
        cands.append(_fastest(self.protocols, lambda p: p.a2a_launch_s + 2 * (n - 1) / n * s / (bw * p.bw_fraction)
                              + 2 * lat))
        cands.append(_fastest(self.protocols, lambda p: p.a2a_launch_s + (n - 1) * s / (bw * p.bw_fraction) + lat))
        if nvls:
            cands.append(self._nvls_time(g, s))
        return _out(reduce(np.minimum, cands))

    def _tree_time(self, g: tuple[int, ...], s: np.ndarray) -> np.ndarray:
        coef, lat, depth = self.tree(g)
        return _fastest(self.protocols, lambda p: p.launch_s + 2 * depth * lat + s * coef / p.bw_fraction)

    def _nvls_time(self, g: tuple[int, ...], s: np.ndarray) -> np.ndarray:
        n = len(g)
        b_out, b_in, lat = self._a2a(g)
        bw, p = float(min(b_out.min(), b_in.min())), _bulk(self.protocols)
        return np.asarray(p.launch_s + 2 * lat + (n + 1) / n * s / (bw * p.bw_fraction))

    def all_gather_s(self, group: tuple[int, ...], nbytes: ArrayLike) -> Seconds:
        """Ring all-gather of ``nbytes`` total output: ``(n-1)/n · S / B + (n-1) · L`` seconds."""
        return self._ring_time(group, nbytes, passes=1)

    def reduce_scatter_s(self, group: tuple[int, ...], nbytes: ArrayLike) -> Seconds:
        """Ring reduce-scatter of ``nbytes`` input per rank: ``(n-1)/n · S / B + (n-1) · L`` s."""
        return self._ring_time(group, nbytes, passes=1)

    def _ring_time(self, group: tuple[int, ...], nbytes: ArrayLike, *, passes: int) -> Seconds:
        s = _as_bytes(nbytes)
        n = len(self._check(group))
        if n == 1:
            return _out(np.zeros_like(s))
        bw, lat = self.ring(tuple(group))
        steps = passes * (n - 1)
        return _out(_fastest(self.protocols, lambda p: p.launch_s + steps / n * s / (bw * p.bw_fraction)
                             + steps * lat))

    def all_to_all_s(self, group: tuple[int, ...], pair_bytes: ArrayLike, algorithm: str = "direct", *,
                     node_bytes: ArrayLike | None = None, forward_at: str = "destination",
                     protocol: Protocol | None = None, kernel_s: ArrayLike | None = None) -> Seconds:
        """All-to-all of ``pair_bytes [..., n, n]`` (i → j, diagonal ignored) → ``[...]`` seconds.

        ``algorithm``: ``direct``, ``hierarchical`` (with optional ``node_bytes [..., n, hosts]``
        and ``forward_at``, see ``hierarchical_legs``) or ``low_latency``; ``protocol`` replaces
        the protocol set for this call (a DeepEP kernel's launch cost, bandwidth share, SM limit);
        ``kernel_s`` (scalar or ``[...]``): the time the kernel's SMs need to move these bytes,
        a floor under the bandwidth term (DeepEP's per-token work).
        """
        if algorithm not in ALL_TO_ALL_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALL_TO_ALL_ALGORITHMS}, got {algorithm!r}")
        pb = _as_bytes(pair_bytes)
        g = self._check(group)
        n = len(g)
        if pb.ndim < 2 or pb.shape[-2:] != (n, n):
            raise ValueError(f"pair_bytes must have shape [..., {n}, {n}] for a group of {n}, got {pb.shape}")
        if n == 1:
            return _out(np.zeros(pb.shape[:-2]))
        protocols = self.protocols if protocol is None else (protocol,)
        floor = np.zeros(pb.shape[:-2]) if kernel_s is None else np.broadcast_to(_as_bytes(kernel_s), pb.shape[:-2])
        if algorithm == "hierarchical":
            return _out(self._hierarchical(g, pb, node_bytes, forward_at, protocols, floor))
        tiers, lat = self._a2a_tiers(g)
        bw_s, inj, peak = _direct_terms(pb, tiers)
        return _out(_fastest(protocols, lambda p: p.a2a_launch_s + lat
                             + np.maximum(np.maximum(bw_s / p.bw_fraction, inj / p.injection_bytes_per_s), floor),
                             peak))

    def rails(self) -> Rails:
        """Local ranks and rail peers of the topology's GPUs (cached)."""
        if self._rails is None:
            self._rails = Rails(self.topology.node_of)
        return self._rails

    def _hierarchical(self, g: tuple[int, ...], pb: np.ndarray, node_bytes: ArrayLike | None,
                      forward_at: str, protocols: tuple[Protocol, ...], floor: np.ndarray) -> np.ndarray:
        """Seconds of a hierarchical all-to-all: its legs' distinct (src, dst) cells, each GPU's
        NVLink and RDMA ports (out and in) busy for their bytes / pair bandwidth, the injection
        limit, and the latency of the first legs plus that of the forwarding legs."""
        plan, cells = _leg_cells(self.rails(), g, pb, None if node_bytes is None else _as_bytes(node_bytes),
                                 forward_at)
        lead = pb.shape[:-2]
        w, intra, lat_c, fwd_c, out_of, in_of = self._cell_terms((tuple(g), forward_at), plan)
        t = cells * w
        t_nvl = t * intra                     # NVLink legs; the rest cross the NICs
        t_nic = t - t_nvl
        port = np.maximum.reduce([t_nvl @ out_of, t_nic @ out_of, t_nvl @ in_of, t_nic @ in_of]).max(axis=-1)
        inj = np.maximum(cells @ out_of, cells @ in_of).max(axis=-1)
        moving = cells > 0
        first = np.where(moving & ~fwd_c, lat_c, 0.0).max(axis=-1, initial=0.0)
        second = np.where(moving & fwd_c, lat_c, 0.0).max(axis=-1, initial=0.0)
        lat = first + second + self.per_message_latency_s * (1.0 + (moving & fwd_c).any(axis=-1))
        out = _fastest(protocols, lambda p: p.a2a_launch_s + lat
                       + np.maximum.reduce([port / p.bw_fraction, inj / p.injection_bytes_per_s, floor.reshape(-1)]),
                       cells.max(axis=-1, initial=0.0))
        return np.asarray(out).reshape(lead)

    def _cell_terms(self, key: tuple[tuple[int, ...], str], plan: _LegPlan) -> tuple[np.ndarray, ...]:
        """Per cell of ``plan`` (that of ``key`` = (group, direction)): 1 / pair bandwidth, same
        host, latency, forwarding leg; and the ``[cells, X]`` one-hot maps of each cell's source and
        destination (cached by ``key``, as the plan is on ``self.rails()``)."""
        hit = self._cells.get(key)
        if hit is None:
            x = plan.ext
            cs, cd = np.divmod(plan.cells, x.size)
            src, dst = x[cs], x[cd]
            w = 1.0 / self._pair_bw(src, dst)
            node = np.asarray(self.topology.node_of)
            intra = node[src] == node[dst]
            lat = np.asarray(self.topology.latency_s[src, dst], dtype=np.float64)
            fwd = plan.forward[cs, cd]
            out_of = (cs[:, None] == np.arange(x.size)[None, :]).astype(np.float64)
            in_of = (cd[:, None] == np.arange(x.size)[None, :]).astype(np.float64)
            hit = self._cells[key] = (w, intra, lat, fwd, out_of, in_of)
        return hit

    def p2p_s(self, src: int, dst: int, nbytes: ArrayLike) -> Seconds:
        """``S / (B(src, dst) · efficiency) + latency(src, dst) + per_message_latency_s``; 0 if src == dst."""
        s = _as_bytes(nbytes)
        src, dst = self._check((src,))[0], self._check((dst,))[0]
        if src == dst:
            return _out(np.zeros_like(s))
        bw = float(self._pair_bw(np.asarray(src), np.asarray(dst)))
        lat = float(self.topology.latency_s[src, dst]) + self.per_message_latency_s
        return _out(_fastest(self.protocols, lambda p: p.a2a_launch_s + lat
                             + np.maximum(s / (bw * p.bw_fraction), s / p.injection_bytes_per_s), s))

    def transfers_s(self, src: ArrayLike, dst: ArrayLike, nbytes: ArrayLike) -> float:
        """Seconds until simultaneous transfers ``src[k] → dst[k]`` of ``nbytes[k]`` (KV cache,
        expert weights) have landed: the transfers of one GPU share its port (their times
        ``bytes / B(src, dst)`` add, per sender and per receiver), plus the largest path latency;
        ``src == dst`` moves nothing; 0 s without bytes."""
        s, d = np.asarray(src, np.int64).ravel(), np.asarray(dst, np.int64).ravel()
        b = _as_bytes(nbytes).ravel()
        if not (s.shape == d.shape == b.shape):
            raise ValueError("src, dst and nbytes must give one value per transfer")
        if s.size:
            self._check(tuple(np.unique(np.concatenate([s, d])).tolist()))
        moving = (s != d) & (b > 0)
        if not moving.any():
            return 0.0
        s, d, b = s[moving], d[moving], b[moving]
        t = b / self._pair_bw(s, d)
        g = self.topology.n_gpus
        port = max(np.bincount(s, t, g).max(), np.bincount(d, t, g).max())
        inj = max(np.bincount(s, b, g).max(), np.bincount(d, b, g).max())
        lat = float(self.topology.latency_s[s, d].max()) + self.per_message_latency_s
        return float(_fastest(self.protocols, lambda p: p.a2a_launch_s + lat
                              + max(port / p.bw_fraction, inj / p.injection_bytes_per_s), b.max()))


def _direct_terms(pb: np.ndarray, tiers: list[_Tier]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bandwidth term s, injection term bytes, largest message bytes)`` ``[...]`` of a direct
    all-to-all of ``pb [..., n, n]`` (module doc). numpy reduces short trailing axes slowly, so a
    few ranks (n < 8, where its sums are plain left-to-right additions either way) with many
    leading draws are reduced with the rank axes moved to the front."""
    n, lead = pb.shape[-1], pb.shape[:-2]
    if n < 8 and int(np.prod(lead)) > n * n:
        x = np.ascontiguousarray(np.moveaxis(pb, (-2, -1), (0, 1)))   # [src, dst, ...]
        src, dst, rank = 0, 1, 0
        def at(v: np.ndarray) -> np.ndarray:
            return v.reshape(v.shape + (1,) * len(lead))
    else:
        x, src, dst, rank = pb, -2, -1, -1
        def at(v: np.ndarray) -> np.ndarray:
            return v
    off = x * at(1.0 - np.eye(n))
    bw_s = np.zeros(lead)
    for peers, b_out, b_in in tiers:
        part = off if peers is None else off * at(peers)
        sent, recv = part.sum(axis=dst) / at(b_out), part.sum(axis=src) / at(b_in)
        bw_s = np.maximum(bw_s, np.maximum(sent, recv).max(axis=rank))
    inj = np.maximum(off.sum(axis=dst), off.sum(axis=src)).max(axis=rank)
    return bw_s, inj, off.max(axis=(src, dst))


def _as_bytes(x: ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if np.any(a < 0):
        raise ValueError("byte counts must be >= 0")
    return a
