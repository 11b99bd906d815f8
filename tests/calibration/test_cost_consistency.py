"""Every op the pass model charges reaches the roofline and the calibrated model alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from moesim.config.load import load_scenario
from moesim.config.presets import load_gpu
from moesim.config.schema import CostCfg
from moesim.engine.build import ZeroCollectives, build_deployment
from moesim.engine.pass_time import GroupBatch, PassCostModel
from moesim.hardware.calibrated import CalibratedCost
from moesim.hardware.cost import RooflineCost
from moesim.hardware.profile import load_profile


class _Log:
    """Wraps a cost model and logs every query (op, arguments) it answers."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.log = inner, []
        self.name, self.host_overhead_s = inner.name, inner.host_overhead_s

    def __getattr__(self, op: str) -> Any:
        fn = getattr(self.inner, op)

        def call(*a: Any, **kw: Any) -> Any:
            args = tuple(np.round(np.ravel(np.asarray(x, float)), 6).tolist() for x in a)
            self.log.append((op, args, tuple(sorted(kw))))
            return fn(*a, **kw)
        return call


def test_roofline_and_calibrated_models_are_asked_the_same_queries(roofline_profile: Callable[..., Path]) -> None:
    sc = load_scenario("default", [])
    d = build_deployment(sc)
    batch = [GroupBatch(decode_ctx=np.array([100, 300]), prefill_chunk=np.array([64]), prefill_prior=np.array([0]))]
    logs = []
    for cost in (RooflineCost(load_gpu("h100-sxm"), CostCfg()), CalibratedCost(load_profile(roofline_profile(1.0)))):
        lg = _Log(cost)
        pcm = PassCostModel(shape=d.shape, deployment=sc.deployment, cost=lg, collectives=ZeroCollectives(),
                            gpus=d.replica_gpus[0], moe=None)
        pcm.pass_times(batch, 1, np.zeros(1, np.int64))
        logs.append(lg.log)
    assert logs[0] == logs[1]
    ops = [op for op, _, _ in logs[0]]
    assert ops.count("gemm_s") >= 4 and ops.count("memory_s") >= 1 and "attention_s" in ops
