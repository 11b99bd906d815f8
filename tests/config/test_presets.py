"""Built-in model and GPU presets: every file validates and carries the published architecture."""

from __future__ import annotations

import pytest

from moesim.config.presets import list_presets, load_gpu, load_model
from moesim.config.schema import GpuSpec, ModelSpec
from moesim.core.errors import ConfigError

MODELS = ["deepseek-v3", "qwen3-235b-a22b", "qwen3-30b-a3b", "mixtral-8x7b", "olmoe-1b-7b", "gpt-oss-120b",
          "llama-3-70b"]
GPUS = ["h100-sxm", "h200", "h800", "a100-80gb", "b200"]


def test_the_expected_presets_ship() -> None:
    assert set(MODELS) <= set(list_presets("models"))
    assert set(GPUS) <= set(list_presets("gpus"))


@pytest.mark.parametrize("name", list_presets("models"))
def test_every_model_preset_validates_and_names_its_source(name: str) -> None:
    spec = load_model(name)
    assert isinstance(spec, ModelSpec)
    assert spec.name == name
    assert spec.source.startswith("https://")


@pytest.mark.parametrize("name", list_presets("gpus"))
def test_every_gpu_preset_validates_with_per_direction_links(name: str) -> None:
    gpu = load_gpu(name)
    assert isinstance(gpu, GpuSpec)
    assert gpu.name == name
    assert gpu.source.startswith("https://")
    assert {"fp32", "bf16", "fp16"} <= set(gpu.peak_flops)
    assert gpu.peak_flops["bf16"] == pytest.approx(2 * gpu.peak_flops["fp32"], rel=1e-3)  # dense TF32 = BF16 / 2
    assert gpu.nvlink_bytes_per_s > gpu.pcie_bytes_per_s > 0


def test_deepseek_v3_is_mla_with_58_moe_layers_of_256_experts_top8() -> None:
    m = load_model("deepseek-v3")
    assert m.n_layers == 61 and m.first_dense_layers == 3 and m.n_moe_layers == 58
    assert m.moe is not None
    assert (m.moe.n_routed_experts, m.moe.top_k, m.moe.n_shared_experts) == (256, 8, 1)
    assert m.moe.expert_intermediate == 2048 and m.dense_intermediate == 18432
    a = m.attention
    assert a.kind == "mla" and a.n_heads == 128 and a.n_kv_heads == 128
    assert (a.q_lora_rank, a.kv_lora_rank, a.qk_rope_head_dim, a.v_head_dim) == (1536, 512, 64, 128)
    assert a.head_dim == 128 + 64
    assert (m.hidden_size, m.vocab_size) == (7168, 129280)


def test_gpt_oss_120b_has_128_experts_top4_and_half_sliding_window_layers() -> None:
    m = load_model("gpt-oss-120b")
    assert m.moe is not None and (m.moe.n_routed_experts, m.moe.top_k) == (128, 4)
    assert m.n_layers == 36 and m.n_moe_layers == 36
    a = m.attention
    assert (a.kind, a.n_heads, a.n_kv_heads, a.head_dim) == ("gqa", 64, 8, 64)
    assert a.sliding_window == 128 and a.sliding_window_layer_fraction == 0.5


def test_llama_3_70b_is_dense() -> None:
    m = load_model("llama-3-70b")
    assert m.moe is None and m.n_moe_layers == 0
    assert m.dense_intermediate == 28672


@pytest.mark.parametrize("name", ["qwen3-235b-a22b", "qwen3-30b-a3b", "mixtral-8x7b", "olmoe-1b-7b"])
def test_other_moe_models_have_no_dense_layers(name: str) -> None:
    m = load_model(name)
    assert m.moe is not None and m.n_moe_layers == m.n_layers


def test_unknown_model_name_raises_config_error_naming_field_and_known_presets() -> None:
    with pytest.raises(ConfigError) as info:
        load_model("deepseek-v4")
    err = info.value
    assert err.field == "model"
    assert "deepseek-v3" in str(err) and "llama-3-70b" in str(err)


def test_unknown_gpu_name_raises_config_error_naming_field_and_known_presets() -> None:
    with pytest.raises(ConfigError) as info:
        load_gpu("h100")
    err = info.value
    assert err.field == "hardware.gpu"
    assert all(name in str(err) for name in GPUS)
