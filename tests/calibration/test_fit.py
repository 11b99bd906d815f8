"""Fitting and interpolation: recover a known surface, stay monotone, count what is extrapolated."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calib_synthetic import POW2, provenance, row
from moesim.calibration.fit import _profile, fill_holes, fit_profile, holdout_errors
from moesim.hardware.calibrated import CalibratedCost, RegularGrid, RowGrid


def smooth_gemm_s(m: np.ndarray, k: float, n: float) -> np.ndarray:
    """A smooth latency surface (soft roofline + launch) to recover."""
    compute, memory = 2.0 * m * k * n / 4e11, (k * n + m * (k + n)) * 2 / 2e11
    return np.sqrt(compute ** 2 + memory ** 2) + 5e-6


GRID = {"m": POW2[:12], "k": POW2[6:13], "n": POW2[6:13]}


def _gemm_samples(drop: float = 0.0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [row(float(smooth_gemm_s(np.float64(m), k, n)), dtype="bf16", m=m, k=k, n=n)
            for k in GRID["k"] for n in GRID["n"] for m in GRID["m"] if rng.random() >= drop]


def _cost(samples: dict) -> CalibratedCost:
    return CalibratedCost(_profile(fit_profile(samples, provenance=provenance(), settings={})), strict=False)


@pytest.mark.parametrize(("drop", "rel"), [(0.0, 0.05), (0.15, 0.10)])
def test_fit_recovers_a_known_gemm_surface(drop: float, rel: float) -> None:
    """Off-grid queries match the surface; with 15 % of the grid missing the holes are filled."""
    cost = _cost({"gemm": _gemm_samples(drop)})
    rng = np.random.default_rng(1)
    for _ in range(200):
        m, k, n = np.exp(rng.uniform(np.log([1, 64, 64]), np.log([2048, 4096, 4096])))
        k, n = int(k), int(n)
        assert float(cost.gemm_s(m, k, n)) == pytest.approx(float(smooth_gemm_s(np.float64(m), k, n)), rel=rel)
    assert cost.out_of_domain["gemm"] == 0 and cost.queries["gemm"] == 200


def test_fit_recovers_grouped_and_attention_surfaces() -> None:
    def grouped(a: float, n: float) -> float:
        return 3e-6 + a * (1e-6 + 2e-7 * n)

    def attn(pairs: float, kv: float) -> float:
        return 4e-6 + pairs * 1e-10 + kv * 2e-9
    samples = {
        "grouped_ffn": [row(grouped(a, n), dtype="bf16", hidden=64, intermediate=32, active=a, tokens_per_expert=n)
                        for a in (1, 2, 4, 8) for n in POW2[:10]],
        "attention": [row(attn(b * s * (s + 1) / 2, b * s), phase="prefill", flops_per_pair=64.0,
                          kv_bytes_per_token=32.0, pairs=b * s * (s + 1) / 2, kv_tokens=b * s)
                      for b in (1, 2, 4, 8) for s in POW2[2:11]],
    }
    cost = _cost(samples)
    for a, n in [(3, 5), (6, 100), (2, 300)]:
        assert float(cost.grouped_ffn_s(np.full(a, float(n)), 64, 32)) == pytest.approx(grouped(a, n), rel=0.05)
    for b, s in [(3, 20), (5, 300), (1, 777)]:
        p, kv = b * s * (s + 1) / 2, b * s
        got = float(cost.attention_s(decode=False, pairs=p, kv_tokens=kv, flops_per_pair=64.0, kv_bytes_per_token=32.0))
        assert got == pytest.approx(attn(p, kv), rel=0.05)
    assert cost.out_of_domain["grouped_ffn"] == 0 and cost.out_of_domain["attention"] == 0


def test_skewed_loads_use_the_additive_per_expert_model() -> None:
    samples = {"grouped_ffn": [row(a * (1e-6 + 1e-7 * n), dtype="bf16", hidden=64, intermediate=32, active=a,
                                   tokens_per_expert=n) for a in (1, 2, 4, 8) for n in POW2[:8]]}
    cost = _cost(samples)
    counts = np.array([[64.0, 8.0, 8.0, 16.0], [24.0, 24.0, 24.0, 24.0]])
    # f(a, n) = a * g(n) with g linear, so the per-expert shares add up to sum_e g(n_e)
    expect = [sum(1e-6 + 1e-7 * c for c in counts[0]), 4 * (1e-6 + 1e-7 * 24)]
    assert cost.grouped_ffn_s(counts, 64, 32) == pytest.approx(expect, rel=0.03)


def test_out_of_domain_queries_are_counted_and_fall_back_on_a_roofline() -> None:
    cost = _cost({"gemm": _gemm_samples(), "memory": [row(1e-6 + b / 1e11, kind="d2d", nbytes=b) for b in
                                                       (1e3, 1e4, 1e5, 1e6)],
                  "host": [row(1e-6, kind="launch")]})
    edge = float(cost.gemm_s(2048, 4096, 4096))
    inside = cost.gemm_s(np.array([1, 16, 0]), 256, 256)          # m=0 is no query at all
    assert cost.out_of_domain["gemm"] == 0 and cost.queries["gemm"] == 3 and inside[2] == 0
    big = float(cost.gemm_s(8192, 4096, 4096))                     # m beyond the grid: ~compute-bound x4
    assert cost.out_of_domain["gemm"] == 1
    assert 3.0 < big / edge < 4.2
    cost.gemm_s(np.array([4, 8]), 4096, 20000)                     # n beyond the grid: both counted
    assert cost.out_of_domain["gemm"] == 3
    assert float(cost.memory_s(1e8)) == pytest.approx(1e-6 + 1e8 / 1e11, rel=0.05)
    assert cost.out_of_domain["memory"] == 1
    # the fallback is continuous at the edge of the grid
    assert float(cost.gemm_s(2048 * 1.0001, 4096, 4096)) == pytest.approx(edge, rel=1e-3)


def test_unmeasured_shapes_are_scaled_and_counted() -> None:
    samples = {"grouped_ffn": [row(a * (1e-6 + 1e-7 * n), dtype="bf16", hidden=64, intermediate=32, active=a,
                                   tokens_per_expert=n) for a in (1, 2, 4) for n in POW2[:8]],
               "attention": [row(1e-5 * kv / 64, phase="decode", flops_per_pair=64.0, kv_bytes_per_token=32.0,
                                 pairs=kv, kv_tokens=kv) for kv in POW2[6:14]]}
    cost = _cost(samples)
    cost.grouped_ffn_s(np.array([[4.0, 4.0], [3.0, 0.0]]), 64, 32)
    assert cost.out_of_domain["grouped_ffn"] == 0
    cost.grouped_ffn_s(np.array([4.0, 4.0]), 128, 32)
    assert cost.out_of_domain["grouped_ffn"] == 1
    kw = dict(decode=True, pairs=1000.0, kv_tokens=1000.0, flops_per_pair=64.0)
    same = float(cost.attention_s(**kw, kv_bytes_per_token=32.0))
    double = float(cost.attention_s(**kw, kv_bytes_per_token=64.0))   # twice the KV bytes: memory-bound x2
    assert cost.out_of_domain["attention"] == 1
    assert double / same == pytest.approx(2.0, rel=0.05)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.01, 3.0), min_size=4, max_size=8), st.lists(st.floats(0.01, 3.0), min_size=3, max_size=3))
def test_interpolation_is_monotone_where_the_data_is(steps_m: list[float], steps_k: list[float]) -> None:
    ms = np.cumprod([1.0] + [2.0] * len(steps_m))
    ks = np.array([32.0, 64.0, 128.0, 256.0])
    tm = np.cumsum([1.0, *steps_m])
    tk = np.cumsum([1.0, *steps_k])
    grid = RegularGrid([ms, ks], 1e-6 * tm[:, None] * tk[None, :])
    q = np.exp(np.linspace(0, np.log(ms[-1]), 400))
    for k in (32.0, 50.0, 100.0, 256.0):
        lt = grid(q, k)[0]
        assert np.all(np.diff(lt) >= -1e-12)
    kq = np.exp(np.linspace(np.log(32), np.log(256), 200))
    assert np.all(np.diff(grid(3.3, kq)[0]) >= -1e-12)


def test_row_grid_blends_rows_and_reports_the_domain() -> None:
    rows = [{"u": 1.0, "x": [1.0, 10.0], "s": [1.0, 10.0]}, {"u": 100.0, "x": [1.0, 100.0], "s": [2.0, 200.0]}]
    g = RowGrid(rows, ykey="u", xkey="x")
    lt, inside, _ = g(np.array([10.0, 1.0, 1000.0]), np.array([5.0, 5.0, 5.0]))
    assert np.exp(lt[1]) == pytest.approx(5.0)
    assert np.exp(lt[0]) == pytest.approx(np.sqrt(5.0 * 10.0))   # half way in log u
    assert list(inside) == [True, True, False]


def test_fill_holes_interpolates_then_extrapolates() -> None:
    axes = [np.log([1.0, 2.0, 4.0, 8.0]), np.log([1.0, 2.0])]
    full = np.log(np.outer([1.0, 2.0, 4.0, 8.0], [1.0, 2.0]))
    holed = full.copy()
    holed[1, 0] = holed[3, 1] = np.nan
    assert np.allclose(fill_holes(axes, holed), full)


def test_holdout_reports_small_error_on_a_smooth_surface() -> None:
    rep = holdout_errors({"gemm": _gemm_samples()}, fraction=0.2, seed=3)
    assert rep["gemm"]["n"] > 20 and rep["gemm"]["median_abs_pct"] < 3.0
