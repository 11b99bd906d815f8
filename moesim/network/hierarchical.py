"""The legs of a rail-aligned hierarchical all-to-all (DeepEP's normal kernels), shared by the
closed-form (``collectives``) and flow-level (``flow_collectives``) models.

``Rails`` gives each GPU's local rank and its rail peers. ``hierarchical_legs`` splits a pair-byte
matrix into its legs: RDMA to the GPU of the destination host with the sender's local rank (once
per destination host, ``node_bytes``), then NVLink to the destination; same-host pairs go direct
(``forward_at="source"`` mirrors it for the combine). Where each leg goes depends only on the
group, so it is planned once per (group, direction) and cached on the ``Rails`` (``_leg_plan``);
``_leg_cells`` then sums a batch of byte matrices into the plan's distinct (src, dst) cells with
one gather and one ``reduceat``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Legs", "Rails", "hierarchical_legs"]


class Rails:
    """Local ranks and rail peers of a topology's GPUs (``node_of``): a GPU's local rank is its
    position among its host's GPUs in index order; its rail peer on host m is m's GPU with the
    same local rank (-1 where m has no such GPU)."""

    def __init__(self, node_of: ArrayLike) -> None:
        node = np.asarray(node_of, dtype=np.int64)
        g = node.size
        order = np.lexsort((np.arange(g), node))
        starts = np.concatenate(([0], np.flatnonzero(np.diff(node[order])) + 1))
        counts = np.diff(np.concatenate((starts, [g])))
        local = np.empty(g, np.int64)
        local[order] = np.arange(g) - np.repeat(starts, counts)
        self.node_of, self.local = node, local
        self.at = np.full((int(node.max()) + 1, int(counts.max())), -1, dtype=np.int64)
        self.at[node, local] = np.arange(g)
        self.plans: dict[tuple[tuple[int, ...], str], _LegPlan] = {}
        """Hierarchical all-to-all leg plans by (group, direction) (``_leg_plan``)."""

    def peer(self, node: ArrayLike, local: ArrayLike) -> np.ndarray:
        """GPU with local rank ``local`` on host ``node`` (broadcast), -1 where none."""
        nd, lc = np.broadcast_arrays(np.asarray(node, np.int64), np.asarray(local, np.int64))
        ok = lc < self.at.shape[1]
        return np.where(ok, self.at[nd, np.where(ok, lc, 0)], -1)


@dataclass(frozen=True)
class Legs:
    """The legs of a hierarchical all-to-all over an extended group (the group, then the rail
    peers outside it that forward bytes): ``bytes [..., X, X]`` and per leg kind masks ``[X, X]``."""

    group: tuple[int, ...]
    bytes: np.ndarray
    rdma: np.ndarray = field(repr=False)
    forward: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class _LegPlan:
    """Where every leg of a hierarchical all-to-all goes, for one (group, direction): fixed by the
    topology, so it is built once per group (``_leg_plan``) and reused for every byte matrix."""

    n_hosts: int
    ext: np.ndarray                  # [X] the group, then the rail peers outside it
    direct: tuple[np.ndarray, np.ndarray]
    rdma_from: tuple[np.ndarray, np.ndarray]   # entries of the [n, M] / [M, n] aggregate
    fwd: tuple[np.ndarray, np.ndarray]
    src: np.ndarray                  # [K] leg source position in ext (direct, RDMA, forward legs)
    dst: np.ndarray                  # [K]
    order: np.ndarray                # sorts the legs by (src, dst)
    starts: np.ndarray               # first sorted leg of each distinct (src, dst)
    cells: np.ndarray                # flat (src * X + dst) of each distinct cell
    onehot: np.ndarray               # [n, M] host membership of the group's GPUs
    gather: np.ndarray               # [K] sorted legs' positions in [pair bytes (n*n) | aggregate (n*M)]
    rdma: np.ndarray                 # [X, X]
    forward: np.ndarray              # [X, X]


def _leg_plan(rails: Rails, group: tuple[int, ...], forward_at: str) -> _LegPlan:
    """The legs of ``group``'s hierarchical all-to-all (cached on ``rails``, per group and direction)."""
    key = (group, forward_at)
    hit = rails.plans.get(key)
    if hit is not None:
        return hit
    g = np.asarray(group, np.int64)
    n = g.size
    nd, lr = rails.node_of[g], rails.local[g]
    hosts, m_of = np.unique(nd, return_inverse=True)
    n_hosts = hosts.size
    onehot = (m_of[:, None] == np.arange(n_hosts)[None, :]).astype(np.float64)  # [n, M]
    same = nd[:, None] == nd[None, :]
    if forward_at == "destination":
        rail = rails.peer(hosts[None, :], lr[:, None])                     # [n, M] i's peer on host m
        peer_of_pair = rail[:, m_of]                                         # [n, n]
        r_src, r_dst = np.broadcast_to(g[:, None], rail.shape), rail          # RDMA legs i → rail[i, m]
        r_ok = (m_of[:, None] != np.arange(n_hosts)[None, :]) & (rail >= 0)
        f_src, f_dst = peer_of_pair, np.broadcast_to(g[None, :], (n, n))     # forward legs r → j
    elif forward_at == "source":
        rail = rails.peer(hosts[:, None], lr[None, :])                      # [M, n] host m's GPU with j's rank
        peer_of_pair = rail[m_of, :]                                         # [n, n] r' of (i, j)
        r_src, r_dst = rail, np.broadcast_to(g[None, :], rail.shape)        # RDMA legs rail[m, j] → j
        r_ok = (np.arange(n_hosts)[:, None] != m_of[None, :]) & (rail >= 0)
        f_src, f_dst = np.broadcast_to(g[:, None], (n, n)), peer_of_pair    # forward legs i → r'
    else:
        raise ValueError(f"forward_at must be 'destination' or 'source', got {forward_at!r}")
    remote = ~same & (peer_of_pair >= 0)
    direct = ~remote & ~np.eye(n, dtype=bool)                               # same host, or no peer
    fwd = remote & (f_src != f_dst)
    extra = np.setdiff1d(np.concatenate([r_src[r_ok], r_dst[r_ok]]), g)
    ext = np.concatenate([g, extra])
    sorter = np.argsort(ext, kind="stable")

    def pos(ids: np.ndarray) -> np.ndarray:
        return sorter[np.searchsorted(ext, ids, sorter=sorter)]

    x = ext.size
    di, dj = np.nonzero(direct)
    ri, rj = np.nonzero(r_ok)
    fi, fj = np.nonzero(fwd)
    rs, rd = pos(r_src[ri, rj]), pos(r_dst[ri, rj])
    fs, fd = pos(f_src[fi, fj]), pos(f_dst[fi, fj])
    src, dst = np.concatenate([di, rs, fs]), np.concatenate([dj, rd, fd])
    flat = src * x + dst
    order = np.argsort(flat, kind="stable")
    f_sorted = flat[order]
    starts = np.flatnonzero(np.concatenate(([True], f_sorted[1:] != f_sorted[:-1]))) if flat.size else \
        np.zeros(0, np.int64)
    rdma = np.zeros((x, x), bool)
    rdma[rs, rd] = True
    forward = np.zeros((x, x), bool)
    forward[fs, fd] = True
    agg_cols = n_hosts if forward_at == "destination" else n     # the aggregate is [n, M] or [M, n]
    gather = np.concatenate([di * n + dj, n * n + ri * agg_cols + rj, fi * n + fj])[order]
    plan = _LegPlan(n_hosts, ext, (di, dj), (ri, rj), (fi, fj), src, dst, order, starts,
                    f_sorted[starts] if flat.size else np.zeros(0, np.int64), onehot, gather, rdma, forward)
    if len(rails.plans) > 256:
        rails.plans.clear()
    rails.plans[key] = plan
    return plan


def hierarchical_legs(rails: Rails, group: tuple[int, ...], pair_bytes: np.ndarray,
                      node_bytes: np.ndarray | None = None, forward_at: str = "destination") -> Legs:
    """Split ``pair_bytes [..., n, n]`` into the legs of a rail-aligned hierarchical all-to-all.

    ``forward_at="destination"`` (dispatch): a pair (i, j) on different hosts becomes an RDMA leg
    i → r (r: host(j)'s GPU with i's local rank) and an NVLink leg r → j (none when r = j); the RDMA
    leg of (i, host m) carries ``node_bytes[..., i, m]`` (bytes i sends to host m, each token once)
    or, without ``node_bytes``, the sum of i's pair bytes to m's GPUs. ``"source"`` (combine): an
    NVLink leg i → r' (r': host(i)'s GPU with j's local rank) and an RDMA leg r' → j carrying
    ``node_bytes[..., j, m]`` (bytes j receives from host m). Hosts m are the group's distinct
    ``node_of`` values in increasing order. Pairs without a rail peer go direct.
    """
    plan, cells = _leg_cells(rails, group, pair_bytes, node_bytes, forward_at)
    n, x = len(group), plan.ext.size
    lead = pair_bytes.shape[:-2]
    out = np.zeros((cells.shape[0], x * x))
    out[:, plan.cells] = cells
    out = out.reshape(cells.shape[0], x, x)
    cs, cd = np.divmod(plan.cells[(cells != 0).any(axis=0)], x)
    touched = np.concatenate([cs, cd])
    keep = np.concatenate([np.arange(n), np.unique(touched[touched >= n])])
    ix = np.ix_(keep, keep)
    return Legs(tuple(int(v) for v in plan.ext[keep]), out[(slice(None),) + ix].reshape(lead + (keep.size,) * 2),
                plan.rdma[ix], plan.forward[ix])


def _leg_cells(rails: Rails, group: tuple[int, ...], pair_bytes: np.ndarray, node_bytes: np.ndarray | None,
               forward_at: str) -> tuple[_LegPlan, np.ndarray]:
    """The plan of ``hierarchical_legs`` and the bytes of its distinct (src, dst) cells
    ``[B, cells]`` (B: the pairs' leading dims flattened), legs that coincide summed."""
    plan = _leg_plan(rails, tuple(int(v) for v in group), forward_at)
    n, n_hosts = len(group), plan.n_hosts
    lead = pair_bytes.shape[:-2]
    pb = pair_bytes.reshape((-1, n, n))       # the diagonal is never a leg (direct and forward legs skip it)
    if node_bytes is not None:
        nb = np.asarray(node_bytes, dtype=np.float64)
        if nb.shape != lead + (n, n_hosts):
            raise ValueError(f"node_bytes must have shape {lead + (n, n_hosts)} (pairs' leading dims, "
                             f"group size, hosts in the group), got {nb.shape}")
        if np.any(nb < 0):
            raise ValueError("byte counts must be >= 0")
        nb = nb.reshape((-1, n, n_hosts))
        agg = nb if forward_at == "destination" else np.swapaxes(nb, -1, -2)
    else:
        off = pb * (1.0 - np.eye(n))
        agg = (np.einsum("bij,jm->bim", off, plan.onehot) if forward_at == "destination"
               else np.einsum("bij,im->bmj", off, plan.onehot))          # i → host m / host m → j
    if not plan.starts.size:
        return plan, np.zeros((pb.shape[0], 0))
    both = np.concatenate([pb.reshape(pb.shape[0], -1), agg.reshape(pb.shape[0], -1)], axis=1)
    return plan, np.add.reduceat(np.take(both, plan.gather, axis=1), plan.starts, axis=1)
