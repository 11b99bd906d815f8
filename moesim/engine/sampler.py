"""Routing-sample indices addressed by pass number, so that stepping passes one at a time and
advancing them in a run draw exactly the same samples."""

from __future__ import annotations

import numpy as np

__all__ = ["PassSampler"]

BLOCK = 4096


class PassSampler:
    """Sample index of pass ``n`` = block ``n // BLOCK`` (drawn in order from ``rng``) at ``n % BLOCK``."""

    def __init__(self, rng: np.random.Generator, samples: int) -> None:
        self.rng = rng
        self.samples = samples
        self._blocks: list[np.ndarray] = []

    def indices(self, first: int, count: int) -> np.ndarray:
        """``[count]`` int64 sample indices of passes ``first .. first+count-1``."""
        last_block = (first + count - 1) // BLOCK
        while len(self._blocks) <= last_block:
            self._blocks.append(self.rng.integers(0, self.samples, size=BLOCK))
        b0 = first // BLOCK
        if b0 == last_block:
            o = first - b0 * BLOCK
            return self._blocks[b0][o:o + count]
        return np.concatenate(self._blocks[b0:last_block + 1])[first - b0 * BLOCK:first - b0 * BLOCK + count]
