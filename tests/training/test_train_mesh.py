"""Mesh rank order and validation: every bad size is a ConfigError naming its field."""

from __future__ import annotations

import pytest
from train_helpers import TINY_DENSE, dense_scenario, moe_scenario

from moesim.config.presets import load_model
from moesim.config.schema import ModelSpec
from moesim.config.training import TrainingCfg
from moesim.core.errors import ConfigError
from moesim.engine.training.mesh import build_mesh
from moesim.engine.training.setup import build_training


def _mesh(model: str | dict, gpus: int = 32, per_node: int = 8, **training: object):
    spec = load_model(model) if isinstance(model, str) else ModelSpec.model_validate(model)
    return build_mesh(TrainingCfg.model_validate(training), spec, topology_gpus=gpus, gpus_per_node=per_node,
                      topology_name="t")


def test_rank_order_tp_innermost_pp_outermost() -> None:
    m = _mesh("olmoe-1b-7b", parallel={"tp": 2, "pp": 2, "ep": 4}, data={"global_batch_seqs": 64})
    assert (m.dp, m.edp, m.bundle_ranks) == (8, 4, 2)
    assert m.tp_group(0) == (0, 1) and m.tp_group(1, dp_rank=3) == (22, 23)
    assert m.ep_group(1, 1) == (20, 21, 22, 23)                     # consecutive: inside one host
    assert m.dp_group(0) == (0, 2, 4, 6, 8, 10, 12, 14)
    assert m.expert_dp_group(0, ep_rank=1) == (1, 5, 9, 13)
    for g in range(m.gpus):
        loc = m.locate(g)
        assert m.gpu(stage=loc["stage"], dp_rank=loc["dp"], cp_rank=loc["cp"], tp_rank=loc["tp"]) == g
        assert g in m.ep_group(loc["stage"], loc["edp"])


@pytest.mark.parametrize("training,field", [
    ({"parallel": {"pp": 3}}, "training.parallel.pp"),                        # 32 GPUs not divisible by 3
    ({"parallel": {"dp": 4}}, "training.parallel.dp"),                        # 1 x 4 != 32
    ({"parallel": {"tp": 16}}, "training.parallel.tp"),                       # TP across hosts
    ({"parallel": {"ep": 64, "pp": 2}}, "training.parallel.ep"),              # EP larger than a stage (16 GPUs)
    ({"parallel": {"ep": 3, "pp": 2}}, "training.parallel.ep"),               # does not divide the stage
    ({"parallel": {"gpus": 64}}, "training.parallel.gpus"),                   # more GPUs than the topology
    ({"data": {"global_batch_seqs": 33}}, "training.data.global_batch_seqs"),  # not a multiple of dp
    ({"parallel": {"pp": 4}, "schedule": {"kind": "interleaved_1f1b", "virtual_stages": 2},
      "data": {"global_batch_seqs": 48}}, "training.data.global_batch_seqs"),  # 6 micro-batches, pp 4
    ({"parallel": {"pp": 16}, "schedule": {"kind": "interleaved_1f1b", "virtual_stages": 2}},
     "training.parallel.pp"),                                                 # 32 chunks > 16 layers
])
def test_mesh_errors_name_the_field(training: dict, field: str) -> None:
    base = {"data": {"global_batch_seqs": 64}}
    with pytest.raises(ConfigError) as e:
        _mesh("olmoe-1b-7b", **{**base, **training})
    assert e.value.field == field


def test_expert_count_must_divide() -> None:
    with pytest.raises(ConfigError) as e:
        _mesh("qwen3-30b-a3b", gpus=24, parallel={"ep": 12}, data={"global_batch_seqs": 24})
    assert e.value.field == "training.parallel.ep" and "experts" in str(e.value)


def test_dense_model_rejects_ep() -> None:
    with pytest.raises(ConfigError) as e:
        _mesh(TINY_DENSE, gpus=8, parallel={"ep": 2}, data={"global_batch_seqs": 8})
    assert e.value.field == "training.parallel.ep"


def test_memory_not_fitting_names_the_fix() -> None:
    with pytest.raises(ConfigError) as e:
        build_training(moe_scenario(parallel={"pp": 1, "ep": 1}, data={"seq_len": 8192, "micro_batch_seqs": 4}))
    assert e.value.field == "training.recompute" and "GiB" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build_training(moe_scenario(parallel={"pp": 1, "ep": 1}, recompute="full",
                                    data={"seq_len": 8192, "micro_batch_seqs": 64, "global_batch_seqs": 512}))
    assert e.value.field == "training.parallel"


def test_schedule_config_checks() -> None:
    with pytest.raises(ValueError):
        TrainingCfg.model_validate({"schedule": {"kind": "interleaved_1f1b"}})
    with pytest.raises(ValueError):
        TrainingCfg.model_validate({"schedule": {"kind": "1f1b", "virtual_stages": 2}})
    with pytest.raises(ConfigError) as e:
        build_training(dense_scenario(schedule={"layers_per_chunk": [3, 3]}))
    assert e.value.field == "training.schedule.layers_per_chunk"
