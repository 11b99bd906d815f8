"""A reference MoE transformer in torch, with random weights, to time real forward passes.

The model follows a preset's shape: per layer RMSNorm, attention, the output projection and a
residual; then RMSNorm and either a dense SwiGLU FFN or an MoE block (softmax top-k router with
renormalised weights, tokens sorted by expert, grouped SwiGLU experts, weighted combine, shared
experts); a final RMSNorm and the LM head on the last token of each sequence, with greedy
sampling. Prefill passes run fresh prompts; decode passes append one token per sequence to a KV
cache already holding ``ctx`` tokens. No rotary embedding is applied (the pass model charges none
either).

Attention: MHA/GQA as a fused QKV projection and SDPA (GQA through ``enable_gqa``). MLA
(DeepSeek-V2/V3) as the serving kernels run it: the cache holds one latent per token
(``kv_lora_rank`` compressed KV + ``qk_rope_head_dim`` shared rope key); prefill decompresses
the latent into per-head keys and values and runs causal SDPA with ``qk`` = nope + rope and ``v``
head dims; decode absorbs the up-projections into the query and output (``q_nope W_UK``, then
``o W_UV``) and runs multi-query attention over the latent cache (one KV head of dim
``kv_lora + rope``, values = the latent). Both match the shapes ``attention_variants`` gives the
calibration, and the FLOPs of ``ModelShape.attn_params`` / ``attn_flops_per_pair``.

Shrunk presets: ``resolve_model("deepseek-v3@1/16")`` (or ``scale=``) divides every width of a
preset (hidden, vocab, intermediate sizes, LoRA ranks, heads, routed experts) by 16 and keeps the
per-head dims, the top-k and the layer structure, so a CPU can run a model of the same kind;
``cpu_scale`` is the default factor on CPU (widths down to a hidden size of at most 512).

``kernels_per_pass`` counts the kernels (non-view torch ops) one forward of this model launches;
the simulator's pass model prices the same kernels one by one (``moesim.hardware.layer_ops``,
plus the prompt's KV-cache writes a server makes), which the tests check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from moesim.config.presets import load_model
from moesim.config.schema import AttentionSpec, ModelSpec, MoESpec
from moesim.core.errors import ConfigError
from moesim.spec.model import ModelShape

__all__ = ["SMALL", "TINY", "Case", "ReferenceModel", "attention_variants", "cpu_scale", "kernels_per_pass",
           "resolve_model", "scale_model", "scaled_name", "time_cases"]

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


CPU_MAX_HIDDEN = 512
"""``cpu_scale`` shrinks presets until the hidden size is at most this."""


def _parse_scale(text: str, *, field: str = "--scale") -> float:
    try:
        num, _, den = text.partition("/")
        value = float(num) / (float(den) if den else 1.0)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"scale {text!r} is not a number or a fraction like 1/16", field=field) from None
    if not 0 < value <= 1:
        raise ConfigError(f"scale must be in (0, 1], got {text!r}", field=field)
    return value


def _scale_label(scale: float) -> str:
    inv = 1.0 / scale
    return f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-9 else f"{scale:g}"


def _width(n: int, scale: float, quantum: int = 16) -> int:
    """``n * scale`` rounded to a multiple of ``quantum`` (at least ``quantum``; never above ``n``)."""
    return min(n, max(quantum, quantum * round(n * scale / quantum)))


def scale_model(m: ModelSpec, scale: float) -> ModelSpec:
    """``m`` with its widths multiplied by ``scale`` (see the module docstring); 1 returns ``m``."""
    if scale == 1:
        return m
    a = m.attention
    heads = max(1, round(a.n_heads * scale))
    if a.kind == "mla":
        kv_heads = heads
    else:
        kv_heads = max(1, min(heads, round(a.n_kv_heads * scale)))
        while heads % kv_heads:
            kv_heads -= 1
    att = a.model_copy(update={
        "n_heads": heads, "n_kv_heads": kv_heads,
        "q_lora_rank": a.q_lora_rank and _width(a.q_lora_rank, scale),
        "kv_lora_rank": a.kv_lora_rank and _width(a.kv_lora_rank, scale)})
    upd: dict[str, Any] = {"name": f"{m.name}@{_scale_label(scale)}", "hidden_size": _width(m.hidden_size, scale),
                           "vocab_size": _width(m.vocab_size, scale),
                           "dense_intermediate": m.dense_intermediate and _width(m.dense_intermediate, scale),
                           "attention": att, "source": f"{m.source} (widths x {_scale_label(scale)})"}
    if m.moe is not None:
        e = m.moe.n_routed_experts
        upd["moe"] = m.moe.model_copy(update={
            "n_routed_experts": max(round(e * scale), min(e, 8), m.moe.top_k),
            "expert_intermediate": _width(m.moe.expert_intermediate, scale),
            "shared_intermediate": m.moe.shared_intermediate and _width(m.moe.shared_intermediate, scale)})
    return m.model_copy(update=upd)


def cpu_scale(m: ModelSpec) -> float:
    """The power-of-two scale that brings a preset's hidden size to at most ``CPU_MAX_HIDDEN`` (1 if it is)."""
    return 2.0 ** -max(0, math.ceil(math.log2(m.hidden_size / CPU_MAX_HIDDEN)))


def scaled_name(name: str, device: str, scale: str | float | None = "auto") -> str:
    """``name`` with the ``@scale`` suffix ``resolve_model`` reads: ``scale`` ``auto`` (or None) is
    ``cpu_scale`` on CPU and 1 on CUDA; a name that already carries a suffix is left alone."""
    if "@" in name:
        return name
    if scale is None or scale == "auto":
        value = cpu_scale(resolve_model(name)) if device == "cpu" else 1.0
    else:
        value = _parse_scale(scale) if isinstance(scale, str) else float(scale)
        if not 0 < value <= 1:
            raise ConfigError(f"scale must be in (0, 1], got {scale!r}", field="--scale")
    return name if value == 1 else f"{name}@{_scale_label(value)}"


def resolve_model(name: str, *, layers: int | None = None, scale: float | str | None = None) -> ModelSpec:
    """``tiny``, ``small`` or a model preset name, optionally shrunk by ``scale`` (or a ``@1/16``
    suffix on the name) and cut to ``layers`` layers (same per-layer shape)."""
    base, _, suffix = name.partition("@")
    m = BUILTIN[base] if base in BUILTIN else load_model(base)
    factors = [_parse_scale(suffix, field="--model") if suffix else 1.0,
               _parse_scale(scale) if isinstance(scale, str) else (1.0 if scale is None else float(scale))]
    if not all(0 < f <= 1 for f in factors):
        raise ConfigError(f"scale must be in (0, 1], got {scale!r}", field="--scale")
    m = scale_model(m, factors[0] * factors[1])
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
        self.torch, self.spec, self.device, self.impl = torch, spec, device, impl
        torch.manual_seed(seed)
        d, a = spec.hidden_size, spec.attention
        self.mla = a.kind == "mla"
        self.h, self.kvh, self.hd = a.n_heads, a.n_kv_heads, a.head_dim
        if self.mla:
            assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None and a.v_head_dim is not None
            self.lora, self.rope, self.vd = a.kv_lora_rank, a.qk_rope_head_dim, a.v_head_dim
            self.nope = a.head_dim - a.qk_rope_head_dim
            self.q_lora = a.q_lora_rank
        self.layers = [self._layer(i) for i in range(spec.n_layers)]
        self.norm = self._ones(d)
        self.lm_head = self._w(d, spec.vocab_size)
        self.embed = self._w(spec.vocab_size, d, scale=1.0)
        self.cache: list[Any] = []
        self.inputs: Any = None

    def _w(self, *shape: int, scale: float | None = None) -> Any:
        t = self.torch
        s = scale if scale is not None else 1.0 / math.sqrt(shape[-2])
        return (t.randn(*shape, device=self.device, dtype=t.bfloat16) * s)

    def _ones(self, n: int) -> Any:
        return self.torch.ones(n, device=self.device, dtype=self.torch.bfloat16)

    def _attn_weights(self) -> dict[str, Any]:
        d = self.spec.hidden_size
        if not self.mla:
            return {"wqkv": self._w(d, (self.h + 2 * self.kvh) * self.hd), "wo": self._w(self.h * self.hd, d)}
        h, lora = self.h, self.lora
        w = {"wkv_a": self._w(d, lora + self.rope), "kv_norm": self._ones(lora), "wo": self._w(h * self.vd, d)}
        if self.q_lora:
            w.update({"wq_a": self._w(d, self.q_lora), "q_norm": self._ones(self.q_lora),
                      "wq_b": self._w(self.q_lora, h * self.hd)})
        else:
            w["wq"] = self._w(d, h * self.hd)
        wkv_b = self._w(lora, h * (self.nope + self.vd))
        w["wkv_b"] = wkv_b                                   # prefill: decompress the latent
        per_head = wkv_b.view(lora, h, self.nope + self.vd)
        w["w_uk"] = per_head[:, :, :self.nope].permute(1, 2, 0).contiguous()   # [h, nope, lora]: absorbed into q
        w["w_uv"] = per_head[:, :, self.nope:].permute(1, 0, 2).contiguous()   # [h, lora, v]: absorbed into o
        return w

    def _layer(self, i: int) -> dict[str, Any]:
        s, d = self.spec, self.spec.hidden_size
        w = {"ln1": self._ones(d), "ln2": self._ones(d), **self._attn_weights()}
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
        """Allocate inputs and (for decode) a KV cache holding ``case.tokens`` tokens per sequence
        (MLA: one latent + rope key per token, shared by all heads)."""
        t = self.torch
        b, n = case.batch, case.tokens
        q_len = n if case.phase == "prefill" else 1
        self.case = case
        self.inputs = t.randint(0, self.spec.vocab_size, (b, q_len), device=self.device)
        self.cache = []
        if case.phase == "decode":
            for _ in self.layers:
                if self.mla:
                    self.cache.append(t.randn((b, 1, n + 1, self.lora + self.rope), device=self.device,
                                              dtype=t.bfloat16))
                    continue
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

    def _gqa(self, hN: Any, w: dict[str, Any], i: int, b: int, q_len: int) -> Any:
        f = self.torch.nn.functional
        ctx = self.case.tokens
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
        return att.transpose(1, 2).reshape(b * q_len, self.h * self.hd) @ w["wo"]

    def _mla(self, hN: Any, w: dict[str, Any], i: int, b: int, q_len: int) -> Any:
        """MLA: uncompressed prefill, absorbed latent decode (see the module docstring)."""
        t = self.torch
        f = t.nn.functional
        eps, h, lora, rope, nope, vd = 1e-6, self.h, self.lora, self.rope, self.nope, self.vd
        scale = 1.0 / math.sqrt(self.hd)
        if self.q_lora:
            q = f.rms_norm(hN @ w["wq_a"], (self.q_lora,), w["q_norm"], eps) @ w["wq_b"]
        else:
            q = hN @ w["wq"]
        q = q.view(b, q_len, h, self.hd)
        latent = hN @ w["wkv_a"]                                               # [T, lora + rope]
        c = f.rms_norm(latent[:, :lora], (lora,), w["kv_norm"], eps)
        k_rope = latent[:, lora:]
        if not self.cache:                                                     # prefill: decompress per head
            kv = (c @ w["wkv_b"]).view(b, q_len, h, nope + vd)
            k = t.cat([kv[..., :nope], k_rope.view(b, q_len, 1, rope).expand(b, q_len, h, rope)], dim=-1)
            att = f.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), kv[..., nope:].transpose(1, 2),
                                                 is_causal=True, scale=scale)
            return att.transpose(1, 2).reshape(b * q_len, h * vd) @ w["wo"]
        ctx = self.case.tokens                                                 # decode: absorbed, over the latent cache
        cache = self.cache[i]
        cache[:, 0, ctx, :lora] = c
        cache[:, 0, ctx, lora:] = k_rope
        q_lat = t.bmm(q[:, 0, :, :nope].transpose(0, 1), w["w_uk"])           # [h, b, lora]
        qf = t.cat([q_lat.transpose(0, 1), q[:, 0, :, nope:]], dim=-1).unsqueeze(2)   # [b, h, 1, lora + rope]
        o = f.scaled_dot_product_attention(qf, cache, cache[..., :lora], enable_gqa=True, scale=scale)
        out = t.bmm(o[:, :, 0].transpose(0, 1), w["w_uv"])                    # [h, b, v]
        return out.transpose(0, 1).reshape(b, h * vd) @ w["wo"]

    def forward(self) -> Any:
        """One forward pass of the prepared case; returns the sampled token ids ``[batch]``."""
        t = self.torch
        f = t.nn.functional
        b, q_len = self.inputs.shape
        d = self.spec.hidden_size
        eps = 1e-6
        x = self.embed[self.inputs.reshape(-1)]
        attn = self._mla if self.mla else self._gqa
        for i, w in enumerate(self.layers):
            hN = f.rms_norm(x, (d,), w["ln1"], eps)
            x = x + attn(hN, w, i, b, q_len)
            hN = f.rms_norm(x, (d,), w["ln2"], eps)
            x = x + (self._moe(hN, w) if "router" in w else self._swiglu(hN, w["w13"], w["w2"]))
        last = f.rms_norm(x.view(b, q_len, d)[:, -1], (d,), self.norm, eps)
        return t.argmax(last @ self.lm_head, dim=-1)


def kernels_per_pass(spec: ModelSpec, phase: str, *, impl: str = "grouped_mm", tokens: int = 1) -> int:
    """Kernels (non-view torch ops) one ``ReferenceModel.forward`` of ``spec`` launches.

    ``phase`` ``prefill`` or ``decode`` (decode adds the KV-cache writes); ``tokens``: tokens in
    the pass, which set the active experts of the per-expert ``loop`` implementation (expected
    distinct experts of uniform top-k routing). Mirrors the forward above op by op; the tests
    check it against the ops torch dispatches.
    """
    a, decode = spec.attention, phase == "decode"
    if a.kind == "mla":
        attn = (3 if a.q_lora_rank else 1) + 2 + (7 if decode else 4)    # q path, latent + norm, core
    else:
        attn = 3 + (2 if decode else 0)                                   # qkv, sdpa, wo (+ cache writes)
    layer = 4 + attn                                                      # 2 norms, 2 residual adds
    total = 4 + spec.n_layers * layer                                     # embed, final norm, LM head, argmax
    total += (spec.n_layers - spec.n_moe_layers) * 4                      # dense SwiGLU: 2 GEMMs, silu, mul
    m = spec.moe
    if m is not None:
        if impl == "grouped_mm":
            experts = 6                                                   # offsets (to, cumsum), 2 GEMMs, silu, mul
        else:
            e, k = m.n_routed_experts, m.top_k
            active = min(e, round(e * (1.0 - (1.0 - k / e) ** max(tokens, 1))))
            experts = 4 * active + 1                                      # per expert 2 GEMMs, silu, mul; cat
        # router GEMM, softmax, top-k, renormalise (sum, div, 2 casts), sort, counts (zeros, ones,
        # scatter_add), source rows (floor_divide, gather), weights (gather, mul), combine (zeros, index_add)
        moe = 17 + experts + (5 if m.n_shared_experts else 0)
        total += spec.n_moe_layers * moe
    return total


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
