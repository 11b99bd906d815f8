"""A calibrated profile plugged into the engine: same code path, expected pass times, reporting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from moesim.config.load import load_scenario
from moesim.core.errors import ConfigError
from moesim.engine.build import build_deployment
from moesim.engine.pass_time import GroupBatch, PassCostModel
from moesim.engine.run import run
from moesim.hardware.calibrated import CalibratedCost
from moesim.hardware.profile import load_profile

SETS = ["workload.duration_s=8", "workload.rate_per_s=10"]
BATCHES = [
    [GroupBatch(decode_ctx=np.array([100, 700, 2000]))],
    [GroupBatch(decode_ctx=np.arange(1, 200) * 5)],
    [GroupBatch(prefill_chunk=np.array([512, 128]), prefill_prior=np.array([0, 300]))],
    [GroupBatch(decode_ctx=np.array([64] * 8), prefill_chunk=np.array([1500]), prefill_prior=np.array([0]))],
]


def _pcm(overrides: list[str]) -> tuple[PassCostModel, object]:
    sc = load_scenario("default", overrides)
    d = build_deployment(sc)
    from moesim.core.rng import RngStreams
    from moesim.engine.run import _pass_models
    return _pass_models(sc, d, RngStreams(sc.seed))[0], d


def _times(pcm: PassCostModel) -> np.ndarray:
    return np.array([pcm.pass_times(b, 1, np.array([0]))[0] for b in BATCHES])


def test_roofline_profile_reproduces_roofline_pass_times(roofline_profile: Callable[..., Path]) -> None:
    path = roofline_profile(1.0)
    roof, _ = _pcm([])
    cal, d = _pcm([f"hardware.calibration={path}"])
    assert isinstance(d.cost, CalibratedCost)
    assert _times(cal) == pytest.approx(_times(roof), rel=0.06)
    assert sum(d.cost.out_of_domain.values()) == 0, d.cost.out_of_domain


ONE_GPU = ["deployment.replicas=1", "deployment.gpus_per_replica=1", "deployment.attention_tp=1", "deployment.ep=1"]


def test_slower_kernels_make_proportionally_slower_passes(tmp_path: Path) -> None:
    """Every kernel 2x slower in the profile => every pass's compute 2x. On one GPU there is no
    communication, and the host overhead is not in the profile."""
    from calib_synthetic import roofline_samples, write_synthetic
    paths = [write_synthetic(tmp_path / f"x{k}.json", roofline_samples(scale=k, tp=1)) for k in (1.0, 2.0)]
    (one, d1), (two, _) = (_pcm([*ONE_GPU, f"hardware.calibration={p}"]) for p in paths)
    host = d1.cost.host_overhead_s
    assert np.all(_times(one) > host)
    assert (_times(two) - host) == pytest.approx(2 * (_times(one) - host), rel=1e-9)


def test_run_reports_hash_out_of_domain_counts_and_bands(roofline_profile: Callable[..., Path]) -> None:
    path = roofline_profile(1.0)
    res = run(load_scenario("default", [*SETS, f"hardware.calibration={path}"]))
    assert res.provenance["calibration_hashes"] == {str(path): load_profile(path).content_hash}
    assert res.provenance["cost_model"] == "calibrated"
    s = res.summary
    assert s["calibration_queries"] > 0 and s["calibration_out_of_domain"] == 0
    assert s["calibration_spread_rel"] == pytest.approx(0.02)
    assert s["tpot_p50_s_pm"] == pytest.approx(0.02 * s["tpot_p50_s"])
    json.dumps(res.to_json_dict())                      # the summary stays JSON-safe


def test_narrow_profile_counts_out_of_domain_queries(tmp_path: Path) -> None:
    from calib_synthetic import roofline_samples, write_synthetic
    samples = roofline_samples()
    samples["gemm"] = [r for r in samples["gemm"] if r["m"] <= 64]        # big batches now extrapolate
    path = write_synthetic(tmp_path / "narrow.json", samples)
    res = run(load_scenario("default", [*SETS, f"hardware.calibration={path}"]))
    assert res.summary["calibration_out_of_domain_gemm"] > 0
    assert res.summary["calibration_out_of_domain"] >= res.summary["calibration_out_of_domain_gemm"]


def test_default_run_is_untouched() -> None:
    res = run(load_scenario("default", SETS))
    assert res.provenance["calibration_hashes"] == {} and res.provenance["cost_model"] == "roofline"
    assert not any(k.startswith("calibration_") for k in res.summary)


def test_unreadable_profile_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for spec in (str(bad), str(tmp_path / "absent.json")):
        with pytest.raises(ConfigError) as e:
            build_deployment(load_scenario("default", [f"hardware.calibration={spec}"]))
        assert e.value.field == "hardware.calibration"
    with pytest.raises(ConfigError, match="unknown timing mode"):
        build_deployment(load_scenario("default", [f"hardware.calibration={bad}#fast"]))


def test_importing_moesim_and_the_engine_never_imports_torch() -> None:
    code = ("import sys, moesim, moesim.engine.run, moesim.calibration, moesim.calibration.fit, moesim.cli; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_calibrated_model_prices_each_small_kernel_from_its_memory_table(roofline_profile: Callable[..., Path]) -> None:
    """Norms, residual adds, KV writes and the MoE router / permute / combine chain reach the
    calibrated memory table one kernel per query, once per group cost, all inside the table."""
    cal, d = _pcm([f"hardware.calibration={roofline_profile(1.0)}"])
    cost = d.cost
    before = cost.queries["memory"]
    tokens = 333
    cal.group_static_s(tokens, 3)
    streams = sum(len(k.streams) for k in cal.static_kernels(tokens, 3).values())
    assert cost.queries["memory"] - before == streams > 20
    assert cost.out_of_domain["memory"] == 0
    cal.group_static_s(tokens, 3)                              # cached: a second call asks nothing
    assert cost.queries["memory"] - before == streams


def test_seqs_change_calibrated_decode_passes_at_equal_kv(tmp_path: Path) -> None:
    """Two decode batches with the same KV tokens: many short sequences vs few long ones. With a
    profile whose decode kernels pay per sequence, the pass model's seqs makes them differ."""
    from calib_synthetic import roofline_samples, write_synthetic
    samples = roofline_samples(tp=1)
    for r in samples["attention"]:
        if r["phase"] == "decode":
            r["median_s"] += 2e-7 * r["batch"]                 # a per-sequence cost the roofline lacks
    path = write_synthetic(tmp_path / "perseq.json", samples)
    cal, d = _pcm([*ONE_GPU, f"hardware.calibration={path}"])
    few = GroupBatch(decode_ctx=np.full(4, 4095))
    many = GroupBatch(decode_ctx=np.full(256, 63))             # 256 x 64 = 4 x 4096 KV tokens
    core = [cal._decode_core_s(g.decode_ctx, 1)[0] for g in (few, many)]
    layers = d.model.n_layers
    assert core[1] - core[0] == pytest.approx(layers * 2e-7 * 252, rel=0.05)
    assert d.cost.out_of_domain["attention"] == 0
