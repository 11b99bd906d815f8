"""Request routers: pick the replica for an arriving request from a snapshot of replica state."""

from moesim.policies.router.base import ROUTERS, RequestRouter
from moesim.policies.router import least_outstanding, round_robin  # noqa: F401  (registration)

__all__ = ["ROUTERS", "RequestRouter"]
