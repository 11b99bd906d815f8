"""What the pass model asks its CostModel: the sequences of the attention calls, and the small MoE
ops (router softmax / top-k, token permute and unpermute) every cost model is charged for."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

from moesim.config.load import load_scenario
from moesim.config.presets import load_gpu
from moesim.config.schema import CostCfg
from moesim.engine.build import ZeroCollectives, build_deployment
from moesim.engine.pass_time import GroupBatch, PassCostModel
from moesim.hardware.calibrated import CalibratedCost
from moesim.hardware.cost import ConstantCost, CostModel, RooflineCost

GPU = load_gpu("h100-sxm")


class Recording(RooflineCost):
    """A roofline that records the attention and memory queries it answers."""

    def __init__(self) -> None:
        super().__init__(GPU, CostCfg())
        self.attn: list[dict[str, Any]] = []
        self.mem: list[np.ndarray] = []

    def attention_s(self, **kw: Any) -> np.ndarray:  # type: ignore[override]
        self.attn.append(kw)
        return super().attention_s(**kw)

    def memory_s(self, nbytes: Any) -> np.ndarray:
        self.mem.append(np.atleast_1d(np.asarray(nbytes, np.float64)).copy())
        return super().memory_s(nbytes)


def _pcm(model: str, cost: CostModel) -> tuple[PassCostModel, Any]:
    sc = load_scenario("default", [f"model={model}", "deployment.replicas=1", "deployment.gpus_per_replica=8",
                                   "deployment.attention_tp=8", "deployment.ep=8"])
    d = build_deployment(sc)
    return PassCostModel(shape=d.shape, deployment=sc.deployment, cost=cost, collectives=ZeroCollectives(),
                         gpus=d.replica_gpus[0], moe=None), d


def test_every_cost_model_takes_the_sequences_of_an_attention_call() -> None:
    for cls in (CostModel, RooflineCost, ConstantCost, CalibratedCost):
        p = inspect.signature(cls.attention_s).parameters["seqs"]
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None, cls
    roof = RooflineCost(GPU, CostCfg())
    kw = dict(decode=True, pairs=np.array([4096.0, 0.0]), kv_tokens=np.array([4096.0, 0.0]), flops_per_pair=4096.0,
              kv_bytes_per_token=1024.0)
    # the roofline sees FLOPs and bytes only: how KV splits into sequences does not change them
    assert np.array_equal(roof.attention_s(**kw), roof.attention_s(**kw, seqs=64))
    assert ConstantCost(CostCfg()).attention_s(**kw, seqs=np.array([4, 0])).tolist() == [0.0, 0.0]


def test_pass_model_gives_attention_its_sequences() -> None:
    rec = Recording()
    pcm, _ = _pcm("mixtral-8x7b", rec)
    ctx = np.array([100, 700, 2000])
    pcm.pass_times([GroupBatch(decode_ctx=ctx)], 5, np.zeros(5, np.int64))     # a fast-forwarded decode run
    (dec,) = rec.attn
    assert dec["decode"] and dec["seqs"] == 3                                  # constant over the 5 steps
    assert np.array_equal(dec["kv_tokens"], ctx.sum() + 3 + 3 * np.arange(5))
    rec.attn.clear()
    pcm.pass_times([GroupBatch(prefill_chunk=np.array([512, 128]), prefill_prior=np.array([0, 300]))], 1,
                   np.zeros(1, np.int64))
    pre = [a for a in rec.attn if not a["decode"]]
    assert len(pre) == 1 and pre[0]["seqs"] == 2                               # prompt chunks


def test_sliding_window_layers_pass_the_sequences_too() -> None:
    rec = Recording()
    pcm, _ = _pcm("gpt-oss-120b", rec)
    pcm.pass_times([GroupBatch(decode_ctx=np.array([10, 5000]), prefill_chunk=np.array([64]),
                               prefill_prior=np.array([0]))], 1, np.zeros(1, np.int64))
    assert sorted((a["decode"], a["seqs"]) for a in rec.attn) == [(False, 1), (False, 1), (True, 2), (True, 2)]


def test_the_moe_chain_is_charged_once_per_moe_layer_and_scales_with_tokens() -> None:
    """Router chain, token gather, weighting and index_add_ combine: each MoE layer of a group
    pays them once, as memory kernels whose bytes grow with tokens x experts and tokens x k x hidden."""
    from moesim.hardware.layer_ops import moe_kernels
    rec = Recording()
    pcm, d = _pcm("mixtral-8x7b", rec)
    m, ab, t = d.model, d.shape.act_bytes_per_elem, 300
    e, k, h = m.moe.n_routed_experts, m.moe.top_k, m.hidden_size
    pcm.group_static_s(t, 4)
    chain = moe_kernels(m, tokens=t, tp=8, act_bytes=ab)
    charged = np.concatenate(rec.mem)
    for nbytes in chain.streams:
        assert np.any(np.isclose(charged, nbytes)), nbytes
    assert t * e * 8.0 in chain.streams                                          # fp32 softmax over T x E
    assert 2.0 * t * k * h * ab + t * k * 8.0 in chain.streams                    # gather of the T·k rows
    double = moe_kernels(m, tokens=2 * t, tp=8, act_bytes=ab)
    assert double.count == chain.count                                           # same kernels, twice the bytes
    assert sum(double.streams) == pytest.approx(2 * sum(chain.streams), rel=0.01)
    # once per MoE layer: the group's static time holds n_moe_layers x the chain's time
    bare = RooflineCost(GPU, CostCfg())
    total = pcm.group_static_s(t, 4)
    assert total > m.n_moe_layers * chain.seconds(bare) > chain.count * bare.kernel_s
    n = len(rec.mem)
    pcm.group_static_s(t, 4)                                                     # cached: asks nothing
    assert len(rec.mem) == n


def test_dense_models_get_no_moe_ops() -> None:
    rec = Recording()
    pcm, d = _pcm("llama-3-70b", rec)
    pcm.group_static_s(300, 4)
    ks = pcm.static_kernels(300, 4)
    assert "moe" not in ks and set(ks) == {"attention", "dense", "head"}
    charged = sorted(np.concatenate(rec.mem).tolist())
    assert charged == sorted(b for k in ks.values() for b in k.streams)        # exactly those kernels
