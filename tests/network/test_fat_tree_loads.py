"""All-to-all link bytes on a fat-tree by reductions over the pair matrix (``fat_tree_loads``):
the same bytes and latencies as routing every pair, and the congestion-bound collective on them."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.network import link_load
from moesim.network.fat_tree_loads import all_to_all_link_bytes, max_pair_latency_s
from moesim.network.generators import FatTreeRouter, fat_tree
from moesim.network.link_load import LinkLoadCollectives

TREES = {  # two and three tiers, partial scalable unit, 3:1, NIC vertices, 4-GPU hosts
    "2-tier": dict(n_gpus=128, leaf_radix=16),
    "3-tier": dict(n_gpus=256, leaf_radix=16),
    "3-tier-radix-8": dict(n_gpus=64, leaf_radix=8),
    "partial-su": dict(n_gpus=200, leaf_radix=16),
    "oversubscribed-3:1": dict(n_gpus=256, leaf_radix=16, oversubscription=3.0),
    "nic-vertices": dict(n_gpus=128, leaf_radix=16, nic_vertices=True),
    "4-gpu-hosts": dict(n_gpus=384, leaf_radix=16, gpus_per_node=4),
}


def _routed(router: FatTreeRouter, group: np.ndarray, pair_bytes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(link bytes, pair latencies, moving mask) by routing every ordered pair."""
    n = group.size
    src, dst = np.repeat(group, n), np.tile(group, n)
    routes = router.route(src, dst)
    b = np.where(src == dst, 0.0, pair_bytes.ravel())
    return routes.incidence.link_load(b), routes.latency_s, (b > 0, src != dst)


def _groups(n_gpus: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.arange(n_gpus), rng.permutation(n_gpus)[: n_gpus // 3], np.arange(0, n_gpus, 5),
            np.array([3, 1])]


@pytest.mark.parametrize("pxn", [True, False], ids=["pxn", "no-pxn"])
@pytest.mark.parametrize("name", list(TREES))
def test_link_bytes_equal_routing_every_pair(name: str, pxn: bool) -> None:
    router = FatTreeRouter(fat_tree(pxn=pxn, build_graph=False, **TREES[name]))
    rng = np.random.default_rng(7)
    for group in _groups(router.tree.n_gpus, rng):
        pb = rng.exponential(1e6, (group.size, group.size))
        pb[rng.random(pb.shape) < 0.3] = 0.0  # sparse rows and columns, and a non-zero diagonal
        got, lat = all_to_all_link_bytes(router, group, pb)
        want, pair_lat, (moving, distinct) = _routed(router, group, pb)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-6)
        assert lat == pytest.approx(pair_lat[moving].max(), abs=1e-15)
        assert max_pair_latency_s(router, group) == pytest.approx(pair_lat[distinct].max(), abs=1e-15)


def test_group_must_match_matrix() -> None:
    router = FatTreeRouter(fat_tree(64, leaf_radix=8, build_graph=False))
    with pytest.raises(ValueError, match=r"pair_bytes must be \[4, 4\]"):
        all_to_all_link_bytes(router, (0, 1, 2, 3), np.ones((3, 3)))


def test_congestion_collective_same_with_and_without_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = fat_tree(128, leaf_radix=16, build_graph=False)
    group = tuple(range(0, 128, 3))
    pb = np.random.default_rng(3).exponential(1e6, (2, 3, len(group), len(group)))
    dense = LinkLoadCollectives(tree, account=False).all_to_all_s(group, pb)
    monkeypatch.setattr(link_load, "DENSE_LIMIT", 0)
    coll = LinkLoadCollectives(tree)
    reduced = coll.all_to_all_s(group, pb)
    np.testing.assert_allclose(reduced, dense, rtol=1e-12)
    assert not coll._dense  # no dense incidence was built
    assert coll.network.link_bytes().sum() == pytest.approx(
        sum(all_to_all_link_bytes(coll.network.router, group, m)[0].sum() for m in pb.reshape(-1, *pb.shape[-2:])))


def test_uniform_all_to_all_on_non_blocking_tree_is_bounded_by_the_nic(monkeypatch: pytest.MonkeyPatch) -> None:
    """1:1 fat-tree with PXN: every NIC carries (hosts − 1) · g · S each way; nothing else binds."""
    monkeypatch.setattr(link_load, "DENSE_LIMIT", 0)
    tree = fat_tree(256, leaf_radix=16, build_graph=False)
    coll = LinkLoadCollectives(tree, efficiency=0.9, per_message_latency_s=5e-6)
    s = 1e6
    n, g = tree.n_gpus, tree.gpus_per_node
    lat = max_pair_latency_s(coll.network.router, tuple(range(n)))
    want = (n - g) * s / (tree.nic_bytes_per_s * 0.9) + lat + 5e-6
    assert coll.all_to_all_s(tuple(range(n)), np.full((n, n), s)) == pytest.approx(want, rel=1e-12)
    # one rank receiving 4x the mean: its NIC-in is the bottleneck, 4x the uniform one
    pb = np.full((n, n), s)
    pb[:, 5] *= 4.0
    assert coll.all_to_all_s(tuple(range(n)), pb) == pytest.approx(4 * (want - lat - 5e-6) + lat + 5e-6, rel=1e-12)
