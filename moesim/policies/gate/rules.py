"""The built-in gate policies (POLICIES.md C1-C6). Each is a small pure object; see ``base.py``.

Model of each rule ([ours] marks modelling choices, not the papers' claims):

``none``
    Plain top-k on the router's natural preference: ``share = softmax(logits)``.
``aux_loss`` (C6)
    The load-balancing loss ``alpha * E * sum f_i p_i`` pushes the router's logits away from
    overloaded experts; the language-model loss pulls them back. [ours] As a learned correction
    ``c``: ``c <- (1 - rho) c - alpha * gain * (E f - 1)``, ``share = softmax(logits + c)``. Its
    fixed point is the congestion-game equilibrium of C7 with ``gamma = alpha * gain / rho``
    (``rho = router.restore_rate``). Scope: at ``micro_batch`` / ``sequence`` scope the loss also
    balances each micro-batch, so micro-batch dispersion shrinks by ``1 + gamma``; at
    ``global_batch`` scope micro-batches keep their skew and the counts are all-reduced over the
    DP group (``E`` fp32 per MoE layer per micro-batch).
``loss_free_bias`` (C1, C2)
    Expert bias ``b`` added to scores for selection only: ``share = softmax(logits + b / s)``
    (``s = score_scale``); after each step ``b_i += u * sign(mean(c) - c_i)`` on the global-batch
    counts (``proportional``: ``u (mean - c_i) / mean``; ``inverse_t`` / ``inverse_sqrt_t``: the sign
    rule with ``u / t`` or ``u / sqrt(t)``). A stationary skew converges at a rate growing with u
    (too large oscillates by about ``u / s`` in logits).
``bip`` (C3)
    Persistent expert dual prices ``q >= 0`` (score units) warm-started across steps; each batch
    runs ``T`` damped dual iterations ``q <- max(0, q + step * s * log(E x))`` with
    ``x = softmax(logits - q / s)`` [ours: an aggregate stand-in for the per-token ADMM]. Router
    overhead ``T`` passes over the score matrix.
``sinkhorn`` (C5)
    With probability ``p`` a step routes by Sinkhorn: column marginals equal ``T / E``, so the
    step's share is uniform and micro-batches lose their skew (only top-k rounding noise
    remains); otherwise plain top-k. Overhead ``iterations`` passes over the score matrix.
``expert_choice`` (C4)
    Each expert takes exactly ``T c / E`` tokens: perfectly balanced counts, ``c`` experts per token
    on average. [ours] The share of tokens no expert picks is estimated as ``exp(-c)`` (each token's
    number of experts ~ Poisson(c)). Overhead: a top-k over tokens per expert.
"""

from __future__ import annotations

import numpy as np

from moesim.core.errors import ConfigError
from moesim.policies.gate.base import GATES, GateOverhead, GateRouting, GateState, softmax_rows

__all__ = ["AuxLoss", "BipGate", "ExpertChoice", "LossFreeBias", "SinkhornGate", "TopK"]

_FP32 = 4.0


class _Stateless:
    def initial_state(self, n_layers: int, n_experts: int) -> GateState:
        return GateState(np.zeros((n_layers, n_experts)))

    def observe(self, state: GateState, share: np.ndarray) -> GateState:
        return GateState(state.offset, state.step + 1)


@GATES.register("none")
class TopK(_Stateless):
    """Plain top-k routing on the router's natural preference."""

    def __init__(self, **_: object) -> None:
        pass

    def route(self, state: GateState, logits: np.ndarray, *, rng: np.random.Generator) -> tuple[GateRouting, GateState]:
        return GateRouting(share=softmax_rows(logits)), state


@GATES.register("aux_loss")
class AuxLoss:
    """Auxiliary load-balancing loss as a learned logit correction (module doc)."""

    def __init__(self, *, aux_coeff: float = 1e-2, aux_scope: str = "micro_batch", aux_gain: float = 50.0,
                 restore_rate: float = 0.02, **_: object) -> None:
        if aux_scope not in ("micro_batch", "global_batch", "sequence"):
            raise ConfigError(f"unknown aux_scope {aux_scope!r}", field="training.gate.aux_scope")
        self.eta = float(aux_coeff) * float(aux_gain)
        self.rho = float(restore_rate)
        self.scope = aux_scope

    @property
    def gamma(self) -> float:
        """Equilibrium congestion coefficient ``eta / rho`` (inf without restoring pull)."""
        return self.eta / self.rho if self.rho > 0 else float("inf")

    def initial_state(self, n_layers: int, n_experts: int) -> GateState:
        return GateState(np.zeros((n_layers, n_experts)))

    def route(self, state: GateState, logits: np.ndarray, *, rng: np.random.Generator) -> tuple[GateRouting, GateState]:
        e = logits.shape[-1]
        global_scope = self.scope == "global_batch"
        return GateRouting(
            share=softmax_rows(logits + state.offset),
            dispersion=1.0 if global_scope else 1.0 + min(self.gamma, 1e6),
            overhead=GateOverhead(router_bytes_per_token=2 * e * _FP32,
                                  allreduce_bytes=e * _FP32 if global_scope else 0.0)), state

    def observe(self, state: GateState, share: np.ndarray) -> GateState:
        e = share.shape[-1]
        offset = (1.0 - self.rho) * state.offset - self.eta * (e * share - 1.0)
        return GateState(offset, state.step + 1)


@GATES.register("loss_free_bias")
class LossFreeBias:
    """DeepSeek's auxiliary-loss-free expert bias (module doc)."""

    def __init__(self, *, bias_rate: float = 1e-3, bias_schedule: str = "sign", score_scale: float = 0.1,
                 **_: object) -> None:
        if bias_schedule not in ("sign", "proportional", "inverse_t", "inverse_sqrt_t"):
            raise ConfigError(f"unknown bias_schedule {bias_schedule!r}", field="training.gate.bias_schedule")
        self.u = float(bias_rate)
        self.schedule = bias_schedule
        self.scale = float(score_scale)

    def initial_state(self, n_layers: int, n_experts: int) -> GateState:
        return GateState(np.zeros((n_layers, n_experts)))

    def route(self, state: GateState, logits: np.ndarray, *, rng: np.random.Generator) -> tuple[GateRouting, GateState]:
        return GateRouting(share=softmax_rows(logits + state.offset / self.scale)), state

    def rate(self, step: int) -> float:
        """Update rate at step ``step`` (0-based)."""
        t = step + 1
        if self.schedule == "inverse_t":
            return self.u / t
        if self.schedule == "inverse_sqrt_t":
            return self.u / np.sqrt(t)
        return self.u

    def observe(self, state: GateState, share: np.ndarray) -> GateState:
        mean = share.mean(axis=-1, keepdims=True)
        if self.schedule == "proportional":
            delta = self.u * (mean - share) / mean
        else:
            delta = self.rate(state.step) * np.sign(mean - share)
        return GateState(state.offset + delta, state.step + 1)


@GATES.register("bip")
class BipGate:
    """BIP balancing through persistent, warm-started expert dual prices (module doc)."""

    def __init__(self, *, bip_iterations: int = 4, bip_step: float = 0.5, score_scale: float = 0.1,
                 **_: object) -> None:
        self.iterations = int(bip_iterations)
        self.step = float(bip_step)
        self.scale = float(score_scale)

    def initial_state(self, n_layers: int, n_experts: int) -> GateState:
        return GateState(np.zeros((n_layers, n_experts)))

    def route(self, state: GateState, logits: np.ndarray, *, rng: np.random.Generator) -> tuple[GateRouting, GateState]:
        e = logits.shape[-1]
        q = np.array(state.offset)
        for _ in range(self.iterations):
            x = softmax_rows(logits - q / self.scale)
            q = np.maximum(0.0, q + self.step * self.scale * np.log(np.maximum(e * x, 1e-300)))
        share = softmax_rows(logits - q / self.scale)
        overhead = GateOverhead(router_bytes_per_token=2 * self.iterations * e * _FP32)
        return GateRouting(share=share, overhead=overhead), GateState(q, state.step)

    def observe(self, state: GateState, share: np.ndarray) -> GateState:
        return GateState(state.offset, state.step + 1)


@GATES.register("sinkhorn")
class SinkhornGate(_Stateless):
    """(Selective) Sinkhorn routing (module doc)."""

    def __init__(self, *, sinkhorn_prob: float = 1.0, sinkhorn_iterations: int = 20, **_: object) -> None:
        self.prob = float(sinkhorn_prob)
        self.iterations = int(sinkhorn_iterations)

    def route(self, state: GateState, logits: np.ndarray, *, rng: np.random.Generator) -> tuple[GateRouting, GateState]:
        e = logits.shape[-1]
        if self.prob >= 1.0 or rng.random() < self.prob:
            share = np.full(logits.shape, 1.0 / e)
            overhead = GateOverhead(router_bytes_per_token=3 * self.iterations * e * _FP32)
            return GateRouting(share=share, dispersion=np.inf, overhead=overhead, notes={"sinkhorn_step": 1.0}), state
        return GateRouting(share=softmax_rows(logits), notes={"sinkhorn_step": 0.0}), state


@GATES.register("expert_choice")
class ExpertChoice(_Stateless):
    """Expert-choice routing: every expert takes the same number of tokens (module doc)."""

    def __init__(self, *, expert_choice_capacity: float | None = None, top_k: int = 1, **_: object) -> None:
        self.c = float(expert_choice_capacity if expert_choice_capacity is not None else top_k)

    def route(self, state: GateState, logits: np.ndarray, *, rng: np.random.Generator) -> tuple[GateRouting, GateState]:
        e = logits.shape[-1]
        return GateRouting(share=np.full(logits.shape, 1.0 / e), dispersion=np.inf, exact=True,
                           experts_per_token=self.c, overhead=GateOverhead(router_bytes_per_token=2 * e * _FP32),
                           notes={"unrouted_token_fraction": float(np.exp(-self.c))}), state
