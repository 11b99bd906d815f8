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


# ---------------------------------------------------------------------- decode by sequences
def _decode_surface(b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Decode time of ``b`` sequences of ``s`` KV tokens: a fixed cost per sequence plus the KV read."""
    return 4e-6 + b * (2e-7 + 1e-9 * s)


def _decode_samples() -> list[dict]:
    return [row(float(_decode_surface(b, s)), phase="decode", flops_per_pair=64.0, kv_bytes_per_token=32.0,
                pairs=b * s, kv_tokens=b * s, batch=b) for b in POW2[:9] for s in POW2[2:15] if b * s <= 1 << 20]


def test_decode_time_depends_on_sequences_at_equal_kv() -> None:
    cost = _cost({"attention": _decode_samples()})
    kw = dict(decode=True, flops_per_pair=64.0, kv_bytes_per_token=32.0)
    kv = 8192.0
    few, many = (float(cost.attention_s(pairs=kv, kv_tokens=kv, seqs=n, **kw)) for n in (1, 64))
    assert few == pytest.approx(float(_decode_surface(1, kv)), rel=0.02)
    assert many == pytest.approx(float(_decode_surface(64, kv / 64)), rel=0.02)
    assert many > 2 * few                                      # same KV, 64x the per-sequence work
    rng = np.random.default_rng(2)
    for _ in range(100):    # off-grid points both neighbouring rows cover (the measured grid is a triangle)
        b = float(np.exp(rng.uniform(0, np.log(256))))
        s = float(np.exp(rng.uniform(np.log(4), np.log(min(16384, (1 << 19) / b)))))
        got = float(cost.attention_s(pairs=b * s, kv_tokens=b * s, seqs=b, **kw))
        assert got == pytest.approx(float(_decode_surface(b, s)), rel=0.05)
    assert cost.out_of_domain["attention"] == 0
    # a fast-forwarded run: the sequences stay, the KV grows (vectorised over steps)
    steps = cost.attention_s(pairs=kv + 16 * np.arange(4.0), kv_tokens=kv + 16 * np.arange(4.0), seqs=16, **kw)
    assert steps.shape == (4,) and np.all(np.diff(steps) > 0)
    assert float(cost.attention_s(pairs=kv, kv_tokens=kv, **kw)) == pytest.approx(few)   # seqs unknown: one sequence


def test_decode_outside_the_measured_sequences_is_counted_and_continuous() -> None:
    cost = _cost({"attention": _decode_samples()})
    kw = dict(decode=True, flops_per_pair=64.0, kv_bytes_per_token=32.0)
    edge = float(cost.attention_s(pairs=256 * 64.0, kv_tokens=256 * 64.0, seqs=256, **kw))
    assert cost.out_of_domain["attention"] == 0
    past = float(cost.attention_s(pairs=256.01 * 64.0, kv_tokens=256.01 * 64.0, seqs=256.01, **kw))
    assert cost.out_of_domain["attention"] == 1 and past == pytest.approx(edge, rel=1e-3)
    far = float(cost.attention_s(pairs=1024 * 4096.0, kv_tokens=1024 * 4096.0, seqs=1024, **kw))
    assert cost.out_of_domain["attention"] == 2 and far > edge


def test_prefill_index_by_sequences_agrees_on_fresh_prompts() -> None:
    samples = {"attention": [row(4e-6 + b * s * (s + 1) / 2 * 1e-10 + b * s * 2e-9, phase="prefill",
                                 flops_per_pair=64.0, kv_bytes_per_token=32.0, pairs=b * s * (s + 1) / 2,
                                 kv_tokens=b * s, batch=b) for b in (1, 2, 4, 8) for s in POW2[2:11]]}
    cost = _cost(samples)
    kw = dict(decode=False, flops_per_pair=64.0, kv_bytes_per_token=32.0)
    for b, s in [(3, 20), (5, 300), (1, 777)]:
        p, kv = b * s * (s + 1) / 2, b * s
        assert float(cost.attention_s(pairs=p, kv_tokens=kv, seqs=b, **kw)) == pytest.approx(
            float(cost.attention_s(pairs=p, kv_tokens=kv, **kw)), rel=1e-6)
    # a chunk after a cached prefix: indexed by its one sequence, at the FLOPs of the chunk
    chunk = float(cost.attention_s(pairs=512 * 3000 + 512 * 513 / 2, kv_tokens=3512, seqs=1, **kw))
    assert chunk > float(cost.attention_s(pairs=512 * 513 / 2, kv_tokens=512, seqs=1, **kw))


def test_decode_tables_fitted_before_sequences_still_answer() -> None:
    """A profile whose decode rows are one ``u = 1`` row over total KV tokens (the old layout)."""
    data = fit_profile({"attention": [r for r in _decode_samples() if r["batch"] == 1]}, provenance=provenance(),
                       settings={})
    (tab,) = data["fit"]["tables"]["eager"]["attention"]
    (r,) = tab["rows"]
    tab["rows"] = [{"u": 1.0, "x": r["kv"], "s": r["s"]}]
    cost = CalibratedCost(_profile(data), strict=False)
    kw = dict(decode=True, pairs=1000.0, kv_tokens=1000.0, flops_per_pair=64.0, kv_bytes_per_token=32.0)
    assert float(cost.attention_s(**kw, seqs=8)) == pytest.approx(float(_decode_surface(1, 1000)), rel=0.02)
    assert cost.out_of_domain["attention"] == 0


# ---------------------------------------------------------------------- host overhead per pass
def _host_profile(graph: bool) -> dict:
    gemm = _gemm_samples()
    if graph:
        gemm = [{**r, "graph_median_s": 0.8 * r["median_s"]} for r in gemm]
    host = [row(3e-6, kind="launch"), row(5e-6, kind="per_op")] + ([row(4e-6, kind="graph_launch")] if graph else [])
    return fit_profile({"gemm": gemm, "host": host}, provenance=provenance(), settings={})


def test_eager_passes_pay_launches_inside_the_tables_and_graph_passes_one_launch() -> None:
    """The eager tables time ops launched back to back (each answer is already max(host issue,
    device)): an eager pass adds nothing per kernel, only the framework's time; a CUDA-graph pass
    adds one graph launch, however many kernels it holds."""
    data = _host_profile(graph=True)
    assert data["fit"]["host"] == pytest.approx({"per_op_s": 5e-6, "launch_s": 3e-6, "kernel_s": 5e-6,
                                                 "graph_launch_s": 4e-6})
    prof = _profile(data)
    eager = CalibratedCost(prof, strict=False, host_overhead_s=1e-3)
    assert eager.host_overhead_s == 1e-3
    graph = CalibratedCost(prof, strict=False, host_overhead_s=1e-3, mode="graph")
    assert graph.host_overhead_s == pytest.approx(1e-3 + 4e-6)
    eager.host_overhead_s = 0.0                                # the framework part can be set, as before
    graph.host_overhead_s = 0.0
    assert eager.host_overhead_s == 0.0 and graph.host_overhead_s == pytest.approx(4e-6)


def test_host_costs_of_profiles_without_a_host_fit() -> None:
    data = _host_profile(graph=False)
    del data["fit"]["host"]                                    # a profile fitted before fit.host existed
    cost = CalibratedCost(_profile(data), strict=False)
    assert cost.host["graph_launch_s"] == pytest.approx(3e-6) and cost.host["kernel_s"] == pytest.approx(5e-6)
    bare = CalibratedCost(_profile(fit_profile({"gemm": _gemm_samples()}, provenance=provenance(), settings={})),
                          strict=False)
    assert bare.host["kernel_s"] == bare.launch_s            # nothing measured: the roofline launch latency
