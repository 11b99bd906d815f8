"""Closed-form collective costs agree with the textbook formulas on known topologies."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.network import CollectiveCost, SimpleCollectives, Topology
from moesim.network.collectives import Protocol, Rails, double_binary_tree, hierarchical_legs, nccl_calibration

B = 450e9  # NVLink per direction, H100 SXM
NIC = 50e9  # 400 Gb/s per direction
EFF = 0.8
MSG_S = 5e-6
NODE_LAT_S = 1e-6  # one-way GPU-to-GPU latency in the h100-8gpu-node file


@pytest.fixture(scope="module")
def node(node_topo: Topology) -> SimpleCollectives:
    return SimpleCollectives(node_topo, efficiency=EFF, per_message_latency_s=MSG_S)


@pytest.fixture(scope="module")
def rail(rail_topo: Topology) -> SimpleCollectives:
    return SimpleCollectives(rail_topo, efficiency=EFF, per_message_latency_s=MSG_S)


def test_simple_collectives_implements_the_protocol(node: SimpleCollectives) -> None:
    assert isinstance(node, CollectiveCost)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ring_all_reduce_matches_closed_form(node: SimpleCollectives, n: int) -> None:
    s = 1e9
    expected = 2 * (n - 1) / n * s / (B * EFF) + 2 * (n - 1) * (NODE_LAT_S + MSG_S)
    assert node.all_reduce_s(tuple(range(n)), s) == pytest.approx(expected)


def test_all_gather_and_reduce_scatter_are_half_an_all_reduce_of_the_same_bytes(node: SimpleCollectives) -> None:
    g, s = tuple(range(8)), 3e8
    expected = 7 / 8 * s / (B * EFF) + 7 * (NODE_LAT_S + MSG_S)
    assert node.all_gather_s(g, s) == pytest.approx(expected)
    assert node.reduce_scatter_s(g, s) == pytest.approx(expected)
    assert node.all_reduce_s(g, s) == pytest.approx(2 * expected)


def test_ring_spanning_hosts_is_limited_by_the_nic(rail: SimpleCollectives) -> None:
    g, s = tuple(range(16)), 1e9
    bw_term = rail.all_reduce_s(g, s) - rail.all_reduce_s(g, 0.0)
    assert bw_term == pytest.approx(2 * 15 / 16 * s / (NIC * EFF))


def test_all_to_all_with_one_rank_receiving_4x_takes_4x_the_bandwidth_time(node: SimpleCollectives) -> None:
    n, b = 8, 1e7
    g = tuple(range(n))
    uniform = np.full((n, n), b)
    hot = uniform.copy()
    hot[:, 0] *= 4  # every rank sends 4x to rank 0
    lat = NODE_LAT_S + MSG_S
    assert node.all_to_all_s(g, uniform) == pytest.approx((n - 1) * b / (B * EFF) + lat)
    assert node.all_to_all_s(g, hot) == pytest.approx(4 * (n - 1) * b / (B * EFF) + lat)
    ratio = (node.all_to_all_s(g, hot) - lat) / (node.all_to_all_s(g, uniform) - lat)
    assert ratio == pytest.approx(4.0)


def test_all_to_all_ignores_the_diagonal(node: SimpleCollectives) -> None:
    g = tuple(range(4))
    pb = np.full((4, 4), 1e6)
    big_diag = pb + np.diag([1e12] * 4)
    assert node.all_to_all_s(g, big_diag) == node.all_to_all_s(g, pb)


def test_all_to_all_across_hosts_moves_nvlink_and_nic_bytes_at_once(rail: SimpleCollectives) -> None:
    """Each rank's same-host bytes go over NVLink while its other-host bytes go through the NIC."""
    g = (0, 1, 8, 9)
    lat = rail.topology.latency_s[np.ix_(g, g)].max() + MSG_S
    pb = np.full((4, 4), 1e6)  # 1 MB to the host's other GPU, 2 MB to the other host
    assert rail.all_to_all_s(g, pb) == pytest.approx(2e6 / (NIC * EFF) + lat)
    heavy_local = pb * np.array([[1, 50, 1, 1], [50, 1, 1, 1], [1, 1, 1, 50], [1, 1, 50, 1]])
    assert rail.all_to_all_s(g, heavy_local) == pytest.approx(max(50e6 / (B * EFF), 2e6 / (NIC * EFF)) + lat)
    heavier_local = pb * np.array([[1, 900, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    assert rail.all_to_all_s(g, heavier_local) == pytest.approx(900e6 / (B * EFF) + lat)


def test_p2p_is_bytes_over_bottleneck_plus_latency(rail: SimpleCollectives) -> None:
    assert rail.p2p_s(0, 1, 1e9) == pytest.approx(1e9 / (B * EFF) + NODE_LAT_S + MSG_S)
    assert rail.p2p_s(0, 8, 1e9) == pytest.approx(1e9 / (NIC * EFF) + 3e-6 + MSG_S)
    assert rail.p2p_s(3, 3, 1e9) == 0.0


def test_group_of_one_costs_nothing(node: SimpleCollectives) -> None:
    assert node.all_reduce_s((3,), 1e9) == 0.0
    assert node.all_gather_s((3,), 1e9) == 0.0
    assert node.reduce_scatter_s((3,), 1e9) == 0.0
    assert node.all_to_all_s((3,), np.ones((1, 1))) == 0.0
    assert node.all_to_all_s((3,), np.ones((5, 1, 1))).shape == (5,)
    assert np.all(node.all_reduce_s((3,), np.ones((2, 3))) == 0.0)


def test_costs_are_vectorised_over_leading_dims(node: SimpleCollectives) -> None:
    g = tuple(range(8))
    sizes = np.array([[1e6, 2e6, 3e6], [4e6, 5e6, 6e6]])
    out = node.all_reduce_s(g, sizes)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3)
    assert out[1, 2] == pytest.approx(node.all_reduce_s(g, 6e6))
    assert node.p2p_s(0, 1, sizes).shape == (2, 3)
    pb = np.random.default_rng(0).uniform(0, 1e6, size=(4, 5, 8, 8))
    a2a = node.all_to_all_s(g, pb)
    assert a2a.shape == (4, 5)
    assert a2a[2, 3] == pytest.approx(node.all_to_all_s(g, pb[2, 3]))
    assert isinstance(node.all_reduce_s(g, 1e6), float)


def test_bad_arguments_are_rejected(node: SimpleCollectives) -> None:
    with pytest.raises(ValueError, match="shape"):
        node.all_to_all_s(tuple(range(4)), np.ones((8, 8)))
    with pytest.raises(ValueError, match="not in topology"):
        node.all_reduce_s((0, 99), 1e6)
    with pytest.raises(ValueError, match="more than once"):
        node.all_reduce_s((0, 0), 1e6)
    with pytest.raises(ValueError, match="efficiency"):
        SimpleCollectives(node.topology, efficiency=0.0)


# --------------------------------------------------------------------------- algorithms, protocols
def _tree_coef(n: int) -> float:
    """Largest number of tree neighbours of a rank over both trees, times half the buffer."""
    edges, _ = double_binary_tree(n)
    return float(np.bincount(edges.ravel(), minlength=n).max()) / 2


@pytest.mark.parametrize("n, coef", [(2, 1.0), (4, 1.5), (8, 2.0)])
def test_tree_all_reduce_closed_form(node: SimpleCollectives, n: int, coef: float) -> None:
    # double binary tree: 2 log2(n) step latencies (reduce up, broadcast down) and every rank
    # moves half the buffer per tree neighbour: 1, 1.5, 2 buffers at n = 2, 4, 8
    g, s = tuple(range(n)), 1e9
    assert _tree_coef(n) == coef
    lat = 2 * np.log2(n) * (NODE_LAT_S + MSG_S)
    assert node.all_reduce_s(g, 0.0, algorithm="tree") == pytest.approx(lat)
    assert node.all_reduce_s(g, s, algorithm="tree") == pytest.approx(lat + coef * s / (B * EFF))


@pytest.mark.parametrize("n", [3, 5, 6, 7, 16])
def test_double_binary_trees_are_complementary_and_shallow(n: int) -> None:
    edges, depth = double_binary_tree(n)
    assert edges.shape == (2 * (n - 1), 2) and depth == int(np.floor(np.log2(n)))
    a, b = edges[: n - 1], edges[n - 1:]
    for tree in (a, b):  # a spanning tree: every rank but the root has one parent
        assert sorted(tree[:, 0].tolist()) == sorted(set(range(n)) - ({0} if tree is a else {n - 1}))
    inner_a, inner_b = set(a[:, 1].tolist()), set(b[:, 1].tolist())
    assert len(inner_a & inner_b) <= 1  # a rank is inner in at most one tree (NCCL's property)


def test_nvls_all_reduce_moves_n_plus_1_over_n_buffers(node: SimpleCollectives) -> None:
    g, s = tuple(range(8)), 1e9
    assert node.all_reduce_s(g, s, algorithm="nvls") == pytest.approx(9 / 8 * s / (B * EFF) + 2 * (NODE_LAT_S + MSG_S))


def test_nvls_needs_one_host(rail: SimpleCollectives) -> None:
    with pytest.raises(ValueError, match="one NVSwitch host"):
        rail.all_reduce_s((0, 1, 8, 9), 1e6, algorithm="nvls")
    assert rail.all_reduce_s((0, 1, 2), 1e6, algorithm="nvls") > 0


def test_nccl_and_auto_pick_the_cheapest_allowed_algorithm(node_topo: Topology, rail: SimpleCollectives) -> None:
    g, s = tuple(range(8)), np.array([1e3, 1e6, 1e9])
    kw = {"efficiency": EFF, "per_message_latency_s": MSG_S}
    with_nvls = SimpleCollectives(node_topo, nvls=True, **kw)
    ring, nvls = with_nvls.all_reduce_s(g, s, "ring"), with_nvls.all_reduce_s(g, s, "nvls")
    assert with_nvls.all_reduce_s(g, s, "nccl") == pytest.approx(np.minimum(ring, nvls))
    without = SimpleCollectives(node_topo, **kw)
    assert without.all_reduce_s(g, s, "nccl") == pytest.approx(ring)  # no NVLS, no tree inside a host
    auto = without.all_reduce_s(g, s, "auto")
    assert np.all(auto <= np.minimum(ring, without.all_reduce_s(g, s, "tree")) + 1e-15)
    assert np.all(with_nvls.all_reduce_s(g, s, "auto") <= auto)
    cross = (0, 8, 16, 24)  # NCCL's tree is an inter-node algorithm: "nccl" may take it across hosts
    assert rail.all_reduce_s(cross, 1e3, "nccl") == pytest.approx(
        min(rail.all_reduce_s(cross, 1e3, "ring"), rail.all_reduce_s(cross, 1e3, "tree")))


def test_fastest_protocol_is_taken_per_size(node_topo: Topology) -> None:
    ll = Protocol("LL", launch_s=5e-6, a2a_launch_s=7e-6, bw_fraction=0.4, p2p_max_bytes=16384)
    simple = Protocol("Simple", launch_s=20e-6, a2a_launch_s=12e-6)
    coll = SimpleCollectives(node_topo, efficiency=EFF, per_message_latency_s=0.0, protocols=(ll, simple))
    g, n = tuple(range(8)), 8
    for s in (1e3, 1e5, 1e9):
        ring = [p.launch_s + 2 * (n - 1) * NODE_LAT_S + 2 * (n - 1) / n * s / (B * EFF * p.bw_fraction)
                for p in (ll, simple)]
        assert coll.all_reduce_s(g, s) == pytest.approx(min(ring))
    assert coll.all_reduce_s(g, 1e3) == pytest.approx(5e-6 + 14 * NODE_LAT_S + 1.75e3 / (B * EFF * 0.4))
    # all-to-all: LL carries at most 16 KiB per peer, whatever it would cost
    small, big = np.full((n, n), 16384.0), np.full((n, n), 16385.0)
    assert coll.all_to_all_s(g, small) == pytest.approx(7e-6 + NODE_LAT_S + 7 * 16384 / (B * EFF * 0.4))
    assert coll.all_to_all_s(g, big) == pytest.approx(12e-6 + NODE_LAT_S + 7 * 16385 / (B * EFF))
    with pytest.raises(ValueError, match="any size"):
        SimpleCollectives(node_topo, protocols=(ll,))


def test_injection_limit_caps_what_one_gpu_moves(node: SimpleCollectives) -> None:
    g = tuple(range(8))
    pb = np.full((8, 8), 1e7)
    capped = Protocol("kernel", a2a_launch_s=20e-6, injection_bytes_per_s=10e9)
    t = node.all_to_all_s(g, pb, protocol=capped)
    assert t == pytest.approx(20e-6 + NODE_LAT_S + MSG_S + 7e7 / 10e9)
    free = Protocol("kernel", a2a_launch_s=20e-6)
    assert node.all_to_all_s(g, pb, protocol=free) == pytest.approx(20e-6 + node.all_to_all_s(g, pb))


@pytest.mark.parametrize("group", [(0, 1), (0, 8), (0, 1, 8), (0, 1, 2, 8, 9), tuple(range(16))])
def test_direct_all_to_all_of_many_draws_equals_each_draw_alone(rail_topo: Topology,
                                                                group: tuple[int, ...]) -> None:
    """Many draws of a few ranks are reduced with the rank axes in front (``_direct_terms``): bit
    for bit what each draw gives on its own, with protocols, an injection limit and a kernel floor."""
    coll = SimpleCollectives.calibrated(rail_topo, gpu="h100-sxm")
    n = len(group)
    rng = np.random.default_rng(3)
    pb = rng.random((5, 7, n, n)) * 10.0 ** rng.integers(2, 9, (5, 7, n, n))
    pb[0, 0] = 0.0
    kernel = rng.random((5, 7)) * 1e-5
    for protocol, floor in ((None, None), (Protocol("kernel", a2a_launch_s=20e-6, injection_bytes_per_s=1e10), kernel)):
        got = coll.all_to_all_s(group, pb, protocol=protocol, kernel_s=floor)
        alone = [[coll.all_to_all_s(group, pb[i, j], protocol=protocol, kernel_s=None if floor is None else floor[i, j])
                  for j in range(7)] for i in range(5)]
        assert np.array_equal(got, np.array(alone))


def test_inter_node_efficiency_applies_to_pairs_on_different_hosts(rail_topo: Topology) -> None:
    coll = SimpleCollectives(rail_topo, efficiency=0.5, per_message_latency_s=0.0, inter_node_efficiency=1.0)
    assert coll.p2p_s(0, 1, 1e9) == pytest.approx(1e9 / (0.5 * B) + NODE_LAT_S)
    assert coll.p2p_s(0, 8, 1e9) == pytest.approx(1e9 / NIC + 3e-6)
    same = SimpleCollectives(rail_topo, efficiency=0.5, per_message_latency_s=0.0)
    assert same.inter_node_efficiency == 0.5


def test_hierarchical_all_to_all_sends_once_per_host_over_rdma(rail: SimpleCollectives) -> None:
    # GPU 0 sends one 1 MB token to three GPUs of host 1: directly that is 3 MB through its NIC;
    # hierarchically 1 MB over RDMA to GPU 8 (host 1, local rank 0), then NVLink 8 -> 9, 10, 11
    g = tuple(range(16))
    pb = np.zeros((16, 16))
    pb[0, [9, 10, 11]] = 1e6
    node_bytes = np.zeros((16, 2))
    node_bytes[0, 1] = 1e6
    direct = rail.all_to_all_s(g, pb)
    hier = rail.all_to_all_s(g, pb, "hierarchical", node_bytes=node_bytes)
    rdma_lat, nvl_lat = 3e-6, NODE_LAT_S
    assert direct == pytest.approx(3e6 / (NIC * EFF) + rail.topology.latency_s[0, 9] + MSG_S)
    assert hier == pytest.approx(1e6 / (NIC * EFF) + rdma_lat + nvl_lat + 2 * MSG_S)
    # without de-duplicated host bytes the pair bytes are summed (3 MB over RDMA, once)
    undeduped = rail.all_to_all_s(g, pb, "hierarchical")
    assert undeduped == pytest.approx(3e6 / (NIC * EFF) + rdma_lat + nvl_lat + 2 * MSG_S)
    # combine mirrors dispatch: NVLink to the rail GPU of the sending host, then RDMA
    back = rail.all_to_all_s(g, pb.T, "hierarchical", node_bytes=node_bytes, forward_at="source")
    assert back == pytest.approx(hier)


def test_hierarchical_legs_are_rail_aligned(rail_topo: Topology) -> None:
    rails = Rails(rail_topo.node_of)
    g = (0, 3, 9, 12)  # hosts 0, 0, 1, 1; local ranks 0, 3, 1, 4
    pb = np.zeros((4, 4))
    pb[0, 2] = 5.0  # GPU 0 -> GPU 9: RDMA 0 -> 8 (host 1, rank 0), NVLink 8 -> 9
    pb[1, 3] = 7.0  # GPU 3 -> GPU 12: RDMA 3 -> 11, NVLink 11 -> 12
    pb[0, 1] = 2.0  # same host: NVLink 0 -> 3
    legs = hierarchical_legs(rails, g, pb)
    assert legs.group == (0, 3, 9, 12, 8, 11)
    pos = {v: k for k, v in enumerate(legs.group)}
    moved = {(legs.group[i], legs.group[j]): legs.bytes[i, j] for i, j in zip(*np.nonzero(legs.bytes))}
    assert moved == {(0, 8): 5.0, (8, 9): 5.0, (3, 11): 7.0, (11, 12): 7.0, (0, 3): 2.0}
    assert legs.rdma[pos[0], pos[8]] and legs.forward[pos[8], pos[9]] and not legs.forward[pos[0], pos[3]]
    src = hierarchical_legs(rails, g, pb, forward_at="source")  # NVLink 0 -> 1 first, then RDMA 1 -> 9
    moved = {(src.group[i], src.group[j]): src.bytes[i, j] for i, j in zip(*np.nonzero(src.bytes))}
    assert moved == {(0, 1): 5.0, (1, 9): 5.0, (3, 4): 7.0, (4, 12): 7.0, (0, 3): 2.0}


def test_new_algorithms_keep_leading_dims(node: SimpleCollectives, rail: SimpleCollectives) -> None:
    g = tuple(range(8))
    sizes = np.full((2, 3), 1e6)
    for algo in ("ring", "tree", "nvls", "auto", "nccl"):
        out = node.all_reduce_s(g, sizes, algorithm=algo)
        assert out.shape == (2, 3) and isinstance(node.all_reduce_s(g, 1e6, algorithm=algo), float)
    pb = np.random.default_rng(1).uniform(0, 1e6, size=(2, 3, 16, 16))
    for algo in ("direct", "hierarchical", "low_latency"):
        out = rail.all_to_all_s(tuple(range(16)), pb, algo)
        assert out.shape == (2, 3)
        assert out[1, 2] == pytest.approx(rail.all_to_all_s(tuple(range(16)), pb[1, 2], algo))
    nb = np.ones((2, 3, 16, 2)) * 1e5
    assert rail.all_to_all_s(tuple(range(16)), pb, "hierarchical", node_bytes=nb).shape == (2, 3)
    with pytest.raises(ValueError, match="node_bytes must have shape"):
        rail.all_to_all_s(tuple(range(16)), pb, "hierarchical", node_bytes=np.ones((16, 2)))
    with pytest.raises(ValueError, match="algorithm"):
        rail.all_to_all_s(tuple(range(16)), pb, "bogus")


def test_transfers_share_their_gpus_ports(rail: SimpleCollectives) -> None:
    # two KV-cache transfers out of GPU 0 (one over NVLink, one over its NIC) add on its port
    t = rail.transfers_s([0, 0, 5], [1, 8, 5], [1e9, 1e8, 1e12])
    assert t == pytest.approx(1e9 / (B * EFF) + 1e8 / (NIC * EFF) + 3e-6 + MSG_S)
    assert rail.transfers_s([0], [0], [1e9]) == 0.0


def test_calibrated_collectives_use_the_gpu_table(node_topo: Topology) -> None:
    coll = SimpleCollectives.calibrated(node_topo)
    cal = nccl_calibration("h100-sxm")
    assert coll.efficiency == cal.efficiency and coll.protocols == cal.protocols and coll.nvls
    assert coll.per_message_latency_s == 0.0
    with pytest.raises(ValueError, match="known"):
        nccl_calibration("tpu-v5")
