"""Per-host routing tables: intra-host routes, PXN proxies, and the ports a GPU leaves or enters
its host by (the routing policy in ``topology``'s module doc).

Local vertices are numbered with the host's GPUs first. Hosts with identical local wiring share
one ``_Local`` (and so one ``_Tables`` per rail count); searches are breadth-first over the local
subgraph, cached per (source, mode).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import numpy as np

from moesim.network.graph_arrays import _GPU, _INF, _NIC, _NVLINK


class _Local:
    """Routing tables of one host's local subgraph, shared by hosts with identical wiring.

    Local vertices are numbered with the host's GPUs first (``q`` of them, in GPU order)."""

    def __init__(self, kinds: np.ndarray, rails: np.ndarray, ports: np.ndarray, lu: np.ndarray, lv: np.ndarray,
                 cap: np.ndarray, lat: np.ndarray, tier: np.ndarray) -> None:
        self.m = len(kinds)
        self.q = int((kinds == _GPU).sum())
        self.kinds, self.rails, self.ports = kinds.tolist(), rails.tolist(), ports.tolist()
        self.cap, self.lat, self.tier = cap.tolist(), lat.tolist(), tier.tolist()
        self.out: list[list[tuple[int, int]]] = [[] for _ in range(self.m)]
        self.inn: list[list[tuple[int, int]]] = [[] for _ in range(self.m)]
        for e, (u, v) in enumerate(zip(lu.tolist(), lv.tolist())):
            self.out[u].append((v, e))
            self.inn[v].append((u, e))
        self._searches: dict[tuple[int, str], tuple[list, list, list, list]] = {}
        self._tables: dict[int, _Tables] = {}

    def search(self, src: int, mode: str) -> tuple[list[float], list[float], list[float], list[list[tuple[int, int]]]]:
        """``(hop, width, latency, preds)`` over local vertices from ``src``.

        Modes: ``nvlink`` (NVLink edges), ``local`` (no NIC), ``exit`` (towards ports), ``entry``
        (reverse: from every vertex *to* ``src``). GPUs other than ``src`` are not expanded.
        ``preds[v]``: ``(u, e)`` one step closer to ``src`` on a shortest path."""
        key = (src, mode)
        hit = self._searches.get(key)
        if hit is not None:
            return hit
        m, kinds, cap, lat, tier = self.m, self.kinds, self.cap, self.lat, self.tier
        adj = self.inn if mode == "entry" else self.out
        hop, width, delay = [_INF] * m, [0.0] * m, [_INF] * m
        preds: list[list[tuple[int, int]]] = [[] for _ in range(m)]
        hop[src], width[src], delay[src] = 0, _INF, 0.0
        frontier, k = [src], 0
        while frontier:
            nxt = []
            for u in frontier:
                for v, e in adj[u]:
                    if hop[v] < k + 1 or (mode == "nvlink" and tier[e] != _NVLINK) or (
                            mode == "local" and kinds[v] == _NIC):
                        continue
                    if hop[v] == _INF:
                        hop[v] = k + 1
                        nxt.append(v)
                    width[v] = max(width[v], min(width[u], cap[e]))
                    delay[v] = min(delay[v], delay[u] + lat[e])
                    preds[v].append((u, e))
            frontier = [v for v in nxt if kinds[v] != _GPU]
            k += 1
        hit = self._searches[key] = (hop, width, delay, preds)
        return hit

    def paths(self, src: int, dst: int, mode: str, limit: int) -> list[list[int]]:
        """Local edge paths ``src → dst`` (mode ``entry``: searched from ``dst``), at most ``limit``."""
        if mode == "entry":
            _, _, _, preds = self.search(dst, mode)
            return list(islice(_walk(preds, src, dst, reverse=False), limit))
        _, _, _, preds = self.search(src, mode)
        return list(islice(_walk(preds, dst, src, reverse=True), limit))

    def tables(self, n_rails: int) -> _Tables:
        hit = self._tables.get(n_rails)
        if hit is None:
            hit = self._tables[n_rails] = _Tables(self, n_rails)
        return hit


class _Tables:
    """Per-host pair tables: intra-host routes, PXN proxies, exit and entry ports."""

    def __init__(self, loc: _Local, n_rails: int) -> None:
        q = loc.q
        self.hop, self.width, self.lat = np.full((q, q), _INF), np.zeros((q, q)), np.full((q, q), _INF)
        self.nvl_hop, self.nvl_width, self.nvl_lat = self.hop.copy(), self.width.copy(), self.lat.copy()
        self.mode = np.full((q, q), "", dtype=object)
        for a in range(q):
            hn, wn, ln, _ = loc.search(a, "nvlink")
            self.nvl_hop[a], self.nvl_width[a], self.nvl_lat[a] = hn[:q], wn[:q], ln[:q]
            need = [b for b in range(q) if hn[b] == _INF]
            hl, wl, ll = (loc.search(a, "local")[:3] if need else (hn, wn, ln))
            for b in range(q):
                src = (hn, wn, ln, "nvlink") if hn[b] < _INF else (hl, wl, ll, "local")
                self.hop[a, b], self.width[a, b], self.lat[a, b], self.mode[a, b] = src[0][b], src[1][b], src[2][b], src[3]
        self.ok = np.isfinite(self.hop)
        # PXN proxy: the local GPU on rail r reachable over NVLink (lowest index), -1 if none
        rails = np.array(loc.rails[:q])
        self.proxy = np.full((q, max(n_rails, 1)), -1, dtype=np.int64)
        for a in range(q):
            for r in range(n_rails):
                cand = np.flatnonzero((rails == r) & np.isfinite(self.nvl_hop[a]))
                if cand.size:
                    self.proxy[a, r] = cand[0]
        self.exits = [_ports(loc, a, "exit") for a in range(q)]
        self.entries = [_ports(loc, a, "entry") for a in range(q)]
        self.exit1 = np.array([e[0][0] if e[0].size == 1 else -1 for e in self.exits], dtype=np.int64)
        self.entry1 = np.array([e[0][0] if e[0].size == 1 else -1 for e in self.entries], dtype=np.int64)


def _ports(loc: _Local, a: int, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(local port ids, hop, width, latency)`` GPU ``a`` leaves (exit) or is entered (entry) by:
    its own rail's ports when reachable, else the nearest ports."""
    hop, width, delay, _ = loc.search(a, mode)
    cand = [v for v in range(loc.m) if loc.ports[v] and hop[v] < _INF and (loc.kinds[v] != _GPU or v == a)]
    own = [v for v in cand if loc.rails[a] >= 0 and loc.rails[v] == loc.rails[a]]
    cand = own or cand
    if cand:
        best = min(hop[v] for v in cand)
        cand = [v for v in cand if hop[v] == best]
    ids = np.array(cand, dtype=np.int64)
    return (ids, np.array([hop[v] for v in cand], float), np.array([width[v] for v in cand], float),
            np.array([delay[v] for v in cand], float))


def _walk(preds: list[list[tuple[int, int]]], start: int, goal: int, *, reverse: bool) -> Iterator[list[int]]:
    """Edge paths from ``start`` following ``preds`` to ``goal`` (reversed when ``reverse``)."""
    stack: list[tuple[int, list[int]]] = [(start, [])]
    while stack:
        v, acc = stack.pop()
        if v == goal:
            yield acc[::-1] if reverse else acc
            continue
        for u, e in reversed(preds[v]):
            stack.append((u, acc + [e]))
