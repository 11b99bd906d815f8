"""The RequestRouter protocol and its registry."""

from __future__ import annotations

from typing import Protocol, Sequence

from moesim.policies.registry import Registry

__all__ = ["ROUTERS", "RequestRouter"]


class RequestRouter(Protocol):
    """Chooses a replica index for a request from per-replica outstanding request counts."""

    def choose(self, outstanding: Sequence[int]) -> int:
        """Index of the replica that gets the request."""
        ...


ROUTERS: Registry[RequestRouter] = Registry("router")
