"""The partition check: ``PartitionError`` (a ``TopologyError``) when some GPU pair has no path
under the routing policy (a GPU without links included); the error names the GPUs cut off.

Reachability is decided on classes of GPUs (which fabric components their ports reach), so it
costs no pair search even at 16,384 GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from moesim.core.errors import TopologyError

if TYPE_CHECKING:
    from moesim.network.topology import Topology

__all__ = ["PartitionError", "check_reachable"]


class PartitionError(TopologyError):
    """Some GPU pairs have no path. ``cut_off``: the GPUs cut off (indices); ``n_unreachable``:
    ordered pairs without a path; ``example``: one such ``(src, dst)``."""

    def __init__(self, message: str, *, cut_off: Sequence[int], n_unreachable: int,
                 example: tuple[int, int]) -> None:
        super().__init__(message)
        self.cut_off = tuple(int(g) for g in cut_off)
        self.n_unreachable = int(n_unreachable)
        self.example = (int(example[0]), int(example[1]))


def check_reachable(topo: Topology) -> None:
    """PartitionError naming the cut-off GPUs when some GPU pair has no routed path.

    GPUs are grouped by the fabric components their exit ports reach and their entry ports
    are reached from (and, with PXN, their proxies' exits); pairs are decided per group pair,
    pairs inside one host by the host's tables (or, failing those, through the fabric)."""
    G = topo.n_gpus
    if G <= 1:
        return
    leave_cls, reach_cls, sets, index = _port_classes(topo)
    xs = np.full(G, -1, dtype=np.int64)
    yd = np.full(G, -1, dtype=np.int64)
    R = topo._n_rails if topo.pxn else 0
    via = np.full((G, max(R, 1)), -1, dtype=np.int64)

    def union(ids: list[int], cls: np.ndarray) -> int:
        tok = frozenset().union(*(sets[int(cls[p])] for p in ids))
        return index.setdefault(tok, len(index)) if tok not in index else index[tok]

    for n, verts in enumerate(topo._node_verts):
        t = topo._tables_of(n)
        q = t.exit1.size
        gids = verts[:q]
        one = t.exit1 >= 0
        xs[gids[one]] = leave_cls[verts[t.exit1[one]]]
        for a in np.flatnonzero(~one).tolist():
            xs[gids[a]] = union(verts[t.exits[a][0]].tolist(), leave_cls)
        one = t.entry1 >= 0
        yd[gids[one]] = reach_cls[verts[t.entry1[one]]]
        for a in np.flatnonzero(~one).tolist():
            yd[gids[a]] = union(verts[t.entries[a][0]].tolist(), reach_cls)
    while len(sets) < len(index):
        sets.append(frozenset())
    for tok, i in index.items():
        sets[i] = tok
    if R:
        for n, verts in enumerate(topo._node_verts):
            t = topo._tables_of(n)
            loc = t.proxy[:, :R]
            gids = verts[: loc.shape[0]]
            via[gids, :R] = np.where(loc >= 0, xs[verts[np.maximum(loc, 0)]], -1)
    rail = topo._rail[:G] if R else np.full(G, -1, dtype=np.int64)
    meet_cache: dict[tuple[int, int], bool] = {}

    def meet(a: int, b: int) -> bool:
        hit = meet_cache.get((a, b))
        if hit is None:
            hit = meet_cache[(a, b)] = bool(sets[a] & sets[b])
        return hit

    src_rows, s_id = np.unique(np.column_stack([xs, rail, via]), axis=0, return_inverse=True)
    dst_rows, d_id = np.unique(np.column_stack([yd, rail]), axis=0, return_inverse=True)
    s_id, d_id = s_id.ravel(), d_id.ravel()
    good = np.zeros((len(src_rows), len(dst_rows)), dtype=bool)
    for i, (x, rs, *vv) in enumerate(src_rows.tolist()):
        for j, (y, rd) in enumerate(dst_rows.tolist()):
            ok = meet(x, y)
            if not ok and R and rs >= 0 and rd >= 0 and rs != rd and vv[rd] >= 0:
                ok = meet(vv[rd], y)
            good[i, j] = ok
    n_bad = 0
    row_bad: dict[int, np.ndarray] = {}  # the example source's unreachable GPUs
    bad_out = np.zeros(G, dtype=np.int64)
    bad_in = np.zeros(G, dtype=np.int64)
    example: tuple[int, int] | None = None
    nodes = topo._gnode
    n_hosts = len(topo._node_verts)
    for i, j in zip(*np.nonzero(~good)):
        A, B = np.flatnonzero(s_id == i), np.flatnonzero(d_id == j)
        cb = np.bincount(nodes[B], minlength=n_hosts)
        ca = np.bincount(nodes[A], minlength=n_hosts)
        out = B.size - cb[nodes[A]]
        if not out.sum():
            continue
        bad_out[A] += out
        bad_in[B] += A.size - ca[nodes[B]]
        n_bad += int(out.sum())
        if example is None:
            a = int(A[np.flatnonzero(out)[0]])
            example = (a, int(B[np.flatnonzero(nodes[B] != nodes[a])[0]]))
        if example[0] in A:
            a = example[0]
            row_bad.setdefault(a, np.zeros(G, dtype=bool))[B[nodes[B] != nodes[a]]] = True
    for h in range(n_hosts):  # pairs inside one host: local route, else through the fabric
        idx = np.flatnonzero(nodes == h)
        if idx.size < 2:
            continue
        t = topo._tables_of(h)
        ok = t.ok[np.ix_(topo._glocal[idx], topo._glocal[idx])]
        if ok.all():
            continue
        for r, c in zip(*np.nonzero(~ok)):
            ok[r, c] = meet(int(xs[idx[r]]), int(yd[idx[c]]))
        if not ok.all():
            r, c = np.nonzero(~ok)
            np.add.at(bad_out, idx[r], 1)
            np.add.at(bad_in, idx[c], 1)
            n_bad += r.size
            if example is None:
                example = (int(idx[r[0]]), int(idx[c[0]]))
            hit = idx[r] == example[0]
            if hit.any():
                row_bad.setdefault(example[0], np.zeros(G, dtype=bool))[idx[c[hit]]] = True
    if not n_bad:
        return
    assert example is not None
    unreachable = row_bad.get(example[0], np.zeros(G, dtype=bool))
    raise _partition_error(topo, bad_out, bad_in, n_bad, example, unreachable)


def _port_classes(topo: Topology) -> tuple[np.ndarray, np.ndarray, list[frozenset], dict[frozenset, int]]:
    """Per vertex, the class of the token set a port reaches leaving it (the fabric components
    reachable from its fabric neighbours; ports it links to directly) and of the set reaching
    it (its fabric neighbours' components; itself when a port links to it); -1 off ports.
    Returns ``(leave_cls [V], reach_cls [V], class sets, set -> class)``."""
    fverts, expand = topo._fverts, topo._f_expand
    ptr, dst, rptr, rsrc = topo._f_ptr, topo._f_dst, topo._r_ptr, topo._r_src
    core = np.flatnonzero(expand)
    src_of = np.repeat(np.arange(fverts.size), np.diff(ptr))
    both = expand[src_of] & expand[dst]
    cg = nx.DiGraph()
    cg.add_nodes_from(core.tolist())
    cg.add_edges_from(zip(src_of[both].tolist(), dst[both].tolist()))
    cond = nx.condensation(cg)
    scc = cond.graph["mapping"]
    closure: dict[int, frozenset] = {}

    def reach(c: int) -> frozenset:
        hit = closure.get(c)
        if hit is None:
            hit = closure[c] = frozenset(nx.descendants(cond, c) | {c})
        return hit

    index: dict[frozenset, int] = {}
    V = len(topo._vnames)
    leave_cls = np.full(V, -1, dtype=np.int64)
    reach_cls = np.full(V, -1, dtype=np.int64)
    memo_l: dict[tuple, int] = {}
    memo_r: dict[tuple, int] = {}
    for f in np.flatnonzero(~expand).tolist():
        outs = dst[ptr[f]: ptr[f + 1]].tolist()
        key = tuple(scc[v] if expand[v] else -1 - int(fverts[v]) for v in outs)
        c = memo_l.get(key)
        if c is None:
            tok = frozenset().union(*(reach(x) if x >= 0 else {x} for x in key))
            c = memo_l[key] = index.setdefault(tok, len(index))
        leave_cls[fverts[f]] = c
        ins = rsrc[rptr[f]: rptr[f + 1]].tolist()
        key = tuple(sorted({scc[u] for u in ins if expand[u]})) + ((-1 - int(fverts[f]),) if not all(
            expand[u] for u in ins) else ())
        c = memo_r.get(key)
        if c is None:
            c = memo_r[key] = index.setdefault(frozenset(key), len(index))
        reach_cls[fverts[f]] = c
    sets = [frozenset()] * len(index)
    for tok, i in index.items():
        sets[i] = tok
    return leave_cls, reach_cls, sets, index


def _partition_error(topo: Topology, bad_out: np.ndarray, bad_in: np.ndarray, n_bad: int,
                     example: tuple[int, int], unreachable: np.ndarray) -> PartitionError:
    """The cut-off GPUs: those in the most unreachable pairs; when that is every GPU (the
    network splits evenly), the side the example's source cannot reach."""
    G = topo.n_gpus
    score = bad_out + bad_in
    cut = np.flatnonzero(score == score.max())
    if cut.size == G:
        cut = np.flatnonzero(unreachable) if unreachable.any() else np.array([example[1]])
    names = _name_ranges(topo, cut)
    src, dst = example
    alone = ", ".join(repr(topo.gpu_names[g]) for g in topo._isolated[:8]) + (" ..." if topo._isolated.size > 8 else "")
    lead = (f"gpu {alone} {'has' if topo._isolated.size == 1 else 'have'} no links, so no other GPU can reach "
            f"{'it' if topo._isolated.size == 1 else 'them'}; " if topo._isolated.size else "")
    msg = (f"{lead}topology {topo.name!r} is partitioned: {names} cut off "
           f"({n_bad} of {G * (G - 1)} ordered GPU pairs unreachable, e.g. "
           f"{topo.gpu_names[dst]} is unreachable from {topo.gpu_names[src]}); "
           "check the links of the GPUs cut off, their NICs and the fabric between them")
    return PartitionError(msg, cut_off=cut.tolist(), n_unreachable=n_bad, example=example)


def _name_ranges(topo: Topology, gpus: np.ndarray) -> str:
    """``gpu8..gpu15 (host 1)``-style list of GPU names (runs of consecutive indices)."""
    parts: list[str] = []
    gl = sorted(int(g) for g in gpus)
    i = 0
    while i < len(gl):
        j = i
        while j + 1 < len(gl) and gl[j + 1] == gl[j] + 1 and topo.node_of[gl[j + 1]] == topo.node_of[gl[i]]:
            j += 1
        name = topo.gpu_names[gl[i]] if i == j else f"{topo.gpu_names[gl[i]]}..{topo.gpu_names[gl[j]]}"
        parts.append(f"{name} (host {int(topo.node_of[gl[i]])})")
        i = j + 1
    shown = ", ".join(parts[:12]) + (f" and {len(parts) - 12} more runs" if len(parts) > 12 else "")
    return ("GPU " if len(gl) == 1 else "GPUs ") + shown + (" is" if len(gl) == 1 else " are")
