"""generators.FatTree: NIC vertices, explicit leaf ports, and its router's link ↔ edge mapping."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.network.flows import FlowNetwork, GraphRouter
from moesim.network.generators import fat_tree


@pytest.mark.parametrize("nic_vertices", [False, True])
@pytest.mark.parametrize("n_gpus, radix", [(32, 8), (64, 8)])  # two and three tiers
def test_every_router_link_stands_for_graph_edges_of_its_capacity(nic_vertices: bool, n_gpus: int, radix: int) -> None:
    tree = fat_tree(n_gpus, gpus_per_node=4, leaf_radix=radix, nic_vertices=nic_vertices)
    assert tree.tiers == (2 if n_gpus == 32 else 3)
    router = tree.flow_router()
    g = tree.graph
    assert g is not None
    seen = set()
    for link in range(router.capacity_bytes_per_s.size):
        edges = router.edges_of(link)
        if not all(g.has_edge(*e) for e in edges):
            assert link < n_gpus * 2 and tree.gpus_per_node == 1  # NVLink of 1-GPU hosts only
            continue
        assert sum(g.edges[e]["bytes_per_s"] for e in edges) == pytest.approx(router.capacity_bytes_per_s[link])
        assert {g.edges[e]["tier"] for e in edges} == {str(router.tier[link])}
        seen.update(edges)
    assert seen == set(g.edges)  # every edge belongs to exactly one link
    assert tree.link_of_edge()[("gpu0", "node0.nvswitch")] == 0


def test_nic_vertices_keep_the_route_latency_and_rails() -> None:
    plain = fat_tree(64, gpus_per_node=4, leaf_radix=8, nic_latency_s=1.5e-6, hop_latency_s=0.5e-6)
    nics = fat_tree(64, gpus_per_node=4, leaf_radix=8, nic_latency_s=1.5e-6, hop_latency_s=0.5e-6, nic_vertices=True)
    src, dst = np.zeros(5, np.int64), np.array([1, 4, 5, 33, 63])
    a, b = plain.flow_router().route(src, dst), nics.flow_router().route(src, dst)
    assert np.allclose(a.latency_s, b.latency_s)
    # same leaf: 2 x 1.5 us; another pod: + 4 x 0.5 us; PXN adds NVLink (1 us)
    assert a.latency_s[1] == pytest.approx(3e-6) and a.latency_s[3] == pytest.approx(3e-6 + 4 * 0.5e-6 + 1e-6)
    assert nics.graph is not None
    assert nics.graph.nodes["node0.nic1"] == {"kind": "nic", "node": 0, "rail": 1}
    assert nics.graph.nodes["leaf0"]["node"] is None and nics.graph.nodes["gpu5"]["rail"] == 1
    assert nics.graph.edges["gpu1", "node0.nic1"]["latency_s"] == pytest.approx(0.75e-6)


def test_explicit_leaf_ports_and_spine_radix_give_a_wide_two_tier_leaf_spine() -> None:
    tree = fat_tree(128, gpus_per_node=8, leaf_down=8, leaf_up=4, spine_radix=1 << 30)
    assert (tree.tiers, tree.n_leaves, tree.leaf_up, tree.oversubscription) == (2, 16, 4, 2.0)
    assert tree.graph is not None and tree.graph.has_edge("leaf15", "spine3")
    with pytest.raises(ValueError, match="leaf_down"):
        fat_tree(128, leaf_down=8)


def test_flow_router_takes_routing_options() -> None:
    tree = fat_tree(32, gpus_per_node=4, leaf_radix=8)
    assert isinstance(tree.flow_router(ecmp="hash"), GraphRouter)
    topo = tree.to_topology()
    assert topo.pxn and list(topo.shortest_paths(0, 5))[0][:3] == ["gpu0", "node0.nvswitch", "gpu1"]
    pb = np.full((32, 32), 1e6)
    assert FlowNetwork(tree).transfer_time_s(pb, tuple(range(32))) == pytest.approx(
        FlowNetwork(topo, max_paths=4096).transfer_time_s(pb, tuple(range(32))), rel=1e-9)


@pytest.mark.parametrize("gpus_per_node, pxn, nic_vertices", [(4, True, False), (6, True, True), (6, False, False)])
def test_a_routes_latency_is_the_sum_over_its_links_edges(gpus_per_node: int, pxn: bool, nic_vertices: bool) -> None:
    tree = fat_tree(16 * gpus_per_node, gpus_per_node=gpus_per_node, leaf_radix=8, pxn=pxn, nic_vertices=nic_vertices,
                    nic_latency_s=1.5e-6, hop_latency_s=0.5e-6)
    router, g = tree.flow_router(), tree.graph
    assert g is not None
    n = tree.n_gpus
    routes = router.route(np.repeat(np.arange(n), n), np.tile(np.arange(n), n))
    links = routes.incidence.links
    edge_lat = np.array([g.edges[router.edges_of(int(link))[0]]["latency_s"] for link in range(router.capacity_bytes_per_s.size)])
    expect = np.where(links < edge_lat.size, np.append(edge_lat, 0.0)[links], 0.0).sum(axis=0)
    assert routes.latency_s == pytest.approx(expect, rel=1e-12, abs=1e-18)
    assert (links < edge_lat.size).any(axis=0).sum() == n * (n - 1)  # every pair but src == dst moves
