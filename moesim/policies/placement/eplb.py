"""DeepSeek EPLB: redundant experts plus hierarchical or global packing (POLICIES.md A1).

Written from the spec in POLICIES.md (github ``deepseek-ai/EPLB`` ``eplb.py`` at d52c72d), in
numpy, vectorised over layers. Notation: ``L`` layers, ``E`` experts, ``R = P*S`` slots per
layer, ``G`` expert groups, ``N`` nodes, ``P`` GPUs.

Two primitives:

``pack(w[rows, n], m)``
    Cardinality-constrained greedy LPT: per row, items in descending weight (ties: lower index
    first) go to the lightest pack that still has room (ties: lower pack index); every pack ends
    with exactly ``n/m`` items. ``n/m == 1`` is the identity.
``replicate(w[rows, n], r)``
    Slot ``i < n`` holds item ``i``; each of the ``r - n`` extra slots goes to the item with the
    largest ``w / count`` (ties: lower index), whose count then grows by one.

Policy: *hierarchical* when ``G % N == 0`` (pack groups onto nodes so a group stays on one node,
replicate within each node, pack each node's replicas onto its GPUs), otherwise *global*, which is
the same routine with ``G = N = 1``.

Complexity: replication ``O((R - E) * L * E)``, packing ``O(n * rows * m)``, both as numpy ops
over all rows at once; milliseconds at DeepSeek-V3 scale (L=58, E=256, R=288, P=32).
"""

from __future__ import annotations

import numpy as np

from moesim.core.errors import ConfigError
from moesim.policies.placement.base import PLACEMENTS, Placement, check_hbm, check_inputs

__all__ = ["Eplb", "eplb_phy2log", "pack", "replicate"]


def pack(weight: np.ndarray, n_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pack_of int64[rows, n], rank_in_pack int64[rows, n])`` for ``weight float[rows, n]``.

    Every pack receives exactly ``n / n_packs`` items (greedy LPT with a cardinality cap).
    """
    rows, n = weight.shape
    if n % n_packs:
        raise ValueError(f"pack: {n} items do not divide into {n_packs} packs")
    per_pack = n // n_packs
    if per_pack == 1:
        ident = np.broadcast_to(np.arange(n, dtype=np.int64), (rows, n)).copy()
        return ident, np.zeros((rows, n), dtype=np.int64)
    order = np.argsort(-weight, axis=1, kind="stable")
    pack_of = np.empty((rows, n), dtype=np.int64)
    rank = np.empty((rows, n), dtype=np.int64)
    pack_w = np.zeros((rows, n_packs))
    pack_n = np.zeros((rows, n_packs), dtype=np.int64)
    r = np.arange(rows)
    for j in range(n):
        item = order[:, j]
        target = np.argmin(np.where(pack_n < per_pack, pack_w, np.inf), axis=1)
        pack_of[r, item] = target
        rank[r, item] = pack_n[r, target]
        pack_w[r, target] += weight[r, item]
        pack_n[r, target] += 1
    return pack_of, rank


def replicate(weight: np.ndarray, n_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """``(slot_item int64[rows, n_slots], count int64[rows, n])`` for ``weight float[rows, n]``.

    Greedily minimises the largest per-replica weight ``w / count``.
    """
    rows, n = weight.shape
    if n_slots < n:
        raise ValueError(f"replicate: {n_slots} slots cannot hold {n} items")
    slot_item = np.empty((rows, n_slots), dtype=np.int64)
    slot_item[:, :n] = np.arange(n)
    count = np.ones((rows, n), dtype=np.int64)
    r = np.arange(rows)
    for i in range(n, n_slots):
        item = np.argmax(weight / count, axis=1)
        slot_item[:, i] = item
        count[r, item] += 1
    return slot_item, count


def eplb_phy2log(load: np.ndarray, *, n_slots: int, n_groups: int, n_nodes: int,
                 n_gpus: int) -> np.ndarray:
    """``int64[L, R]`` EPLB slot map for ``load float[L, E]`` (hierarchical or global)."""
    if n_groups % n_nodes:
        n_groups, n_nodes = 1, 1                        # global policy
    n_layers, n_experts = load.shape
    for what, ok in ((f"experts ({n_experts}) % groups ({n_groups}) == 0", n_experts % n_groups == 0),
                     (f"gpus ({n_gpus}) % nodes ({n_nodes}) == 0", n_gpus % n_nodes == 0),
                     (f"slots ({n_slots}) % gpus ({n_gpus}) == 0", n_slots % n_gpus == 0),
                     (f"slots ({n_slots}) >= experts ({n_experts})", n_slots >= n_experts)):
        if not ok:
            raise ConfigError(f"eplb needs {what}", field="placement")
    group_size, per_gpu = n_experts // n_groups, n_slots // n_gpus
    experts_per_node, slots_per_node = n_experts // n_nodes, n_slots // n_nodes

    # 1. pack groups onto nodes; renumber experts node-major ("mlog" ids)
    node_of, rank_of = pack(load.reshape(n_layers, n_groups, group_size).sum(axis=2), n_nodes)
    new_group = node_of * (n_groups // n_nodes) + rank_of            # [L, G]
    e = np.arange(n_experts)
    log2mlog = new_group[:, e // group_size] * group_size + e % group_size
    mlog2log = np.argsort(log2mlog, axis=1)
    # 2. replicate within each node
    node_w = np.take_along_axis(load, mlog2log, axis=1).reshape(n_layers * n_nodes, experts_per_node)
    rep, count = replicate(node_w, slots_per_node)
    # 3. pack each node's replicas onto its GPUs (replica weight = expert load / count)
    gpu_of, rank = pack(np.take_along_axis(node_w / count, rep, axis=1), n_gpus // n_nodes)
    node_slots = np.empty_like(rep)
    np.put_along_axis(node_slots, gpu_of * per_gpu + rank, rep, axis=1)
    # 4. back to global slot and logical expert ids
    offsets = (np.arange(n_nodes) * experts_per_node)[None, :, None]
    phy2mlog = (node_slots.reshape(n_layers, n_nodes, slots_per_node) + offsets).reshape(n_layers, -1)
    return np.take_along_axis(mlog2log, phy2mlog, axis=1)


@PLACEMENTS.register("eplb")
class Eplb:
    """DeepSeek EPLB placement with ``R - E = P*S - E`` redundant experts per layer.

    Args:
        n_groups: ``G`` expert groups (DeepSeek-V3's node-limited routing groups); 1 = none.
        n_nodes: ``N`` nodes the ``P`` GPUs span; hierarchical packing iff ``G % N == 0``.
    """

    def __init__(self, *, n_groups: int = 1, n_nodes: int = 1) -> None:
        if n_groups <= 0 or n_nodes <= 0:
            raise ConfigError(f"n_groups={n_groups}, n_nodes={n_nodes} must be positive",
                              field="placement")
        self.n_groups = n_groups
        self.n_nodes = n_nodes

    def place(self, load: np.ndarray, *, n_gpus: int, slots_per_gpu: int,
              bandwidth: np.ndarray | None = None, transitions: np.ndarray | None = None,
              hbm_free_bytes: np.ndarray | None = None, expert_bytes: float = 0.0,
              rng: np.random.Generator | None = None) -> Placement:
        """See :class:`~moesim.policies.placement.base.PlacementPolicy`; fills every slot."""
        arr = check_inputs(load, n_gpus, slots_per_gpu)
        phy2log = eplb_phy2log(arr, n_slots=n_gpus * slots_per_gpu, n_groups=self.n_groups,
                               n_nodes=self.n_nodes, n_gpus=n_gpus)
        placement = Placement.from_phy2log(phy2log, n_experts=arr.shape[1], n_gpus=n_gpus)
        check_hbm(placement, expert_bytes=expert_bytes, hbm_free_bytes=hbm_free_bytes,
                  policy="eplb")
        return placement
