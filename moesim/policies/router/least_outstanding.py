"""Least-outstanding-requests routing (join the shortest queue)."""

from __future__ import annotations

from typing import Sequence

from moesim.policies.router.base import ROUTERS

__all__ = ["LeastOutstanding"]


@ROUTERS.register("least_outstanding")
class LeastOutstanding:
    """The replica with the fewest admitted-but-unfinished requests; ties go to the lowest index."""

    def choose(self, outstanding: Sequence[int]) -> int:
        return min(range(len(outstanding)), key=outstanding.__getitem__)
