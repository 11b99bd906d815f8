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
