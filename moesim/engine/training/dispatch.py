"""MoE dispatch / combine traffic of one EP group: direct or hierarchical, with node-limited routing.

Tokens start spread evenly over the group's ``G`` GPUs (``T / G`` each); the routing draws give
each EP rank's (token, slot) pairs ``c_r`` (``sum c_r = T k``). ``training.dispatch.kind``:

* ``direct`` (``moe_layer.moe_layers_cost``): every (token, slot) is its own message to each GPU
  of the rank computing it; inter-host bytes per token ``sum_j c_r(j) / T x (1 - G_h(j) / G) x
  d x b`` (``G_h``: the group's GPUs on host h, ``d x b``: hidden x bytes per element);
* ``hierarchical`` (DeepEP normal kernels): a token goes once to every GPU that holds one of its
  experts and once to every *host* it needs: the RDMA leg to the GPU of that host with the
  sender's local rank carries it once, NVLink fans it out (``collectives`` ``hierarchical``
  all-to-all with ``node_bytes``; combine mirrors it, forwarded at the source).

**Hit probabilities** [ours]: a token picks ``k`` distinct experts out of ``E``; a set holding
``n = c / (T k) x E`` experts' worth of its slots is hit with ``1 - prod_{t<k} (E - n - t) / (E -
t)`` (exact for uniform routing). Per EP rank this gives ``p_r``, per host ``P_h``.

**Node-limited routing** (``max_nodes = M``, DeepSeek-V3 sec. 2.1.2): the gate first keeps the
``M`` hosts with the highest affinity sums, then picks the top-k experts among them. Model [ours]:
the hosts a token would reach unconstrained are independent hits ``P_h``; when it would reach
``D > M`` hosts, it reaches ``M`` of them instead, each hit host kept with probability ``M / D``.
So host h is reached with ``P_h x E[min(1, M / (1 + D_-h))]`` (``D_-h``: Poisson-binomial count of
the other hosts' hits) and a GPU on it with ``p_r`` times the same factor; ``M`` at least the
group's hosts changes nothing. A token then crosses the network at most ``M`` times: inter-host
bytes per token ``sum_h reach_h (1 - G_h / G) d b <= M d b``. Hosts are picked by affinity, not
by locality, so even ``M = 1`` sends a token across the network when its host is another one
(``(N - 1) / N`` of the time for uniform routing over N hosts); only a group inside one host sends
nothing. The experts' loads (GEMMs) keep the routing draws' counts: only where the tokens travel
changes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache

import numpy as np

from moesim.config.training import DispatchCfg
from moesim.network.collectives import CollectiveCost
from moesim.network.deepep import hit_probability

__all__ = ["EpDispatch", "EpTraffic", "keep_factor"]


def keep_factor(p_host: np.ndarray, max_nodes: int | None) -> np.ndarray:
    """``[..., N]`` probability that a hit host stays among a token's ``max_nodes`` hosts:
    ``E[min(1, M / (1 + D_-h))]`` over the Poisson-binomial count ``D_-h`` of the other hosts' hits."""
    p = np.asarray(p_host, dtype=np.float64)
    n = p.shape[-1]
    if max_nodes is None or max_nodes >= n:
        return np.ones_like(p)
    weight = np.minimum(1.0, max_nodes / (1.0 + np.arange(n)))          # [N]: d others hit -> min(1, M/(1+d))
    dist = np.zeros(p.shape + (n,))                                      # [..., h, d]: P(D_-h = d)
    dist[..., 0] = 1.0
    eye = np.eye(n, dtype=bool)
    for o in range(n):                                                   # add host o to every h's count, h != o
        q = np.where(eye[o], 0.0, p[..., o, None])[..., None]            # [..., h, 1]
        dist[..., 1:] = dist[..., 1:] * (1.0 - q) + dist[..., :-1] * q
        dist[..., :1] = dist[..., :1] * (1.0 - q)
    return dist @ weight


@dataclass(frozen=True)
class EpTraffic:
    """Token counts of one dispatch (combine moves them back): ``pair [..., G, G]`` tokens GPU i
    sends GPU j (once per GPU), ``node [..., G, N]`` tokens GPU i sends host n (once per host),
    ``internode [...]`` inter-host messages per token."""

    pair: np.ndarray
    node: np.ndarray
    internode: np.ndarray


class EpDispatch:
    """Traffic and seconds of the dispatch + combine of one EP group (module doc).

    Args:
        cfg: ``training.dispatch``.
        node_of: host of every GPU of the topology; group: the EP group's GPUs (rank r owns
            ``group[r*expert_tp:(r+1)*expert_tp]``).
        hidden, act_bytes: token size ``d x b``; top_k, n_experts: the routing.
    """

    def __init__(self, cfg: DispatchCfg, *, node_of: np.ndarray, group: tuple[int, ...], expert_tp: int,
                 hidden: int, act_bytes: float, top_k: int, n_experts: int) -> None:
        self.cfg, self.group, self.etp = cfg, tuple(group), int(expert_tp)
        self.k, self.n_experts = int(top_k), int(n_experts)
        self.token_bytes = float(hidden * act_bytes)
        hosts = np.asarray(node_of)[np.asarray(self.group)]
        _, self.host_of = np.unique(hosts, return_inverse=True)          # [G] host index inside the group
        self.n_hosts = int(self.host_of.max()) + 1
        self.rank_host = self.host_of[:: self.etp]                       # [P]
        g = len(self.group)
        self.remote_share = 1.0 - np.bincount(self.host_of, minlength=self.n_hosts) / g   # [N] sources off host h
        self.onehot = (self.rank_host[:, None] == np.arange(self.n_hosts)[None, :]).astype(np.float64)  # [P, N]

    def traffic(self, rank_slots: np.ndarray) -> EpTraffic:
        """Hierarchical ``EpTraffic`` for ``rank_slots [..., P]`` (token, slot) pairs per EP rank
        (module doc); compute it once and pass it to ``comm_s`` and ``internode_bytes``."""
        c = np.asarray(rank_slots, dtype=np.float64)
        total = c.sum(axis=-1, keepdims=True)
        share = c / np.maximum(total, 1e-300)
        tokens = total / self.k                                           # [..., 1]
        g = len(self.group)
        p_rank = hit_probability(self.n_experts, self.k, share * self.n_experts)             # [..., P]
        p_host = hit_probability(self.n_experts, self.k, (share * self.n_experts) @ self.onehot)  # [..., N]
        keep = keep_factor(p_host, self.cfg.max_nodes)
        reach_host = p_host * keep
        reach_gpu = np.repeat(p_rank * keep[..., self.rank_host], self.etp, axis=-1)          # [..., G]
        src = tokens / g                                                  # [..., 1] tokens per source GPU
        pair = np.broadcast_to((src * reach_gpu)[..., None, :], c.shape[:-1] + (g, g))
        node = np.broadcast_to((src * reach_host)[..., None, :], c.shape[:-1] + (g, self.n_hosts))
        return EpTraffic(pair=pair, node=node, internode=(reach_host * self.remote_share).sum(axis=-1))

    def internode_bytes_per_token(self, rank_slots: np.ndarray) -> np.ndarray:
        """``[...]`` dispatch bytes one token sends across hosts, on average (combine: the same back),
        for ``rank_slots [..., P]`` under either kind (module doc)."""
        if self.cfg.kind == "hierarchical":
            return self.internode_bytes(self.traffic(rank_slots))
        c = np.asarray(rank_slots, dtype=np.float64)
        per_token = c / np.maximum(c.sum(axis=-1, keepdims=True) / self.k, 1e-300)        # slots per token
        off_host = np.repeat(per_token, self.etp, axis=-1) * self.remote_share[self.host_of]
        return off_host.sum(axis=-1) * self.token_bytes

    def internode_bytes(self, t: EpTraffic) -> np.ndarray:
        """``[...]`` dispatch bytes one token sends across hosts under hierarchical traffic ``t``."""
        return t.internode * self.token_bytes

    def comm_s(self, coll: CollectiveCost, t: EpTraffic) -> np.ndarray:
        """``[...]`` seconds of the hierarchical dispatch + combine of traffic ``t`` (``traffic``; a
        network model without hierarchical all-to-alls gets the de-duplicated pairs, direct)."""
        pair, node = t.pair * self.token_bytes, t.node * self.token_bytes
        back = np.swapaxes(pair, -1, -2)
        if not _takes_node_bytes(type(coll)):
            return np.asarray(coll.all_to_all_s(self.group, pair)) + np.asarray(coll.all_to_all_s(self.group, back))
        a2a = coll.all_to_all_s
        return (np.asarray(a2a(self.group, pair, "hierarchical", node_bytes=node))  # type: ignore[call-arg]
                + np.asarray(a2a(self.group, back, "hierarchical", node_bytes=node,  # type: ignore[call-arg]
                                 forward_at="source")))


@cache
def _takes_node_bytes(coll_type: type) -> bool:
    """Whether a collectives model's ``all_to_all_s`` takes hierarchical ``node_bytes`` (asked once per class)."""
    return "node_bytes" in inspect.signature(coll_type.all_to_all_s).parameters
