"""The torch measuring path on CPU at tiny sizes: a valid profile, resumable, honest provenance."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from moesim.hardware.calibrated import CalibratedCost
from moesim.hardware.profile import SAMPLE_KEYS, load_profile

torch = pytest.importorskip("torch")

from moesim.calibration import measure  # noqa: E402 - after the torch skip


def test_measured_profile_is_valid_and_complete(cpu_profile: Path) -> None:
    prof = load_profile(cpu_profile)
    assert {"gemm", "grouped_ffn", "attention", "memory", "host"} <= set(prof.samples)
    for op, rows in prof.samples.items():
        for r in rows:
            assert set(SAMPLE_KEYS[op]) <= set(r) and r["median_s"] > 0 and r["reps"] == 3
    p = prof.provenance
    assert p["device"] == "cpu" and p["torch"] == torch.__version__ and p["gpu_name"].startswith("cpu: ")
    assert p["date"] and "moesim calibrate" in p["command"]
    assert prof.samples["grouped_ffn"][0]["impl"] in ("grouped_mm", "loop")
    assert any(r.get("skew") == "zipf1.2" for r in prof.samples["grouped_ffn"])
    assert prof.modes() == ["eager"]                       # no CUDA graphs on CPU
    cost = CalibratedCost(prof)                            # strict: every op of a pass has a table
    assert float(cost.gemm_s(8, 64, 64)) > 0
    assert not Path(str(cpu_profile) + ".partial.json").exists()


def test_resume_skips_finished_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = measure.Settings(device="cpu", quick=True, repeats=2, warmup=1, models=("tiny",))
    out = tmp_path / "p.json"
    first = measure.measure(settings, out=out, stream=io.StringIO())
    assert Path(str(out) + ".partial.json").is_file()
    calls = []
    monkeypatch.setattr(measure.Timer, "time", lambda self, fn: calls.append(1) or {})
    again = measure.measure(settings, out=out, resume=True, stream=io.StringIO())
    assert calls == [] and again == first and first[1] == []
    other = measure.Settings(device="cpu", quick=False, repeats=2, warmup=1, models=("tiny",))
    with pytest.raises(Exception, match="other settings"):
        measure.measure(other, out=out, resume=True, stream=io.StringIO())


def test_time_budget_stops_early_and_resume_finishes(tmp_path: Path) -> None:
    settings = measure.Settings(device="cpu", quick=True, repeats=2, warmup=1, models=("tiny",))
    out = tmp_path / "p.json"
    samples, skipped = measure.measure(settings, out=out, stream=io.StringIO(), budget_s=1e-9)
    assert samples == {} and skipped and all(k.endswith("(time budget)") for k in skipped)
    assert Path(str(out) + ".partial.json").is_file()
    full, rest = measure.measure(settings, out=out, resume=True, stream=io.StringIO())
    assert rest == [] and sum(len(r) for r in full.values()) == len(skipped)


def test_timer_reports_median_and_spread() -> None:
    timer = measure.Timer(torch, measure.Settings(device="cpu", repeats=5, warmup=1, min_rep_s=1e-4))
    x = torch.randn(32, 32)
    row = timer.time(lambda: x @ x)
    assert row["reps"] == 5 and row["min_s"] <= row["median_s"] <= row["max_s"] and row["inner"] >= 1
    assert row["spread"] >= 0 and "graph_median_s" not in row


def test_grouped_experts_match_a_dense_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 16, generator=gen)
    w13, w2 = torch.randn(3, 16, 8, generator=gen), torch.randn(3, 4, 16, generator=gen)
    counts = [5, 0, 7]
    got = measure.swiglu_experts(torch, x, w13, w2, counts, "loop")
    ref = []
    for e, (lo, hi) in zip((0, 2), ((0, 5), (5, 12))):
        g, u = (x[lo:hi] @ w13[e]).chunk(2, dim=-1)
        ref.append((torch.nn.functional.silu(g) * u) @ w2[e])
    assert torch.allclose(got, torch.cat(ref), atol=1e-5)
    assert measure.grouped_impl(torch, "cpu", torch.float32) in ("grouped_mm", "loop")


def test_plan_is_tiny_on_cpu() -> None:
    from moesim.calibration.reference import TINY
    plan = measure.make_plan("cpu", True, [TINY])
    assert max(plan.gemm_m) <= 64 and plan.gemm_max_flops <= 1e9
    assert np.prod([len(plan.gemm_m), len(plan.gemm_k), len(plan.gemm_n)]) < 50
