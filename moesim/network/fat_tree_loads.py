"""Link bytes of an all-to-all on a ``FatTree`` from its pair matrix, by reductions instead of routes.

``FatTreeRouter.route`` gives every GPU pair its links (2–8 per pair), so loading links through
routes costs O(n² · K) index work and memory: 268M pairs at 16,384 GPUs do not fit. Every route
of the router is, however, fixed by a few coordinates of its ends — host, rail, scalable unit,
leaf, pod — so each link's bytes are a sum of the pair matrix over blocks of those coordinates.
``all_to_all_link_bytes`` computes them with reshapes and sums over the matrix (a few passes over
its n² entries, no per-pair routing), on the router's link numbering; a test checks it against
``route`` + ``Incidence.link_load`` on two- and three-tier trees, with and without PXN and NIC
vertices, oversubscribed, partial scalable units and scattered, unordered groups.

**Layout.** The group's GPUs lie on ``h`` hosts; the matrix is scattered (a view when the group
is whole hosts in order) into ``Mp [h, g, h, g]``: (source host, source rail, destination host,
destination rail), zeros for GPUs outside the group, diagonal cleared. With ``R = Σ_dst-host Mp``
``[h, g, g]`` and the same-host blocks ``D [h, g, g]`` (the router's rules, module doc of
``generators``):

* NVLink out of (A, rs): same-host bytes, plus with PXN every byte to another rail;
  NVLink in of (A, r): same-host bytes to it, plus with PXN the bytes it forwards onto its rail;
* NIC out of the GPU that carries the flow (the source, or with PXN the source host's GPU on the
  destination's rail), NIC in of the destination: all bytes between different hosts;
* trunks: ``Q [su_a, rs, su_b, rd]``, the bytes between different hosts summed over the hosts of
  each scalable unit, is a leaf-pair matrix (leaf = (SU, rail), the via-GPU's rail with PXN);
  a leaf's up trunk carries its row off the diagonal, its down trunk its column; pods likewise on
  the pod-pair matrix.

The largest path latency among pairs that move bytes comes from the same blocks (``D`` and ``Q``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.network.generators import FatTreeRouter

__all__ = ["all_to_all_link_bytes", "max_pair_latency_s"]


def _scatter(g: int, group: np.ndarray, pair_bytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(hosts [h], Mp [h, g, h, g])``: the group's matrix on all ``g`` GPUs of its hosts (its
    diagonal as given)."""
    hosts, inv = np.unique(group // g, return_inverse=True)
    pos = inv * g + group % g  # the member's index in the padded layout
    n_pad = hosts.size * g
    if pos.size == n_pad and np.array_equal(pos, np.arange(n_pad)):
        full = pair_bytes  # a view: the diagonal is taken out of the sums by the caller
    else:
        full = np.zeros((n_pad, n_pad))
        full[np.ix_(pos, pos)] = pair_bytes
    return hosts, full.reshape(hosts.size, g, hosts.size, g)


def _runs(keys: np.ndarray) -> np.ndarray:
    """Start indices of the runs of equal values in sorted ``keys``."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def _host_sums(x: np.ndarray) -> np.ndarray:
    """``x [r, h, g]`` summed over its host axis → ``[r, g]``, in two stages so that numpy's inner
    loops run over long contiguous rows rather than ``g`` entries (~2× faster at 16k GPUs)."""
    r, h, g = x.shape
    d = next(k for k in range(int(np.sqrt(h)), 0, -1) if h % k == 0)
    return x.reshape(r, d, (h // d) * g).sum(axis=1).reshape(r, h // d, g).sum(axis=1)


def all_to_all_link_bytes(router: FatTreeRouter, group: tuple[int, ...] | np.ndarray,
                          pair_bytes: np.ndarray) -> tuple[np.ndarray, float]:
    """``(bytes [L] per router link, largest path latency s among moving pairs)`` of the flows
    ``pair_bytes[i, j]`` (bytes, ``[n, n]``; diagonal ignored) from ``group[i]`` to ``group[j]``,
    routed as ``router.route`` routes them (see the module doc). ``L`` = the router's links."""
    t = router.tree
    g, G = t.gpus_per_node, t.n_gpus
    grp = np.asarray(group, np.int64)
    pb = np.asarray(pair_bytes, np.float64)
    if pb.shape != (grp.size, grp.size):
        raise ValueError(f"pair_bytes must be [{grp.size}, {grp.size}] for a group of {grp.size}, got {pb.shape}")
    hosts, mp = _scatter(g, grp, pb)
    h = hosts.size
    rows = np.arange(h)
    eye = np.eye(g, dtype=bool)
    same_raw = mp[rows, :, rows, :]                   # [h, g(rs), g(rd)] bytes inside each host
    diag = same_raw[:, eye]                           # [h, g] i → i, ignored
    same = np.where(eye, 0.0, same_raw)
    su = hosts // t.leaf_down                         # sorted, as hosts are
    starts = _runs(su)
    ends = np.r_[starts[1:], h]
    # a scalable unit's rows at a time: the rows summed over the SU's
    # hosts (x [s, g(rs), h, g(rd)]) and every row summed over destination hosts (to_rail)
    x = np.stack([mp[a:b].sum(axis=0) for a, b in zip(starts, ends)])
    to_rail = np.concatenate([_host_sums(mp[a:b].reshape((b - a) * g, h, g)) for a, b in zip(starts, ends)])
    to_rail = to_rail.reshape(h, g, g)               # [h, g(rs), g(rd)] summed over destination hosts
    to_rail[:, eye] -= diag
    if t.pxn:
        nvl_out = to_rail.sum(axis=2) - to_rail[:, eye]
        nvl_in = to_rail.sum(axis=1) - to_rail[:, eye]
        nic_out = to_rail.sum(axis=1) - same.sum(axis=1)      # carried by (A, rd)
    else:
        nvl_out, nvl_in = same.sum(axis=2), same.sum(axis=1)
        nic_out = to_rail.sum(axis=2) - same.sum(axis=2)      # carried by the source
    into = x.sum(axis=(0, 1)) - diag                          # [h(B), g(rd)] from every member
    nic_in = into - same.sum(axis=1)

    L = router.capacity_bytes_per_s.shape[0]
    out = np.zeros(L)
    gpu = (hosts[:, None] * g + np.arange(g)[None, :]).ravel()
    out[gpu] += nvl_out.ravel()
    out[G + gpu] += nvl_in.ravel()
    out[2 * G + gpu] += nic_out.ravel()
    out[3 * G + gpu] += nic_in.ravel()
    if t.nic_vertices:
        out[4 * G + gpu] += nic_out.ravel()
        out[5 * G + gpu] += nic_in.ravel()

    q = np.add.reduceat(x, starts, axis=2)                    # [s, g, s, g] between SUs
    q -= _same_host_cells(np.add.reduceat(same_raw, starts, axis=0))
    cells = _Cells(t, su[starts])
    cross = cells.cross
    nL = t.n_leaves
    out[router.leaf_up0: router.leaf_up0 + nL] += np.bincount(cells.via_leaf[cross], q[cross], minlength=nL)
    out[router.leaf_dn0: router.leaf_dn0 + nL] += np.bincount(cells.dst_leaf[cross], q[cross], minlength=nL)
    if t.tiers == 3:
        cp, nP = cells.cross_pod, t.n_pods
        out[router.pod_up0: router.pod_up0 + nP] += np.bincount(cells.via_pod[cp], q[cp], minlength=nP)
        out[router.pod_dn0: router.pod_dn0 + nP] += np.bincount(cells.dst_pod[cp], q[cp], minlength=nP)
    return out, cells.max_latency_s(q > 0, bool(np.any(same > 0)))


def _same_host_cells(per_su: np.ndarray) -> np.ndarray:
    """``[s, g, s, g]`` holding ``per_su [s, g, g]`` (a quantity of same-host pairs per SU) on the
    SU diagonal, to take those pairs out of an SU-pair sum."""
    s, g, _ = per_su.shape
    out = np.zeros((s, g, s, g))
    idx = np.arange(s)
    out[idx, :, idx, :] = per_su
    return out


class _Cells:
    """Route coordinates of the SU-pair cells ``[s, g(rs), s, g(rd)]`` of pairs on different hosts
    (SUs ``su_ids``): via / destination leaf and pod, whether they cross them, path latency."""

    def __init__(self, tree: Any, su_ids: np.ndarray) -> None:
        g = tree.gpus_per_node
        shape = (su_ids.size, g, su_ids.size, g)
        leaf = su_ids[:, None] * g + np.arange(g)[None, :]   # [s, g] leaf of (SU, rail)
        # with PXN the carrying GPU is the source host's GPU on the destination's rail
        self.via_leaf = np.broadcast_to(leaf[:, None, None, :] if tree.pxn else leaf[:, :, None, None], shape)
        self.dst_leaf = np.broadcast_to(leaf[None, None, :, :], shape)
        self.cross = self.via_leaf != self.dst_leaf
        hops = 2 * self.cross
        if tree.tiers == 3:
            self.via_pod, self.dst_pod = self.via_leaf // tree.pod_leaves, self.dst_leaf // tree.pod_leaves
            self.cross_pod = self.via_pod != self.dst_pod
            hops = hops + 2 * self.cross_pod
        rail = np.arange(g)
        nvl = (rail[None, :, None, None] != rail[None, None, None, :]) & tree.pxn
        self.latency_s = nvl * tree.nvlink_latency_s + 2 * tree.nic_latency_s + hops * tree.hop_latency_s
        self.nvlink_latency_s = tree.nvlink_latency_s

    def max_latency_s(self, cells: np.ndarray, same_host: bool) -> float:
        """Largest path latency over the marked cells ``[s, g, s, g]`` and, if ``same_host``, an
        NVLink pair inside a host."""
        lat = self.nvlink_latency_s if same_host else 0.0
        lat_cells = np.broadcast_to(self.latency_s, cells.shape)[cells]
        return max(lat, float(lat_cells.max())) if lat_cells.size else lat


def max_pair_latency_s(router: FatTreeRouter, group: tuple[int, ...] | np.ndarray) -> float:
    """Largest path latency (s) over all ordered pairs of distinct GPUs of ``group``, as
    ``router.route`` routes them, from member counts per (SU, rail) rather than n² routes."""
    t = router.tree
    g = t.gpus_per_node
    grp = np.asarray(group, np.int64)
    hosts, inv = np.unique(grp // g, return_inverse=True)
    member = np.zeros((hosts.size, g))
    member[inv, grp % g] = 1.0
    su = hosts // t.leaf_down
    starts = _runs(su)
    per_su = np.add.reduceat(member, starts, axis=0)                           # [s, g]
    counts = per_su[:, :, None, None] * per_su[None, None, :, :]
    counts -= _same_host_cells(np.add.reduceat(member[:, :, None] * member[:, None, :], starts, axis=0))
    return _Cells(t, su[starts]).max_latency_s(counts > 0.5, bool((member.sum(axis=1) > 1).any()))
