"""The HTML report and its figures, from seeded fake RunResults (no engine, no browser)."""

from __future__ import annotations

import ast
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.offline
import pytest
from fake_result import make_result

import moesim.report
from moesim.metrics.result import RunResult
from moesim.report import render_html, write_html
from moesim.report.figures import (
    MAX_CDF_POINTS,
    build_figures,
    expert_load_heatmap,
    kv_occupancy,
    latency_cdf,
    rank_load_heatmap,
    throughput,
)
from moesim.report.html import format_kpi

ALL_FIGURES = ["latency_cdf", "throughput", "queue_depth", "kv_occupancy", "busy_fraction",
               "batch_size", "expert_load", "rank_load", "imbalance", "imbalance_before_after",
               "placement_map", "rank_load_timeline", "migrations"]
"""Panels of the default fake MoE run (no OOM, so no ``oom_events``)."""
MOE_ONLY = {"expert_load", "rank_load", "imbalance", "imbalance_before_after", "placement_map",
            "rank_load_timeline", "migrations", "oom_events"}
PLOTLY_JS = plotly.offline.get_plotlyjs()


@pytest.fixture(scope="module")
def moe_html() -> str:
    """The report of a 2-replica MoE run."""
    return render_html(make_result(seed=1))


def figure_names(page: str) -> list[str]:
    """``data-figure`` names of the figure divs, in page order."""
    return re.findall(r'<div class="figure"[^>]*\bdata-figure="([^"]+)"', page)


def test_exports() -> None:
    assert moesim.report.__all__ == ["render_html", "write_html"]


def test_plotly_js_inlined_exactly_once(moe_html: str) -> None:
    assert moe_html.count(PLOTLY_JS[:2000]) == 1
    assert moe_html.count(PLOTLY_JS[-2000:]) == 1


def test_offline_no_remote_resources(moe_html: str) -> None:
    assert not re.search(r"<script[^>]*\bsrc\s*=", moe_html, re.IGNORECASE)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", moe_html, re.IGNORECASE)
    # Outside the plotly.js bundle itself the page holds no URL at all (so no MathJax / CDN).
    rest = moe_html.replace(PLOTLY_JS, "")
    assert "http://" not in rest
    assert "https://" not in rest
    assert "mathjax" not in rest.lower().replace("mathjaxconfig: 'local'", "")


def test_every_figure_div_present(moe_html: str) -> None:
    assert figure_names(moe_html) == ALL_FIGURES
    assert moe_html.count("Plotly.newPlot(") == len(ALL_FIGURES)


def test_dense_result_skips_moe_panels() -> None:
    result = make_result(seed=2, moe=False)
    assert result.expert_load == []
    page = render_html(result)
    assert figure_names(page) == [n for n in ALL_FIGURES if n not in MOE_ONLY]
    assert page.count(PLOTLY_JS[:2000]) == 1
    assert "expert imbalance" not in page
    assert "MoE health" not in page


def test_empty_result_still_renders() -> None:
    empty = RunResult(config={}, provenance={}, summary={}, requests=pd.DataFrame(),
                      timeseries=pd.DataFrame(), batch_hist=pd.DataFrame())
    assert build_figures(empty) == {}
    page = render_html(empty)
    assert figure_names(page) == []
    assert "No figures" in page
    assert "No summary recorded" in page


def test_kpis_provenance_and_config_rendered(moe_html: str) -> None:
    result = make_result(seed=1)
    assert format_kpi("ttft_p99_s", result.summary["ttft_p99_s"]) in moe_html
    assert result.provenance["scenario_hash"] in moe_html
    assert "9f2c4e1a" in moe_html  # calibration hash
    assert re.search(r"<details>\s*<summary>Scenario config", moe_html)
    assert "&quot;rate_per_s&quot;" in moe_html  # config JSON, escaped inside <pre>


def test_missing_and_unknown_summary_keys() -> None:
    result = replace(make_result(seed=1), summary={"scenario": "tiny", "gpus": 8,
                                                   "new_metric_s": 0.25})
    page = render_html(result)
    assert "Latency</h3>" not in page
    assert "Throughput</h3>" not in page
    assert "Other</h3>" in page
    assert "250 ms" in page


def test_user_strings_are_escaped() -> None:
    evil = "<script>alert(1)</script>"
    base = make_result(seed=1)
    result = replace(base, summary={**base.summary, "scenario": evil},
                     config={**base.config, "name": evil})
    page = render_html(result)
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_write_html(tmp_path: Path) -> None:
    result = make_result(seed=4)
    out = write_html(result, str(tmp_path / "sub" / "report.html"))
    assert isinstance(out, Path)
    assert out.read_text(encoding="utf-8") == render_html(result)


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("ttft_p99_s", 0.0123, "12.3 ms"),
    ("tpot_mean_s", 2.5e-5, "25 µs"),
    ("sim_time_s", 3600.0, "60.0 min"),
    ("e2e_p50_s", 4.2, "4.2 s"),
    ("output_tokens_per_s", 12345.0, "12.3 ktok/s"),
    ("output_tokens_per_s_per_gpu", 67.6, "67.6 tok/s/GPU"),
    ("goodput_requests_per_s", 4.2, "4.2 req/s"),
    ("slo_attainment", 0.925, "92.5%"),
    ("busy_fraction_mean", np.float64(0.5), "50.0%"),
    ("expert_imbalance_mean", 1.25, "1.250×"),
    ("kv_capacity_tokens", 1234567, "1,234,567 tokens"),
    ("des_events", np.int64(1234), "1,234"),
    ("batch_size_mean", 25.5912, "25.59"),
    ("scenario", "chat", "chat"),
    ("ttft_mean_s", None, "—"),
    ("ttft_mean_s", math.nan, "—"),
])
def test_format_kpi(key: str, value: object, shown: str) -> None:
    assert format_kpi(key, value) == shown


def test_latency_cdf_is_log_x_and_monotone() -> None:
    fig = latency_cdf(make_result(seed=5, n_requests=5000))
    assert fig is not None
    assert fig.layout.xaxis.type == "log"
    assert [t.name.split()[0] for t in fig.data] == ["TTFT", "TPOT", "E2E"]
    for trace in fig.data:
        x, y = np.asarray(trace.x), np.asarray(trace.y)
        assert len(x) <= MAX_CDF_POINTS
        assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) > 0)
        assert y[-1] == pytest.approx(1.0)
        assert np.all(x > 0)


def test_throughput_sums_replicas() -> None:
    result = make_result(seed=6, replicas=3, bin_s=2.0)
    fig = throughput(result)
    assert fig is not None
    ts = result.timeseries
    expected = ts.groupby("t_s")["decode_tokens"].sum().to_numpy() / 2.0
    output = next(t for t in fig.data if t.name.startswith("output"))
    np.testing.assert_allclose(np.asarray(output.y), expected)


def test_few_replicas_get_lines_and_dropdown() -> None:
    result = make_result(seed=7, replicas=3)
    kv = kv_occupancy(result)
    assert kv is not None and len(kv.data) == 3
    heat = expert_load_heatmap(result)
    assert heat is not None and len(heat.data) == 4  # sum + one per replica
    assert [b.label for b in heat.layout.updatemenus[0].buttons][0] == "sum of 3 replicas"
    np.testing.assert_allclose(np.asarray(heat.data[0].z).sum(axis=1), 1.0)


def test_many_replicas_get_band_and_sum_only() -> None:
    result = make_result(seed=8, replicas=20)
    kv = kv_occupancy(result)
    assert kv is not None and [t.name for t in kv.data][:2] == ["min", "max"]
    heat = rank_load_heatmap(result)
    assert heat is not None and len(heat.data) == 1 and not heat.layout.updatemenus
    total = sum(result.rank_load)
    np.testing.assert_allclose(np.asarray(heat.data[0].z), total / total.sum(axis=1,
                                                                             keepdims=True))


def test_report_layer_imports_only_metrics() -> None:
    """report may import moesim.metrics and itself, never engine or other layers."""
    package = Path(moesim.report.__file__).parent
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("moesim"):
                    assert name.split(".")[1] in {"metrics", "report"}, (module.name, name)
