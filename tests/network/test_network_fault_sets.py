"""Faults: degraded and failed links / devices reroute traffic or report the partition."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.config.topology import FaultSpec, TopologySpec, load_topology, parse_faults
from moesim.core.errors import ConfigError, TopologyError
from moesim.network import Topology
from moesim.network.faults import FaultSet, apply_fault, apply_faults
from moesim.network.flows import FlowNetwork, GraphRouter
from moesim.network.topology import PartitionError

NIC = 50e9


@pytest.fixture(scope="module")
def rail() -> Topology:
    return Topology.from_spec(load_topology("h100-4node-rail"))


def _leaf_spine(nodes: int, nodes_per_leaf: int, oversubscription: float) -> Topology:
    """One GPU per host, one NIC each: a plain two-tier leaf-spine."""
    return Topology.from_spec(TopologySpec.model_validate({
        "name": "ls", "nodes": nodes, "gpus_per_node": 1, "nics_per_node": 1, "nic_bandwidth": "400Gb/s",
        "fabric": {"kind": "leaf_spine", "nodes_per_leaf": nodes_per_leaf, "oversubscription": oversubscription,
                   "latency": "3us", "hop_latency": "0.5us"}}))


def test_degrading_a_nic_halves_the_bottleneck_of_its_paths(rail: Topology) -> None:
    hurt = apply_fault(rail, FaultSpec(kind="degrade", target="node0.nic0", factor=0.5))
    assert hurt.bottleneck_bytes_per_s[0, 8] == hurt.bottleneck_bytes_per_s[8, 0] == NIC / 2
    assert hurt.bottleneck_bytes_per_s[1, 9] == NIC and hurt.bottleneck_bytes_per_s[0, 1] == 450e9
    assert rail.bottleneck_bytes_per_s[0, 8] == NIC  # the original is untouched
    assert FlowNetwork(hurt).transfer_flows([0], [8], [1e9]).time_s() == pytest.approx(1e9 / (NIC / 2) + 3e-6)
    assert hurt.faults == (FaultSpec(kind="degrade", target="node0.nic0", factor=0.5),)


def test_degrading_one_direction_leaves_the_other(rail: Topology) -> None:
    hurt = apply_fault(rail, {"kind": "degrade", "target": "node0.nic0->rail0", "factor": 0.25})
    assert hurt.bottleneck_bytes_per_s[0, 8] == NIC / 4 and hurt.bottleneck_bytes_per_s[8, 0] == NIC


def test_failing_one_of_two_uplinks_reroutes_over_the_other() -> None:
    topo = _leaf_spine(nodes=4, nodes_per_leaf=2, oversubscription=1.0)  # 2 leaves x 2 spines
    hurt = apply_fault(topo, {"kind": "fail", "target": "leaf0<->spine0"})
    assert len(list(topo.shortest_paths(0, 2))) == 2
    assert [p[3] for p in hurt.shortest_paths(0, 2)] == ["spine1"]
    assert hurt.bottleneck_bytes_per_s[0, 2] == NIC  # one path is enough for one flow
    before, after = FlowNetwork(topo), FlowNetwork(hurt)
    assert not isinstance(before.router, GraphRouter) and isinstance(after.router, GraphRouter)
    lat = 3e-6 + 2 * 0.5e-6
    flows = ([0, 1], [2, 3], [1e9, 1e9])  # both hosts of leaf 0 to leaf 1: the uplinks carry 2 flows
    assert before.transfer_flows(*flows).time_s() == pytest.approx(1e9 / NIC + lat)
    assert after.transfer_flows(*flows).time_s() == pytest.approx(2e9 / NIC + lat)


@pytest.mark.parametrize("tiers, faults", [
    (2, [("spine1", 0.5), ("node5.nic0", 0.3)]),
    (3, [("core1.0", 0.5), ("leaf2->pod1.agg0", 0.25), ("node3.nic0", 0.5)])])
def test_fat_tree_router_after_degrades_agrees_with_graph_routing(tiers: int, faults: list) -> None:
    if tiers == 2:
        topo = _leaf_spine(nodes=8, nodes_per_leaf=2, oversubscription=1.0)
    else:  # radix-4 switches: pods of 2 leaves, 2 aggregation switches each, 2 core planes of 2
        topo = Topology.from_spec(TopologySpec.model_validate({
            "name": "ft", "nodes": 16, "gpus_per_node": 1, "nics_per_node": 1, "nic_bandwidth": "400Gb/s",
            "fabric": {"kind": "fat_tree", "leaf_radix": 4}}))
        assert topo._fat_tree is not None and topo._fat_tree.tiers == 3
    for target, factor in faults:
        topo = apply_fault(topo, {"kind": "degrade", "target": target, "factor": factor})
    assert type(topo.flow_router()).__name__ == "FatTreeRouter"
    plain = Topology(name="ls", gpu=topo.gpu, net=topo._net, gpu_names=topo.gpu_names)
    pb = np.random.default_rng(0).uniform(1e5, 1e6, (8, 8))
    group = tuple(range(0, topo.n_gpus, topo.n_gpus // 8))  # across leaves (and pods)
    fast = FlowNetwork(topo).transfer_time_s(pb, group)
    assert fast == pytest.approx(FlowNetwork(plain, max_paths=4096).transfer_time_s(pb, group), rel=1e-9)


def test_failing_the_only_uplink_reports_the_partition() -> None:
    topo = _leaf_spine(nodes=6, nodes_per_leaf=2, oversubscription=2.0)  # 3 leaves, one spine
    with pytest.raises(PartitionError) as info:
        apply_fault(topo, {"kind": "fail", "target": "leaf0<->spine0", "at_s": 1.5})
    e = info.value
    assert e.cut_off == (0, 1) and e.n_unreachable == 2 * 2 * 4
    assert isinstance(e, TopologyError)
    msg = str(e)
    assert msg.startswith("after fail of 'leaf0<->spine0' at 1.5 s") and "gpu0..gpu1" not in msg
    assert "gpu0 (host 0), gpu1 (host 1) are cut off" in msg


def test_failing_a_nic_without_another_way_out_cuts_its_gpu_off(rail: Topology) -> None:
    with pytest.raises(PartitionError, match=r"GPU gpu0 \(host 0\) is cut off") as info:
        apply_fault(rail, {"kind": "fail", "target": "node0.nic0"})
    lazy = Topology.from_spec(load_topology("h100-4node-rail"), lazy=True)
    with pytest.raises(PartitionError) as lazy_info:
        apply_fault(lazy, {"kind": "fail", "target": "node0.nic0"})
    assert info.value.cut_off == lazy_info.value.cut_off == (0,)
    assert info.value.n_unreachable == lazy_info.value.n_unreachable == 48


def test_an_even_split_names_the_side_the_source_cannot_reach() -> None:
    topo = _leaf_spine(nodes=4, nodes_per_leaf=2, oversubscription=2.0)  # 2 leaves, one spine
    with pytest.raises(PartitionError) as info:
        apply_fault(topo, {"kind": "fail", "target": "spine0"})
    assert info.value.cut_off == (2, 3) and info.value.example == (0, 2)


def test_a_failed_nic_on_a_pcie_host_reroutes_through_the_pcie_switch() -> None:
    topo = Topology.from_spec(load_topology("leaf-spine-128-2to1"))
    hurt = apply_fault(topo, {"kind": "fail", "target": "node0.nic0"})
    assert [p[1:4] for p in hurt.shortest_paths(0, 64)][0] == ["node0.pcie0", "node0.nic1", "leaf1"]
    assert "node0.nic0" not in hurt.vertex_names()


def test_a_failed_nvlink_port_falls_back_to_pcie() -> None:
    topo = Topology.from_spec(load_topology("hgx-h100-node"))
    hurt = apply_fault(topo, {"kind": "fail", "target": "gpu0<->node0.nvswitch"})
    assert np.all(hurt.bottleneck_bytes_per_s[0, 1:] == 64e9) and hurt.bottleneck_bytes_per_s[1, 2] == 450e9
    assert list(hurt.shortest_paths(0, 1)) == [["gpu0", "node0.pcie0", "gpu1"]]


@pytest.mark.parametrize("target, match", [("node9.nic0", "no device 'node9.nic0'.*did you mean"),
                                           ("gpu3", "is a GPU"), ("node0.nic0<->rail1", "not linked"),
                                           ("rail0->node0.nvswitch", "not linked")])
def test_bad_targets_are_named(rail: Topology, target: str, match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        apply_fault(rail, {"kind": "fail", "target": target})


@pytest.mark.parametrize("tree, match", [({"kind": "degrade", "target": "x"}, "factor"),
                                         ({"kind": "degrade", "target": "x", "factor": 1.5}, "factor"),
                                         ({"kind": "fail", "target": "x", "factor": 0.5}, "no factor"),
                                         ({"kind": "break", "target": "x"}, "degrade"),
                                         ({"kind": "fail", "target": "x", "at_s": -1}, "greater")])
def test_fault_spec_validation(tree: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FaultSpec.model_validate(tree)


def test_parse_faults_sorts_by_time_and_names_the_bad_entry() -> None:
    faults = parse_faults([{"at_s": "2ms", "kind": "fail", "target": "a"},
                           {"at_s": 0.001, "kind": "degrade", "target": "b", "factor": 0.5}])
    assert [f.target for f in faults] == ["b", "a"] and faults[1].at_s == pytest.approx(2e-3)
    with pytest.raises(ConfigError) as info:
        parse_faults([{"kind": "fail", "target": "a"}, {"kind": "degrade", "target": "b"}], field="hardware.faults")
    assert info.value.field == "hardware.faults[1]"
    assert parse_faults(None) == ()


def test_fault_set_applies_faults_in_simulated_time(rail: Topology) -> None:
    fs = FaultSet([{"at_s": 2.0, "kind": "degrade", "target": "node1.nic1", "factor": 0.5},
                   {"at_s": 1.0, "kind": "degrade", "target": "node0.nic0", "factor": 0.5}])
    assert fs.changes == (1.0, 2.0) and len(fs) == 2
    assert fs.topology_at(rail, 0.5) is rail
    t1, t2 = fs.topology_at(rail, 1.0), fs.topology_at(rail, 5.0)
    assert t1 is fs.topology_at(rail, 1.9) and t2.faults[0].target == "node0.nic0"
    assert t1.bottleneck_bytes_per_s[0, 8] == NIC / 2 and t1.bottleneck_bytes_per_s[9, 1] == NIC
    assert t2.bottleneck_bytes_per_s[9, 1] == NIC / 2
    assert [t for t, _ in fs.schedule(rail)] == [1.0, 2.0]
    assert apply_faults(rail, fs.faults).bottleneck_bytes_per_s[9, 1] == NIC / 2
    with pytest.raises(PartitionError, match="after fail of 'rail2'"):
        FaultSet([{"at_s": 3.0, "kind": "fail", "target": "rail2"}]).schedule(rail)


# --------------------------------------------------------------------------- consistency under random faults
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_BASES = {name: Topology.from_spec(load_topology(name)) for name in ("h100-4node-rail", "hgx-h100-node", "pcie-8gpu-node")}
_BASES["leaf-spine"] = _leaf_spine(nodes=6, nodes_per_leaf=2, oversubscription=1.0)
_BASES["hgx-leaf-spine"] = Topology.from_spec(TopologySpec.model_validate({
    "name": "hl", "node_type": "hgx-h100-node", "nodes": 4,
    "fabric": {"kind": "leaf_spine", "nodes_per_leaf": 2, "oversubscription": 2.0, "pxn": True}}))


def _links(topo: Topology) -> list[str]:
    pairs = sorted({tuple(sorted(e)) for e in topo.edge_list})
    return [f"{a}<->{b}" for a, b in pairs] + [f"{a}->{b}" for a, b in topo.edge_list]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(_BASES)), st.data())
def test_partition_verdict_pair_metrics_and_routes_agree(name: str, data: st.DataObject) -> None:
    base = _BASES[name]
    devices = [v for v in base.vertex_names() if v not in base.gpu_index]
    targets = data.draw(st.lists(st.sampled_from(_links(base) + devices), min_size=1, max_size=3, unique=True))
    faults = [{"kind": data.draw(st.sampled_from(["fail", "degrade"])), "target": t} for t in targets]
    for f in faults:
        if f["kind"] == "degrade":
            f["factor"] = 0.5
    patched = Topology._check_reachable, Topology._check_links
    Topology._check_reachable = Topology._check_links = lambda self: None  # type: ignore[method-assign]
    try:  # every fault applied, the pair metrics computed without the checks
        hurt = apply_faults(base, faults)
    except TopologyError:  # a later fault names a link or device an earlier one removed
        return
    finally:
        Topology._check_reachable, Topology._check_links = patched  # type: ignore[method-assign]
    verdict = None
    try:
        hurt._check_links()
        hurt._check_reachable()
    except PartitionError as e:
        verdict = e
    bw, lat = np.asarray(hurt.bottleneck_bytes_per_s), np.asarray(hurt.latency_s)
    off = ~np.eye(hurt.n_gpus, dtype=bool)
    cut = (bw == 0) & off
    assert int(cut.sum()) == (0 if verdict is None else verdict.n_unreachable)
    assert np.all(np.isfinite(lat[~cut]))
    rng = np.random.default_rng(len(targets))
    for s, d in rng.integers(0, hurt.n_gpus, size=(12, 2)).tolist():
        if s == d or cut[s, d]:
            continue
        paths = hurt.routed_edge_paths(s, d, limit=1 << 20)
        caps = [min(hurt._cap[p]) for p in paths]
        assert max(caps) == pytest.approx(bw[s, d])
        assert min(hurt._lat[p].sum() for p in paths) == pytest.approx(lat[s, d])
        assert all(hurt.edge_list[p[0]][0] == hurt.gpu_names[s] and hurt.edge_list[p[-1]][1] == hurt.gpu_names[d]
                   for p in paths)
