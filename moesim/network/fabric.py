"""The fabric between hosts' ports: a vectorised breadth-first search over numpy arrays (CSR
adjacency built by ``Topology._structure``), its rows to the switches that link into ports
(cached per start), and the shortest fabric-only edge paths between two fabric vertices.

Fabric vertices (``node < 0``) are expanded; ports only when they are the start, so a path never
crosses the inside of a host. Vertices of the fabric search graph have F ids (``topo._fid``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.network.graph_arrays import _INF

if TYPE_CHECKING:
    from moesim.network.topology import Topology

__all__ = ["attach_rows", "b_index", "f_links", "fabric_only_paths"]

_FABRIC_CELLS = 1 << 21
"""Search state cells (sources x fabric vertices) per chunk of the fabric search."""


def _fabric_search(topo: Topology, starts: np.ndarray, keep: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hop, width, latency) [S, F]`` from fabric-graph vertices ``starts`` (F ids) over the
    fabric graph: fabric vertices are expanded, ports only when they are the start. ``keep``
    ``[F]``: vertices that may be reached at all (default every one)."""
    nf = topo._fverts.size
    ptr, dst, eid = topo._f_ptr, topo._f_dst, topo._f_eid
    if keep is not None:
        ok_e = keep[dst]
        counts = np.add.reduceat(ok_e.astype(np.int64), ptr[:-1]) if dst.size else np.zeros(nf, np.int64)
        counts[np.diff(ptr) == 0] = 0
        ptr = np.concatenate([[0], np.cumsum(counts)])
        dst, eid = dst[ok_e], eid[ok_e]
    S = starts.size
    hop = np.full((S, nf), _INF)
    width = np.zeros((S, nf))
    delay = np.full((S, nf), _INF)
    rows = np.arange(S)
    hop[rows, starts], width[rows, starts], delay[rows, starts] = 0.0, _INF, 0.0
    hflat, wflat, lflat = hop.ravel(), width.ravel(), delay.ravel()
    cap, lat = topo._cap, topo._lat
    fr_s, fr_u, k = rows, starts.astype(np.int64), 0
    while fr_s.size:
        deg = ptr[fr_u + 1] - ptr[fr_u]
        total = int(deg.sum())
        if not total:
            break
        rep_s = np.repeat(fr_s, deg)
        rep_u = np.repeat(fr_u, deg)
        pos = np.repeat(ptr[fr_u] - (np.cumsum(deg) - deg), deg) + np.arange(total)
        flat = rep_s * nf + dst[pos]
        ok = hflat[flat] >= k + 1
        if not ok.any():
            break
        flat, pos, rep_u, rep_s = flat[ok], pos[ok], rep_u[ok], rep_s[ok]
        e = eid[pos]
        hflat[flat] = k + 1
        src_flat = rep_s * nf + rep_u
        np.maximum.at(wflat, flat, np.minimum(wflat[src_flat], cap[e]))
        np.minimum.at(lflat, flat, lflat[src_flat] + lat[e])
        reached = flat[topo._f_expand[flat % nf]]
        if reached.size > hflat.size // 8:  # dense level: scan instead of sorting
            grow = np.flatnonzero((hflat == k + 1).reshape(S, nf)[:, topo._f_expand].ravel())
            cols_e = np.flatnonzero(topo._f_expand)
            fr_s, fr_u = grow // cols_e.size, cols_e[grow % cols_e.size]
        else:
            grow = np.unique(reached)
            fr_s, fr_u = grow // nf, grow % nf
        k += 1
    return hop, width, delay


def attach_rows(topo: Topology, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fabric-only ``(hop, width, latency) [len(starts), B]`` from fabric vertices ``starts``
    (F ids) to the fabric vertices with a link into a port (``topo._attach_in``), cached per start."""
    missing = np.array([a for a in starts.tolist() if a not in topo._attach_cache], dtype=np.int64)
    if missing.size:
        nf = max(topo._fverts.size, 1)
        step = max(1, _FABRIC_CELLS // nf)
        for lo in range(0, missing.size, step):
            chunk = missing[lo: lo + step]
            h, w, lt = _fabric_search(topo, chunk, topo._f_expand)
            for i, a in enumerate(chunk.tolist()):
                topo._attach_cache[a] = (h[i, topo._attach_in], w[i, topo._attach_in], lt[i, topo._attach_in])
    rows = [topo._attach_cache[a] for a in starts.tolist()]
    return (np.array([r[0] for r in rows]).reshape(len(rows), -1), np.array([r[1] for r in rows]).reshape(len(rows), -1),
            np.array([r[2] for r in rows]).reshape(len(rows), -1))


def f_links(topo: Topology, f: int, out: bool) -> list[tuple[int, int]]:
    """Fabric-graph neighbours ``[(F id, edge id)]`` of F vertex ``f`` (out- or in-links)."""
    if topo._f_adj is None:
        nf = topo._fverts.size
        fo: list[list[tuple[int, int]]] = [[] for _ in range(nf)]
        fi: list[list[tuple[int, int]]] = [[] for _ in range(nf)]
        src_of = np.repeat(np.arange(nf), np.diff(topo._f_ptr))
        for u, v, e in zip(src_of.tolist(), topo._f_dst.tolist(), topo._f_eid.tolist()):
            fo[u].append((v, e))
            fi[v].append((u, e))
        topo._f_adj = (fo, fi)
    return topo._f_adj[0 if out else 1][f]


def b_index(topo: Topology) -> np.ndarray:
    """``[F + 1]`` index of each fabric vertex among ``topo._attach_in`` (-1 elsewhere), cached."""
    if topo._b_of is None:
        topo._b_of = np.full(topo._fverts.size + 1, -1, dtype=np.int64)
        topo._b_of[topo._attach_in] = np.arange(topo._attach_in.size)
    return topo._b_of


def fabric_only_paths(topo: Topology, a: int, b: int, limit: int) -> list[list[int]]:
    """Shortest fabric-only edge paths between fabric vertices ``a`` and ``b`` (F ids), cached."""
    key = (a, b)
    hit = topo._fpath_cache.get(key)
    if hit is None or len(hit) < min(limit, topo._fpath_full.get(key, limit)):
        row = _fabric_row_from(topo, a)
        hit = []
        stack: list[tuple[int, list[int]]] = [(b, [])]
        while stack and len(hit) < limit:
            v, acc = stack.pop()
            if v == a:
                hit.append(acc[::-1])
                continue
            for u, e in reversed(f_links(topo, v, False)):
                if topo._f_expand[u] and row[u] == row[v] - 1:
                    stack.append((u, acc + [e]))
        topo._fpath_full[key] = len(hit) if len(hit) < limit else 1 << 30
        topo._fpath_cache[key] = hit
    return hit[:limit]


def _fabric_row_from(topo: Topology, a: int) -> np.ndarray:
    """Fabric-only hop row ``[F]`` from fabric vertex ``a`` (LRU cached)."""
    hit = topo._fabric_cache.get(a)
    if hit is None:
        hit = topo._fabric_cache[a] = _fabric_search(topo, np.array([a]), topo._f_expand)
        while len(topo._fabric_cache) > 256:
            topo._fabric_cache.popitem(last=False)
    else:
        topo._fabric_cache.move_to_end(a)
    return hit[0][0]
