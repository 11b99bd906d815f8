"""GPU-pair bottleneck / latency under the routing policy (``compute_pairs``) and the lazy
``[G, G]`` view of them (``LazyPairMatrix``).

The values are those of ``topology``'s module doc (**Pair matrices**). Pairs inside a host come
from its shared table (``host_tables``); pairs between hosts are exit port → fabric → entry port,
the fabric searched once per switch that ports attach to and cached (``fabric``); with PXN,
NVLink to the proxy, then the proxy's route. A healthy leaf-spine / fat-tree whose hosts match
``generators.FatTreeRouter``'s model (an NVSwitch, one NIC per GPU on the GPU) takes its pairs
from that router's routes instead: the same values, without a search (16,384 GPUs: 256 random
GPUs in ~0.05 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.core.errors import TopologyError
from moesim.network.fabric import attach_rows
from moesim.network.graph_arrays import _INF

if TYPE_CHECKING:
    from moesim.network.topology import Topology

__all__ = ["LazyPairMatrix", "compute_pairs"]


class LazyPairMatrix:
    """A read-only ``[G, G]`` pair matrix of a lazy ``Topology``, computed on indexing.

    ``m[rows, cols]`` with integer (array) indices that broadcast, as numpy fancy indexing
    (``m[i, j]``, ``m[g, nxt]``, ``m[np.ix_(g, g)]``), returns what the full matrix would hold,
    through ``Topology.pair_matrices`` on the GPUs named. ``np.asarray(m)`` materialises it
    (refused above 4,096 GPUs)."""

    def __init__(self, topology: Topology, which: int) -> None:
        self._topology, self._which = topology, which
        self.shape = (topology.n_gpus, topology.n_gpus)
        self.ndim = 2
        self.dtype = np.dtype(np.float64)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError("index a lazy pair matrix with two integer (array) indices, e.g. m[np.ix_(g, g)]")
        n = self.shape[0]
        rows, cols = (np.arange(n)[k] if isinstance(k, slice) else np.asarray(k, dtype=np.int64) for k in key)
        r, c = np.broadcast_arrays(rows, cols)
        if r.size and (min(r.min(), c.min()) < 0 or max(r.max(), c.max()) >= n):
            raise IndexError(f"GPU index out of range [0, {n})")
        u = np.unique(np.concatenate([r.ravel(), c.ravel()]))
        mats = self._topology.pair_matrices(u)
        out = mats[self._which][np.searchsorted(u, r), np.searchsorted(u, c)]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self.shape[0] > 4096:
            raise TopologyError(f"topology {self._topology.name!r} has {self.shape[0]} GPUs; materialising "
                                "its pair matrix is refused; use pair_matrices(gpus) on a subset")
        full = self._topology.pair_matrices(np.arange(self.shape[0]))[self._which]
        return full if dtype is None else full.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyPairMatrix({'bottleneck' if self._which == 0 else 'latency'}, shape={self.shape})"


def _proxy_stack(topo: Topology) -> np.ndarray:
    """PXN proxy local index ``[templates, q, rails]`` (-1: none), padded."""
    if topo._proxy is None:
        q = max(loc.q for loc in topo._templates)
        out = np.full((len(topo._templates), q, max(topo._n_rails, 1)), -1, dtype=np.int64)
        for i, loc in enumerate(topo._templates):
            t = loc.tables(topo._n_rails)
            out[i, : loc.q] = t.proxy
        topo._proxy = out
    return topo._proxy


def _nvl_stack(topo: Topology) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NVLink ``(hop, width, latency) [templates, q, q]`` (padded) for vectorised lookups."""
    if topo._nvl is None:
        q = max(loc.q for loc in topo._templates)
        out = [np.full((len(topo._templates), q, q), _INF), np.zeros((len(topo._templates), q, q)),
               np.full((len(topo._templates), q, q), _INF)]
        for i, loc in enumerate(topo._templates):
            t = loc.tables(topo._n_rails)
            out[0][i, : loc.q, : loc.q], out[1][i, : loc.q, : loc.q] = t.nvl_hop, t.nvl_width
            out[2][i, : loc.q, : loc.q] = t.nvl_lat
        topo._nvl = (out[0], out[1], out[2])
    return topo._nvl


def _port_lists(topo: Topology, gpus: np.ndarray, which: str) -> tuple[np.ndarray, ...]:
    """Padded ``[n, A]`` (port vertex id or -1, hop, width, latency) of the GPUs' exits / entries."""
    rows = []
    for g in gpus.tolist():
        n = int(topo._gnode[g])
        t = topo._tables_of(n)
        ids, h, w, lt = (t.exits if which == "exit" else t.entries)[int(topo._glocal[g])]
        rows.append((topo._node_verts[n][ids], h, w, lt))
    a = max([len(r[0]) for r in rows] + [1])
    out = [np.full((len(rows), a), -1, np.int64), np.full((len(rows), a), _INF),
           np.zeros((len(rows), a)), np.full((len(rows), a), _INF)]
    for i, r in enumerate(rows):
        k = len(r[0])
        for o, x in zip(out, r):
            o[i, :k] = x
    return tuple(out)


def _options(topo: Topology, gpus: np.ndarray, which: str) -> tuple[np.ndarray, ...]:
    """Per GPU, padded ``[n, O]`` ways into (exit) or out of (entry) the fabric: ``(fabric
    vertex F id or -1, hop, width, latency, port vertex, port hop, port width, port latency)``,
    one per (exit / entry port, fabric link of that port), the link included in hop, width and
    latency."""
    ports, ph, pw, pl = _port_lists(topo, gpus, which)
    ptr, nbr, eid = (topo._f_ptr, topo._f_dst, topo._f_eid) if which == "exit" else (
        topo._r_ptr, topo._r_src, topo._r_eid)
    n = gpus.size
    rows: list[list[tuple]] = [[] for _ in range(n)]
    valid = ports >= 0
    fp = np.where(valid, topo._fid[np.maximum(ports, 0)], -1)
    deg = np.where(valid, ptr[fp + 1] - ptr[np.maximum(fp, 0)], 0)
    if deg.size and (deg == 1).all() and valid.all():  # the usual case: one fabric link per port
        pos = ptr[fp]
        f, e = nbr[pos], eid[pos]
        fab = topo._f_expand[f]
        out = (np.where(fab, f, -1), np.where(fab, ph + 1.0, _INF), np.minimum(pw, topo._cap[e]),
               pl + topo._lat[e], ports, ph, pw, pl)
        return out
    for i in range(n):
        for j in np.flatnonzero(valid[i]).tolist():
            f0 = fp[i, j]
            rows[i].append((-1, _INF, 0.0, _INF, ports[i, j], ph[i, j], pw[i, j], pl[i, j]))
            for k in range(ptr[f0], ptr[f0 + 1]):
                f, e = int(nbr[k]), int(eid[k])
                if topo._f_expand[f]:
                    rows[i].append((f, ph[i, j] + 1.0, min(pw[i, j], topo._cap[e]), pl[i, j] + topo._lat[e],
                                    ports[i, j], ph[i, j], pw[i, j], pl[i, j]))
    width_o = max([len(r) for r in rows] + [1])
    out = [np.full((n, width_o), -1, np.int64), np.full((n, width_o), _INF), np.zeros((n, width_o)),
           np.full((n, width_o), _INF), np.full((n, width_o), -1, np.int64), np.full((n, width_o), _INF),
           np.zeros((n, width_o)), np.full((n, width_o), _INF)]
    for i, r in enumerate(rows):
        for j, vals in enumerate(r):
            for o, x in zip(out, vals):
                o[i, j] = x
    return tuple(out)


def _cross_idx(topo: Topology, us: np.ndarray, inv_s: np.ndarray, ud: np.ndarray, inv_d: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hop, width, latency) [K]`` of the port-to-port route (no PXN) of the pairs
    ``us[inv_s[k]] → ud[inv_d[k]]`` (GPU indices, any hosts): exit port, fabric (cached per
    attachment switch), entry port."""
    K = inv_s.size
    hop, width, delay = np.full(K, _INF), np.zeros(K), np.full(K, _INF)
    if not K:
        return hop, width, delay
    src, dst = us[inv_s], ud[inv_d]
    ea, eh, ew, el, ep, eph, epw, epl = _options(topo, us, "exit")
    ib, ih, iw, il, ip, iph, ipw, ipl = _options(topo, ud, "entry")
    starts = np.unique(ea[ea >= 0])
    b_of = np.full(topo._fverts.size + 1, -1, dtype=np.int64)
    b_of[topo._attach_in] = np.arange(topo._attach_in.size)
    bi = b_of[ib]  # ib = -1 maps to the sentinel -1
    if starts.size:
        th, tw, tl = attach_rows(topo, starts)
        ai = np.searchsorted(starts, np.maximum(ea, 0))
    step = max(1, (1 << 22) // max(1, ea.shape[1] * ib.shape[1]))
    for lo in range(0, K, step):
        s_, d_ = inv_s[lo: lo + step], inv_d[lo: lo + step]
        a_ok = (ea[s_] >= 0)[:, :, None] & (bi[d_] >= 0)[:, None, :]
        cand = []
        if starts.size and a_ok.any():
            A_, B_ = ai[s_][:, :, None], np.maximum(bi[d_], 0)[:, None, :]
            h = np.where(a_ok, eh[s_][:, :, None] + th[A_, B_] + ih[d_][:, None, :], _INF)
            w = np.minimum(np.minimum(ew[s_][:, :, None], tw[A_, B_]), iw[d_][:, None, :])
            lt = el[s_][:, :, None] + tl[A_, B_] + il[d_][:, None, :]
            cand.append((h, w, lt))
        same = (ep[s_][:, :, None] == ip[d_][:, None, :]) & (ep[s_][:, :, None] >= 0)
        if same.any():  # leaving and entering at the same port
            cand.append((np.where(same, eph[s_][:, :, None] + iph[d_][:, None, :], _INF),
                         np.minimum(epw[s_][:, :, None], ipw[d_][:, None, :]),
                         epl[s_][:, :, None] + ipl[d_][:, None, :]))
        if not cand:
            continue
        h = np.concatenate([c[0].reshape(c[0].shape[0], -1) for c in cand], axis=1)
        w = np.concatenate([c[1].reshape(c[1].shape[0], -1) for c in cand], axis=1)
        lt = np.concatenate([c[2].reshape(c[2].shape[0], -1) for c in cand], axis=1)
        best = h.min(axis=1)
        on = (h == best[:, None]) & np.isfinite(h)
        hop[lo: lo + step] = best
        width[lo: lo + step] = np.where(on, w, 0.0).max(axis=1)
        delay[lo: lo + step] = np.where(on, lt, _INF).min(axis=1)
    if topo._direct_ports:  # ports linked to ports of other hosts (explicit graphs): per pair
        for k in range(K):
            for h1, w1, l1 in _direct_routes(topo, int(src[k]), int(dst[k])):
                if h1 < hop[k]:
                    hop[k], width[k], delay[k] = h1, w1, l1
                elif h1 == hop[k]:
                    width[k], delay[k] = max(width[k], w1), min(delay[k], l1)
    return hop, width, delay


def _direct_routes(topo: Topology, src: int, dst: int) -> list[tuple[float, float, float]]:
    """Routes exit port → (one link) → entry port, for port-to-port links."""
    ep, eh, ew, el = (a[0] for a in _port_lists(topo, np.array([src]), "exit"))
    ip, ih, iw, il = (a[0] for a in _port_lists(topo, np.array([dst]), "entry"))
    out = []
    for i in np.flatnonzero(ep >= 0).tolist():
        f = int(topo._fid[ep[i]])
        for k in range(topo._f_ptr[f], topo._f_ptr[f + 1]):
            v = int(topo._fverts[topo._f_dst[k]])
            e = int(topo._f_eid[k])
            for j in np.flatnonzero(ip == v).tolist():
                out.append((eh[i] + 1.0 + ih[j], min(ew[i], topo._cap[e], iw[j]), el[i] + topo._lat[e] + il[j]))
    return out


def _tree_pairs(topo: Topology, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``compute_pairs`` of a healthy fat-tree of ``FatTreeRouter``'s model, from its routes:
    the narrowest link member on the route, the route's latency (the same values as the search)."""
    tree = topo._fat_tree
    assert tree is not None
    if topo._tree_router is None:
        router = tree.flow_router()
        member = np.append(router.capacity_bytes_per_s, _INF)
        member[router.leaf_up0: -1] = tree.link_bytes_per_s  # a trunk's members are single links
        topo._tree_router = (router, member)
    router, member = topo._tree_router
    n = g.size
    width, delay = np.empty((n, n)), np.empty((n, n))
    step = max(1, (1 << 20) // max(n, 1))
    for lo in range(0, n, step):
        rows = g[lo: lo + step]
        src, dst = np.repeat(rows, n), np.tile(g, rows.size)
        routes = router.route(src, dst)
        width[lo: lo + step] = member[routes.incidence.links].min(axis=0).reshape(rows.size, n)
        delay[lo: lo + step] = routes.latency_s.reshape(rows.size, n)
    np.fill_diagonal(width, _INF)
    np.fill_diagonal(delay, 0.0)
    return width, delay


def compute_pairs(topo: Topology, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bottleneck and latency ``[n, n]`` between GPUs ``g`` under the routing policy."""
    if topo._fat_tree is not None and not topo.faults:
        return _tree_pairs(topo, g)
    n = g.size
    hop, width, delay = np.full((n, n), _INF), np.zeros((n, n)), np.full((n, n), _INF)
    nd = topo._gnode[g]
    li = topo._glocal[g]
    for host in np.unique(nd):
        idx = np.flatnonzero(nd == host)
        t = topo._tables_of(int(host))
        ix, lx = np.ix_(idx, idx), np.ix_(li[idx], li[idx])
        hop[ix], width[ix], delay[ix] = t.hop[lx], t.width[lx], t.lat[lx]
    same = nd[:, None] == nd[None, :]
    need = ~same | ~np.isfinite(hop)
    np.fill_diagonal(need, False)
    if need.any():
        r, c = np.nonzero(need)
        dh, dw, dl = _cross_idx(topo, g, r, g, c)
        if topo.pxn:  # PXN: NVLink to the proxy on the destination's rail, then the proxy's route
            rail = topo._rail[g]
            pm = (nd[r] != nd[c]) & (rail[r] >= 0) & (rail[c] >= 0) & (rail[r] != rail[c])
            if pm.any():
                k = np.flatnonzero(pm)
                tid = topo._tpl_id[nd[r[k]]]
                loc = _proxy_stack(topo)[tid, li[r[k]], rail[c[k]]]
                k, loc = k[loc >= 0], loc[loc >= 0]
                prox = topo._host_gpus[nd[r[k]], loc]
                up, inv_p = np.unique(prox, return_inverse=True)
                ph, pw, pl = _cross_idx(topo, up, inv_p.ravel(), g, c[k])
                ok = np.isfinite(ph)
                k, loc, ph, pw, pl = k[ok], loc[ok], ph[ok], pw[ok], pl[ok]
                sh, sw, sl = _nvl_stack(topo)
                t2, la = topo._tpl_id[nd[r[k]]], li[r[k]]
                dh[k] = sh[t2, la, loc] + ph
                dw[k] = np.minimum(sw[t2, la, loc], pw)
                dl[k] = sl[t2, la, loc] + pl
        hop[r, c], width[r, c], delay[r, c] = dh, dw, dl
    np.fill_diagonal(width, _INF)
    np.fill_diagonal(delay, 0.0)
    width[~np.isfinite(hop) & ~np.eye(n, dtype=bool)] = 0.0
    return width, delay
