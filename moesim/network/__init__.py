"""Cluster network: topology graph (the only networkx user) and collective costs."""

from moesim.network.collectives import CollectiveCost, SimpleCollectives
from moesim.network.topology import Topology

__all__ = ["CollectiveCost", "SimpleCollectives", "Topology"]
