"""Round-robin request routing: replicas in turn, ignoring their load."""

from __future__ import annotations

from typing import Sequence

from moesim.policies.router.base import ROUTERS

__all__ = ["RoundRobin"]


@ROUTERS.register("round_robin")
class RoundRobin:
    """Replica ``i mod n`` for the i-th request."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, outstanding: Sequence[int]) -> int:
        i = self._next % len(outstanding)
        self._next = i + 1
        return i
