"""Routing policy: no GPU transit (except PXN), host traffic stays in the host on NVLink, ECMP."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.config.topology import TopologySpec, load_topology
from moesim.network import Topology
from moesim.network.flows import FlowNetwork, GraphRouter

NIC = 50e9  # 400 Gb/s per direction
NVLINK = 450e9


@pytest.fixture(scope="module")
def ls128() -> Topology:
    return Topology.from_spec(load_topology("leaf-spine-128-2to1"))


def _leaf_spine(nodes: int = 16, oversubscription: float = 2.0, pxn: bool = False, **host: object) -> Topology:
    tree: dict = {"name": "ls", "nodes": nodes, "gpus_per_node": 8, "intra_node": {"bandwidth": "450GB/s"},
                  "nics_per_node": 8, "nic_bandwidth": "400Gb/s",
                  "fabric": {"kind": "leaf_spine", "nodes_per_leaf": 8, "oversubscription": oversubscription,
                             "pxn": pxn, "latency": "3us", "hop_latency": "0.5us"}}
    tree.update(host)
    return Topology.from_spec(TopologySpec.model_validate(tree))


def _gpus_inside(topo: Topology, path: list[str]) -> list[str]:
    return [v for v in path[1:-1] if v in topo.gpu_index]


def test_cross_rail_transfer_crosses_one_nic_not_two(rail_topo: Topology) -> None:
    rail = rail_topo
    # the old graph let GPUs forward, so 0 -> 9 had two equal-cost paths (via gpu1's NIC, or via
    # gpu8's NIC then NVLink) and ECMP split gave it twice one NIC's bandwidth
    paths = list(rail.shortest_paths(0, 9))
    assert paths == [["gpu0", "node0.nvswitch", "gpu1", "node0.nic1", "rail1", "node1.nic1", "gpu9"]]
    for ecmp in ("split", "hash"):
        net = FlowNetwork(rail, ecmp=ecmp)
        assert net.transfer_flows([0], [9], [1e9]).time_s() == pytest.approx(1e9 / NIC + 4e-6)
        nic_links = [i for i, (u, v) in enumerate(net.router.edges) if v.startswith("rail")]
        routes = net.routes([0], [9])
        assert np.isin(routes.incidence.links[:, 0], nic_links).sum() == 1


@pytest.mark.parametrize("name", ["h100-4node-rail", "leaf-spine-128-2to1", "pcie-8gpu-node", "hgx-h100-node"])
def test_no_path_crosses_a_gpu_except_the_pxn_proxy(name: str) -> None:
    topo = Topology.from_spec(load_topology(name))
    rng = np.random.default_rng(0)
    for src, dst in rng.integers(0, topo.n_gpus, size=(60, 2)):
        if src == dst:
            continue
        for path in topo.shortest_paths(int(src), int(dst)):
            inside = _gpus_inside(topo, path)
            assert len(inside) <= 1
            if inside:  # the PXN proxy: same host as the source, on the destination's rail
                p = topo.gpu_index[inside[0]]
                assert topo.pxn and topo.node_of[p] == topo.node_of[src] != topo.node_of[dst]
                assert topo._rail[p] == topo._rail[dst]


def test_traffic_inside_a_host_stays_inside_on_nvlink(ls128: Topology) -> None:
    for dst in range(1, 8):
        paths = list(ls128.shortest_paths(0, dst))
        assert paths == [["gpu0", "node0.nvswitch", f"gpu{dst}"]]


def test_traffic_inside_a_pcie_host_never_uses_a_nic() -> None:
    topo = Topology.from_spec(load_topology("pcie-8gpu-node"))
    for dst in range(1, 8):
        assert all(not any("nic" in v for v in p) for p in topo.shortest_paths(0, dst))


def test_traffic_between_hosts_uses_the_gpus_own_nics_and_no_third_host(ls128: Topology) -> None:
    for path in ls128.shortest_paths(0, 65):  # host 0 rail 0 -> host 8 rail 1, no PXN: over a spine
        assert path[1:4] == ["node0.pcie0", "node0.nic0", "leaf0"] and path[-4:-1] == ["leaf9", "node8.nic1", "node8.pcie0"]
        assert path[4].startswith("spine")
        hosts = {v.split(".")[0] for v in path if v.startswith("node")}
        assert hosts == {"node0", "node8"}


def test_pxn_keeps_cross_rail_traffic_on_the_destination_rail() -> None:
    plain, pxn = _leaf_spine(pxn=False), _leaf_spine(pxn=True)
    # host 0 rail 0 -> host 1 rail 1 (same leaf group): over the spine without PXN,
    # over NVLink to gpu1 and then leaf1 with it
    assert all(any(v.startswith("spine") for v in p) for p in plain.shortest_paths(0, 9))
    assert list(pxn.shortest_paths(0, 9)) == [["gpu0", "node0.nvswitch", "gpu1", "node0.nic1", "leaf1", "node1.nic1", "gpu9"]]
    assert plain.latency_s[0, 9] == pytest.approx(3e-6 + 2 * 0.5e-6)
    assert pxn.latency_s[0, 9] == pytest.approx(1e-6 + 3e-6)
    assert plain.bottleneck_bytes_per_s[0, 9] == pxn.bottleneck_bytes_per_s[0, 9] == NIC


def test_ecmp_split_spreads_a_flow_over_the_spines_and_hash_picks_one(ls128: Topology) -> None:
    split, hashed = GraphRouter(ls128), GraphRouter(ls128, ecmp="hash")
    links, weights, _ = split.pair(0, 64)
    spine_up = [i for i, w in zip(links, weights) if split.edges[i][0] == "leaf0" and split.edges[i][1].startswith("spine")]
    assert len(spine_up) == 4 and np.allclose(weights[np.isin(links, spine_up)], 0.25)
    links, weights, _ = hashed.pair(0, 64)
    assert np.all(weights == 1.0) and sum(hashed.edges[i][1].startswith("spine") for i in links) == 1


@pytest.mark.parametrize("oversubscription, rate", [(2.0, NIC / 2), (1.0, NIC)])
def test_oversubscription_2_to_1_halves_cross_spine_throughput(oversubscription: float, rate: float) -> None:
    topo = _leaf_spine(oversubscription=oversubscription)
    net = FlowNetwork(topo)
    assert type(net.router).__name__ == "FatTreeRouter"  # NVSwitch hosts, a NIC per GPU
    src = 8 * np.arange(8)  # rail 0 of hosts 0..7: leaf 0
    b = 1e9
    across = net.transfer_flows(src, src + 64, np.full(8, b)).time_s()  # to rail 0 of hosts 8..15: leaf 8
    assert across == pytest.approx(b / rate + 4e-6)
    within = net.transfer_flows(src, np.roll(src, 1), np.full(8, b)).time_s()  # inside leaf 0: no spine
    assert within == pytest.approx(b / NIC + 3e-6)


def test_oversubscription_2_to_1_on_graph_routing(ls128: Topology) -> None:
    net = FlowNetwork(ls128)
    assert isinstance(net.router, GraphRouter)  # PCIe host side: routes searched on the graph
    src = 8 * np.arange(8)
    assert net.transfer_flows(src, src + 64, np.full(8, 1e9)).time_s() == pytest.approx(1e9 / (NIC / 2) + 4e-6)


def test_fat_tree_router_matches_graph_routing_on_a_yaml_fat_tree() -> None:
    spec = TopologySpec.model_validate({
        "name": "ft", "nodes": 16, "gpus_per_node": 4, "intra_node": {"bandwidth": "450GB/s"}, "nics_per_node": 4,
        "nic_bandwidth": "400Gb/s", "fabric": {"kind": "fat_tree", "leaf_radix": 8, "oversubscription": 3.0, "pxn": True}})
    topo = Topology.from_spec(spec)
    fast = FlowNetwork(topo)
    slow = FlowNetwork(Topology(name="ft", gpu=topo.gpu, net=topo._net, gpu_names=topo.gpu_names, pxn=True),
                       max_paths=4096)
    assert type(fast.router).__name__ == "FatTreeRouter" and isinstance(slow.router, GraphRouter)
    pb = np.full((32, 32), 1e6)
    pb[:, 3] *= 4  # a hot rank
    group = tuple(range(0, 64, 2))  # spread over hosts, rails, leaves and pods
    assert fast.transfer_time_s(pb, group) == pytest.approx(slow.transfer_time_s(pb, group), rel=1e-9)
    a, b = fast.edge_bytes(), slow.edge_bytes()
    assert set(a) <= set(topo.graph.edges) and set(b) <= set(topo.graph.edges)
    assert max(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b)) < 1e-3 * max(a.values())
    assert set(fast.tier) >= {"nvlink", "nic", "leaf", "core"}


def test_graph_router_tiers_come_from_the_edge_attributes(ls128: Topology) -> None:
    assert set(GraphRouter(ls128).tier) == {"nvlink", "pcie", "host", "nic", "leaf"}


def test_hash_on_a_fat_tree_falls_back_to_graph_routing() -> None:
    topo = _leaf_spine(nodes=16, oversubscription=2.0)
    assert isinstance(FlowNetwork(topo, ecmp="hash").router, GraphRouter)
