"""Collectives as batches of flows on a ``FlowNetwork``: the flow-level ``CollectiveCost``.

Same protocol, conventions and algorithm names as ``collectives.SimpleCollectives``: a group is a
tuple of global GPU indices (ring order = group order), byte arguments may have any shape and the
result has the same leading shape (a ``float`` for a scalar), a group of one GPU costs 0 s.
n = group size, S = bytes; a *batch* is a set of flows that start together and takes its time on
the flow model (max-min shared links, path latency, per-message latency):

* all-reduce ``ring``: 2(n−1) steps; in each step every rank sends S/n bytes to the next rank,
  the n flows at once; the total is 2(n−1) steps;
* ``tree``: the double binary tree (``collectives.double_binary_tree``) as one pipelined batch —
  every tree edge carries S/2 each way — plus 2·depth step latencies;
* ``nvls`` (one NVSwitch host): the switch reduces and multicasts, every GPU sends and receives
  (n+1)/n·S: a uniform all-to-all batch of that load, plus two step latencies;
* ``auto``: the cheapest of ring, tree, two-shot (two uniform all-to-alls of S/n per pair: direct
  reduce-scatter, then all-gather), one-shot (one uniform all-to-all of S per pair: every rank
  reads every buffer) and nvls where allowed (``nvls=True``, one host); ``nccl``: ring, nvls where
  allowed, tree for groups spanning several hosts;
* all-gather (S = gathered output) and reduce-scatter (S = input per rank): n−1 ring steps of S/n;
* all-to-all ``direct``: one batch of the flows ``pair_bytes[..., i, j]`` (diagonal ignored); the
  leading dims are looped over, each distinct traffic shape solved once (``FlowNetwork`` cache);
* ``low_latency`` (DeepEP LL): the same batch routed *without* PXN: a ``FatTree`` with ``pxn`` is
  costed on a copy routed directly, a topology with a ``without_pxn()`` method on what it returns
  (the link numbering must match); otherwise the topology's own routes apply (a rail fabric
  without spine has no path between rails but through a GPU);
* ``hierarchical`` (DeepEP normal): the legs of ``collectives.hierarchical_legs`` — RDMA to the
  rail-aligned GPU of the destination host (once per host with ``node_bytes``), NVLink forward —
  as one batch (the kernels pipeline both), plus the forward hop's latency and message cost;
* point-to-point: one flow; ``transfers_s``: any number of transfers as one batch.

As in ``SimpleCollectives``, ring steps and p2p pay their latency even for 0 bytes; an all-to-all
that moves no bytes costs 0 s.

**Protocols** (``collectives.Protocol``): each adds its launch cost once (``launch_s`` for
ring / tree / nvls, ``a2a_launch_s`` for all-to-all and p2p batches) and divides every flow's
finish time by its ``bw_fraction``; a collective takes the fastest protocol. The default single
protocol adds nothing. ``injection_bytes_per_s`` bounds a batch's bandwidth time below by the
busiest GPU's bytes sent or received over that rate, and ``kernel_s`` of ``all_to_all_s`` by a
given kernel time (all-to-all, p2p). **Efficiency**: links
inside a host (tiers ``nvlink``, ``pcie``) get ``efficiency``, all others
``inter_node_efficiency`` (default: the same).

Rates do not depend on sizes, so a ring step or a p2p pair is solved once per group at unit size
and then scaled: the ring costs are vectorised over any ``nbytes`` shape. On an uncontended ring
whose neighbour paths are single links of B bytes/s this gives the closed form
``2(n−1)/n · S/(B · efficiency) + 2(n−1) · (path latency + per_message_latency_s)``.

Accounting: with ``account=True`` every call adds its bytes (summed over leading dims) to the
network's link counters (``FlowNetwork.link_bytes``); ``auto`` / ``nccl`` all-reduces count the
ring's bytes.
"""

from __future__ import annotations

import copy
from functools import reduce
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moesim.network.collectives import (ALL_REDUCE_ALGORITHMS, all_reduce_args, check_group, ALL_TO_ALL_ALGORITHMS, Protocol, Rails, Seconds,
                                        _bulk, _fastest, _protocols, double_binary_tree, hierarchical_legs,
                                        nccl_calibration, tree_unit_bytes)
from moesim.network.flows import FlowNetwork, Profile
from moesim.network.generators import FatTree

__all__ = ["FlowCollectives"]

_INTRA_TIERS = ("nvlink", "pcie")


def _out(x: np.ndarray) -> Seconds:
    return float(x) if x.ndim == 0 else x


def _as_bytes(x: ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if np.any(a < 0):
        raise ValueError("byte counts must be >= 0")
    return a


class FlowCollectives:
    """``CollectiveCost`` from flow-level simulation (see the module doc).

    Args:
        topology: ``Topology`` or ``generators.FatTree``.
        efficiency: achieved / nominal bandwidth of links inside a host, in (0, 1].
        per_message_latency_s: software cost of each step (kernel launch, handshake), s.
        account: add every costed collective's bytes to the link counters.
        all_reduce_algorithm: ``ring``, ``tree``, ``nvls``, ``auto`` or ``nccl``.
        network: an existing ``FlowNetwork`` to share (its efficiency and latency then apply).
        protocols: NCCL-like ``Protocol`` set (default: one that adds nothing).
        inter_node_efficiency: efficiency of every other link (NIC, fabric); default ``efficiency``.
        nvls: the NVSwitch reduces (NVLink SHARP): ``auto`` / ``nccl`` may pick ``nvls``.
        **flow_kwargs: further ``FlowNetwork`` options (``rtol``, ``window_frac``, ``max_paths``).
    """

    def __init__(self, topology: Any, *, efficiency: float = 0.8, per_message_latency_s: float = 5e-6,
                 account: bool = True, all_reduce_algorithm: str = "ring",
                 network: FlowNetwork | None = None, protocols: tuple[Protocol, ...] | None = None,
                 inter_node_efficiency: float | None = None, nvls: bool = False, **flow_kwargs: Any) -> None:
        if all_reduce_algorithm not in ALL_REDUCE_ALGORITHMS:
            raise ValueError(f"all_reduce_algorithm must be one of {ALL_REDUCE_ALGORITHMS}, "
                             f"got {all_reduce_algorithm!r}")
        if network is not None and inter_node_efficiency is not None:
            raise ValueError("inter_node_efficiency cannot be set on a shared network (its capacities apply)")
        if inter_node_efficiency is not None and not 0.0 < inter_node_efficiency <= 1.0:
            raise ValueError(f"inter_node_efficiency must be in (0, 1], got {inter_node_efficiency}")
        self.all_reduce_algorithm = all_reduce_algorithm
        self.topology = topology
        self._flow_kwargs = flow_kwargs
        self.network = network or FlowNetwork(topology, efficiency=efficiency,
                                              per_message_latency_s=per_message_latency_s, **flow_kwargs)
        self.efficiency = self.network.efficiency
        self.inter_node_efficiency = self.efficiency if inter_node_efficiency is None else float(inter_node_efficiency)
        if network is None and self.inter_node_efficiency != self.efficiency:
            net = self.network
            intra = np.isin(net.tier, _INTRA_TIERS)
            net.capacity_bytes_per_s = net.nominal_bytes_per_s * np.where(intra, self.efficiency,
                                                                          self.inter_node_efficiency)
        self.per_message_latency_s = self.network.per_message_latency_s
        self.protocols = _protocols(protocols)
        self.nvls = bool(nvls)
        self.account = account
        self._unit: dict[tuple[str, tuple[int, ...]], tuple[Profile, float]] = {}
        self._rails: Rails | None = None
        self._direct: FlowNetwork | None = None
        self._fwd_lat: dict[tuple[Any, ...], np.ndarray] = {}

    @classmethod
    def calibrated(cls, topology: Any, gpu: str | None = None, **overrides: Any) -> FlowCollectives:
        """Collectives with ``NCCL_CALIBRATION[gpu or topology.gpu]``'s knobs (``overrides`` win)."""
        return cls(topology, **{**nccl_calibration(gpu or topology.gpu).kwargs(), **overrides})

    def _check(self, group: tuple[int, ...]) -> tuple[int, ...]:
        return check_group(self.topology, group)

    def _one_host(self, group: tuple[int, ...]) -> bool:
        return len(set(np.asarray(self.topology.node_of)[list(group)].tolist())) == 1

    def _unit_profile(self, kind: str, group: tuple[int, ...]) -> tuple[Profile, float]:
        """``(profile, scale per byte)`` of one ring step (``ring``), a uniform all-to-all
        (``a2a``), the double binary tree (``tree``) or one transfer (``p2p``)."""
        hit = self._unit.get((kind, group))
        if hit is None:
            n = len(group)
            pb = np.zeros((n, n))
            if kind == "ring":
                pb[np.arange(n), (np.arange(n) + 1) % n] = 1.0
            elif kind == "a2a":
                pb[:] = 1.0
            elif kind == "tree":
                pb = tree_unit_bytes(n)
            else:
                pb[0, 1] = 1.0
            hit = self._unit[(kind, group)] = self.network.transfer(pb, group, account=False)
        return hit

    def _scaled(self, kind: str, group: tuple[int, ...], per_flow: np.ndarray, steps: int, *,
                a2a: bool = False, extra_steps: int = 0, protocols: tuple[Protocol, ...] | None = None,
                inj_bytes: np.ndarray | None = None, peer_bytes: np.ndarray | None = None) -> np.ndarray:
        """Unit batch ``kind`` scaled to ``per_flow`` bytes per unit flow, ``steps`` times, plus
        ``extra_steps`` step latencies; the fastest of ``protocols``."""
        prof, per_byte = self._unit_profile(kind, group)
        if self.account:
            self.network.account(prof, per_byte * steps * float(per_flow.sum()))
        x = (per_flow * per_byte)[..., None]  # a step pays its latency even with 0 bytes
        lat_max = float(prof.latency_s.max()) if prof.latency_s.size else 0.0
        msg = prof.per_message_latency_s
        inj = np.zeros_like(per_flow) if inj_bytes is None else inj_bytes

        def cost(p: Protocol) -> np.ndarray:
            bw = (x * prof.finish_s / p.bw_fraction + prof.latency_s).max(axis=-1)
            bw = np.maximum(bw, inj / p.injection_bytes_per_s + lat_max)
            return ((p.a2a_launch_s if a2a else p.launch_s) + steps * (bw + msg)
                    + extra_steps * (lat_max + msg))
        return _fastest(protocols or self.protocols, cost, peer_bytes)

    # ----------------------------------------------------------------- collectives
    def all_reduce_s(self, group: tuple[int, ...], nbytes: ArrayLike, algorithm: str | None = None) -> Seconds:
        """All-reduce of an ``nbytes`` buffer per rank with ``algorithm`` (default
        ``all_reduce_algorithm``; see the module doc)."""
        algo, g, s = all_reduce_args(self, group, nbytes, algorithm)
        n = len(g)
        if n == 1:
            return _out(np.zeros_like(s))
        if algo == "tree":
            return _out(self._tree(g, s))
        if algo == "nvls":
            if not self._one_host(g):
                raise ValueError(f"nvls all-reduce needs a group inside one NVSwitch host, got {g}")
            return _out(self._nvls(g, s))
        ring = np.asarray(self._ring(g, s, passes=2))
        if algo == "ring":
            return _out(ring)
        nvls = self.nvls and n > 2 and self._one_host(g)
        acct, self.account = self.account, False  # link counters get the ring's bytes only
        try:
            cands = [ring]
            if algo == "nccl":
                if nvls:
                    cands.append(self._nvls(g, s))
                if not self._one_host(g):
                    cands.append(self._tree(g, s))
            elif n > 2:
                cands += [self._tree(g, s), self._scaled("a2a", g, s / n, 2, a2a=True),
                          self._scaled("a2a", g, s, 1, a2a=True)]
                if nvls:
                    cands.append(self._nvls(g, s))
        finally:
            self.account = acct
        return _out(reduce(np.minimum, cands))

    def _tree(self, g: tuple[int, ...], s: np.ndarray) -> np.ndarray:
        depth = double_binary_tree(len(g))[1]
        return self._scaled("tree", g, s, 1, extra_steps=2 * depth - 1)

    def _nvls(self, g: tuple[int, ...], s: np.ndarray) -> np.ndarray:
        n = len(g)
        return self._scaled("a2a", g, s * (n + 1) / (n * (n - 1)), 1, extra_steps=1,
                            protocols=(_bulk(self.protocols),))

    def all_gather_s(self, group: tuple[int, ...], nbytes: ArrayLike) -> Seconds:
        """Ring all-gather of ``nbytes`` total output: n−1 steps of nbytes/n per rank."""
        return self._ring(group, nbytes, passes=1)

    def reduce_scatter_s(self, group: tuple[int, ...], nbytes: ArrayLike) -> Seconds:
        """Ring reduce-scatter of an ``nbytes`` input per rank: n−1 steps of nbytes/n per rank."""
        return self._ring(group, nbytes, passes=1)

    def _ring(self, group: tuple[int, ...], nbytes: ArrayLike, *, passes: int) -> Seconds:
        s = _as_bytes(nbytes)
        g = self._check(group)
        if len(g) == 1:
            return _out(np.zeros_like(s))
        return _out(self._scaled("ring", g, s / len(g), passes * (len(g) - 1)))

    def _batch(self, prof: Profile, scale: float, protocols: tuple[Protocol, ...], inj_bytes: float,
               peer_bytes: float, extra_s: float = 0.0, kernel_s: float = 0.0) -> float:
        """Seconds of a solved batch at ``scale``: the fastest protocol's launch + flows (each
        finish / bw_fraction + its latency, at least the injection time or ``kernel_s`` + the
        largest latency) + per-message latency + ``extra_s``; 0 without bytes."""
        if prof.n_flows == 0 or scale <= 0:
            return 0.0
        lat_max = float(prof.latency_s.max())

        def cost(p: Protocol) -> float:
            bw = float((scale * prof.finish_s / p.bw_fraction + prof.latency_s).max())
            bw = max(bw, inj_bytes / p.injection_bytes_per_s + lat_max, kernel_s + lat_max)
            return p.a2a_launch_s + bw + prof.per_message_latency_s + extra_s
        return float(_fastest(protocols, cost, peer_bytes))

    def all_to_all_s(self, group: tuple[int, ...], pair_bytes: ArrayLike, algorithm: str = "direct", *,
                     node_bytes: ArrayLike | None = None, forward_at: str = "destination",
                     protocol: Protocol | None = None, kernel_s: ArrayLike | None = None) -> Seconds:
        """All-to-all of ``pair_bytes [..., n, n]`` (i → j, diagonal ignored) → ``[...]`` seconds.

        ``algorithm``: ``direct``, ``hierarchical`` (optional ``node_bytes [..., n, hosts]``,
        ``forward_at``; see ``collectives.hierarchical_legs``) or ``low_latency``; ``protocol``
        replaces the protocol set for this call (a DeepEP kernel's launch cost, bandwidth share,
        SM limit); ``kernel_s`` (scalar or ``[...]``): the time the kernel's SMs need to move
        these bytes, a floor under the bandwidth term (DeepEP's per-token work).
        """
        if algorithm not in ALL_TO_ALL_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALL_TO_ALL_ALGORITHMS}, got {algorithm!r}")
        pb = _as_bytes(pair_bytes)
        g = self._check(group)
        n = len(g)
        if pb.ndim < 2 or pb.shape[-2:] != (n, n):
            raise ValueError(f"pair_bytes must have shape [..., {n}, {n}] for a group of {n}, got {pb.shape}")
        out = np.zeros(pb.shape[:-2])
        if n == 1:
            return _out(out)
        protocols = self.protocols if protocol is None else (protocol,)
        floor = np.zeros(out.shape) if kernel_s is None else np.broadcast_to(_as_bytes(kernel_s), out.shape)
        if algorithm == "hierarchical":
            legs = hierarchical_legs(self.rails(), g, pb, None if node_bytes is None else _as_bytes(node_bytes),
                                     forward_at)
            fwd_lat = self._forward_latency(legs.group, legs.forward)
            for idx in np.ndindex(*out.shape):
                m = legs.bytes[idx]
                prof, scale = self.network.transfer(m, legs.group, account=self.account)
                moving_fwd = (m > 0) & legs.forward
                extra = float(fwd_lat[moving_fwd].max()) + prof.per_message_latency_s if moving_fwd.any() else 0.0
                out[idx] = self._batch(prof, scale, protocols, _injection(m), float(m.max()), extra,
                                       float(floor[idx]))
            return _out(out)
        net = self._direct_network() if algorithm == "low_latency" else self.network
        off = pb * (1.0 - np.eye(n))
        for idx in np.ndindex(*out.shape):
            prof, scale = net.transfer(off[idx], g, account=False)
            if self.account:
                self.network.account(prof, scale)  # same link numbering on the direct copy
            out[idx] = self._batch(prof, scale, protocols, _injection(off[idx]), float(off[idx].max()),
                                  kernel_s=float(floor[idx]))
        return _out(out)

    def rails(self) -> Rails:
        """Local ranks and rail peers of the topology's GPUs (cached)."""
        if self._rails is None:
            self._rails = Rails(self.topology.node_of)
        return self._rails

    def _forward_latency(self, group: tuple[int, ...], forward: np.ndarray) -> np.ndarray:
        """``[X, X]`` path latency of the forward legs of an extended group (cached)."""
        key = (group, forward.tobytes())
        hit = self._fwd_lat.get(key)
        if hit is None:
            hit = np.zeros(forward.shape)
            i, j = np.nonzero(forward)
            if i.size:
                g = np.asarray(group)
                hit[i, j] = self.network.routes(g[i], g[j]).latency_s
            self._fwd_lat[key] = hit
        return hit

    def _direct_network(self) -> FlowNetwork:
        """The network routed without PXN, for ``low_latency``: the topology's ``without_pxn()``
        where it has one, a copy of a ``FatTree`` with ``pxn`` off (same link numbering), else the
        main network (its routes apply)."""
        if not getattr(self.topology, "pxn", False):
            return self.network
        if self._direct is None:
            make = getattr(self.topology, "without_pxn", None)
            if callable(make):
                topo = make()
            elif isinstance(self.topology, FatTree):
                topo = copy.copy(self.topology)
                topo.pxn = False
            else:
                return self.network
            net = self.network
            self._direct = FlowNetwork(topo, efficiency=net.efficiency, per_message_latency_s=net.per_message_latency_s,
                                       **self._flow_kwargs)
            self._direct.capacity_bytes_per_s = self._direct.nominal_bytes_per_s * (
                net.capacity_bytes_per_s / net.nominal_bytes_per_s)
        return self._direct

    def p2p_s(self, src: int, dst: int, nbytes: ArrayLike) -> Seconds:
        """One flow of ``nbytes`` (any shape) from GPU ``src`` to GPU ``dst``; 0 if src == dst."""
        s = _as_bytes(nbytes)
        src, dst = self._check((src,))[0], self._check((dst,))[0]
        if src == dst:
            return _out(np.zeros_like(s))
        return _out(self._scaled("p2p", (src, dst), s, 1, a2a=True, inj_bytes=s, peer_bytes=s))

    def transfers_s(self, src: ArrayLike, dst: ArrayLike, nbytes: ArrayLike) -> float:
        """Seconds until simultaneous transfers ``src[k] → dst[k]`` of ``nbytes[k]`` (KV cache,
        expert weights; any GPUs) have landed, as one batch of flows; 0 s without bytes."""
        s, d = np.asarray(src, np.int64).ravel(), np.asarray(dst, np.int64).ravel()
        b = _as_bytes(nbytes).ravel()
        if not (s.shape == d.shape == b.shape):
            raise ValueError("src, dst and nbytes must give one value per transfer")
        prof = self.network.transfer_flows(s, d, b, account=self.account)
        moving = s != d
        g = self.topology.n_gpus
        inj = max(np.bincount(s[moving], b[moving], g).max(initial=0.0),
                  np.bincount(d[moving], b[moving], g).max(initial=0.0))
        return self._batch(prof, 1.0, self.protocols, float(inj), float(b[moving].max(initial=0.0)))


def _injection(pair_bytes: np.ndarray) -> float:
    """Largest bytes one GPU sends or receives in an ``[n, n]`` batch (diagonal ignored)."""
    off = pair_bytes * (1.0 - np.eye(pair_bytes.shape[-1]))
    return float(max(off.sum(axis=-1).max(), off.sum(axis=-2).max()))
