"""Flows in the DES: they start and end as events and share links max-min fairly while in flight."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from moesim.config.topology import TopologySpec
from moesim.engine.live_flows import LiveFlows
from moesim.network import Topology
from moesim.network.flows import FlowNetwork

C = 50e9       # bytes/s on every link
LAT = 1e-6     # per hop
GB = 1e9

# four GPUs on one switch: each GPU has one up and one down link
STAR = {
    "name": "star4", "gpu": "h100-sxm",
    "devices": [{"name": f"gpu{i}", "kind": "gpu", "node": i} for i in range(4)] + [{"name": "sw", "kind": "switch"}],
    "links": [{"src": f"gpu{i}", "dst": "sw", "bandwidth": "50GB/s", "latency": "1us"} for i in range(4)],
}


@pytest.fixture(scope="module")
def net() -> FlowNetwork:
    return FlowNetwork(Topology.from_spec(TopologySpec.model_validate(STAR)))


def _run(net: FlowNetwork, starts: list[tuple[float, list[int], list[int], list[float]]]) -> list[float]:
    """Start each transfer at its time; return each one's finish time."""
    env = simpy.Environment()
    live = LiveFlows(env, net, rtol=0.0)
    out: list[float] = [np.nan] * len(starts)

    def go(i: int, t: float, s: list[int], d: list[int], b: list[float]):  # noqa: ANN202
        yield env.timeout(t)
        rec = yield live.start(s, d, b)
        out[i] = rec.finish_s
    for i, args in enumerate(starts):
        env.process(go(i, *args))
    env.run()
    assert live.in_flight == 0
    return out


def test_one_flow_takes_bytes_over_capacity_plus_path_latency(net: FlowNetwork) -> None:
    (t,) = _run(net, [(0.0, [0], [1], [GB])])
    assert t == pytest.approx(GB / C + 2 * LAT, rel=1e-9)


def test_incast_shares_the_receiver_link_equally(net: FlowNetwork) -> None:
    ts = _run(net, [(0.0, [0, 1, 2], [3, 3, 3], [GB, GB, GB])])
    assert ts[0] == pytest.approx(3 * GB / C + 2 * LAT, rel=1e-9)


def test_a_flow_that_joins_later_slows_the_first_one_down(net: FlowNetwork) -> None:
    """A (2 GB, alone until 1 GB is through) then A and B (1 GB each) at half rate: both end at 3 GB / C."""
    a, b = _run(net, [(0.0, [0], [3], [2 * GB]), (GB / C, [1], [3], [GB])])
    assert a == pytest.approx(3 * GB / C + 2 * LAT, rel=1e-9)
    assert b == pytest.approx(3 * GB / C + 2 * LAT, rel=1e-9)


def test_the_survivor_speeds_up_when_the_other_flow_ends(net: FlowNetwork) -> None:
    """A 3 GB and B 1 GB into one receiver: B ends at 2 GB / C, A then runs alone: 4 GB / C."""
    a, b = _run(net, [(0.0, [0], [3], [3 * GB]), (0.0, [1], [3], [GB])])
    assert b == pytest.approx(2 * GB / C + 2 * LAT, rel=1e-9)
    assert a == pytest.approx(4 * GB / C + 2 * LAT, rel=1e-9)


def test_disjoint_transfers_do_not_interact(net: FlowNetwork) -> None:
    a, b = _run(net, [(0.0, [0], [1], [GB]), (0.0, [2], [3], [GB])])
    assert a == b == pytest.approx(GB / C + 2 * LAT, rel=1e-9)


def test_bytes_are_conserved_on_the_links(net: FlowNetwork) -> None:
    env = simpy.Environment()
    live = LiveFlows(env, net)
    rng = np.random.default_rng(3)
    s, d = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
    b = rng.uniform(0, GB, 30)
    live.start(s, d, b, kind="test")
    env.run()
    moving = s != d
    assert live.link_bytes.sum() == pytest.approx(2 * b[moving].sum(), rel=1e-12)  # up + down link each
    assert live.transfers[0].nbytes == pytest.approx(b[moving].sum())
    # no flow ever beats its links: the transfer lasts at least the busiest link's bytes / C
    assert live.transfers[0].finish_s >= live.link_bytes.max() / C


def test_empty_and_self_transfers_finish_at_once(net: FlowNetwork) -> None:
    env = simpy.Environment()
    live = LiveFlows(env, net)
    ev = live.start([1, 2], [1, 3], [GB, 0.0])
    env.run()
    assert ev.value.finish_s == 0.0 and live.solves == 0


def test_rejects_mismatched_or_negative_input(net: FlowNetwork) -> None:
    live = LiveFlows(simpy.Environment(), net)
    with pytest.raises(ValueError, match="equal-length"):
        live.start([0, 1], [2], [GB])
    with pytest.raises(ValueError, match=">= 0"):
        live.start([0], [2], [-1.0])
