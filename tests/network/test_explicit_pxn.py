"""PXN on an explicit (devices / links) topology: two hosts, two rails, no spine."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moesim.config.topology import TopologySpec
from moesim.network import Topology
from moesim.network.flows import FlowNetwork
from moesim.network.topology import PartitionError


def _spec(**extra: object) -> dict:
    dev: list[dict] = [{"name": f"rail{r}", "kind": "switch"} for r in range(2)]
    links: list[dict] = []
    for h in range(2):
        dev.append({"name": f"nvswitch{h}", "kind": "switch", "node": h})
        for g in range(2):
            dev += [{"name": f"h{h}g{g}", "kind": "gpu", "node": h, "rail": g},
                    {"name": f"h{h}nic{g}", "kind": "nic", "node": h, "rail": g}]
            links += [{"src": f"h{h}g{g}", "dst": f"nvswitch{h}", "bandwidth": "450GB/s", "latency": "1us"},
                      {"src": f"h{h}g{g}", "dst": f"h{h}nic{g}", "bandwidth": "64GB/s", "latency": "1us"},
                      {"src": f"h{h}nic{g}", "dst": f"rail{g}", "bandwidth": "50GB/s", "latency": "1us"}]
    return {"name": "two-rails", "gpu": "h100-sxm", "devices": dev, "links": links, **extra}


def test_without_pxn_cross_rail_pairs_are_a_partition() -> None:
    with pytest.raises(PartitionError, match="cut off"):
        Topology.from_spec(TopologySpec.model_validate(_spec()))


def test_pxn_forwards_over_nvlink_to_the_destination_rail() -> None:
    topo = Topology.from_spec(TopologySpec.model_validate(_spec(pxn=True)))
    (path,) = topo.routed_edge_paths(0, 3)          # h0g0 -> h1g1: rails 0 -> 1
    hops = [topo.edge_list[e] for e in path]
    assert hops[:2] == [("h0g0", "nvswitch0"), ("nvswitch0", "h0g1")]     # NVLink to the rail-1 GPU
    assert ("h0nic1", "rail1") in hops and hops[-1] == ("h1nic1", "h1g1")
    assert topo.bottleneck_bytes_per_s[0, 3] == 50e9
    net = FlowNetwork(topo)
    assert net.transfer_time_s([[0, 0, 0, 1e9], [0] * 4, [0] * 4, [0] * 4], (0, 1, 2, 3)) == pytest.approx(
        1e9 / 50e9 + 6e-6, rel=1e-9)


def test_pxn_needs_rails_and_belongs_to_the_explicit_form() -> None:
    spec = _spec(pxn=True)
    for d in spec["devices"]:
        d.pop("rail", None)
    with pytest.raises(ValidationError, match="no GPU has a rail"):
        TopologySpec.model_validate(spec)
    with pytest.raises(ValidationError, match="fabric.pxn"):
        TopologySpec.model_validate({"name": "p", "gpu": "h100-sxm", "nodes": 2, "pxn": True,
                                     "intra_node": {"kind": "nvswitch", "bandwidth": "450GB/s"}})
