"""Seeded, named random streams: one ``SeedSequence(seed)`` split into a child per component.

A component asks for its stream by name (``streams.get("arrivals")``); the child is derived from
a stable hash of the name, so adding a component never changes another component's draws.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["RngStreams"]


class RngStreams:
    """Named ``numpy.random.Generator`` streams derived from one seed; no global state."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._streams: dict[str, np.random.Generator] = {}

    def get(self, name: str) -> np.random.Generator:
        """The generator for ``name`` (created on first use, then the same object)."""
        gen = self._streams.get(name)
        if gen is None:
            key = zlib.crc32(name.encode("utf-8"))
            gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, key])))
            self._streams[name] = gen
        return gen
