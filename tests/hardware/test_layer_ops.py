"""The kernel inventory of a layer (``moesim.hardware.layer_ops``): every kernel the reference
forward launches is one cost-model query, priced on its own, by every cost model alike."""

from __future__ import annotations

import pytest

from moesim.calibration.reference import kernels_per_pass, resolve_model
from moesim.config.presets import load_gpu
from moesim.config.schema import CostCfg, DeploymentCfg
from moesim.engine.build import ZeroCollectives
from moesim.engine.pass_time import PassCostModel
from moesim.hardware.cost import RooflineCost
from moesim.hardware.layer_ops import (
    GROUPED_EXPERT_KERNELS, attention_kernels, dense_ffn_kernels, head_kernels, moe_kernels)
from moesim.spec.model import ModelShape

GPU = load_gpu("h100-sxm")
AB = 2.0


def test_attention_projections_are_two_gemms_of_their_own_shapes() -> None:
    m = resolve_model("qwen3-30b-a3b")                  # 32 query heads, 4 KV heads, head dim 128, hidden 2048
    k = attention_kernels(m, tokens=100, decode_tokens=0, tp=2, act_bytes=AB, kv_bytes=AB)
    assert k.gemms == [(100, 2048, (16 + 2 * 2) * 128), (100, 16 * 128, 2048)]    # fused QKV, then O, per TP rank
    # norm, K and V into the cache, residual add
    assert k.streams == [2 * 100 * 2048 * AB, 100 * 2 * 128 * 2 * AB, 100 * 2 * 128 * 2 * AB, 3 * 100 * 2048 * AB]


def test_dense_ffn_is_gate_up_activation_multiply_down() -> None:
    m = resolve_model("deepseek-v3")                    # dense layers: intermediate 18432
    k = dense_ffn_kernels(m, tokens=64, tp=8, act_bytes=AB)
    f = 18432 // 8
    assert k.gemms == [(64, 7168, 2 * f), (64, f, 7168)]
    assert k.streams[1:3] == [2 * 64 * f * AB, 3 * 64 * f * AB]                    # SiLU(gate), x up
    flops = sum(2.0 * a * b * c for a, b, c in k.gemms)
    assert flops == pytest.approx(2.0 * 64 * ModelShape.build(m).dense_ffn_params / 8)   # the FFN's FLOPs, split


def test_mla_runs_prompt_tokens_decompressed_and_decode_tokens_absorbed() -> None:
    m = resolve_model("deepseek-v3")
    a = m.attention
    h, lora, nope, vd = a.n_heads, a.kv_lora_rank, a.head_dim - a.qk_rope_head_dim, a.v_head_dim
    pre = attention_kernels(m, tokens=512, decode_tokens=0, tp=1, act_bytes=AB, kv_bytes=AB)
    dec = attention_kernels(m, tokens=8, decode_tokens=8, tp=1, act_bytes=AB, kv_bytes=AB)
    assert (512, lora, h * (nope + vd)) in pre.gemms and not any(g[1] == nope for g in pre.gemms)
    assert (8, nope, h * lora) in dec.gemms and (8, lora, h * vd) in dec.gemms
    assert not any(g[2] == h * (nope + vd) for g in dec.gemms)
    # both do the same up-projection FLOPs per token (absorbed or not)
    up = lambda k, t: sum(2.0 * x * y * z for x, y, z in k.gemms if y in (lora, nope) and z >= h * vd) / t  # noqa: E731
    assert up(dec, 8) == pytest.approx(up(pre, 512))
    mixed = attention_kernels(m, tokens=520, decode_tokens=8, tp=1, act_bytes=AB, kv_bytes=AB)
    assert mixed.count == pre.count + dec.count - 10      # shared: 3 norms, q / latent GEMMs, 2 cache writes, O, add


def test_the_router_chain_scales_with_tokens_times_experts_and_the_permutes_with_tokens_k_hidden() -> None:
    m = resolve_model("olmoe-1b-7b")                    # 64 experts, top-8, hidden 2048
    one, two = (moe_kernels(m, tokens=t, tp=1, act_bytes=AB) for t in (1000, 2000))
    assert one.gemms == [(1000, 2048, 64)] and two.gemms == [(2000, 2048, 64)]   # router logits
    assert one.count == two.count == 1 + 1 + 17 + 1                               # norm, router, chain, add; no shared
    big = [b for b in one.streams if b >= 1000 * 8 * 2048 * AB]
    assert len(big) == 3                                                          # gather, weighting, index_add_
    assert sum(two.streams) == pytest.approx(2 * sum(one.streams), rel=1e-3)
    shared = moe_kernels(resolve_model("deepseek-v3"), tokens=10, tp=1, act_bytes=AB)
    assert len(shared.gemms) == 3                                                 # router + the shared expert's two


def test_head_is_embedding_norm_lm_head_and_argmax_of_the_last_tokens() -> None:
    m = resolve_model("mixtral-8x7b")
    k = head_kernels(m, tokens=4096, seqs=4, tp=4, act_bytes=AB)
    assert k.gemms == [(4, 4096, m.vocab_size // 4)] and k.count == 4
    assert k.streams[0] == 2 * 4096 * 4096 * AB                                     # embedding rows of every token


def test_each_kernel_pays_its_own_launch() -> None:
    m = resolve_model("olmoe-1b-7b")
    k = moe_kernels(m, tokens=1, tp=1, act_bytes=AB)
    roof = RooflineCost(GPU, CostCfg())
    want = sum(float(roof.gemm_s(*g)) for g in k.gemms) + sum(b / roof.bytes_per_s + roof.kernel_s for b in k.streams)
    assert k.seconds(roof) == pytest.approx(want)
    assert k.seconds(roof) >= k.count * roof.kernel_s


@pytest.mark.parametrize("name", ["tiny", "small", "olmoe-1b-7b", "qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v3"])
def test_the_pass_model_launches_the_kernels_of_the_reference_forward(name: str) -> None:
    """Kernel for kernel the reference's forward (``reference.kernels_per_pass``, itself checked
    against the ops torch dispatches), plus the KV-cache writes of a prompt (a server stores
    them; the reference's single prefill pass does not) and MLA's [h, b, v] -> [b, h·v] copy."""
    spec = resolve_model(name, layers=4)
    pcm = PassCostModel(shape=ModelShape.build(spec), deployment=DeploymentCfg(gpus_per_replica=1, attention_tp=1, ep=1),
                        cost=RooflineCost(GPU, CostCfg()), collectives=ZeroCollectives(), gpus=(0,), moe=None)
    mla = spec.attention.kind == "mla"
    for phase, seqs, tokens in (("prefill", 2, 256), ("decode", 1, 1), ("decode", 4, 4)):
        dec = tokens if phase == "decode" else 0
        extra = 2 * spec.n_layers if phase == "prefill" else (spec.n_layers if mla and seqs > 1 else 0)
        assert pcm.kernels_per_pass(tokens, seqs, dec) == kernels_per_pass(spec, phase, tokens=tokens) + extra
    assert GROUPED_EXPERT_KERNELS == 5
