"""Topologies several network test modules share (built once per session)."""

from __future__ import annotations

import pytest

from moesim.config.topology import load_topology
from moesim.network import Topology


@pytest.fixture(scope="session")
def node_topo() -> Topology:
    """One 8x H100 host (NVSwitch)."""
    return Topology.from_spec(load_topology("h100-8gpu-node"))


@pytest.fixture(scope="session")
def rail_topo() -> Topology:
    """Four 8x H100 hosts on a rail-optimised fabric (PXN)."""
    return Topology.from_spec(load_topology("h100-4node-rail"))
