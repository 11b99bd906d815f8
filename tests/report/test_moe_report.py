"""MoE panels and KPIs of the report: placement map, per-rank load over time, imbalance before /
after balancing, migrations, OOM events, the "MoE health" card and calibration ± bands."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from fake_result import make_result

from moesim.report import render_html
from moesim.report.figures import PANELS, all_panels, build_figures
from moesim.report.html import format_kpi
from moesim.report.moe_figures import (
    MOE_PANELS,
    imbalance_before_after,
    migrations_timeline,
    oom_events,
    placement_map,
    rank_load_timeline,
)

MOE_NAMES = [name for name, _ in MOE_PANELS]


def figure_names(page: str) -> list[str]:
    """``data-figure`` names of the figure divs, in page order."""
    return re.findall(r'<div class="figure"[^>]*\bdata-figure="([^"]+)"', page)


def card(page: str, title: str) -> str:
    """The HTML of the KPI card titled ``title`` (empty when absent)."""
    m = re.search(rf'<div class="card[^"]*"><h3>{re.escape(title)}</h3>.*?</table></div>', page)
    return m.group(0) if m else ""


@pytest.fixture(scope="module")
def full():
    """A MoE run with every MoE record: replicas, re-plans, OOM passes, calibration."""
    return make_result(seed=11, oom_passes=5, tokens_dropped=1234, calibrated=True)


def test_moe_panels_follow_the_general_ones() -> None:
    assert all_panels()[:len(PANELS) + len(MOE_PANELS)] == PANELS + MOE_PANELS
    assert MOE_NAMES == ["imbalance_before_after", "placement_map", "rank_load_timeline",
                         "migrations", "oom_events"]


def test_every_moe_panel_present_with_data(full) -> None:
    page = render_html(full)
    names = figure_names(page)
    assert names == list(build_figures(full))
    assert [n for n in names if n in MOE_NAMES] == MOE_NAMES  # all there, in MOE_PANELS order
    for name in MOE_NAMES:
        assert f'href="#fig-{name}"' in page


@pytest.mark.parametrize(("panel", "change"), [
    ("placement_map", {"placements": []}),
    ("rank_load_timeline", {"rank_timeseries": pd.DataFrame()}),
    ("migrations", {"migrations": pd.DataFrame(columns=["replica", "time_s", "bytes", "pause_s"])}),
    ("oom_events", {"oom": pd.DataFrame()}),
])
def test_each_moe_panel_absent_without_its_data(full, panel: str, change: dict) -> None:
    names = figure_names(render_html(replace(full, **change)))
    assert panel not in names
    assert set(MOE_NAMES) - {panel} <= set(names)


def test_before_after_needs_the_routed_column(full) -> None:
    imb = full.imbalance.drop(columns=["imbalance_routed_mean"])
    assert imbalance_before_after(replace(full, imbalance=imb)) is None
    assert "imbalance" in build_figures(replace(full, imbalance=imb))  # the table stays


def test_oom_panel_only_when_a_pass_overflowed() -> None:
    assert oom_events(make_result(seed=12)) is None  # table present, zero passes
    assert "oom_events" not in figure_names(render_html(make_result(seed=12)))
    result = make_result(seed=12, oom_passes=9)
    fig = oom_events(result)
    assert fig is not None
    cells = fig.data[0].cells.values
    assert list(cells[0]) == ["0", "1"]
    assert list(cells[1]) == ["9", "0"]
    assert cells[2][0] == format_kpi("first_oom_s", result.oom["first_oom_s"][0])
    assert cells[2][1] == "—"
    assert cells[3][0].endswith("GB")


def test_static_placement_has_no_migrations_panel() -> None:
    result = make_result(seed=13, replan_s=None)
    assert result.migrations.empty
    assert migrations_timeline(result) is None
    names = figure_names(render_html(result))
    assert "migrations" not in names and "placement_map" in names


def test_dense_run_has_no_moe_panels_or_card() -> None:
    page = render_html(make_result(seed=14, moe=False))
    assert not set(MOE_NAMES) & set(figure_names(page))
    assert card(page, "MoE health") == ""


def test_placement_map_cells_slider_and_copies(full) -> None:
    fig = placement_map(full)
    assert fig is not None
    layers, slots = full.placements[0].shape
    ranks = full.rank_load[0].shape[1]
    per = slots // ranks
    heat = fig.data[0]
    assert len(fig.layout.sliders[0].steps) == layers
    assert list(heat.x) == list(range(per))
    # two replicas with different placements: one block of rank rows each
    assert len(heat.y) == 2 * ranks and heat.y[0] == "replica 0 · rank 0"
    z = np.array(heat.z, dtype=float)  # None (empty slot) becomes NaN
    text = np.array(heat.text)
    phy = full.placements[0][0]
    grid = phy.reshape(ranks, per)
    np.testing.assert_array_equal(text[:ranks][grid >= 0].astype(int), grid[grid >= 0])
    assert np.isnan(z[:ranks][grid < 0]).all() and (text[:ranks][grid < 0] == "").all()
    copies = {e: int((phy == e).sum()) for e in np.unique(phy[phy >= 0])}
    for (r, s), e in np.ndenumerate(grid):
        if e >= 0:
            assert z[r, s] == copies[e]
            assert list(heat.customdata[r][s][:3]) == [r * per + s, e, copies[e]]
    assert max(copies.values()) > 1 and heat.showscale
    # the slider's last step carries the last layer's grid
    last = fig.layout.sliders[0].steps[-1].args[0]
    assert np.array(last["text"][0])[0].tolist() == [
        str(e) if e >= 0 else "" for e in full.placements[0][-1][:per]]


def test_identical_placements_share_one_block(full) -> None:
    same = replace(full, placements=[full.placements[0]] * 2)
    fig = placement_map(same)
    assert fig is not None
    ranks = full.rank_load[0].shape[1]
    assert list(fig.data[0].y) == [f"rank {r}" for r in range(ranks)]
    assert "all 2 replicas" in fig.layout.title.text


def test_placement_map_needs_a_rank_count_that_divides_the_slots(full) -> None:
    odd = [p[:, :-1] for p in full.placements]  # 39 slots over 8 ranks
    assert placement_map(replace(full, placements=odd)) is None


def test_rank_load_timeline_shares_and_dropdown(full) -> None:
    fig = rank_load_timeline(full)
    assert fig is not None
    ranks = full.rank_load[0].shape[1]
    heat = fig.data[0]
    z = np.array(heat.z, dtype=float)
    assert z.shape[0] == ranks
    np.testing.assert_allclose(np.nansum(z, axis=0), 1.0)
    assert heat.zmin < 1 / ranks < heat.zmax
    assert heat.zmax - 1 / ranks == pytest.approx(1 / ranks - heat.zmin)
    # sum + one per replica, each a (heatmap, max/mean line) pair
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert labels == ["sum of 2 replicas", "replica 0", "replica 1"]
    assert len(fig.data) == 6
    line = np.array(fig.data[1].y, dtype=float)
    np.testing.assert_allclose(line, np.nanmax(z, axis=0) * ranks)
    # one dotted line per distinct migration time
    assert len(fig.layout.shapes) == full.migrations["time_s"].round(6).nunique()


def test_rank_load_timeline_drops_trailing_empty_bins(full) -> None:
    rt = full.rank_timeseries
    tail = rt[rt["t_s"] == rt["t_s"].max()].assign(t_s=rt["t_s"].max() + 5.0, tokens=0)
    fig = rank_load_timeline(replace(full, rank_timeseries=pd.concat([rt, tail])))
    assert fig is not None
    assert max(fig.data[0].x) == pytest.approx(rt["t_s"].max() + 1.0)  # the last bin's end


def test_imbalance_bars_match_the_table(full) -> None:
    fig = imbalance_before_after(full)
    assert fig is not None
    before, after = fig.data
    assert list(before.x) == ["all replicas", "replica 0", "replica 1"]
    np.testing.assert_allclose(before.customdata[1:], full.imbalance["imbalance_routed_mean"])
    np.testing.assert_allclose(after.customdata[1:], full.imbalance["imbalance_mean"])
    assert before.customdata[0] == pytest.approx(full.summary["expert_imbalance_placed_mean"])
    np.testing.assert_allclose(np.array(after.base) + np.array(after.y), after.customdata)


def test_migrations_bars_are_visible_and_totalled(full) -> None:
    fig = migrations_timeline(full)
    assert fig is not None
    mig = full.migrations
    top = [t for t in fig.data if t.yaxis == "y"]
    assert sum(float(np.sum(t.y)) for t in top) == pytest.approx(mig["bytes"].sum() / 1e9)
    assert all(t.width > 1.0 for t in fig.data)  # re-plans 15 s apart: bars seconds wide
    assert format_kpi("bytes", float(mig["bytes"].sum())) in fig.layout.title.text


def test_moe_health_card(full) -> None:
    page = render_html(full)
    moe = card(page, "MoE health")
    s = full.summary
    for key in ("tokens_dropped", "expert_weight_bytes_moved", "replans", "migration_pause_s",
                "oom_passes", "peak_moe_activation_bytes", "moe_comm_fraction"):
        assert format_kpi(key, s[key]) in moe, key
    assert "1,234" in moe and "GB" in moe
    first = format_kpi("first_oom_s", float(full.oom["first_oom_s"].min()))
    assert f"(first at {first})" in moe
    assert card(page, "Other") == "" or "tokens dropped" not in card(page, "Other")


def test_calibration_card_and_pm_bands(full) -> None:
    page = render_html(full)
    s = full.summary
    latency = card(page, "Latency")
    assert f"{format_kpi('ttft_p50_s', s['ttft_p50_s'])} <span class=pm>± " \
           f"{format_kpi('ttft_p50_s', s['ttft_p50_s_pm'])}</span>" in latency
    throughput = card(page, "Throughput")
    assert "± " + format_kpi("output_tokens_per_s", s["output_tokens_per_s_pm"]) in throughput
    calib = card(page, "Calibration")
    assert "out of domain: gemm" in calib and "out of domain: attention" in calib
    assert "4.0%" in calib  # spread
    assert "_pm" not in page.split("<h2>Provenance")[0]
    assert card(page, "Other").count("±") == 0


def test_uncalibrated_run_shows_no_bands() -> None:
    page = render_html(make_result(seed=15))
    assert card(page, "Calibration") == ""
    assert "±" not in card(page, "Latency")


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("expert_weight_bytes_moved", 160268550144.0, "160 GB"),
    ("expert_weight_bytes_moved", 18258308628480.0, "18.3 TB"),
    ("peak_moe_activation_bytes", 310546432.0, "311 MB"),
    ("weight_bytes_per_gpu", 512.0, "512 B"),
    ("expert_weight_bytes_moved", 0.0, "0 B"),
    ("migration_pause_s", 0.1213, "121 ms"),
    ("moe_comm_fraction", 0.0548, "5.5%"),
    ("moe_comm_fraction", None, "—"),
    ("tokens_dropped", 12345, "12,345"),
    ("replans", 18, "18"),
    ("expert_imbalance_placed_mean", 3.68852, "3.689×"),
    ("calibration_spread_rel", 0.0312, "3.1%"),
    ("calibration_out_of_domain_gemm", 7, "7"),
    ("ttft_p50_s_pm", 0.0004, "± 400 µs"),
    ("output_tokens_per_s_pm", 1234.0, "± 1.23 ktok/s"),
])
def test_format_new_kpis(key: str, value: object, shown: str) -> None:
    assert format_kpi(key, value) == shown
