"""Multi-token prediction: the MTP block is one more layer on the last chunk, plus a projection, an
embedding lookup and a head pass per module (closed forms on a free network); depth 0 is the
plain model."""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import TINY_DENSE, merge, moe_scenario

from moesim.config.schema import DTYPE_BYTES, Scenario
from moesim.core.errors import ConfigError
from moesim.engine.build import ZeroCollectives
from moesim.engine.training import run_training
from moesim.engine.training.layout import chunk_layout
from moesim.engine.training.memory import param_split
from moesim.engine.training.mtp import mtp_flops_params, mtp_model
from moesim.engine.training.run import model_flops_per_step
from moesim.engine.training.setup import build_training
from moesim.engine.training.steps import StepLoop

D, V, T = 1024, 32000, 2048


def _scenario(layers: int = 8, **training) -> Scenario:
    tree = {"name": "t-mtp", "seed": 0, "model": {**TINY_DENSE, "n_layers": layers},
            "hardware": {"gpu": "h100-sxm", "topology": "h100-8gpu-node"},
            "training": merge({"parallel": {"pp": 1},
                               "data": {"seq_len": T, "global_batch_seqs": 32, "micro_batch_seqs": 1},
                               "steps": 1}, training)}
    return Scenario.model_validate(tree)


def _setup(layers: int = 8, **training):
    return build_training(_scenario(layers, **training), collectives=ZeroCollectives())


def test_depth_zero_is_the_plain_model() -> None:
    plain = _setup()
    assert plain.model.n_layers == 8 and not plain.layout.mtp.any()
    base = param_split(plain.shape, plain.mesh, plain.layout)
    assert np.array_equal(plain.params.dense, base.dense)
    ref = chunk_layout(plain.model, 1)
    assert all(np.array_equal(getattr(plain.layout, f), getattr(ref, f)) for f in ("layers", "embed", "head", "mtp"))
    assert mtp_model(plain.model, 0) is plain.model
    assert mtp_flops_params(plain.model, 0) == 0.0


def test_step_grows_by_the_closed_form_share() -> None:
    mtp, nine, plain = _setup(mtp_depth=1), _setup(9), _setup()
    assert list(mtp.layout.layers) == [9] and list(mtp.layout.mtp) == [1]
    c, m = mtp.cost, mtp.mesh.micro_batches
    proj = float(c.gemm_s(T, 2 * D, D) + c.memory_s(4.0 * D * T * 2.0))
    head = float(c.gemm_s(T, D, V) + c.memory_s(2.0 * T * V * 4.0))
    lookup = float(c.memory_s(T * D * 2.0))
    extra = m * ((proj + head + lookup) + (2 * proj + 2 * head + lookup))      # forward + backward ops
    opt = float(mtp.sync.optimizer_s.max() - nine.sync.optimizer_s.max())
    s_mtp, s_nine, s_plain = (StepLoop(x).step(0).step_s for x in (mtp, nine, plain))
    assert s_mtp - s_nine == pytest.approx(extra + opt, rel=1e-9)
    # against the plain model: one more layer (the block) on top of that
    assert s_mtp - s_plain == pytest.approx((s_nine - s_plain) + extra + opt, rel=1e-9)


def test_model_flops_count_block_projection_and_head() -> None:
    mtp, plain = _setup(mtp_depth=1), _setup()
    tokens = 32 * T
    layer = plain.shape.attn_params + plain.shape.dense_ffn_params
    pairs = 32 * T * (T + 1) / 2
    want = 6.0 * tokens * (layer + 2 * D * D + V * D) + 3.0 * plain.shape.attn_flops_per_pair(decode=False) * pairs
    assert model_flops_per_step(mtp) - model_flops_per_step(plain) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(("kind", "copy"), [("1f1b", True), ("dualpipe", False)])
def test_last_stage_memory_holds_the_module(kind: str, copy: bool) -> None:
    kw = {"parallel": {"pp": 2}, "schedule": {"kind": kind}}
    mtp, plain = _setup(mtp_depth=1, **kw), _setup(**kw)
    layer = plain.shape.attn_params + plain.shape.dense_ffn_params
    extra = layer + 2 * D * D + 3 * D + (V * D if copy else 0)           # DualPipe: the embedding is already there
    last = 1 if kind == "1f1b" else 0
    assert mtp.memory.weights[last] - plain.memory.weights[last] == pytest.approx(extra * 2.0)
    if kind == "1f1b":
        assert mtp.memory.weights[0] == plain.memory.weights[0]
        assert mtp.memory_table["activations"][1] > plain.memory_table["activations"][1]


def test_moe_model_gets_an_extra_moe_layer_on_the_last_stage() -> None:
    res = run_training(moe_scenario(mtp_depth=1))
    setup = build_training(moe_scenario(mtp_depth=1))
    assert setup.model.n_moe_layers == 17 and list(setup.layout.moe_stop) == [8, 17]
    assert res.expert_load[0].shape == (17, 64)
    plain = run_training(moe_scenario()).summary
    assert res.summary["step_compute_s"] > plain["step_compute_s"]
    assert res.summary["checkpoint_bytes"] > plain["checkpoint_bytes"]


def test_layers_per_chunk_lists_the_main_layers() -> None:
    setup = _setup(mtp_depth=1, parallel={"pp": 2}, schedule={"layers_per_chunk": (5, 3)})
    assert list(setup.layout.layers) == [5, 4] and list(setup.layout.mtp) == [0, 1]
    with pytest.raises(ConfigError, match="without its 1 MTP blocks"):
        _setup(mtp_depth=1, parallel={"pp": 2}, schedule={"layers_per_chunk": (5, 4)})


@pytest.mark.parametrize(("kind", "pp", "tied", "mtp_depth", "synced"), [
    ("1f1b", 2, False, 1, True),       # MTP's embedding copy on the last stage
    ("1f1b", 2, True, 0, True),        # a tied head is such a copy too
    ("dualpipe", 2, False, 1, False),  # DualPipe holds chunk 0 and the last chunk on one stage
    ("1f1b", 1, True, 1, False),       # one stage: nothing to sync
])
def test_embedding_copy_gradient_is_all_reduced_with_the_first_stage(kind: str, pp: int, tied: bool,
                                                                      mtp_depth: int, synced: bool) -> None:
    scen = _scenario(mtp_depth=mtp_depth, parallel={"pp": pp}, schedule={"kind": kind})
    scen = scen.model_copy(update={"model": scen.model.model_copy(update={"tied_embeddings": tied})})
    setup = build_training(scen)                     # the topology's collectives: the sync costs time
    sync = setup.sync
    if not synced:
        assert sync.embed_sync_s == 0.0
        return
    grad_b = DTYPE_BYTES[setup.cfg.optimizer.grad_dtype]
    pair = (setup.mesh.gpu(stage=0), setup.mesh.gpu(stage=pp - 1))
    want = float(setup.coll.all_reduce_s(pair, V * D / setup.mesh.tp * grad_b))
    assert want > 0 and sync.embed_sync_s == pytest.approx(want, rel=1e-12)
    # it follows both stages' data-parallel reduction and ends both: the step grows by exactly it
    with_sync = StepLoop(setup).step(0).step_s
    sync.embed_sync_s = 0.0
    assert with_sync - StepLoop(setup).step(0).step_s == pytest.approx(want, rel=1e-9)
