"""``TraceReplay`` (kind ``trace``): a recorded ``RoutingTrace`` replayed pass by pass.

With per-token ids, pass ``i`` takes the next ``T`` tokens of the recorded token stream (exact,
k distinct); counts-only traces give one recorded step per pass, exact when ``T`` equals the
step's tokens and otherwise redrawn for ``T`` tokens from the step's inclusion
``counts / step_tokens``. At the end it wraps around (``cycle``) or raises ``TraceExhausted``.
"""

from __future__ import annotations

import numpy as np

from moesim.core.errors import MoesimError
from moesim.workload.routing_load import counts_from_inclusion
from moesim.workload.routing_model import _check_tokens
from moesim.workload.routing_trace import RoutingTrace

__all__ = ["TraceExhausted", "TraceReplay"]


class TraceExhausted(MoesimError):
    """A routing-trace replay without ``cycle`` was asked for more passes than the trace holds."""


class TraceReplay:
    """Replays a ``RoutingTrace`` pass by pass (module doc); never stationary.

    Args:
        trace: the recording; its layers, experts and ``top_k`` are the model's.
        rng: redraws counts-only steps whose size differs from the pass.
        cycle: wrap around at the end (else ``TraceExhausted``).
    """

    stationary = False

    def __init__(self, trace: RoutingTrace, *, rng: np.random.Generator, cycle: bool = True) -> None:
        self.trace = trace
        self.n_layers, self.n_experts, self.top_k = trace.n_layers, trace.n_experts, trace.top_k
        self.cycle = bool(cycle)
        self._rng = rng
        self.position = 0
        """Next token (token-level traces) or next step (counts-only traces) to replay."""
        self.passes = 0
        self.last_token_experts: np.ndarray | None = None
        """``int[T, L, k]`` ids of the last pass's tokens (token-level traces), for exact source splits."""

    def __repr__(self) -> str:
        return f"TraceReplay({self.trace!r}, cycle={self.cycle}, position={self.position})"

    @property
    def exhausted(self) -> bool:
        """True when a non-cycling replay has nothing left."""
        size = self.trace.n_tokens if self.trace.token_experts is not None else self.trace.n_steps
        return not self.cycle and self.position >= size

    def reset(self) -> None:
        """Back to the start of the trace."""
        self.position, self.passes, self.last_token_experts = 0, 0, None

    def next_pass(self, tokens: int) -> np.ndarray:
        """The next pass's ``int64[L, E]`` counts (module doc)."""
        t = _check_tokens(tokens)
        counts = self._from_tokens(t) if self.trace.token_experts is not None else self._from_steps(t)
        self.passes += 1
        return counts

    def sample(self, tokens: int) -> np.ndarray:
        raise TypeError(f"{self!r} replays a recording: draw passes with next_pass(tokens), not sample")

    def sample_many(self, tokens: int, n: int) -> np.ndarray:
        raise TypeError(f"{self!r} replays a recording: draw passes with next_pass(tokens), not sample_many")

    def _from_tokens(self, t: int) -> np.ndarray:
        ids = self.trace.token_experts
        assert ids is not None
        n = ids.shape[0]
        if not self.cycle and self.position + t > n:
            raise TraceExhausted(f"routing trace ends after {n} tokens; a pass of {t} tokens at token "
                                 f"{self.position} runs past it (set routing.trace_cycle: true to wrap around)")
        idx = (self.position + np.arange(t)) % n
        self.position = (self.position + t) % n if self.cycle else self.position + t
        chunk = ids[idx]
        self.last_token_experts = chunk
        e, n_layers = self.n_experts, self.n_layers
        cell = (np.arange(n_layers)[None, :, None] * e + chunk).ravel()
        return np.bincount(cell, minlength=n_layers * e).reshape(n_layers, e).astype(np.int64)

    def _from_steps(self, t: int) -> np.ndarray:
        tr = self.trace
        if self.position >= tr.n_steps:
            if not self.cycle:
                raise TraceExhausted(f"routing trace has {tr.n_steps} steps, all replayed "
                                     f"(set routing.trace_cycle: true to wrap around)")
            self.position = 0
        step = self.position
        self.position += 1
        if self.cycle and self.position >= tr.n_steps:
            self.position = 0
        size = int(tr.step_tokens[step])
        if t == size:
            return tr.counts[step].copy()
        if t == 0:
            return np.zeros((self.n_layers, self.n_experts), dtype=np.int64)
        return counts_from_inclusion(tr.counts[step] / size, t, self.top_k, self._rng)
