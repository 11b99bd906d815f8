"""The kernels of a transformer forward pass outside the attention core and the routed experts.

A pass model prices a layer kernel by kernel: every GEMM is a ``gemm_s`` query of its own shape
and every other kernel (norms, residual adds, activations, KV-cache writes, the router chain, the
token gather / weighting / combine) a ``memory_s`` query of the bytes it reads and writes. Each
kernel is its own query because each pays its own launch: a CUDA-graph kernel takes >= ~2 us
however small, an eager one >= the host time to issue it (11 us on the H200's host), which is what
the calibrated tables measure at their small end (and the roofline's ``kernel_overhead_s``).

The inventory is that of an unfused PyTorch forward, the reference model ``moesim validate``
times (``moesim/calibration/reference.py``), kernel for kernel (``kernels_per_pass`` there counts
the same list); serving frameworks fuse some of these (softmax + top-k, SiLU x up, norm +
residual), so for them the small-kernel part is an upper bound. Not charged: rotary embeddings
(the reference applies none). The KV cache is written for every new token, prefill included (a
server must store it; the reference's prefill does not, two small kernels per layer).

Shapes are one GPU's: heads, dense / shared intermediate sizes and the vocabulary split over the
attention TP degree ``tp``; the MLA low-rank projections and the router are replicated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from moesim.config.schema import ModelSpec

if TYPE_CHECKING:
    from moesim.hardware.cost import CostModel

__all__ = ["GROUPED_EXPERT_KERNELS", "Kernels", "attention_kernels", "dense_ffn_kernels", "head_kernels",
           "moe_kernels"]

GROUPED_EXPERT_KERNELS = 5
"""Kernels inside one ``grouped_ffn_s`` call (offsets cumsum, gate/up grouped GEMM, SiLU, x up,
down grouped GEMM): what the calibrated table measured as a whole."""


@dataclass
class Kernels:
    """A list of kernels: GEMMs ``(m, k, n)`` and streaming kernels (bytes read + written, each)."""

    gemms: list[tuple[int, int, int]] = field(default_factory=list)
    streams: list[float] = field(default_factory=list)

    def gemm(self, m: int, k: int, n: int) -> None:
        if m > 0:
            self.gemms.append((m, k, n))

    def stream(self, *nbytes: float) -> None:
        self.streams.extend(float(b) for b in nbytes if b > 0)

    @property
    def count(self) -> int:
        """Kernels launched."""
        return len(self.gemms) + len(self.streams)

    def seconds(self, cost: CostModel) -> float:
        """Their time on ``cost``: each GEMM and each streaming kernel priced on its own."""
        t = sum(float(cost.gemm_s(m, k, n)) for m, k, n in self.gemms)
        if self.streams:
            t += float(np.sum(cost.memory_s(np.asarray(self.streams))))
        return t


def _norm(k: Kernels, rows: int, width: int, ab: float) -> None:
    k.stream(2.0 * rows * width * ab)                                     # RMSNorm: read x, write y


def attention_kernels(m: ModelSpec, *, tokens: int, decode_tokens: int, tp: int, act_bytes: float,
                      kv_bytes: float) -> Kernels:
    """Pre-norm, projections, KV-cache writes, output projection and residual add of one layer
    (not the attention core). ``decode_tokens`` of the ``tokens`` are decode steps (one per
    sequence): MLA runs them absorbed, the rest (prompt tokens) decompressed."""
    a, d, ab, t = m.attention, m.hidden_size, act_bytes, tokens
    k = Kernels()
    _norm(k, t, d, ab)
    h = max(a.n_heads // tp, 1)
    if a.kind != "mla":
        kvh = max(a.n_kv_heads // tp, 1)
        k.gemm(t, d, (h + 2 * kvh) * a.head_dim)                          # fused QKV
        k.stream(*[t * kvh * a.head_dim * (ab + kv_bytes)] * 2)           # K and V into the cache
        k.gemm(t, h * a.head_dim, d)                                      # output projection
    else:
        assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None and a.v_head_dim is not None
        lora, rope, vd = a.kv_lora_rank, a.qk_rope_head_dim, a.v_head_dim
        nope = a.head_dim - rope
        if a.q_lora_rank:
            k.gemm(t, d, a.q_lora_rank)
            _norm(k, t, a.q_lora_rank, ab)
            k.gemm(t, a.q_lora_rank, h * a.head_dim)
        else:
            k.gemm(t, d, h * a.head_dim)
        k.gemm(t, d, lora + rope)                                         # latent + shared rope key
        _norm(k, t, lora, ab)
        k.stream(t * lora * (ab + kv_bytes), t * rope * (ab + kv_bytes))  # latent, rope key into the cache
        p, dec = t - decode_tokens, decode_tokens
        k.gemm(p, lora, h * (nope + vd))                                  # prefill: decompress keys / values
        k.stream(p * h * (nope + rope + a.head_dim) * ab)                 # cat(k_nope, k_rope) per head
        k.gemm(dec, nope, h * lora)                                       # decode: q_nope W_UK (per-head bmm)
        k.stream(dec * h * 2 * (lora + rope) * ab)                        # cat(q_latent, q_rope)
        k.gemm(dec, lora, h * vd)                                         # o W_UV (per-head bmm)
        if dec > 1:
            k.stream(dec * h * vd * 2 * ab)                               # [h, b, v] -> [b, h * v] copy
        k.gemm(t, h * vd, d)                                              # output projection
    k.stream(3.0 * t * d * ab)                                            # residual add
    return k


def _swiglu(k: Kernels, t: int, d: int, f: int, ab: float) -> None:
    k.gemm(t, d, 2 * f)                                                   # gate + up
    k.stream(2.0 * t * f * ab, 3.0 * t * f * ab)                          # SiLU(gate), x up
    k.gemm(t, f, d)                                                       # down


def dense_ffn_kernels(m: ModelSpec, *, tokens: int, tp: int, act_bytes: float) -> Kernels:
    """Pre-norm, gated FFN (dense intermediate split over ``tp``) and residual add of a dense layer."""
    d, ab = m.hidden_size, act_bytes
    k = Kernels()
    _norm(k, tokens, d, ab)
    _swiglu(k, tokens, d, max((m.dense_intermediate or 4 * d) // tp, 1), ab)
    k.stream(3.0 * tokens * d * ab)
    return k


def moe_kernels(m: ModelSpec, *, tokens: int, tp: int, act_bytes: float) -> Kernels:
    """An MoE layer's kernels around the routed experts (``grouped_ffn_s``), for ``tokens`` tokens.

    Pre-norm; router GEMM and the fp32 chain that turns logits into (expert, weight) pairs:
    cast, softmax, top-k, renormalise (sum, divide, cast back), sort the T·k pairs by expert,
    per-expert counts (zeros, ones, scatter-add), source rows, int32 counts; the gather of the
    T·k token rows; after the experts, the weights gathered into expert order, the weighted
    rows, a zeroed output and the scatter-add combine (index_add_) back to T rows; shared
    experts (gated FFN + add); residual add.
    """
    assert m.moe is not None
    d, ab, t = m.hidden_size, act_bytes, tokens
    e, top = m.moe.n_routed_experts, m.moe.top_k
    tk = t * top
    k = Kernels()
    _norm(k, t, d, ab)
    k.gemm(t, d, e)                                                       # router logits
    k.stream(t * e * (ab + 4.0), t * e * 8.0, t * e * 4.0 + tk * 12.0,   # fp32 cast, softmax, top-k
             tk * 4.0 + t * 4.0, tk * 8.0 + t * 4.0, tk * (4.0 + ab),    # renormalise: sum, divide, cast
             tk * 32.0,                                                   # stable sort of the T·k expert ids
             e * 8.0, tk * 8.0, tk * 16.0 + e * 8.0,                      # counts: zeros, ones, scatter-add
             tk * 16.0, e * 12.0,                                         # source rows (// k), int32 counts
             2.0 * tk * d * ab + tk * 8.0,                                # gather x[src]: T·k rows
             tk * (8.0 + 2.0 * ab),                                       # weights into expert order
             2.0 * tk * d * ab + tk * ab,                                 # expert rows x weights
             t * d * ab,                                                  # zeroed output
             tk * (d * ab + 8.0) + 2.0 * t * d * ab)                      # index_add_ combine
    if m.moe.n_shared_experts:
        f = m.moe.n_shared_experts * (m.moe.shared_intermediate or m.moe.expert_intermediate)
        _swiglu(k, t, d, max(f // tp, 1), ab)
        k.stream(3.0 * t * d * ab)                                        # routed + shared
    k.stream(3.0 * t * d * ab)                                            # residual add
    return k


def head_kernels(m: ModelSpec, *, tokens: int, seqs: int, tp: int, act_bytes: float) -> Kernels:
    """Embedding gather of ``tokens`` rows; final norm, LM head (vocabulary split over ``tp``) and
    greedy sampling (argmax over the logits) of the last token of each of the ``seqs`` sequences."""
    d, ab = m.hidden_size, act_bytes
    v = max(m.vocab_size // tp, 1)
    k = Kernels()
    k.stream(2.0 * tokens * d * ab)
    _norm(k, seqs, d, ab)
    k.gemm(seqs, d, v)
    k.stream(seqs * v * ab + seqs * 8.0)
    return k
