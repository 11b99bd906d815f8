"""Topology graphs: pair bottlenecks match the hardware, and broken descriptions fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.config.topology import TopologySpec, load_topology
from moesim.core.errors import ConfigError, TopologyError
from moesim.network import Topology

NVLINK_PER_DIRECTION = 450e9  # H100 SXM: 900 GB/s bidirectional
NIC_PER_DIRECTION = 50e9  # 400 Gb/s


def explicit(devices: list[dict], links: list[dict]) -> TopologySpec:
    return TopologySpec.model_validate({"name": "t", "devices": devices, "links": links})


def gpus(n: int) -> list[dict]:
    return [{"name": f"gpu{i}", "kind": "gpu"} for i in range(n)]


def test_8gpu_node_every_pair_is_bottlenecked_by_nvlink_per_direction() -> None:
    topo = Topology.from_spec(load_topology("h100-8gpu-node"))
    assert topo.n_gpus == 8 and topo.n_nodes == 1
    off = ~np.eye(8, dtype=bool)
    assert np.all(topo.bottleneck_bytes_per_s[off] == NVLINK_PER_DIRECTION)
    assert np.all(np.isinf(np.diag(topo.bottleneck_bytes_per_s)))
    assert np.all(topo.latency_s[off] == pytest.approx(1e-6))
    assert np.all(np.diag(topo.latency_s) == 0)


def test_graph_edges_carry_capacity_and_latency() -> None:
    topo = Topology.from_spec(load_topology("h100-8gpu-node"))
    edge = topo.graph.edges["gpu0", "node0.nvswitch"]
    assert edge["bytes_per_s"] == NVLINK_PER_DIRECTION and edge["latency_s"] == pytest.approx(0.5e-6)
    assert topo.graph.has_edge("node0.nvswitch", "gpu0")  # duplex


def test_4node_rail_intra_node_is_nvlink_and_cross_node_is_one_nic() -> None:
    topo = Topology.from_spec(load_topology("h100-4node-rail"))
    assert topo.n_gpus == 32 and topo.n_nodes == 4
    assert list(topo.node_of) == [g // 8 for g in range(32)]
    same_node = topo.node_of[:, None] == topo.node_of[None, :]
    off = ~np.eye(32, dtype=bool)
    assert np.all(topo.bottleneck_bytes_per_s[same_node & off] == NVLINK_PER_DIRECTION)
    assert np.all(topo.bottleneck_bytes_per_s[~same_node] == NIC_PER_DIRECTION)
    assert topo.bottleneck_bytes_per_s[0, 8] == NIC_PER_DIRECTION  # same rail
    assert topo.bottleneck_bytes_per_s[0, 9] == NIC_PER_DIRECTION  # cross rail, via NVLink


def test_4node_rail_cross_rail_traffic_hops_over_nvlink_and_pays_its_latency() -> None:
    topo = Topology.from_spec(load_topology("h100-4node-rail"))
    assert topo.latency_s[0, 8] == pytest.approx(3e-6)  # fabric latency, same rail
    assert topo.latency_s[0, 9] == pytest.approx(4e-6)  # + one NVLink GPU-to-GPU hop
    assert all("node0.nvswitch" in p or "node1.nvswitch" in p for p in topo.shortest_paths(0, 9))


def test_matrices_are_read_only() -> None:
    topo = Topology.from_spec(load_topology("h100-8gpu-node"))
    with pytest.raises(ValueError):
        topo.bottleneck_bytes_per_s[0, 1] = 1.0


def test_explicit_form_takes_the_narrowest_edge_of_the_widest_shortest_path() -> None:
    spec = explicit(gpus(2) + [{"name": "sw", "kind": "switch"}],
                    [{"src": "gpu0", "dst": "sw", "bandwidth": "100GB/s", "latency": "1us"},
                     {"src": "gpu1", "dst": "sw", "bandwidth": "25GB/s", "latency": "2us"}])
    topo = Topology.from_spec(spec)
    assert topo.bottleneck_bytes_per_s[0, 1] == 25e9
    assert topo.latency_s[0, 1] == pytest.approx(3e-6)


def test_dangling_link_to_an_undefined_device_names_the_device() -> None:
    spec = explicit(gpus(2) + [{"name": "sw", "kind": "switch"}],
                    [{"src": "gpu0", "dst": "sw", "bandwidth": "450GB/s"},
                     {"src": "gpu1", "dst": "sw7", "bandwidth": "450GB/s"}])
    with pytest.raises(TopologyError, match="sw7"):
        Topology.from_spec(spec)


def test_dangling_switch_without_links_names_the_device() -> None:
    spec = explicit(gpus(1) + [{"name": "spare-switch", "kind": "switch"}], [])
    with pytest.raises(TopologyError, match="spare-switch"):
        Topology.from_spec(spec)


@pytest.mark.parametrize("bandwidth", [0, -5e9, "0GB/s"])
def test_zero_or_negative_capacity_names_the_link(bandwidth: object) -> None:
    spec = explicit(gpus(2) + [{"name": "sw", "kind": "switch"}],
                    [{"src": "gpu0", "dst": "sw", "bandwidth": "450GB/s"},
                     {"src": "gpu1", "dst": "sw", "bandwidth": bandwidth}])
    with pytest.raises(TopologyError, match=r"gpu1 -> sw.*bandwidth"):
        Topology.from_spec(spec)


def test_zero_capacity_in_parametric_form_names_the_field() -> None:
    spec = TopologySpec(name="t", nodes=1, gpus_per_node=8, intra_node={"bandwidth": 0})
    with pytest.raises(TopologyError, match="intra_node.bandwidth"):
        Topology.from_spec(spec)


def test_gpu_without_links_is_unreachable_and_named() -> None:
    spec = explicit(gpus(3) + [{"name": "sw", "kind": "switch"}],
                    [{"src": "gpu0", "dst": "sw", "bandwidth": "450GB/s"},
                     {"src": "gpu1", "dst": "sw", "bandwidth": "450GB/s"}])
    with pytest.raises(TopologyError, match="gpu2"):
        Topology.from_spec(spec)


def test_gpu_behind_a_one_way_link_is_unreachable_and_named() -> None:
    spec = explicit(gpus(3) + [{"name": "sw", "kind": "switch"}],
                    [{"src": "gpu0", "dst": "sw", "bandwidth": "450GB/s"},
                     {"src": "gpu1", "dst": "sw", "bandwidth": "450GB/s"},
                     {"src": "gpu2", "dst": "sw", "bandwidth": "450GB/s", "duplex": False}])
    with pytest.raises(TopologyError, match="gpu2.*unreachable"):
        Topology.from_spec(spec)


def test_hosts_without_a_fabric_cannot_reach_each_other() -> None:
    spec = TopologySpec(name="t", nodes=2, gpus_per_node=2, intra_node={"bandwidth": "450GB/s"})
    with pytest.raises(TopologyError, match="unreachable"):
        Topology.from_spec(spec)


def test_spec_rejects_mixing_the_explicit_and_parametric_forms() -> None:
    with pytest.raises(ValueError, match="not both"):
        TopologySpec.model_validate({"name": "t", "nodes": 1, "devices": gpus(1), "links": []})


def test_unknown_topology_preset_raises_config_error_listing_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        load_topology("h100-9gpu-node")
    assert info.value.field == "hardware.topology"
    assert "h100-8gpu-node" in str(info.value)


# --------------------------------------------------------------------------- node types and fabrics (issue 3)
PCIE_GEN5_X16 = 64e9  # per direction


def spec_of(**tree: object) -> TopologySpec:
    return TopologySpec.model_validate({"name": "t", **tree})


@pytest.mark.parametrize("name", ["hgx-h100-node", "h800-deepseek-2048", "gb200-nvl72", "pcie-8gpu-node",
                                  "leaf-spine-128-2to1", "fat-tree-16384", "h100-4node-rail", "h800-2048"])
def test_every_shipped_yaml_loads_and_states_per_direction_figures(name: str) -> None:
    from pathlib import Path
    spec = load_topology(name)
    text = (Path(__file__).resolve().parents[2] / "topologies" / f"{name}.yaml").read_text()
    assert "per direction" in text.lower() or "PER DIRECTION" in text
    assert spec.nodes is not None


def test_gb200_nvl72_every_pair_is_one_nvlink_hop_at_900_gb_per_s() -> None:
    topo = Topology.from_spec(load_topology("gb200-nvl72"))
    assert topo.n_gpus == 72 and topo.n_nodes == 1 and not topo.lazy
    off = ~np.eye(72, dtype=bool)
    assert np.all(topo.bottleneck_bytes_per_s[off] == 900e9)  # 1.8 TB/s bidirectional
    assert np.all(topo.latency_s[off] == pytest.approx(1e-6))
    assert all(len(p) == 3 for p in topo.shortest_paths(0, 71))  # gpu, NVLink switch, gpu
    assert topo.graph.edges["gpu0", "node0.cpu0"]["tier"] == "c2c"


def test_pcie_only_node_pairs_run_at_pcie_speed_through_switches_and_cpus() -> None:
    topo = Topology.from_spec(load_topology("pcie-8gpu-node"))
    off = ~np.eye(8, dtype=bool)
    assert np.all(topo.bottleneck_bytes_per_s[off] == PCIE_GEN5_X16)
    assert [p[1:-1] for p in topo.shortest_paths(0, 1)] == [["node0.pcie0"]]
    assert [p[1:-1] for p in topo.shortest_paths(0, 2)] == [["node0.pcie0", "node0.cpu0", "node0.pcie1"]]
    assert [p[1:-1] for p in topo.shortest_paths(0, 7)] == [["node0.pcie0", "node0.cpu0", "node0.cpu1", "node0.pcie3"]]
    assert not any("nic" in v for p in topo.shortest_paths(0, 7) for v in p)  # never through a NIC


def test_pcie_node_with_a_slow_socket_link_is_bound_by_it_across_sockets() -> None:
    tree = load_topology("pcie-8gpu-node").model_dump(exclude_unset=True)
    tree["host"]["cpu_link_bandwidth"] = "20GB/s"
    topo = Topology.from_spec(TopologySpec.model_validate(tree))
    assert topo.bottleneck_bytes_per_s[0, 3] == PCIE_GEN5_X16 and topo.bottleneck_bytes_per_s[0, 4] == 20e9


def test_pcie_sockets_without_a_link_are_a_partition() -> None:
    tree = load_topology("pcie-8gpu-node").model_dump(exclude_unset=True)
    del tree["host"]["cpu_link_bandwidth"]
    with pytest.raises(TopologyError, match=r"partitioned.*gpu0\.\.gpu3.*cut off|cut off"):
        Topology.from_spec(TopologySpec.model_validate(tree))


def test_hgx_node_models_nvlink_nics_and_the_pcie_host_per_direction() -> None:
    topo = Topology.from_spec(load_topology("hgx-h100-node"))
    g = topo.graph
    assert g.edges["gpu0", "node0.nvswitch"]["bytes_per_s"] == NVLINK_PER_DIRECTION
    assert g.edges["gpu0", "node0.pcie0"]["bytes_per_s"] == PCIE_GEN5_X16
    assert g.edges["gpu1", "node0.pcie0"]["tier"] == "pcie" and g.has_edge("node0.pcie0", "node0.nic1")
    assert g.has_edge("node0.pcie1", "node0.cpu0") and g.has_edge("node0.pcie2", "node0.cpu1")
    assert g.edges["node0.cpu0", "node0.cpu1"]["tier"] == "host"
    off = ~np.eye(8, dtype=bool)
    assert np.all(topo.bottleneck_bytes_per_s[off] == NVLINK_PER_DIRECTION)  # NVLink preferred over PCIe
    assert list(topo.shortest_paths(0, 1)) == [["gpu0", "node0.nvswitch", "gpu1"]]


def test_node_type_supplies_the_host_keys_and_the_file_overrides_them() -> None:
    spec = spec_of(node_type="hgx-h100-node", nodes=2, nic_bandwidth="200Gb/s",
                   fabric={"kind": "single_switch"})
    assert spec.gpus_per_node == 8 and spec.host is not None and spec.intra_node is not None
    assert spec.nic_bandwidth == 25e9
    topo = Topology.from_spec(spec)
    assert topo.n_gpus == 16 and topo.bottleneck_bytes_per_s[0, 8] == 25e9


def test_leaf_spine_layout_counts_leaves_spines_and_uplinks() -> None:
    spec = load_topology("leaf-spine-128-2to1")
    topo = Topology.from_spec(spec)
    names = topo.vertex_names()
    assert sum(n.startswith("leaf") for n in names) == 16 and sum(n.startswith("spine") for n in names) == 4
    g = topo.graph
    assert g.has_edge("node0.nic0", "leaf0") and g.has_edge("node8.nic0", "leaf8") and g.has_edge("node7.nic3", "leaf3")
    assert all(g.has_edge("leaf0", f"spine{k}") for k in range(4)) and g.edges["leaf0", "spine0"]["tier"] == "leaf"
    # same leaf: 3 us; across the spine: + 2 switch hops of 0.5 us
    assert topo.latency_s[0, 8] == pytest.approx(3e-6) and topo.latency_s[0, 64] == pytest.approx(4e-6)
    assert topo.bottleneck_bytes_per_s[0, 64] == NIC_PER_DIRECTION


def test_fat_tree_yaml_bridges_to_the_generator_layout() -> None:
    spec = spec_of(nodes=16, gpus_per_node=4, intra_node={"bandwidth": "450GB/s"}, nics_per_node=4,
                   nic_bandwidth="400Gb/s", fabric={"kind": "fat_tree", "leaf_radix": 8, "pxn": True})
    topo = Topology.from_spec(spec)
    tree = topo._fat_tree
    assert tree is not None and (tree.tiers, tree.n_leaves, tree.n_pods) == (3, 16, 4)
    assert type(topo.flow_router()).__name__ == "FatTreeRouter"
    assert topo.graph.has_edge("leaf0", "pod0.agg0") and topo.graph.has_edge("pod0.agg0", "core0.0")


def test_h800_deepseek_cluster_is_lazy_and_its_pairs_follow_pxn() -> None:
    topo = Topology.from_spec(load_topology("h800-deepseek-2048"))
    assert topo.lazy and topo.pxn and topo.n_gpus == 2048 and topo.n_nodes == 256
    bw, lat = topo.pair_matrices([0, 1, 8, 9, 1024 + 1])
    assert bw[0, 1] == 200e9 and lat[0, 1] == pytest.approx(1e-6)  # NVLink, per direction (nominal)
    assert bw[0, 2] == NIC_PER_DIRECTION and lat[0, 2] == pytest.approx(3e-6)  # same rail, same leaf
    assert lat[0, 3] == pytest.approx(4e-6)  # another rail: NVLink to gpu1 first (PXN), then rail 1
    assert lat[0, 4] == pytest.approx(5e-6)  # and across the spine
    assert type(topo.flow_router()).__name__ == "FatTreeRouter"


def test_lazy_pair_matrices_match_the_eager_build() -> None:
    spec = load_topology("leaf-spine-128-2to1")
    eager, lazy = Topology.from_spec(spec), Topology.from_spec(spec, lazy=True)
    assert isinstance(eager.bottleneck_bytes_per_s, np.ndarray) and not isinstance(lazy.bottleneck_bytes_per_s, np.ndarray)
    g = np.array([5, 70, 3, 127, 64])
    for a, b in ((eager.bottleneck_bytes_per_s, lazy.bottleneck_bytes_per_s), (eager.latency_s, lazy.latency_s)):
        assert np.array_equal(a[np.ix_(g, g)], b[np.ix_(g, g)])
        assert np.array_equal(a[g, g[::-1]], b[g, g[::-1]]) and a[3, 70] == b[3, 70]
    bw, lat = lazy.pair_matrices(g)
    assert np.array_equal(bw, eager.bottleneck_bytes_per_s[np.ix_(g, g)])
    assert np.array_equal(lat, eager.latency_s[np.ix_(g, g)])
    bw[0, 1] = 0.0  # a fresh copy, the cache is untouched
    assert lazy.pair_matrices(g)[0][0, 1] > 0
    assert np.array_equal(np.asarray(lazy.latency_s), eager.latency_s)
    assert np.array_equal(eager.bottleneck(g), eager.bottleneck_bytes_per_s[np.ix_(g, g)])
    assert np.array_equal(lazy.latency(g), eager.latency_s[np.ix_(g, g)])


def test_fat_tree_pairs_from_the_router_equal_the_graph_search() -> None:
    spec = spec_of(nodes=32, gpus_per_node=4, intra_node={"bandwidth": "450GB/s"}, nics_per_node=4,
                   nic_bandwidth="400Gb/s", fabric={"kind": "fat_tree", "leaf_radix": 8, "oversubscription": 3.0,
                                                    "pxn": True})
    fast = Topology.from_spec(spec)
    slow = Topology(name="t", gpu="h100-sxm", net=fast._net, gpu_names=fast.gpu_names, pxn=True)  # no router model
    assert fast._fat_tree is not None and slow._fat_tree is None
    assert np.array_equal(fast.bottleneck_bytes_per_s, slow.bottleneck_bytes_per_s)
    assert np.allclose(fast.latency_s, slow.latency_s, rtol=0, atol=1e-15)


def test_fat_tree_16384_builds_lazily_without_pair_matrices() -> None:
    import time
    spec = load_topology("fat-tree-16384")
    t0 = time.perf_counter()
    topo = Topology.from_spec(spec)
    assert time.perf_counter() - t0 < 5.0
    assert topo.lazy and topo.n_gpus == 16384 and topo._fat_tree is not None and topo._fat_tree.tiers == 3
    g = np.array([0, 1, 8, 9, 256, 8193])
    bw, lat = topo.pair_matrices(g)
    assert list(bw[0, 1:]) == [450e9] + [NIC_PER_DIRECTION] * 4
    # NVLink; same leaf; PXN + same leaf; other leaf of the pod (spine hops); PXN + other pod
    assert lat[0, 1:] == pytest.approx([1e-6, 3e-6, 4e-6, 4e-6, 6e-6])
    with pytest.raises(TopologyError, match="pair_matrices"):
        np.asarray(topo.bottleneck_bytes_per_s)


def test_zero_host_bandwidth_names_the_field() -> None:
    tree = load_topology("pcie-8gpu-node").model_dump(exclude_unset=True)
    tree["host"]["uplink_bandwidth"] = 0
    with pytest.raises(TopologyError, match="host.uplink_bandwidth"):
        Topology.from_spec(TopologySpec.model_validate(tree))


@pytest.mark.parametrize("tree, match", [
    ({"nodes": 2, "gpus_per_node": 8, "intra_node": {"bandwidth": 1e9}, "nics_per_node": 8, "nic_bandwidth": 5e10,
      "fabric": {"kind": "leaf_spine"}}, "nodes_per_leaf"),
    ({"nodes": 2, "gpus_per_node": 8, "intra_node": {"bandwidth": 1e9}, "nics_per_node": 8, "nic_bandwidth": 5e10,
      "fabric": {"kind": "leaf_spine", "nodes_per_leaf": 3, "oversubscription": 2.0}}, "whole number"),
    ({"nodes": 2, "gpus_per_node": 8, "intra_node": {"bandwidth": 1e9}, "nics_per_node": 8, "nic_bandwidth": 5e10,
      "fabric": {"kind": "rail_optimized", "pxn": False}}, "pxn"),
    ({"nodes": 2, "gpus_per_node": 8, "host": {"bandwidth": 1e9}, "nics_per_node": 8, "nic_bandwidth": 5e10,
      "fabric": {"kind": "single_switch", "pxn": True}}, "NVLink"),
    ({"nodes": 1, "gpus_per_node": 8, "host": {"bandwidth": 1e9, "gpus_per_cpu": 3}}, "gpus_per_cpu"),
    ({"nodes": 1, "gpus_per_node": 8, "host": {"bandwidth": 1e9, "gpus_per_cpu": 4, "gpus_per_switch": 3}},
     "gpus_per_switch"),
    ({"nodes": 1, "gpus_per_node": 8, "intra_node": {"kind": "pcie", "bandwidth": 1e9}, "host": {"bandwidth": 1e9}},
     "shorthand"),
    ({"nodes": 1, "gpus_per_node": 2, "host": {"link": "c2c", "bandwidth": 1e9, "gpus_per_switch": 2}}, "c2c"),
    ({"nodes": 1, "gpus_per_node": 8, "intra_node": {"bandwidth": 1e9}, "fabric": {"kind": "none", "leaf_radix": 8}},
     "leaf_radix"),
])
def test_spec_rejects_inconsistent_new_fields(tree: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        spec_of(**tree)


def test_explicit_form_accepts_cpus_host_switches_and_rails() -> None:
    devices = gpus(2) + [{"name": "nvswitch", "kind": "switch", "node": 0}, {"name": "cpu", "kind": "cpu"},
                         {"name": "pcie", "kind": "switch", "node": 0}]
    links = [{"src": "gpu0", "dst": "nvswitch", "bandwidth": "450GB/s"},
             {"src": "gpu1", "dst": "nvswitch", "bandwidth": "450GB/s"},
             {"src": "gpu0", "dst": "pcie", "bandwidth": "64GB/s"}, {"src": "gpu1", "dst": "pcie", "bandwidth": "64GB/s"},
             {"src": "pcie", "dst": "cpu", "bandwidth": "64GB/s"}]
    topo = Topology.from_spec(explicit(devices, links))
    assert topo.graph.edges["gpu0", "nvswitch"]["tier"] == "nvlink" and topo.graph.edges["pcie", "cpu"]["tier"] == "pcie"
    assert topo.bottleneck_bytes_per_s[0, 1] == 450e9  # inferred NVLink tier is preferred
