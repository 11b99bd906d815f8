"""Expert placement policies: which GPU slot holds each (layer, expert), with replicas.

Kinds: ``contiguous``, ``round_robin``, ``eplb`` (DeepSeek EPLB), ``ilp`` (MoETuner-style
two-stage ILP, PuLP + CBC). All return the one :class:`Placement` type.
"""

from moesim.policies.placement.base import (
    PLACEMENTS, Placement, PlacementPolicy, PlacementReport, SolveRecord)
from moesim.policies.placement import contiguous, eplb, ilp, round_robin  # noqa: F401  (registration)

__all__ = ["PLACEMENTS", "Placement", "PlacementPolicy", "PlacementReport", "SolveRecord"]
