"""Flow-level collectives and fabrics: closed forms, algorithms, protocols, skew, oversubscription,
byte accounting."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from moesim.config.topology import load_topology
from moesim.network import CollectiveCost, SimpleCollectives, Topology
from moesim.network.flow_collectives import FlowCollectives
from moesim.network.flows import FlowNetwork
from moesim.network.generators import fat_tree

B = 450e9  # NVLink per direction, H100 SXM
NIC = 50e9  # 400 Gb/s per direction
EFF = 0.8
MSG_S = 5e-6
NODE_LAT_S = 1e-6


@pytest.fixture(scope="module")
def node(node_topo: Topology) -> FlowCollectives:
    return FlowCollectives(node_topo, efficiency=EFF, per_message_latency_s=MSG_S)


@pytest.fixture(scope="module")
def rail(rail_topo: Topology) -> FlowCollectives:
    return FlowCollectives(rail_topo, efficiency=EFF, per_message_latency_s=MSG_S)


def test_flow_collectives_implement_the_protocol(node: FlowCollectives) -> None:
    assert isinstance(node, CollectiveCost)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ring_all_reduce_matches_closed_form(node: FlowCollectives, n: int) -> None:
    s = 1e9
    expected = 2 * (n - 1) / n * s / (B * EFF) + 2 * (n - 1) * (NODE_LAT_S + MSG_S)
    assert node.all_reduce_s(tuple(range(n)), s) == pytest.approx(expected, rel=1e-9)


def test_all_gather_and_reduce_scatter_agree_with_the_simple_model(node: FlowCollectives,
                                                                    node_topo: Topology) -> None:
    simple = SimpleCollectives(node_topo, efficiency=EFF, per_message_latency_s=MSG_S)
    g, s = tuple(range(8)), np.array([0.0, 3e8, 1e9])
    assert node.all_gather_s(g, s) == pytest.approx(simple.all_gather_s(g, s), rel=1e-9)
    assert node.reduce_scatter_s(g, s) == pytest.approx(simple.reduce_scatter_s(g, s), rel=1e-9)
    assert node.p2p_s(0, 5, s) == pytest.approx(simple.p2p_s(0, 5, s), rel=1e-9)


def test_auto_all_reduce_picks_the_same_algorithm_as_the_simple_model(node_topo: Topology) -> None:
    kw = {"efficiency": EFF, "per_message_latency_s": MSG_S, "all_reduce_algorithm": "auto"}
    sizes = np.array([1e3, 1e5, 1e7, 1e9])
    flow, simple = FlowCollectives(node_topo, **kw), SimpleCollectives(node_topo, **kw)
    assert flow.all_reduce_s(tuple(range(8)), sizes) == pytest.approx(
        simple.all_reduce_s(tuple(range(8)), sizes), rel=1e-9)


def test_n_to_1_incast_over_nvlink_shares_the_receivers_port(node_topo: Topology) -> None:
    net = FlowNetwork(node_topo)
    pb = np.zeros((8, 8))
    pb[1:, 0] = 1e8  # 7 senders to GPU 0
    assert net.transfer_time_s(pb, tuple(range(8))) == pytest.approx(7 * 1e8 / B + NODE_LAT_S)


def test_uniform_all_to_all_on_the_rail_fabric_is_bounded_by_the_nic(rail: FlowCollectives) -> None:
    # each GPU sends b to each of the 24 GPUs on other hosts; whatever the rail, those bytes leave
    # the host through NICs that carry exactly 24 b each (cross-rail traffic is split between the
    # source and destination rails), and NVLink is 9x faster
    b, g = 1e7, tuple(range(32))
    t = rail.all_to_all_s(g, np.full((32, 32), b))
    assert t == pytest.approx(24 * b / (NIC * EFF) + 4e-6 + MSG_S, rel=1e-9)


def _hot(n: int, b: float) -> tuple[np.ndarray, np.ndarray]:
    uniform = np.full((n, n), b)
    hot = uniform.copy()
    hot[:, 0] *= 4  # rank 0 receives 4x the mean of the others
    return uniform, hot


def test_skewed_all_to_all_takes_4x_on_nvlink(node: FlowCollectives) -> None:
    uniform, hot = _hot(8, 1e7)
    g, lat = tuple(range(8)), NODE_LAT_S + MSG_S
    assert node.all_to_all_s(g, uniform) == pytest.approx(7e7 / (B * EFF) + lat, rel=1e-9)
    ratio = (node.all_to_all_s(g, hot) - lat) / (node.all_to_all_s(g, uniform) - lat)
    assert ratio == pytest.approx(4.0, rel=1e-9)


def test_skewed_all_to_all_across_hosts_takes_the_bottleneck_ratio() -> None:
    # one GPU per host on a non-blocking fabric: the hot rank's NIC carries 4x, every flow into it
    # keeps a 1/(n-1) share of that NIC throughout, so the time grows exactly 4x
    n = 16
    net = FlowNetwork(fat_tree(n, gpus_per_node=1, leaf_radix=8), efficiency=EFF)
    uniform, hot = _hot(n, 1e7)
    pu, su = net.transfer(uniform, tuple(range(n)))
    ph, sh = net.transfer(hot, tuple(range(n)))
    lat = 4 * 0.75e-6  # GPU-leaf-spine-leaf-GPU
    assert pu.time_s(su) == pytest.approx((n - 1) * 1e7 / (NIC * EFF) + lat, rel=1e-9)
    assert (ph.time_s(sh) - lat) / (pu.time_s(su) - lat) == pytest.approx(4.0, rel=1e-9)


def test_skewed_all_to_all_on_the_rail_fabric_meets_its_bottleneck_bound(rail_topo: Topology) -> None:
    net = FlowNetwork(rail_topo, efficiency=EFF)
    uniform, hot = _hot(32, 1e7)
    (pu, su), (ph, sh) = net.transfer(uniform, tuple(range(32))), net.transfer(hot, tuple(range(32)))
    # max-min reaches the lower bound max(link bytes / capacity) for both, so the times (minus
    # latency) are in the ratio of the bottleneck links' loads
    assert pu.finish_s.max() == pytest.approx(pu.lower_bound_s, rel=1e-9)
    assert ph.finish_s.max() == pytest.approx(ph.lower_bound_s, rel=1e-9)
    assert ph.finish_s.max() * sh / (pu.finish_s.max() * su) > 2.0


@pytest.mark.parametrize("oversubscription, radix, slowdown", [(1.0, 8, 1.0), (2.0, 6, 2.0)])
def test_oversubscribed_leaf_spine_halves_cross_spine_throughput(oversubscription: float, radix: int,
                                                                 slowdown: float) -> None:
    # two tiers, 8 hosts x 2 GPUs, 4 hosts per scalable unit: GPU i of host h sends to GPU i of
    # host h + 4 (same rail, other unit), so every flow crosses the spine; 4 GPUs share each
    # leaf's 4 (1:1) or 2 (2:1) uplinks
    tree = fat_tree(16, gpus_per_node=2, leaf_radix=radix, oversubscription=oversubscription, pxn=False)
    assert (tree.tiers, tree.leaf_down, tree.oversubscription) == (2, 4, oversubscription)
    pb = np.zeros((16, 16))
    pb[np.arange(8), np.arange(8) + 8] = 1e9
    prof, scale = FlowNetwork(tree).transfer(pb, tuple(range(16)))
    assert prof.finish_s.max() * scale == pytest.approx(slowdown * 1e9 / NIC, rel=1e-9)
    # the leaf trunks give the same answer as the per-edge ECMP split on the graph
    on_graph = FlowNetwork(tree.to_topology()).transfer_time_s(pb, tuple(range(16)))
    assert on_graph == pytest.approx(prof.time_s(scale), rel=1e-9)


def test_three_tier_tree_for_16k_gpus_builds_without_pair_matrices() -> None:
    tree = fat_tree(16384, build_graph=False)
    assert (tree.tiers, tree.n_leaves, tree.n_pods, tree.n_nodes) == (3, 512, 16, 2048)
    net = FlowNetwork(tree)
    # NVLink; same leaf; PXN then same leaf; other leaf in the pod; other pod; PXN then other pod
    dst = np.array([1, 8, 9, 256, 1024, 8193])
    routes = net.routes(np.zeros_like(dst), dst)
    assert routes.latency_s == pytest.approx([1e-6, 1.5e-6, 2.5e-6, 3e-6, 4.5e-6, 5.5e-6])
    assert list((routes.incidence.links < net.n_links).sum(axis=0)) == [2, 2, 4, 4, 6, 8]


def test_vectorised_over_leading_dims_and_cached(node: FlowCollectives) -> None:
    g = tuple(range(8))
    pb = np.random.default_rng(0).uniform(0, 1e6, size=(2, 3, 8, 8))
    out = node.all_to_all_s(g, pb)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3)
    assert out[1, 2] == pytest.approx(node.all_to_all_s(g, pb[1, 2]))
    hits = node.network.cache_hits
    assert node.all_to_all_s(g, 2 * pb[1, 2]) > out[1, 2]  # same shape, twice the bytes: a cache hit
    assert node.network.cache_hits == hits + 1
    assert node.all_reduce_s(g, np.ones((4, 5)) * 1e6).shape == (4, 5)
    assert node.all_to_all_s((3,), np.ones((5, 1, 1))).shape == (5,)
    assert node.all_reduce_s((3,), 1e9) == 0.0 and node.p2p_s(2, 2, 1e9) == 0.0


def test_cross_rail_transfer_takes_the_pxn_proxy_and_one_nic(rail_topo: Topology) -> None:
    # the rail fabric has no spine: PXN crosses NVLink to the source host's GPU on the destination's
    # rail, then leaves through that GPU's NIC (topology routing policy); one path, so ECMP split
    # and hash agree
    split = FlowCollectives(rail_topo, efficiency=1.0, per_message_latency_s=0.0)
    hashed = FlowCollectives(rail_topo, efficiency=1.0, per_message_latency_s=0.0, ecmp="hash")
    assert split.p2p_s(0, 9, 1e9) == pytest.approx(1e9 / NIC + 4e-6)
    assert hashed.p2p_s(0, 9, 1e9) == pytest.approx(1e9 / NIC + 4e-6)


def test_bad_arguments_are_rejected(node: FlowCollectives) -> None:
    with pytest.raises(ValueError, match="shape"):
        node.all_to_all_s(tuple(range(4)), np.ones((8, 8)))
    with pytest.raises(ValueError, match="not in topology"):
        node.all_reduce_s((0, 99), 1e6)
    with pytest.raises(ValueError, match="more than once"):
        node.all_reduce_s((0, 0), 1e6)
    with pytest.raises(ValueError, match="efficiency"):
        FlowCollectives(node.topology, efficiency=0.0)


# --------------------------------------------------------------------------- byte accounting
def _net_inflow(edge_bytes: dict[tuple[str, str], float]) -> dict[str, float]:
    flow: dict[str, float] = defaultdict(float)
    for (u, v), b in edge_bytes.items():
        flow[u] -= b
        flow[v] += b
    return flow


_NETS = {"rail": (FlowNetwork(Topology.from_spec(load_topology("h100-4node-rail"))), (0, 1, 9, 10, 17, 26, 31, 8)),
         "tree": (FlowNetwork(fat_tree(512, leaf_radix=16)), (0, 1, 9, 70, 200, 333, 450, 511))}


@settings(max_examples=20, deadline=None)
@given(arrays(np.float64, (8, 8), elements=st.floats(0, 1e6)), st.sampled_from(sorted(_NETS)))
def test_link_bytes_are_conserved_at_every_vertex(pb: np.ndarray, fabric: str) -> None:
    # 8 GPUs spread over hosts, rails, leaves and (tree: 3 tiers, PXN) pods
    net, group = _NETS[fabric]
    net.reset_link_bytes()
    net.transfer(pb, group)
    inflow = _net_inflow(net.edge_bytes())
    sent, recv = pb.sum(axis=1) - np.diag(pb), pb.sum(axis=0) - np.diag(pb)
    expected = {f"gpu{g}": recv[i] - sent[i] for i, g in enumerate(group)}
    tol = 8 * pb.max() * 2.0**-20 + 1e-9  # a batch's bytes are kept to 2^-20 of its largest flow
    for v, b in inflow.items():
        assert b == pytest.approx(expected.get(v, 0.0), abs=tol)
    assert net.link_bytes().sum() == pytest.approx(sum(net.edge_bytes().values()))
    net.reset_link_bytes()
    assert not net.link_bytes().any()


# --------------------------------------------------------------------------- algorithms, protocols
@pytest.mark.parametrize("algorithm", ["ring", "tree", "nvls", "auto", "nccl"])
def test_all_reduce_algorithms_agree_with_the_simple_model_in_one_host(node_topo: Topology, algorithm: str) -> None:
    # inside one NVSwitch host the flow batches are port-bound, so every closed form holds exactly,
    # with and without the calibrated protocols (LL / Simple, launch costs, NVLS)
    g, s = tuple(range(8)), np.array([0.0, 4e3, 1e6, 3e8])
    for kw in ({"efficiency": EFF, "per_message_latency_s": MSG_S, "nvls": True}, {}):
        flow = (FlowCollectives(node_topo, **kw) if kw else FlowCollectives.calibrated(node_topo))
        simple = (SimpleCollectives(node_topo, **kw) if kw else SimpleCollectives.calibrated(node_topo))
        assert flow.all_reduce_s(g, s, algorithm) == pytest.approx(simple.all_reduce_s(g, s, algorithm), rel=1e-9)
        assert flow.all_gather_s(g, s) == pytest.approx(simple.all_gather_s(g, s), rel=1e-9)


def test_tree_all_reduce_has_2_log2_n_latency_terms(node: FlowCollectives) -> None:
    for n in (2, 4, 8):
        assert node.all_reduce_s(tuple(range(n)), 0.0, "tree") == pytest.approx(
            2 * np.log2(n) * (NODE_LAT_S + MSG_S), rel=1e-9)


def test_calibrated_all_to_all_and_p2p_agree_with_the_simple_model(node_topo: Topology) -> None:
    flow, simple = FlowCollectives.calibrated(node_topo), SimpleCollectives.calibrated(node_topo)
    g = tuple(range(8))
    for b in (1e3, 16384.0, 2e4, 1e8):  # LL carries at most 16 KiB per peer
        pb = np.full((8, 8), b)
        assert flow.all_to_all_s(g, pb) == pytest.approx(simple.all_to_all_s(g, pb), rel=1e-9)
    s = np.array([1e3, 1e5, 1e9])
    assert flow.p2p_s(0, 3, s) == pytest.approx(simple.p2p_s(0, 3, s), rel=1e-9)


def test_inter_node_efficiency_scales_only_links_outside_hosts() -> None:
    tree = fat_tree(16, leaf_radix=8, build_graph=False)
    coll = FlowCollectives(tree, efficiency=0.5, inter_node_efficiency=1.0, per_message_latency_s=0.0)
    assert coll.p2p_s(0, 1, 1e9) == pytest.approx(1e9 / (0.5 * B) + 1e-6)
    assert coll.p2p_s(0, 8, 1e9) == pytest.approx(1e9 / NIC + 2 * 0.75e-6)
    with pytest.raises(ValueError, match="shared network"):
        FlowCollectives(tree, network=coll.network, inter_node_efficiency=0.9)


def test_transfers_are_one_batch(node: FlowCollectives) -> None:
    # two KV-cache transfers out of GPU 0 share its NVLink port; a third elsewhere runs alongside
    t = node.transfers_s([0, 0, 4], [1, 2, 5], [1e9, 1e9, 1e9])
    assert t == pytest.approx(2e9 / (B * EFF) + NODE_LAT_S + MSG_S, rel=1e-6)
    assert node.transfers_s([3], [3], [1e9]) == 0.0


def test_new_algorithms_keep_leading_dims_in_the_flow_model(node: FlowCollectives) -> None:
    g = tuple(range(8))
    for algo in ("ring", "tree", "nvls", "auto", "nccl"):
        assert node.all_reduce_s(g, np.full((2, 3), 1e6), algo).shape == (2, 3)
        assert isinstance(node.all_reduce_s(g, 1e6, algo), float)
    pb = np.random.default_rng(2).uniform(0, 1e6, size=(2, 3, 8, 8))
    for algo in ("direct", "hierarchical", "low_latency"):
        out = node.all_to_all_s(g, pb, algo)
        assert out.shape == (2, 3) and out[0, 1] == pytest.approx(node.all_to_all_s(g, pb[0, 1], algo))
    assert node.all_to_all_s(g, pb, "hierarchical", node_bytes=np.ones((2, 3, 8, 1))).shape == (2, 3)
