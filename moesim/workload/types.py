"""Value types of the workload layer.

A :class:`RequestSet` is a whole inference workload as three parallel numpy arrays sorted by
arrival time: the engine walks it in order, metrics and reports read it as columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RequestSet"]


def _frozen_array(values: object, dtype: type, name: str) -> np.ndarray:
    arr = np.array(values, dtype=dtype, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"RequestSet.{name} must be 1-D, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class RequestSet:
    """Inference requests sorted by arrival; request ``i`` is row ``i`` of every array.

    Attributes:
        arrival_s: ``float64[N]`` arrival times in seconds from the start of the run; finite,
            non-negative and non-decreasing.
        prompt_tokens: ``int64[N]`` prompt (context) length in tokens, each >= 1.
        output_tokens: ``int64[N]`` tokens to generate, each >= 1.
        source: one line saying where the requests came from (generator and parameters, or
            trace file and window).
        notes: anything the producer changed on the way in (for instance trace rows with zero
            generated tokens replayed as one token), so that nothing is lost silently.

    The arrays are copied and made read-only on construction; equality is identity (compare
    the arrays yourself when you need to).
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str = ""
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        arrival = _frozen_array(self.arrival_s, np.float64, "arrival_s")
        prompt = _frozen_array(self.prompt_tokens, np.int64, "prompt_tokens")
        output = _frozen_array(self.output_tokens, np.int64, "output_tokens")
        n = arrival.shape[0]
        if prompt.shape[0] != n or output.shape[0] != n:
            raise ValueError(
                f"RequestSet arrays differ in length: arrival_s={n}, "
                f"prompt_tokens={prompt.shape[0]}, output_tokens={output.shape[0]}")
        if n:
            if not np.isfinite(arrival).all() or arrival[0] < 0:
                raise ValueError("RequestSet.arrival_s must be finite and >= 0")
            bad = np.flatnonzero(np.diff(arrival) < 0)
            if bad.size:
                i = int(bad[0])
                raise ValueError(
                    f"RequestSet.arrival_s must be sorted: row {i + 1} ({arrival[i + 1]!r} s) "
                    f"arrives before row {i} ({arrival[i]!r} s)")
            for name, arr in (("prompt_tokens", prompt), ("output_tokens", output)):
                low = np.flatnonzero(arr < 1)
                if low.size:
                    raise ValueError(f"RequestSet.{name} must be >= 1: row {int(low[0])} is {int(arr[low[0]])}")
        object.__setattr__(self, "arrival_s", arrival)
        object.__setattr__(self, "prompt_tokens", prompt)
        object.__setattr__(self, "output_tokens", output)
        object.__setattr__(self, "notes", tuple(self.notes))

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    def __repr__(self) -> str:
        return f"RequestSet(n={len(self)}, span_s={self.span_s:.3f}, source={self.source!r})"

    @property
    def span_s(self) -> float:
        """Seconds from time 0 to the last arrival (0.0 when empty)."""
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def head(self, n: int) -> RequestSet:
        """The first ``n`` requests (all of them when ``n >= len(self)``)."""
        return RequestSet(self.arrival_s[:n], self.prompt_tokens[:n], self.output_tokens[:n],
                          source=self.source, notes=self.notes)
