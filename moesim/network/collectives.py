"""Closed-form collective times on a ``Topology`` (the *simple* network model).

Each collective is costed from the topology's precomputed GPU-pair bottleneck bandwidth and
latency; concurrent traffic does not share links here. The flow-level model replaces this class
behind the same ``CollectiveCost`` protocol.

A *group* is a tuple of global GPU indices; for ring collectives its order is the ring order.
Byte arguments may be numpy arrays of any shape: the result has the same leading shape (a Python
``float`` when the input is a scalar). A group of one GPU costs 0 s for everything.

Formulas (n = group size, S = bytes, B = bottleneck bandwidth x efficiency, L = per-step latency
= ``per_message_latency_s`` + the largest path latency between the GPUs that step involves):

* all-reduce (ring): ``2(n-1)/n · S / B + 2(n-1) · L``, S = buffer bytes on each rank; with
  ``all_reduce_algorithm="auto"`` the cheapest of ring, two-shot (direct reduce-scatter +
  all-gather: ``2(n-1)/n · S / B_a2a + 2 L``) and one-shot (every rank reads all buffers:
  ``(n-1) · S / B_a2a + L``), as NCCL's NVLS/tree and vLLM's custom all-reduce pick per size;
* all-gather / reduce-scatter (ring): ``(n-1)/n · S / B + (n-1) · L``, S = total output bytes;
* all-to-all: ``max_i max(send_i / B_out_i, recv_i / B_in_i) + L``, where ``B_out_i`` is rank
  i's narrowest bottleneck towards any other member (x efficiency), ``B_in_i`` the narrowest
  from any other member, and L uses the largest pair latency in the group;
* point-to-point: ``S / B(src, dst) + latency(src, dst) + per_message_latency_s``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from moesim.network.topology import Topology

__all__ = ["CollectiveCost", "SimpleCollectives"]

Seconds = float | np.ndarray
"""A float for scalar input, else an array with the input's leading shape."""


@runtime_checkable
class CollectiveCost(Protocol):
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


def _out(x: np.ndarray) -> Seconds:
    return float(x) if x.ndim == 0 else x


class SimpleCollectives:
    """``CollectiveCost`` from closed forms on the topology's pair bottlenecks (see module doc).

    Args:
        topology: the cluster network.
        efficiency: achieved / nominal bandwidth, in (0, 1].
        per_message_latency_s: software cost of each message step (kernel launch, protocol
            handshake), seconds, added to the path latency.
        all_reduce_algorithm: ``"ring"`` or ``"auto"`` (cheapest of ring, two-shot, one-shot).
    """

    def __init__(self, topology: Topology, *, efficiency: float = 0.8,
                 per_message_latency_s: float = 5e-6, all_reduce_algorithm: str = "ring") -> None:
        if all_reduce_algorithm not in ("ring", "auto"):
            raise ValueError(f"all_reduce_algorithm must be 'ring' or 'auto', got {all_reduce_algorithm!r}")
        self.all_reduce_algorithm = all_reduce_algorithm
        if not 0.0 < efficiency <= 1.0:
            raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")
        if per_message_latency_s < 0:
            raise ValueError(f"per_message_latency_s must be >= 0, got {per_message_latency_s}")
        self.topology = topology
        self.efficiency = float(efficiency)
        self.per_message_latency_s = float(per_message_latency_s)
        self._ring_cache: dict[tuple[int, ...], tuple[float, float]] = {}
        self._a2a_cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, float]] = {}

    # ----------------------------------------------------------------- group properties
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

    def ring(self, group: tuple[int, ...]) -> tuple[float, float]:
        """``(bandwidth bytes/s, step latency s)`` of the ring in ``group`` order (cached)."""
        hit = self._ring_cache.get(group)
        if hit is None:
            g = np.asarray(self._check(group))
            nxt = np.roll(g, -1)
            bw = float(self.topology.bottleneck_bytes_per_s[g, nxt].min()) * self.efficiency
            lat = float(self.topology.latency_s[g, nxt].max()) + self.per_message_latency_s
            hit = self._ring_cache[group] = (bw, lat)
        return hit

    def _a2a(self, group: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, float]:
        """``([n] B_out bytes/s, [n] B_in bytes/s, latency s)`` of an all-to-all over ``group``."""
        hit = self._a2a_cache.get(group)
        if hit is None:
            g = np.asarray(self._check(group))
            bw = self.topology.bottleneck_bytes_per_s[np.ix_(g, g)]  # inf on the diagonal
            b_out = bw.min(axis=1) * self.efficiency
            b_in = bw.min(axis=0) * self.efficiency
            lat = float(self.topology.latency_s[np.ix_(g, g)].max()) + self.per_message_latency_s
            hit = self._a2a_cache[group] = (b_out, b_in, lat)
        return hit

    # ----------------------------------------------------------------- collectives
    def all_reduce_s(self, group: tuple[int, ...], nbytes: ArrayLike) -> Seconds:
        """All-reduce (ring, or the cheapest algorithm with ``auto``), same shape as ``nbytes``."""
        ring = self._ring_time(group, nbytes, passes=2)
        n = len(group)
        if self.all_reduce_algorithm == "ring" or n <= 2:
            return ring
        s = _as_bytes(nbytes)
        b_out, b_in, lat = self._a2a(tuple(group))
        bw = float(min(b_out.min(), b_in.min()))
        two_shot = 2 * (n - 1) / n * s / bw + 2 * lat
        one_shot = (n - 1) * s / bw + lat
        return _out(np.minimum(np.minimum(ring, two_shot), one_shot))

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
        return _out(steps / n * s / bw + steps * lat)

    def all_to_all_s(self, group: tuple[int, ...], pair_bytes: ArrayLike) -> Seconds:
        """All-to-all of ``pair_bytes [..., n, n]`` (i → j, diagonal ignored) → ``[...]`` seconds."""
        pb = _as_bytes(pair_bytes)
        n = len(self._check(group))
        if pb.ndim < 2 or pb.shape[-2:] != (n, n):
            raise ValueError(f"pair_bytes must have shape [..., {n}, {n}] for a group of {n}, got {pb.shape}")
        if n == 1:
            return _out(np.zeros(pb.shape[:-2]))
        b_out, b_in, lat = self._a2a(tuple(group))
        off = pb * (1.0 - np.eye(n))
        send_s = off.sum(axis=-1) / b_out  # [..., n]
        recv_s = off.sum(axis=-2) / b_in  # [..., n]
        return _out(np.maximum(send_s, recv_s).max(axis=-1) + lat)

    def p2p_s(self, src: int, dst: int, nbytes: ArrayLike) -> Seconds:
        """``S / (B(src, dst) · efficiency) + latency(src, dst) + per_message_latency_s``; 0 if src == dst."""
        s = _as_bytes(nbytes)
        src, dst = self._check((src,))[0], self._check((dst,))[0]
        if src == dst:
            return _out(np.zeros_like(s))
        bw = float(self.topology.bottleneck_bytes_per_s[src, dst]) * self.efficiency
        lat = float(self.topology.latency_s[src, dst]) + self.per_message_latency_s
        return _out(s / bw + lat)


def _as_bytes(x: ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if np.any(a < 0):
        raise ValueError("byte counts must be >= 0")
    return a
