"""What a calibration run measures: its ``Settings`` and the ``Plan`` of grid points per device."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from moesim.config.schema import ModelSpec
from moesim.spec.model import ModelShape

__all__ = ["Plan", "Settings", "make_plan"]


@dataclass(frozen=True)
class Settings:
    """How timings are taken."""

    device: str = "cuda"
    quick: bool = False
    warmup: int = 3
    repeats: int = 15
    min_rep_s: float = 2e-4
    """Each repetition loops the op until at least this long (short ops are timed in bulk)."""
    max_inner: int = 200
    graphs: bool = True
    """Also time CUDA graph replays (CUDA only)."""
    models: tuple[str, ...] = ()
    cpu_clock: str = "thread"
    """CPU only: ``thread`` (CPU time of the timing thread, immune to preemption) or ``wall``."""


@dataclass
class Plan:
    """The grid of points to measure."""

    gemm_m: list[int]
    gemm_k: list[int]
    gemm_n: list[int]
    gemm_dtypes: list[str]
    gemm_max_flops: float
    grouped_active: list[int]
    grouped_tokens: list[int]
    grouped_max_tokens: int
    attn_batch: list[int]
    attn_seq: list[int]
    attn_max_tokens: int
    decode_batch: list[int]
    decode_kv: list[int]
    decode_max_kv_tokens: int
    memory_bytes: list[int]
    copy_bytes: list[int]
    models: list[ModelSpec] = field(default_factory=list)


def _pow2(lo: int, hi: int, step: int = 1) -> list[int]:
    return [2 ** e for e in range(int(math.log2(lo)), int(math.log2(hi)) + 1, step)]


def make_plan(device: str, quick: bool, models: list[ModelSpec]) -> Plan:
    """The grids for ``device``: full size on CUDA; small on CPU, where the path is exercised and
    validated on small shapes (``quick``: tiny, for tests)."""
    hk = sorted({m.hidden_size for m in models})
    if device == "cuda":
        return Plan(
            gemm_m=_pow2(1, 16384, 2 if quick else 1), gemm_k=sorted({512, 2048, 8192, *hk}) if quick else
            sorted({512, 1024, 2048, 4096, 8192, 16384, *hk}),
            gemm_n=[64, 512, 2048, 8192, 32768, 131072] if quick else [64, 256, 1024, 2048, 4096, 8192, 16384,
                                                                      32768, 65536, 131072],
            gemm_dtypes=["bf16", "fp8"], gemm_max_flops=4e13,
            grouped_active=_pow2(1, 64, 2 if quick else 1), grouped_tokens=_pow2(1, 4096, 2 if quick else 1),
            grouped_max_tokens=131072,
            attn_batch=_pow2(1, 16, 2 if quick else 1), attn_seq=_pow2(128, 8192, 2 if quick else 1), attn_max_tokens=32768,
            decode_batch=_pow2(1, 256, 2 if quick else 1), decode_kv=_pow2(128, 32768, 2 if quick else 1),
            decode_max_kv_tokens=1 << 20,
            memory_bytes=_pow2(1 << 8, 1 << 30, 2 if quick else 1), copy_bytes=_pow2(1 << 12, 1 << 28, 2), models=models)
    if quick:
        return Plan(
            gemm_m=[1, 8, 64], gemm_k=sorted({32, 128, *hk}), gemm_n=[8, 64, 512], gemm_dtypes=["bf16"],
            gemm_max_flops=1e9, grouped_active=[1, 4], grouped_tokens=[1, 8, 64], grouped_max_tokens=512,
            attn_batch=[1, 4], attn_seq=[4, 16, 64], attn_max_tokens=1024, decode_batch=[1, 4],
            decode_kv=[4, 32, 256], decode_max_kv_tokens=4096, memory_bytes=[1 << 8, 1 << 12, 1 << 16, 1 << 20],
            copy_bytes=[], models=models)
    # CPU, full: the GEMM axes include the GEMMs the pass model asks for (k = hidden, n = the
    # attention projections, dense / shared FFNs, router and LM head), so validation stays in the grid
    ks, ns = set(hk), set()
    for m in models:
        a, sh, d = m.attention, ModelShape.build(m), m.hidden_size
        ns |= {d, m.vocab_size, sh.attn_params // d}
        ks |= {a.n_heads * a.head_dim}
        if sh.n_dense_layers:
            ns |= {sh.dense_ffn_params // d}
        if m.moe:
            ns |= {m.moe.n_routed_experts, 3 * m.moe.expert_intermediate}
            if sh.shared_params:
                ns |= {sh.shared_params // d}
    return Plan(
        gemm_m=[1, 4, 16, 64, 256], gemm_k=sorted({32, 128, *ks}), gemm_n=sorted({8, 64, 512, *ns}),
        gemm_dtypes=["bf16"], gemm_max_flops=4e9, grouped_active=[1, 2, 4, 8], grouped_tokens=[1, 4, 16, 64, 256],
        grouped_max_tokens=2048, attn_batch=[1, 2, 4, 8], attn_seq=[4, 16, 64, 256], attn_max_tokens=2048,
        decode_batch=[1, 4, 16], decode_kv=[4, 32, 256, 1024], decode_max_kv_tokens=16384,
        memory_bytes=[1 << 8, 1 << 12, 1 << 16, 1 << 20, 1 << 24], copy_bytes=[], models=models)

