"""The contract of a routing-load model: what the engine may rely on, whatever the kind.

Every model returns, for a pass of ``T`` tokens with top-``k`` routing, ``int64[L, E]``
counts whose rows sum to ``T * k`` with ``0 <= count <= T`` (as ``routing_load`` does), and has

- ``stationary``: True when every pass is an independent draw from one law, so the engine may
  pool ``sample_many`` draws per token count; False when passes depend on time;
- ``next_pass(T)``: the next pass's counts, advancing the model's time (any model);
- ``sample(T)`` / ``sample_many(T, n)``: independent draws, for stationary models only
  (a non-stationary model raises ``TypeError``: pooling its draws would freeze its time).

Models: ``routing_load.RoutingLoadGenerator`` (the stationary kinds), ``dynamic_routing.DynamicRouting``
(``drift``, ``correlated``, ``fitted``) and ``trace_replay.TraceReplay`` (``trace``).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["RoutingModel"]


class RoutingModel(Protocol):
    """What the engine may rely on for any routing-load model (module doc)."""

    n_layers: int
    n_experts: int
    top_k: int

    @property
    def stationary(self) -> bool: ...

    def next_pass(self, tokens: int) -> np.ndarray: ...

    def sample(self, tokens: int) -> np.ndarray: ...

    def sample_many(self, tokens: int, n: int) -> np.ndarray: ...


def _check_tokens(tokens: int) -> int:
    t = int(tokens)
    if t < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    return t
