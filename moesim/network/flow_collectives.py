"""Collectives as batches of flows on a ``FlowNetwork``: the flow-level ``CollectiveCost``.

Same protocol and conventions as ``collectives.SimpleCollectives``: a group is a tuple of global
GPU indices (ring order = group order), byte arguments may have any shape and the result has the
same leading shape (a ``float`` for a scalar), a group of one GPU costs 0 s. NCCL-like algorithms,
n = group size, S = bytes:

* all-reduce (ring): 2(n−1) steps; in each step every rank sends S/n bytes to the next rank, the
  n flows at once. A step takes that batch's time on the flow model (max-min shared links, path
  latency, per-message latency); the total is 2(n−1) steps;
* with ``all_reduce_algorithm="auto"`` (as ``SimpleCollectives``) the cheapest of the ring,
  two-shot (two uniform all-to-alls of S/n per pair: direct reduce-scatter, then all-gather) and
  one-shot (one uniform all-to-all of S per pair: every rank reads every buffer);
* all-gather (S = gathered output) and reduce-scatter (S = input per rank): n−1 steps of S/n;
* all-to-all: one batch of the flows ``pair_bytes[..., i, j]`` (diagonal ignored); the leading
  dims are looped over, each distinct traffic shape solved once (``FlowNetwork`` cache);
* point-to-point: one flow.

As in ``SimpleCollectives``, ring steps and p2p pay their latency even for 0 bytes; an all-to-all
that moves no bytes costs 0 s.

Rates do not depend on sizes, so a ring step or a p2p pair is solved once per group at unit size
and then scaled: the ring costs are vectorised over any ``nbytes`` shape. On an uncontended ring
whose neighbour paths are single links of B bytes/s this gives the closed form
``2(n−1)/n · S/(B · efficiency) + 2(n−1) · (path latency + per_message_latency_s)``.

Accounting: with ``account=True`` every call adds its bytes (summed over leading dims) to the
network's link counters (``FlowNetwork.link_bytes``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moesim.network.collectives import Seconds
from moesim.network.flows import FlowNetwork, Profile

__all__ = ["FlowCollectives"]


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
        efficiency: achieved / nominal bandwidth, in (0, 1].
        per_message_latency_s: software cost of each step (kernel launch, handshake), s.
        account: add every costed collective's bytes to the link counters.
        all_reduce_algorithm: ``"ring"`` or ``"auto"`` (cheapest of ring, two-shot, one-shot).
        network: an existing ``FlowNetwork`` to share (its efficiency and latency then apply).
        **flow_kwargs: further ``FlowNetwork`` options (``rtol``, ``window_frac``, ``max_paths``).
    """

    def __init__(self, topology: Any, *, efficiency: float = 0.8, per_message_latency_s: float = 5e-6,
                 account: bool = True, all_reduce_algorithm: str = "ring",
                 network: FlowNetwork | None = None, **flow_kwargs: Any) -> None:
        if all_reduce_algorithm not in ("ring", "auto"):
            raise ValueError(f"all_reduce_algorithm must be 'ring' or 'auto', got {all_reduce_algorithm!r}")
        self.all_reduce_algorithm = all_reduce_algorithm
        self.topology = topology
        self.network = network or FlowNetwork(topology, efficiency=efficiency,
                                              per_message_latency_s=per_message_latency_s, **flow_kwargs)
        self.efficiency = self.network.efficiency
        self.per_message_latency_s = self.network.per_message_latency_s
        self.account = account
        self._unit: dict[tuple[str, tuple[int, ...]], tuple[Profile, float]] = {}

    def _check(self, group: tuple[int, ...]) -> tuple[int, ...]:
        g = tuple(int(x) for x in group)
        if not g:
            raise ValueError("a collective needs a non-empty group of GPU indices")
        if len(set(g)) != len(g):
            raise ValueError(f"group {g} lists a GPU more than once")
        bad = [x for x in g if not 0 <= x < self.topology.n_gpus]
        if bad:
            raise ValueError(f"group {g}: GPUs {bad} are not in topology {self.topology.name!r} "
                             f"with {self.topology.n_gpus} GPUs")
        return g

    def _unit_profile(self, kind: str, group: tuple[int, ...]) -> tuple[Profile, float]:
        """``(profile, scale per byte)`` of one ring step (``ring``) or one transfer (``p2p``)."""
        hit = self._unit.get((kind, group))
        if hit is None:
            n = len(group)
            pb = np.zeros((n, n))
            if kind == "ring":
                pb[np.arange(n), (np.arange(n) + 1) % n] = 1.0
            elif kind == "a2a":
                pb[:] = 1.0
            else:
                pb[0, 1] = 1.0
            hit = self._unit[(kind, group)] = self.network.transfer(pb, group, account=False)
        return hit

    def _scaled(self, kind: str, group: tuple[int, ...], per_flow: np.ndarray, steps: int) -> Seconds:
        prof, per_byte = self._unit_profile(kind, group)
        if self.account:
            self.network.account(prof, per_byte * steps * float(per_flow.sum()))
        x = (per_flow * per_byte)[..., None]  # a step pays its latency even with 0 bytes
        step = (x * prof.finish_s + prof.latency_s).max(axis=-1) + prof.per_message_latency_s
        return _out(steps * step)

    # ----------------------------------------------------------------- collectives
    def all_reduce_s(self, group: tuple[int, ...], nbytes: ArrayLike) -> Seconds:
        """All-reduce of an ``nbytes`` buffer per rank: ring (2(n−1) steps of nbytes/n), or with
        ``auto`` the cheapest of ring, two-shot and one-shot."""
        ring = self._ring(group, nbytes, passes=2)
        g = self._check(group)
        if self.all_reduce_algorithm == "ring" or len(g) <= 2:
            return ring
        s, n = _as_bytes(nbytes), len(g)
        acct, self.account = self.account, False  # link counters get the ring's bytes only
        try:
            two_shot, one_shot = self._scaled("a2a", g, s / n, 2), self._scaled("a2a", g, s, 1)
        finally:
            self.account = acct
        return _out(np.minimum(np.minimum(ring, two_shot), one_shot))

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
        return self._scaled("ring", g, s / len(g), passes * (len(g) - 1))

    def all_to_all_s(self, group: tuple[int, ...], pair_bytes: ArrayLike) -> Seconds:
        """All-to-all of ``pair_bytes [..., n, n]`` (i → j, diagonal ignored) → ``[...]`` seconds."""
        pb = _as_bytes(pair_bytes)
        g = self._check(group)
        n = len(g)
        if pb.ndim < 2 or pb.shape[-2:] != (n, n):
            raise ValueError(f"pair_bytes must have shape [..., {n}, {n}] for a group of {n}, got {pb.shape}")
        out = np.zeros(pb.shape[:-2])
        if n > 1:
            for idx in np.ndindex(*out.shape):
                prof, scale = self.network.transfer(pb[idx], g, account=self.account)
                out[idx] = prof.time_s(scale)
        return _out(out)

    def p2p_s(self, src: int, dst: int, nbytes: ArrayLike) -> Seconds:
        """One flow of ``nbytes`` (any shape) from GPU ``src`` to GPU ``dst``; 0 if src == dst."""
        s = _as_bytes(nbytes)
        src, dst = self._check((src,))[0], self._check((dst,))[0]
        if src == dst:
            return _out(np.zeros_like(s))
        return self._scaled("p2p", (src, dst), s, 1)
