"""Closed-form collective costs agree with the textbook formulas on known topologies."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.config.topology import load_topology
from moesim.network import CollectiveCost, SimpleCollectives, Topology

B = 450e9  # NVLink per direction, H100 SXM
NIC = 50e9  # 400 Gb/s per direction
EFF = 0.8
MSG_S = 5e-6
NODE_LAT_S = 1e-6  # one-way GPU-to-GPU latency in the h100-8gpu-node file


@pytest.fixture(scope="module")
def node() -> SimpleCollectives:
    return SimpleCollectives(Topology.from_spec(load_topology("h100-8gpu-node")), efficiency=EFF,
                             per_message_latency_s=MSG_S)


@pytest.fixture(scope="module")
def rail() -> SimpleCollectives:
    return SimpleCollectives(Topology.from_spec(load_topology("h100-4node-rail")), efficiency=EFF,
                             per_message_latency_s=MSG_S)


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


def test_all_to_all_across_hosts_uses_each_ranks_slowest_link(rail: SimpleCollectives) -> None:
    g = (0, 1, 8, 9)
    pb = np.full((4, 4), 1e6)
    expected = 3e6 / (NIC * EFF) + rail.topology.latency_s[np.ix_(g, g)].max() + MSG_S
    assert rail.all_to_all_s(g, pb) == pytest.approx(expected)


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
