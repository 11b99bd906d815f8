"""Transfers as discrete-event flows: each starts and ends as an event, rates re-solved on each change.

Collectives inside a forward pass are costed in one batch and cached (``network.flows``); traffic
that outlives a pass and meets other activities' traffic — expert-weight migrations today — runs
here instead. ``LiveFlows.start(src, dst, nbytes)`` adds a transfer (a set of GPU → GPU flows) to
the flows in flight and returns a SimPy event that fires when its last byte has landed (its
slowest flow's finish plus that flow's path latency). On every start, completion and re-route the
max-min fair rates of the flows in flight are re-solved (``maxmin.solve_maxmin``) over the
network's links, so two transfers that share a link slow each other down and speed up again when
one ends. Only the connected component of the change is re-solved — the flows linked to the
started / finished flows through chains of shared links; flows in other components keep their
rates, which is exact (max-min fairness decomposes over components).

Completions are coalesced: flows whose remaining time is within ``rtol`` (relative) of the
earliest one finish together at the latest of their finish times (``rtol = 0``: one event per
distinct finish time). Every flow's bytes are added to the links it crosses when it starts
(``link_bytes``, in the link indexing of the network passed at construction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from moesim.network.maxmin import Incidence, solve_maxmin, solve_maxmin_few

__all__ = ["LiveFlows", "TransferRecord"]

FEW_FLOWS = 64
"""Components of at most this many flows are solved by ``maxmin.solve_maxmin_few``."""


@dataclass
class TransferRecord:
    """One transfer: ``kind``, start and finish (s, finish None while in flight), bytes, flows, and
    the bytes it put on each link (``[L]`` of the original network, None for an empty transfer)."""

    kind: str
    start_s: float
    nbytes: float
    n_flows: int
    finish_s: float | None = None
    link_bytes: np.ndarray | None = None


@dataclass
class _Flows:
    """Flows in flight (one entry per flow, aligned)."""

    src: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dst: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    remaining: np.ndarray = field(default_factory=lambda: np.zeros(0))
    latency_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    transfer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    links: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.int64))
    """``[F, K]`` each flow's links on the current network, padded with L."""
    weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)))
    """``[F, K]`` load per unit of rate on those links (any value in padding)."""


class LiveFlows:
    """Flows in flight on a ``FlowNetwork`` inside a SimPy environment (see the module doc).

    Args:
        env: the simulation.
        network: ``moesim.network.flows.FlowNetwork`` whose routes and (efficiency-scaled)
            capacities carry the flows.
        rtol: completion coalescing, relative to the earliest finish (>= 0).
    """

    def __init__(self, env: simpy.Environment, network: Any, *, rtol: float = 1e-3) -> None:
        if rtol < 0:
            raise ValueError(f"rtol must be >= 0, got {rtol}")
        self.env, self.network, self.rtol = env, network, rtol
        self._link_map: np.ndarray | None = None  # current network's link -> original link index
        self.link_bytes = np.zeros(network.n_links)
        self.transfers: list[TransferRecord] = []
        self.solves = 0
        self._f = _Flows()
        self._rate = np.zeros(0)
        self._t = env.now
        self._generation = 0
        self._waiting: dict[int, tuple[simpy.Event, int, float]] = {}  # transfer -> (event, flows left, latest lat)

    # ------------------------------------------------------------------ API
    @property
    def in_flight(self) -> int:
        """Flows in flight now."""
        return int(self._f.remaining.size)

    def start(self, src: Any, dst: Any, nbytes: Any, *, kind: str = "transfer") -> simpy.Event:
        """Start flows ``src[k] -> dst[k]`` of ``nbytes[k]`` bytes now; the event fires (value: the
        ``TransferRecord``) once all have landed. Flows of 0 bytes or with ``src == dst`` take no time."""
        s = np.asarray(src, np.int64).ravel()
        d = np.asarray(dst, np.int64).ravel()
        b = np.asarray(nbytes, np.float64).ravel()
        if not (s.shape == d.shape == b.shape) or np.any(b < 0) or not np.all(np.isfinite(b)):
            raise ValueError("src, dst and nbytes must be equal-length; nbytes finite and >= 0")
        keep = (b > 0) & (s != d)
        s, d, b = s[keep], d[keep], b[keep]
        rec = TransferRecord(kind, float(self.env.now), float(b.sum()), int(b.size))
        tid = len(self.transfers)
        self.transfers.append(rec)
        ev = self.env.event()
        if not b.size:
            rec.finish_s = rec.start_s
            ev.succeed(rec)
            return ev
        self._advance()
        routes = self.network.routes(s, d)
        rec.link_bytes = self._original(routes.incidence.link_load(b))
        self.link_bytes += rec.link_bytes
        links, weights = _padded(routes.incidence)
        f = self._f
        f.src, f.dst = np.concatenate([f.src, s]), np.concatenate([f.dst, d])
        f.remaining = np.concatenate([f.remaining, b])
        f.latency_s = np.concatenate([f.latency_s, routes.latency_s])
        f.transfer = np.concatenate([f.transfer, np.full(b.size, tid)])
        f.links, f.weights = _stack(f.links, links, self.network.n_links), _stack(f.weights, weights, 0.0)
        self._rate = np.concatenate([self._rate, np.zeros(b.size)])
        self._waiting[tid] = (ev, int(b.size), 0.0)
        self._resolve(links.ravel())
        return ev

    def reroute(self, network: Any, link_map: np.ndarray | None = None) -> None:
        """From now on use ``network`` (e.g. after a fault): flows in flight keep their remaining
        bytes and take its routes. ``link_map[l]``: the original index of its link ``l``."""
        self._advance()
        self.network, self._link_map = network, link_map
        f = self._f
        if f.remaining.size:
            f.links, f.weights = _padded(network.routes(f.src, f.dst).incidence)
        self._resolve(None)

    # ------------------------------------------------------------------ internals
    def _original(self, per_link: np.ndarray) -> np.ndarray:
        if self._link_map is None:
            return per_link
        return np.bincount(self._link_map, weights=per_link, minlength=self.link_bytes.size)

    def _advance(self) -> None:
        """Move the flows' remaining bytes to ``env.now`` at the rates in force."""
        dt = self.env.now - self._t
        if dt > 0 and self._rate.size:
            finite = np.isfinite(self._rate)
            self._f.remaining[finite] = np.maximum(self._f.remaining[finite] - self._rate[finite] * dt, 0.0)
        self._t = self.env.now

    def _component(self, seed: np.ndarray) -> np.ndarray:
        """``[F]`` bool: the flows linked to the links ``seed`` through chains of shared links."""
        f, n_links = self._f, self.network.n_links
        mask = np.zeros(n_links + 1, bool)
        mask[seed] = True
        mask[n_links] = False
        hit = np.zeros(f.remaining.size, bool)
        while True:
            now = mask[f.links].any(axis=1)
            if (now == hit).all():
                return hit
            hit = now
            mask[f.links[hit].ravel()] = True
            mask[n_links] = False

    def _resolve(self, seed: np.ndarray | None) -> None:
        """Re-solve the rates of the flows linked to the links ``seed`` (None: all flows) and
        schedule the next completion."""
        self._generation += 1
        f = self._f
        if not f.remaining.size:
            self._rate = np.zeros(0)
            return
        comp = np.ones(f.remaining.size, bool) if seed is None else self._component(seed)
        ids = np.flatnonzero(comp)
        if not ids.size:
            pass                  # the change touched no flow still in flight: rates stand
        elif ids.size <= FEW_FLOWS:
            self._rate[ids] = solve_maxmin_few(self.network.capacity_bytes_per_s, f.links[ids], f.weights[ids])
        else:
            inc = Incidence(f.links[ids].T.copy(), f.weights[ids].T.copy(), self.network.n_links)
            self._rate[ids] = solve_maxmin(self.network.capacity_bytes_per_s, inc)
        self.solves += bool(ids.size)
        with np.errstate(divide="ignore"):
            left = np.where(self._rate > 0, f.remaining / self._rate, np.inf)
        t_min = float(left.min())
        if not np.isfinite(t_min):
            return  # every flow starved (a failed link): they wait for a re-route
        done = left <= t_min * (1.0 + self.rtol) + 1e-15
        dt = float(left[done].max())
        self.env.process(self._complete_after(dt, self._generation, np.flatnonzero(done)))

    def _complete_after(self, dt: float, generation: int, done: np.ndarray):  # noqa: ANN202 - SimPy process
        yield self.env.timeout(dt)
        if generation != self._generation:
            return  # a start or re-route re-solved the rates since: this completion is stale
        self._advance()
        f = self._f
        touched = sorted(set(f.transfer[done].tolist()))
        for tid, lat in zip(f.transfer[done].tolist(), f.latency_s[done].tolist()):
            ev, left, worst = self._waiting[tid]
            self._waiting[tid] = (ev, left - 1, max(worst, lat))
        keep = np.ones(f.remaining.size, bool)
        keep[done] = False
        freed = f.links[done].ravel()
        f.src, f.dst, f.remaining = f.src[keep], f.dst[keep], f.remaining[keep]
        f.latency_s, f.transfer = f.latency_s[keep], f.transfer[keep]
        f.links, f.weights, self._rate = f.links[keep], f.weights[keep], self._rate[keep]
        for tid in touched:
            ev, left, worst = self._waiting[tid]
            if left == 0:
                del self._waiting[tid]
                self.env.process(self._land(ev, tid, worst))
        self._resolve(freed)

    def _land(self, ev: simpy.Event, tid: int, latency_s: float):  # noqa: ANN202 - SimPy process
        if latency_s > 0:
            yield self.env.timeout(latency_s)
        rec = self.transfers[tid]
        rec.finish_s = float(self.env.now)
        ev.succeed(rec)


def _padded(inc: Incidence) -> tuple[np.ndarray, np.ndarray]:
    """Flow-major ``([F, K] links, [F, K] weights)`` of a slot-major incidence."""
    w = np.ones(inc.links.shape) if inc.weights is None else inc.weights
    return inc.links.T.astype(np.int64), w.T.astype(np.float64)


def _stack(a: np.ndarray, b: np.ndarray, pad: float) -> np.ndarray:
    """Rows of ``a`` then ``b`` (``[F, K]`` each), the narrower one padded with ``pad``."""
    out = np.full((a.shape[0] + b.shape[0], max(a.shape[1], b.shape[1])), pad, dtype=a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    out[a.shape[0]:, : b.shape[1]] = b
    return out
