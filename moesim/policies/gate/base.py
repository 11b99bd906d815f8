"""The gate-policy protocol: how a training-time routing rule shapes expert load step by step.

A gate policy is a pure object. Each step it receives the router's *natural* preferences
``logits [L, E]`` (log slot shares the router would produce with no balancing at all; they
evolve over training, see ``affinity.py``) and its own state, and returns

* a :class:`GateRouting`: the slot shares ``share [L, E]`` (rows sum to 1) the step's routing
  realises on average, how dispersed single micro-batches are around them, whether counts are
  exactly equal (expert choice), and what the rule costs (router overhead, extra all-reduce);
* its next state (learned corrections: aux-loss logit shifts, expert biases, dual prices).

After the step the engine reports the global-batch load it observed (``observe``), which is what
the balancing rules react to. Nothing here touches the clock or draws counts: the engine turns
``share`` into per-micro-batch counts with the workload's count sampler.

Units. Logits are natural-log odds of selection. Rules that add a bias to router *scores*
(loss-free bias, BIP prices) convert with ``score_scale``: a bias ``b`` shifts logits by
``b / score_scale``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from moesim.policies.registry import Registry

__all__ = ["GATES", "GateOverhead", "GatePolicy", "GateRouting", "GateState", "capacity_clip", "max_violation",
           "softmax_rows"]


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[..., E]`` (rows sum to 1)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def max_violation(load: np.ndarray) -> np.ndarray:
    """MaxVio ``(max - mean) / mean`` over the last axis (0 where the mean is 0)."""
    load = np.asarray(load, dtype=np.float64)
    mean = load.mean(axis=-1)
    return np.where(mean > 0, load.max(axis=-1) / np.where(mean > 0, mean, 1.0) - 1.0, 0.0)


def capacity_clip(counts: np.ndarray, capacity_factor: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Token dropping: ``(kept [..., E], dropped [...])`` with per-expert capacity
    ``ceil(cf * row_total / E)`` over the last axis (GShard / Megatron ``get_capacity``).

    Nothing is dropped when the capacity is at least the largest count, or when ``cf`` is None.
    """
    counts = np.asarray(counts)
    if capacity_factor is None:
        return counts, np.zeros(counts.shape[:-1], counts.dtype)
    e = counts.shape[-1]
    cap = np.ceil(capacity_factor * counts.sum(axis=-1, keepdims=True) / e - 1e-9)
    kept = np.minimum(counts, cap.astype(counts.dtype))
    return kept, (counts - kept).sum(axis=-1)


@dataclass(frozen=True)
class GateOverhead:
    """Per-step cost of a routing rule beyond plain top-k.

    router_bytes_per_token: extra HBM traffic per token per MoE layer in the forward pass
        (Sinkhorn / BIP iterations over the ``[tokens, E]`` score matrix, expert-choice top-k).
    allreduce_bytes: extra all-reduce per MoE layer per micro-batch over the data-parallel
        group (global-batch aux-loss counts).
    """

    router_bytes_per_token: float = 0.0
    allreduce_bytes: float = 0.0


@dataclass(frozen=True)
class GateRouting:
    """What this step's routing looks like (see the module doc).

    share: ``[L, E]`` mean slot shares (rows sum to 1).
    dispersion: multiplier on the micro-batch concentration (``inf``: micro-batches follow
        ``share`` exactly up to sampling noise; 1: as configured).
    exact: every expert gets exactly ``tokens * experts_per_token / E`` (expert choice).
    experts_per_token: average routed experts per token (top_k, or expert choice's c).
    overhead: the rule's cost this step.
    notes: scalar diagnostics recorded per step (e.g. ``sinkhorn_step``, ``unrouted_token_fraction``).
    """

    share: np.ndarray
    dispersion: float = 1.0
    exact: bool = False
    experts_per_token: float | None = None
    overhead: GateOverhead = GateOverhead()
    notes: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class GateState:
    """A gate's learned state: ``offset [L, E]`` in the policy's own units, and the step count."""

    offset: np.ndarray
    step: int = 0

    def __post_init__(self) -> None:
        arr = np.array(self.offset, dtype=np.float64, copy=True)
        arr.setflags(write=False)
        object.__setattr__(self, "offset", arr)


class GatePolicy(Protocol):
    """A training-time routing rule (module doc)."""

    def initial_state(self, n_layers: int, n_experts: int) -> GateState:
        """State before the first step."""
        ...

    def route(self, state: GateState, logits: np.ndarray, *, rng: np.random.Generator) -> tuple[GateRouting, GateState]:
        """This step's routing from the natural ``logits [L, E]``, and the state after routing."""
        ...

    def observe(self, state: GateState, share: np.ndarray) -> GateState:
        """React to the global-batch slot shares ``share [L, E]`` observed this step."""
        ...


GATES: Registry[GatePolicy] = Registry("gate")
"""Gate policies keyed by ``training.gate.kind``."""
