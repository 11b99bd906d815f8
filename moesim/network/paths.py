"""Routed edge paths between two GPUs (``routed_edge_paths``): what ``flows.GraphRouter`` spreads
flows over. The same routing policy as the pair matrices (``topology``'s module doc): inside a
host by its tables, else exit port → shortest fabric paths → entry port, with PXN through the
proxy's NVLink paths first.
"""

from __future__ import annotations

import math
from itertools import islice, product
from typing import TYPE_CHECKING

import numpy as np

from moesim.core.errors import TopologyError
from moesim.network.fabric import attach_rows, b_index, f_links, fabric_only_paths
from moesim.network.graph_arrays import _INF

if TYPE_CHECKING:
    from moesim.network.topology import Topology

__all__ = ["routed_edge_paths"]


def routed_edge_paths(topo: Topology, src: int, dst: int, limit: int = 64) -> list[list[int]]:
    """Up to ``limit`` routed shortest-hop paths ``src → dst`` as indices into ``edge_list``
    (empty for ``src == dst``); TopologyError if there is none."""
    if src == dst:
        return []
    s_node, d_node = int(topo._gnode[src]), int(topo._gnode[dst])
    if s_node == d_node:
        tpl = topo._tables_of(s_node)
        a, b = int(topo._glocal[src]), int(topo._glocal[dst])
        if tpl.ok[a, b]:
            loc, edges = topo._node_local[s_node], topo._node_edges[s_node]
            return [[int(edges[e]) for e in p] for p in loc.paths(a, b, str(tpl.mode[a, b]), limit)]
        return _cross_paths(topo, src, dst, limit)
    p = _pxn_candidate(topo, src, dst)
    if p is not None:
        try:
            tail = _cross_paths(topo, p, dst, limit)
        except TopologyError:  # the proxy cannot reach dst: the source sends itself
            p = None
    if p is None:
        return _cross_paths(topo, src, dst, limit)
    loc, edges = topo._node_local[s_node], topo._node_edges[s_node]
    head = [[int(edges[e]) for e in q] for q in loc.paths(int(topo._glocal[src]), int(topo._glocal[p]), "nvlink", limit)]
    return [h + t for h, t in islice(product(head, tail), limit)]


def _pxn_candidate(topo: Topology, src: int, dst: int) -> int | None:
    """The PXN proxy for ``src → dst`` (different hosts; NVLink-reachable GPU of ``src``'s host
    on ``dst``'s rail), or None when PXN does not apply."""
    if not topo.pxn:
        return None
    rs, rd = int(topo._rail[src]), int(topo._rail[dst])
    if rs < 0 or rd < 0 or rs == rd:
        return None
    n = int(topo._gnode[src])
    loc = int(topo._tables_of(n).proxy[int(topo._glocal[src]), rd])
    return None if loc < 0 else int(topo._node_verts[n][loc])


def _gpu_ports(topo: Topology, g: int, which: str) -> list[tuple[int, float, list[list[int]]]]:
    """``[(port vertex, hop, local edge paths)]`` GPU ``g`` exits (or is entered) by (cached);
    paths run GPU → port (exit) or port → GPU (entry), as global edge ids."""
    key = (g, which)
    hit = topo._port_cache.get(key)
    if hit is None:
        n, a = int(topo._gnode[g]), int(topo._glocal[g])
        t, loc, verts, edges = topo._tables_of(n), topo._node_local[n], topo._node_verts[n], topo._node_edges[n]
        ids, hops, _, _ = (t.exits if which == "exit" else t.entries)[a]
        hit = []
        for lp, h in zip(ids.tolist(), hops.tolist()):
            src, dst = (a, lp) if which == "exit" else (lp, a)
            paths = [[int(edges[e]) for e in q] for q in loc.paths(src, dst, which, 1 << 16)]
            hit.append((int(verts[lp]), h, paths))
        topo._port_cache[key] = hit
    return hit


def _cross_paths(topo: Topology, src: int, dst: int, limit: int) -> list[list[int]]:
    """Port-to-port routed paths ``src → dst`` (edge ids), at most ``limit``; TopologyError if none."""
    exits, entries = _gpu_ports(topo, src, "exit"), _gpu_ports(topo, dst, "entry")
    b_of = b_index(topo)
    combos: list[tuple[float, int, int, int, int, int, int]] = []  # hop, exit, out edge, a, b, in edge, entry
    for i, (p, hp, _) in enumerate(exits):
        outs = f_links(topo, int(topo._fid[p]), True)
        fab = [(a, e) for a, e in outs if topo._f_expand[a]]
        rows = attach_rows(topo, np.array(sorted({a for a, _ in fab}), dtype=np.int64)) if fab else None
        order = {a: k for k, a in enumerate(sorted({a for a, _ in fab}))}
        for j, (x, hx, _) in enumerate(entries):
            if x == p:
                combos.append((hp + hx, i, -1, -1, -1, -1, j))
            fx = int(topo._fid[x])
            for b, eb in f_links(topo, fx, False):
                if topo._f_expand[b]:
                    for a, ea in fab:
                        assert rows is not None
                        h = rows[0][order[a], b_of[b]]
                        combos.append((hp + 2.0 + h + hx, i, ea, a, b, eb, j))
                elif int(topo._fverts[b]) == p:  # a port-to-port link
                    combos.append((hp + 1.0 + hx, i, eb, -1, -1, -1, j))
    best = min([c[0] for c in combos] + [_INF])
    if not math.isfinite(best):
        raise TopologyError(f"{topo.gpu_names[src]} cannot reach {topo.gpu_names[dst]} in topology {topo.name!r}")
    out: list[list[int]] = []
    for h, i, ea, a, b, eb, j in combos:
        if h != best:
            continue
        mids = [[ea] + m + [eb] for m in fabric_only_paths(topo, a, b, limit)] if a >= 0 else (
            [[ea]] if ea >= 0 else [[]])
        for hd, md, tl in product(exits[i][2], mids, entries[j][2]):
            out.append(hd + md + tl)
            if len(out) >= limit:
                return out
    return out
