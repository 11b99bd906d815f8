"""A reference MoE transformer in torch, with random weights, to time real forward passes.

The model follows a preset's shape: per layer RMSNorm, a fused QKV projection, causal SDPA
attention (GQA through ``enable_gqa``), the output projection and a residual; then RMSNorm and
either a dense SwiGLU FFN or an MoE block (softmax top-k router with renormalised weights, tokens
sorted by expert, grouped SwiGLU experts, weighted combine, shared experts); a final RMSNorm and
the LM head on the last token of each sequence, with greedy sampling. Prefill passes run fresh
prompts; decode passes append one token per sequence to a KV cache already holding ``ctx`` tokens.

MLA models (DeepSeek-V3) are not built here: their attention would need the latent-cache
kernels to be a fair reference. ``attention_variants`` still describes their attention shapes so
that calibration measures them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from moesim.config.presets import load_model
from moesim.config.schema import AttentionSpec, ModelSpec, MoESpec
from moesim.core.errors import ConfigError
from moesim.spec.model import ModelShape

__all__ = ["SMALL", "TINY", "Case", "ReferenceModel", "attention_variants", "resolve_model", "time_cases"]

TINY = ModelSpec(
    name="tiny", source="moesim test shape", n_layers=2, hidden_size=64, vocab_size=256,
    attention=AttentionSpec(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=16),
    moe=MoESpec(n_routed_experts=8, top_k=2, expert_intermediate=32), max_context=512,
)
"""A tiny MoE shape for CPU tests: every kernel takes microseconds."""

SMALL = ModelSpec(
    name="small", source="moesim CPU validation shape", n_layers=2, hidden_size=512, vocab_size=4096,
    attention=AttentionSpec(kind="gqa", n_heads=8, n_kv_heads=4, head_dim=64),
    moe=MoESpec(n_routed_experts=8, top_k=2, expert_intermediate=512), max_context=2048,
)
"""A small MoE shape for CPU validation runs, big enough that GEMMs rather than dispatch dominate prefill."""
BUILTIN = {"tiny": TINY, "small": SMALL}


def resolve_model(name: str, *, layers: int | None = None) -> ModelSpec:
    """``tiny``, ``small`` or a model preset name, optionally cut to ``layers`` layers (same per-layer shape)."""
    m = BUILTIN[name] if name in BUILTIN else load_model(name)
    if layers is not None:
        if layers <= 0:
            raise ConfigError(f"layers must be positive, got {layers}", field="--layers")
        dense = min(m.first_dense_layers, layers - 1) if m.moe is not None else 0
        m = m.model_copy(update={"n_layers": layers, "first_dense_layers": dense})
    return m


def attention_variants(model: ModelSpec, *, tp: int = 1, kv_dtype: str = "bf16") -> list[dict[str, Any]]:
    """The attention cores one GPU of a ``tp``-way group runs, prefill and decode.

    Each dict: ``phase``, the SDPA shape (``q_heads``, ``kv_heads``, ``qk_dim``, ``v_dim``) and the
    ``flops_per_pair`` / ``kv_bytes_per_token`` the engine will query with (same arithmetic as
    ``moesim.engine.pass_time``), so measured variants match queries exactly.
    """
    shape = ModelShape.build(model, kv_dtype=kv_dtype)
    a = model.attention
    kvb = shape.kv_bytes_per_token_per_gpu(tp) / model.n_layers
    share = 1.0 / tp
    h = max(a.n_heads // tp, 1)
    out = []
    for phase in ("prefill", "decode"):
        fpp = shape.attn_flops_per_pair(decode=phase == "decode") * share
        if a.kind != "mla":
            kvh = max(a.n_kv_heads // tp, 1)
            dims = dict(q_heads=h, kv_heads=kvh, qk_dim=a.head_dim, v_dim=a.head_dim)
        elif phase == "prefill":
            assert a.v_head_dim is not None
            dims = dict(q_heads=h, kv_heads=h, qk_dim=a.head_dim, v_dim=a.v_head_dim)
        else:   # absorbed MLA decode: multi-query attention over the latent + rope key
            assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None
            dims = dict(q_heads=h, kv_heads=1, qk_dim=a.kv_lora_rank + a.qk_rope_head_dim, v_dim=a.kv_lora_rank)
        out.append({"phase": phase, **dims, "flops_per_pair": fpp, "kv_bytes_per_token": kvb})
    return out


@dataclass(frozen=True)
class Case:
    """One measured pass: ``phase`` prefill (``batch`` prompts of ``tokens``) or decode (``batch``
    sequences holding ``tokens`` cached tokens, one new token each)."""

    phase: str
    batch: int
    tokens: int

    @property
    def label(self) -> str:
        what = "seq" if self.phase == "prefill" else "ctx"
        return f"{self.phase} b={self.batch} {what}={self.tokens}"


class ReferenceModel:
    """Random-weight torch model of ``spec`` on ``device`` (bf16); call ``prepare`` then ``forward``."""

    def __init__(self, torch: Any, spec: ModelSpec, *, device: str, impl: str, seed: int = 0) -> None:
        if spec.attention.kind == "mla":
            raise ConfigError(f"{spec.name}: the reference model has no MLA attention yet; validate an MHA/GQA "
                              "model (e.g. olmoe-1b-7b, qwen3-30b-a3b, mixtral-8x7b)", field="--model")
        self.torch, self.spec, self.device, self.impl = torch, spec, device, impl
        torch.manual_seed(seed)
        d, a = spec.hidden_size, spec.attention
        self.h, self.kvh, self.hd = a.n_heads, a.n_kv_heads, a.head_dim
        self.layers = [self._layer(i) for i in range(spec.n_layers)]
        self.norm = self._ones(d)
        self.lm_head = self._w(d, spec.vocab_size)
        self.embed = self._w(spec.vocab_size, d, scale=1.0)
        self.cache: list[tuple[Any, Any]] = []
        self.inputs: Any = None

    def _w(self, *shape: int, scale: float | None = None) -> Any:
        t = self.torch
        s = scale if scale is not None else 1.0 / math.sqrt(shape[-2])
        return (t.randn(*shape, device=self.device, dtype=t.bfloat16) * s)

    def _ones(self, n: int) -> Any:
        return self.torch.ones(n, device=self.device, dtype=self.torch.bfloat16)

    def _layer(self, i: int) -> dict[str, Any]:
        s, d = self.spec, self.spec.hidden_size
        w = {"ln1": self._ones(d), "ln2": self._ones(d),
             "wqkv": self._w(d, (self.h + 2 * self.kvh) * self.hd), "wo": self._w(self.h * self.hd, d)}
        if s.moe is None or i < s.first_dense_layers:
            f = s.dense_intermediate or 4 * d
            w.update({"w13": self._w(d, 2 * f), "w2": self._w(f, d)})
            return w
        m = s.moe
        w.update({"router": self._w(d, m.n_routed_experts),
                  "e13": self._w(m.n_routed_experts, d, 2 * m.expert_intermediate),
                  "e2": self._w(m.n_routed_experts, m.expert_intermediate, d)})
        if m.n_shared_experts:
            f = m.n_shared_experts * (m.shared_intermediate or m.expert_intermediate)
            w.update({"s13": self._w(d, 2 * f), "s2": self._w(f, d)})
        return w

    # ------------------------------------------------------------------ pass
    def prepare(self, case: Case) -> None:
        """Allocate inputs and (for decode) a KV cache holding ``case.tokens`` tokens per sequence."""
        t = self.torch
        b, n = case.batch, case.tokens
        q_len = n if case.phase == "prefill" else 1
        self.case = case
        self.inputs = t.randint(0, self.spec.vocab_size, (b, q_len), device=self.device)
        self.cache = []
        if case.phase == "decode":
            for _ in self.layers:
                shape = (b, self.kvh, n + 1, self.hd)
                self.cache.append((t.randn(shape, device=self.device, dtype=t.bfloat16),
                                   t.randn(shape, device=self.device, dtype=t.bfloat16)))

    def _swiglu(self, x: Any, w13: Any, w2: Any) -> Any:
        g, u = (x @ w13).chunk(2, dim=-1)
        return (self.torch.nn.functional.silu(g) * u) @ w2

    def _moe(self, x: Any, w: dict[str, Any]) -> Any:
        from moesim.calibration.measure import swiglu_experts
        t = self.torch
        m = self.spec.moe
        assert m is not None
        probs = t.softmax((x @ w["router"]).float(), dim=-1)
        top_w, top_i = t.topk(probs, m.top_k, dim=-1)
        top_w = (top_w / top_w.sum(dim=-1, keepdim=True)).to(x.dtype)
        flat = top_i.reshape(-1)
        order = t.argsort(flat, stable=True)
        # scatter_add, not bincount: bincount syncs with the host, which CUDA graphs cannot capture
        counts = t.zeros(m.n_routed_experts, device=x.device, dtype=t.int64).scatter_add_(0, flat, t.ones_like(flat))
        src = order // m.top_k
        c = counts.to(t.int32) if self.impl == "grouped_mm" else counts.tolist()
        y = swiglu_experts(t, x[src], w["e13"], w["e2"], c, self.impl) * top_w.reshape(-1)[order, None]
        out = t.zeros_like(x).index_add_(0, src, y)
        if "s13" in w:
            out = out + self._swiglu(x, w["s13"], w["s2"])
        return out

    def forward(self) -> Any:
        """One forward pass of the prepared case; returns the sampled token ids ``[batch]``."""
        t = self.torch
        f = t.nn.functional
        b, q_len = self.inputs.shape
        d = self.spec.hidden_size
        eps = 1e-6
        x = self.embed[self.inputs.reshape(-1)]
        ctx = self.case.tokens
        for i, w in enumerate(self.layers):
            hN = f.rms_norm(x, (d,), w["ln1"], eps)
            q, k, v = (hN @ w["wqkv"]).split([self.h * self.hd, self.kvh * self.hd, self.kvh * self.hd], dim=-1)
            q = q.view(b, q_len, self.h, self.hd).transpose(1, 2)
            k = k.view(b, q_len, self.kvh, self.hd).transpose(1, 2)
            v = v.view(b, q_len, self.kvh, self.hd).transpose(1, 2)
            if self.cache:
                kc, vc = self.cache[i]
                kc[:, :, ctx:ctx + 1] = k
                vc[:, :, ctx:ctx + 1] = v
                att = f.scaled_dot_product_attention(q, kc, vc, enable_gqa=self.h != self.kvh)
            else:
                att = f.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.h != self.kvh)
            x = x + att.transpose(1, 2).reshape(b * q_len, self.h * self.hd) @ w["wo"]
            hN = f.rms_norm(x, (d,), w["ln2"], eps)
            x = x + (self._moe(hN, w) if "router" in w else self._swiglu(hN, w["w13"], w["w2"]))
        last = f.rms_norm(x.view(b, q_len, d)[:, -1], (d,), self.norm, eps)
        return t.argmax(last @ self.lm_head, dim=-1)


def time_cases(spec: ModelSpec, cases: list[Case], *, device: str, quick: bool = False,
               graphs: bool = True) -> list[dict[str, Any]]:
    """Measured pass times of ``cases``: one row per case with eager and (CUDA) graph timings."""
    from moesim.calibration.measure import Settings, Timer, cpu_threads, grouped_impl, import_torch
    torch = import_torch()
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available to torch; use --device cpu", field="--device")
    impl = grouped_impl(torch, device, torch.bfloat16)
    model = ReferenceModel(torch, spec, device=device, impl=impl)
    settings = Settings(device=device, quick=quick, repeats=5 if quick else 11, warmup=2 if quick else 3,
                        min_rep_s=0.0, max_inner=1, graphs=graphs)
    timer = Timer(torch, settings)
    rows = []
    with torch.inference_mode(), cpu_threads(torch, device):
        for case in cases:
            model.prepare(case)
            row = timer.time(model.forward)
            rows.append({"phase": case.phase, "batch": case.batch, "tokens": case.tokens, "impl": impl, **row})
    return rows
