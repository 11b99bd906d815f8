"""The reference model's MLA attention, shrunk presets and the kernel count of a pass."""

from __future__ import annotations

import collections
import csv
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from moesim.calibration.reference import (  # noqa: E402
    Case, ReferenceModel, attention_variants, cpu_scale, kernels_per_pass, resolve_model, scaled_name)
from moesim.cli import main  # noqa: E402
from moesim.core.errors import ConfigError  # noqa: E402
from moesim.spec.model import ModelShape  # noqa: E402

VIEWS = {"view", "reshape", "transpose", "split_with_sizes", "split", "chunk", "select", "slice", "unsqueeze",
         "squeeze", "expand", "as_strided", "t", "permute", "alias", "_unsafe_view", "detach", "resolve_conj",
         "resolve_neg", "_reshape_alias"}


class _CountOps(TorchDispatchMode):
    """Counts the non-view ops torch dispatches (each launches a kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def test_scaled_presets_keep_the_kind_and_shrink_widths() -> None:
    full, small = resolve_model("deepseek-v3"), resolve_model("deepseek-v3@1/16", layers=2)
    a = small.attention
    assert small.name == "deepseek-v3@1/16" and a.kind == "mla"
    assert (small.hidden_size, a.n_heads, a.q_lora_rank, a.kv_lora_rank) == (448, 8, 96, 32)
    assert (a.head_dim, a.qk_rope_head_dim, a.v_head_dim) == (192, 64, 128)       # per-head dims kept
    assert small.moe.n_routed_experts == 16 and small.moe.top_k == full.moe.top_k
    assert small.n_layers == 2 and small.first_dense_layers == 1                     # one dense, one MoE layer
    assert resolve_model("deepseek-v3", scale="1/16") == resolve_model("deepseek-v3@1/16")
    assert cpu_scale(full) == 1 / 16 and cpu_scale(resolve_model("small")) == 1
    assert scaled_name("deepseek-v3", "cpu") == "deepseek-v3@1/16"
    assert scaled_name("deepseek-v3", "cuda") == "deepseek-v3" and scaled_name("tiny", "cpu") == "tiny"
    assert scaled_name("mixtral-8x7b", "cuda", "0.25") == "mixtral-8x7b@1/4"
    q = resolve_model("qwen3-30b-a3b@1/4").attention
    assert q.n_heads % q.n_kv_heads == 0
    with pytest.raises(ConfigError, match="scale"):
        scaled_name("deepseek-v3", "cpu", "1/0")


def test_mla_absorbed_decode_equals_decompressed_attention() -> None:
    """Decode over the latent cache with W_UK / W_UV absorbed == attention over per-head keys and values."""
    spec = resolve_model("deepseek-v3@1/32", layers=1)
    m = ReferenceModel(torch, spec, device="cpu", impl="loop")
    w = {k: v.float() for k, v in m.layers[0].items()}
    b, n = 3, 6
    m.prepare(Case("decode", b, n))
    m.cache = [c.float() for c in m.cache]
    hN = torch.randn(b, spec.hidden_size)
    got = m._mla(hN, w, 0, b, 1)
    f = torch.nn.functional
    lora, rope, nope, vd, h = m.lora, m.rope, m.nope, m.vd, m.h
    cache = m.cache[0][:, 0]                                       # holds the new token's latent now
    kv = (cache[..., :lora] @ w["wkv_b"]).view(b, n + 1, h, nope + vd)
    k = torch.cat([kv[..., :nope], cache[..., lora:].unsqueeze(2).expand(b, n + 1, h, rope)], -1)
    q = (f.rms_norm(hN @ w["wq_a"], (m.q_lora,), w["q_norm"], 1e-6) @ w["wq_b"]).view(b, 1, h, m.hd)
    att = f.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), kv[..., nope:].transpose(1, 2))
    want = att.transpose(1, 2).reshape(b, h * vd) @ w["wo"]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_mla_reference_runs_and_matches_the_calibrated_variants() -> None:
    spec = resolve_model("deepseek-v3@1/32", layers=2)
    m = ReferenceModel(torch, spec, device="cpu", impl="grouped_mm")
    for case in (Case("prefill", 2, 8), Case("decode", 3, 5)):
        m.prepare(case)
        with torch.inference_mode():
            assert m.forward().shape == (case.batch,)
    a = spec.attention
    assert m.cache[0].shape == (3, 1, 6, a.kv_lora_rank + a.qk_rope_head_dim)      # one latent per token
    pre, dec = attention_variants(spec)
    assert (dec["kv_heads"], dec["qk_dim"], dec["v_dim"]) == (1, a.kv_lora_rank + a.qk_rope_head_dim, a.kv_lora_rank)
    assert (pre["qk_dim"], pre["v_dim"]) == (a.head_dim, a.v_head_dim)
    # the weights are those ModelShape counts (the absorbed copies aside)
    w = m.layers[0]
    attn = sum(w[k].numel() for k in ("wq_a", "wq_b", "wkv_a", "wkv_b", "wo"))
    assert attn == ModelShape.build(spec).attn_params


@pytest.mark.parametrize("name", ["tiny", "deepseek-v3@1/32", "mixtral-8x7b@1/16"])
@pytest.mark.parametrize("impl", ["grouped_mm", "loop"])
def test_kernel_count_matches_the_ops_torch_dispatches(name: str, impl: str) -> None:
    spec = resolve_model(name, layers=2)
    m = ReferenceModel(torch, spec, device="cpu", impl=impl)
    for case in (Case("prefill", 2, 8), Case("decode", 1, 5), Case("decode", 4, 5)):
        m.prepare(case)
        with torch.inference_mode(), _CountOps() as c:
            m.forward()
        got = sum(c.ops.values())
        want = kernels_per_pass(spec, case.phase, impl=impl, tokens=case.batch * (case.tokens if case.phase ==
                                                                                    "prefill" else 1))
        if impl == "grouped_mm" or case.batch == 1:
            assert want == got, (case, dict(c.ops))
        else:                           # the loop's active experts are an expectation
            assert want == pytest.approx(got, rel=0.1), (case, dict(c.ops))


def test_validate_runs_an_mla_model_on_cpu(cpu_profile: Path, tmp_path: Path) -> None:
    """`moesim validate --model deepseek-v3 --layers 2 --device cpu --quick`, shrunk further for speed."""
    out = tmp_path / "val"
    assert main(["validate", "--profile", str(cpu_profile), "--model", "deepseek-v3", "--layers", "2",
                 "--scale", "1/32", "--device", "cpu", "--quick", "-o", str(out)]) == 0
    with (out / "validate.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"deepseek-v3@1/32"} and len(rows) == 4
    for r in rows:
        assert float(r["measured_ms"]) > 0 and float(r["predicted_ms"]) > float(r["host_ms"]) >= 0
        assert math.isfinite(float(r["error_pct"]))
