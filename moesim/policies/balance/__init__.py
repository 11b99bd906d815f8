"""Runtime load balancing per forward pass: which GPU computes which tokens of each expert.

Kinds: ``none`` (plain EP / even split over replicas), ``capacity`` (capacity-factor dropping),
``llep`` (Least-Loaded EP: spill tokens and weights), ``replica_select`` (uniform, round-robin
or least-loaded choice among EPLB replicas).
"""

from moesim.policies.balance.base import BALANCERS, BalanceDecision, BalancePolicy
from moesim.policies.balance import capacity, llep, none, replica_select  # noqa: F401  (registration)

__all__ = ["BALANCERS", "BalanceDecision", "BalancePolicy"]
