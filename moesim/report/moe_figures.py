"""MoE panels of a run report: placement map, per-rank load over time, imbalance before / after
balancing, expert-weight migrations and OOM events.

Like ``figures``, every builder is a pure function ``RunResult -> plotly Figure | None`` that
returns ``None`` when the run recorded nothing for its panel (dense model, static placement, no
OOM), so the page leaves the panel out. ``MOE_PANELS`` lists them in page order; they follow the
panels of ``figures.PANELS``.

Conventions shared with the engine (``moesim/metrics/result.py``): ``placements[i]`` is
``[moe_layers, slots]`` with the logical expert of each physical slot (-1 = empty), and EP rank
``r`` holds slots ``r*S .. (r+1)*S - 1`` where ``S = slots / ranks`` and the rank count is the
second dimension of the ``rank_load`` arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import DEFAULT_PLOTLY_COLORS
from plotly.subplots import make_subplots

from moesim.report.figures import MAX_DROPDOWN_REPLICAS, MAX_REPLICA_LINES, _has, _style
from moesim.report.html import format_kpi

if TYPE_CHECKING:
    from collections.abc import Callable

    from moesim.metrics.result import RunResult

__all__ = [
    "MOE_PANELS", "imbalance_before_after", "migrations_timeline", "oom_events", "placement_map",
    "rank_load_timeline",
]

MAX_PLACEMENT_ROWS = 64
"""The placement map stacks distinct placements (one block of EP-rank rows each) up to this
many rows; replicas with identical placements share a block."""
MAX_PLACEMENT_TEXT_COLUMNS = 40
"""Above this many slots per rank the map leaves the expert ids out of the cells (hover only)."""
_COPIES_SCALE = [[0.0, "#dfe8f3"], [0.25, "#fdd49e"], [0.6, "#f16913"], [1.0, "#8c2d04"]]
_BEFORE, _AFTER = "#9aa7b8", "#1f77b4"


def _replica_ids(result: RunResult, n: int) -> list[int]:
    """Replica index of the i-th per-replica array: the engine appends one per replica that ran
    MoE passes, in the order of the ``imbalance`` rows."""
    imb = result.imbalance
    if _has(imb, "replica") and len(imb) == n:
        return [int(r) for r in imb["replica"].to_numpy()]
    return list(range(n))


def _rank_count(result: RunResult, slots: int) -> int | None:
    """EP ranks of the run (``rank_load``'s second dimension, else the rank time series);
    ``None`` when unknown or when it does not divide ``slots``."""
    ranks = next((np.asarray(a).shape[1] for a in result.rank_load
                  if np.asarray(a).ndim == 2 and np.asarray(a).shape[1] > 0), None)
    if ranks is None and _has(result.rank_timeseries, "rank"):
        ranks = int(result.rank_timeseries["rank"].max()) + 1
    if not ranks or slots % ranks:
        return None
    return int(ranks)


def _replica_label(ids: list[int]) -> str:
    """``replica 3`` or ``replicas 0, 1, 2`` (long lists shortened)."""
    if len(ids) == 1:
        return f"replica {ids[0]}"
    shown = ", ".join(str(i) for i in ids[:4]) + (f", … ({len(ids)})" if len(ids) > 4 else "")
    return f"replicas {shown}"


def _layer_cells(phy2log: np.ndarray, ranks: int, share: np.ndarray | None) -> dict[str, list]:
    """Heatmap data of one layer's ``[slots]`` row as a ``[ranks, S]`` grid: z = copies of the
    slot's expert in the layer (None: empty), text = expert id, customdata = hover fields."""
    row = np.asarray(phy2log, dtype=np.int64)
    per = row.size // ranks
    experts, counts = np.unique(row[row >= 0], return_counts=True)
    copies = dict(zip(experts.tolist(), counts.tolist()))
    z: list[list[Any]] = []
    text: list[list[str]] = []
    custom: list[list[list[Any]]] = []
    for r in range(ranks):
        zr, tr, cr = [], [], []
        for s in range(per):
            e = int(row[r * per + s])
            if e < 0:
                zr.append(None)
                tr.append("")
                cr.append([r * per + s, "empty", "", ""])
                continue
            zr.append(copies[e])
            tr.append(str(e))
            load = (f"{share[e]:.2%}" if share is not None and e < share.size
                    else "n/a")
            cr.append([r * per + s, e, copies[e], load])
        z.append(zr)
        text.append(tr)
        custom.append(cr)
    return {"z": z, "text": text, "customdata": custom}


def placement_map(result: RunResult) -> go.Figure | None:
    """Which logical expert sits in each physical slot of each EP rank, one MoE layer at a time.

    Rows are EP ranks (stacked per distinct placement when replicas differ), columns the slots of
    a rank; a cell shows the expert id and is coloured by how many copies of that expert the layer
    holds (replicas of hot experts stand out). A slider picks the MoE layer.
    """
    arrays = [np.asarray(p) for p in result.placements]
    kept = [a for a in arrays if a.ndim == 2 and a.size]
    if not kept:
        return None
    ids = _replica_ids(result, len(arrays))
    pairs = [(i, a) for i, a in zip(ids, arrays) if a.ndim == 2 and a.shape == kept[0].shape]
    layers, slots = kept[0].shape
    ranks = _rank_count(result, slots)
    if ranks is None:
        return None
    per = slots // ranks
    groups: list[tuple[list[int], np.ndarray]] = []
    for i, a in pairs:
        same = next((g for g in groups if np.array_equal(g[1], a)), None)
        if same is None:
            groups.append(([i], a))
        else:
            same[0].append(i)
    n_groups = len(groups)
    groups = groups[:max(1, MAX_PLACEMENT_ROWS // ranks)]
    loads = {int(i): np.asarray(load, dtype=float)
             for i, load in zip(_replica_ids(result, len(result.expert_load)), result.expert_load)}

    def share_of(members: list[int], layer: int) -> np.ndarray | None:
        rows = [loads[i][layer] for i in members
                if i in loads and loads[i].ndim == 2 and loads[i].shape[0] == layers]
        if not rows:
            return None
        total = np.sum(rows, axis=0)
        return total / total.sum() if total.sum() > 0 else None

    frames = []
    for layer in range(layers):
        cells = [_layer_cells(a[layer], ranks, share_of(members, layer)) for members, a in groups]
        frames.append({k: [row for c in cells for row in c[k]] for k in ("z", "text", "customdata")})
    if len(groups) == 1 and len(pairs) > 1:
        y = [f"rank {r}" for r in range(ranks)]
        scope = f"all {len(pairs)} replicas"
    elif len(groups) == 1:
        y = [f"rank {r}" for r in range(ranks)]
        scope = _replica_label(groups[0][0])
    else:
        y = [f"{_replica_label(members)} · rank {r}" for members, _ in groups for r in range(ranks)]
        scope = f"{len(groups)} of {n_groups} distinct placements" if n_groups > len(groups) else \
            f"{n_groups} distinct placements"
    max_copies = max(int(np.max(np.unique(row[row >= 0], return_counts=True)[1], initial=1))
                     for _, a in groups for row in a)
    show_text = per <= MAX_PLACEMENT_TEXT_COLUMNS
    fig = go.Figure(go.Heatmap(
        x=list(range(per)), y=y, **frames[0], zmin=1, zmax=max(2, max_copies),
        colorscale=_COPIES_SCALE, showscale=max_copies > 1, xgap=1, ygap=1, hoverongaps=False,
        colorbar={"title": {"text": "copies"}, "dtick": 1},
        texttemplate="%{text}" if show_text else None,
        textfont={"size": 11 if per <= 20 else 9},
        hovertemplate=("%{y}, slot %{x} (physical slot %{customdata[0]})<br>"
                       "expert %{customdata[1]} · copies in this layer: %{customdata[2]}<br>"
                       "expert's share of layer load %{customdata[3]}<extra></extra>"),
    ))
    if layers > 1:
        steps = [{"label": str(layer), "method": "restyle",
                  "args": [{k: [frames[layer][k]] for k in ("z", "text", "customdata")}, [0]]}
                 for layer in range(layers)]
        fig.update_layout(sliders=[{"active": 0, "steps": steps, "pad": {"t": 40},
                                    "currentvalue": {"prefix": "MoE layer "}}])
    for k in range(1, len(groups)):  # a rule between the blocks of different placements
        fig.add_hline(y=k * ranks - 0.5, line={"color": "#1d2733", "width": 2})
    fig.update_xaxes(title="slot within the rank", dtick=1 if per <= 32 else None)
    fig.update_yaxes(autorange="reversed", automargin=True, type="category")
    replicated = " (colour: copies of the expert)" if max_copies > 1 else " (no replicated experts)"
    title = f"Expert placement, {scope}: cell = logical expert{replicated}"
    _style(fig, title, height=int(min(1400, 26 * len(y) + 260)))
    fig.update_layout(margin={"b": 120 if layers > 1 else 50})
    return fig


def _rank_shares(rt: pd.DataFrame) -> pd.DataFrame:
    """``t_s x rank`` share of each bin's tokens (bins without tokens: NaN)."""
    wide = rt.pivot_table(index="t_s", columns="rank", values="tokens", aggfunc="sum", fill_value=0)
    wide = wide.sort_index()
    totals = wide.sum(axis=1)
    return wide.div(totals.where(totals > 0), axis=0)


def _vlines(times: np.ndarray) -> list[dict[str, Any]]:
    """Dotted vertical lines over the whole plot at ``times`` (migrations)."""
    return [{"type": "line", "xref": "x", "yref": "paper", "x0": t, "x1": t, "y0": 0, "y1": 1,
             "line": {"color": "rgba(40,40,40,0.45)", "width": 1, "dash": "dot"}}
            for t in np.unique(np.round(times, 6))]


def rank_load_timeline(result: RunResult) -> go.Figure | None:
    """Share of each time bin's (token, slot) pairs per EP rank, and the bin's max / mean rank load.

    Top: heatmap time x rank, centred on the balanced share ``1 / ranks``; bottom: the per-bin
    imbalance. Dotted lines mark placement changes. A dropdown picks one replica or the sum.
    """
    rt = result.rank_timeseries
    if not _has(rt, "t_s", "replica", "rank", "tokens") or float(rt["tokens"].sum()) == 0:
        return None
    busy = rt.loc[rt["tokens"] > 0, "t_s"].max()
    rt = rt[rt["t_s"] <= busy]  # trailing bins with no tokens anywhere (after the last pass)
    replicas = sorted(int(r) for r in rt["replica"].unique())
    options: list[tuple[str, pd.DataFrame]] = [
        (f"sum of {len(replicas)} replicas" if len(replicas) > 1 else f"replica {replicas[0]}", rt)]
    if 1 < len(replicas) <= MAX_DROPDOWN_REPLICAS:
        options += [(f"replica {r}", rt[rt["replica"] == r]) for r in replicas]
    mig = result.migrations
    mig_ok = _has(mig, "replica", "time_s")
    ranks = int(rt["rank"].max()) + 1
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        row_heights=[0.7, 0.3])
    shares = [_rank_shares(sub) for _, sub in options]
    # One symmetric colour range around the balanced share for every option; the 99th percentile
    # keeps a few near-empty bins (the run's last partial bin) from washing out the rest, and the
    # range is at least +-10 % of the balanced share so that a well-balanced run looks pale.
    dev = np.abs(np.concatenate([s.to_numpy(dtype=float).ravel() for s in shares]) - 1.0 / ranks)
    half = max(float(np.nanpercentile(dev, 99)) if np.isfinite(dev).any() else 0.0, 0.1 / ranks)
    shapes = []
    starts = np.unique(rt["t_s"].to_numpy(dtype=float))
    bin_s = float(np.median(np.diff(starts))) if starts.size > 1 else 1.0
    for k, ((name, sub), share) in enumerate(zip(options, shares)):
        z = share.to_numpy(dtype=float).T
        t = share.index.to_numpy(dtype=float)
        fig.add_trace(go.Heatmap(
            x=np.append(t, t[-1] + bin_s), y=share.columns.to_numpy(), z=z, name=name,
            visible=k == 0,
            colorscale="RdBu_r", zmin=max(0.0, 1.0 / ranks - half), zmax=1.0 / ranks + half,
            hoverongaps=False,
            colorbar={"title": {"text": "share"}, "tickformat": ".0%", "len": 0.7, "y": 1.0,
                      "yanchor": "top"},
            hovertemplate=f"t=%{{x:.1f}}s, rank %{{y}}: %{{z:.2%}}<extra>{name}</extra>",
        ), row=1, col=1)
        ratio = share.max(axis=1).to_numpy(dtype=float) * ranks  # NaN for bins without tokens
        fig.add_trace(go.Scatter(
            x=t + bin_s / 2, y=ratio, mode="lines", name=name, visible=k == 0,
            showlegend=False, line={"color": "#d62728", "width": 1.2},
            hovertemplate=f"t=%{{x:.1f}}s: max/mean %{{y:.3f}}×<extra>{name}</extra>",
        ), row=2, col=1)
        times = np.zeros(0)
        if mig_ok:
            members = sub["replica"].unique()
            times = mig.loc[mig["replica"].isin(members), "time_s"].to_numpy(dtype=float)
        shapes.append(_vlines(times))
    fig.update_layout(shapes=shapes[0])
    if len(options) > 1:
        n = len(options)
        buttons = [{"label": name, "method": "update",
                    "args": [{"visible": [j // 2 == k for j in range(2 * n)]}, {"shapes": shapes[k]}]}
                   for k, (name, _) in enumerate(options)]
        fig.update_layout(updatemenus=[{"buttons": buttons, "x": 0.0, "xanchor": "left",
                                        "y": 1.01, "yanchor": "bottom"}])
    fig.update_yaxes(title="EP rank", autorange="reversed", dtick=1 if ranks <= 16 else None,
                     row=1, col=1)
    fig.update_yaxes(title="max / mean", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title="simulated time (s)", row=2, col=1)
    note = ", dotted: placement changes" if mig_ok and len(mig) else ""
    _style(fig, f"Per-rank load over time (share of the bin's tokens{note})",
           height=int(min(900, max(420, 14 * ranks + 330))))
    if len(options) > 1:
        fig.update_layout(margin={"t": 100}, title={"y": 0.98, "yanchor": "top"})
    return fig


def imbalance_before_after(result: RunResult) -> go.Figure | None:
    """Per replica: rank imbalance of the routed load under the placement, before balancing
    (``imbalance_routed_mean``) next to the per-pass imbalance after balancing (``imbalance_mean``)."""
    imb = result.imbalance
    if not _has(imb, "replica", "imbalance_mean", "imbalance_routed_mean"):
        return None
    before = imb["imbalance_routed_mean"].to_numpy(dtype=float)
    after = imb["imbalance_mean"].to_numpy(dtype=float)
    if not np.isfinite(before).any():
        return None
    x = [f"replica {r}" for r in imb["replica"].to_numpy()]
    s = result.summary
    overall = (s.get("expert_imbalance_placed_mean"), s.get("expert_imbalance_mean"))
    if len(x) > 1 and all(isinstance(v, (int, float)) for v in overall):
        x = ["all replicas", *x]
        before = np.concatenate(([float(overall[0])], before))
        after = np.concatenate(([float(overall[1])], after))
    fig = go.Figure()
    for y, name, colour in ((before, "placed: run's routed load, before balancing", _BEFORE),
                            (after, "after runtime balancing: per pass, token-weighted", _AFTER)):
        # Bars grow from 1 (balanced): their length is the excess load of the busiest rank.
        fig.add_trace(go.Bar(x=x, y=y - 1.0, base=1.0, customdata=y, name=name,
                             marker={"color": colour},
                             text=[f"{v:.3f}×" if np.isfinite(v) else "" for v in y],
                             textposition="outside", cliponaxis=False,
                             hovertemplate="%{x}: %{customdata:.3f}×<extra>%{fullData.name}</extra>"))
    fig.add_hline(y=1.0, line={"color": "#2ca02c", "dash": "dash", "width": 1})
    values = np.concatenate((before, after))
    top = float(np.nanmax(values))
    span = max(top - 1.0, 0.02)
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_yaxes(title="max / mean EP-rank load", range=[1.0 - 0.04 * span, top + 0.18 * span])
    return _style(fig, "Rank imbalance before vs after balancing (max / mean EP-rank load)",
                  height=380)


def migrations_timeline(result: RunResult) -> go.Figure | None:
    """Expert weights copied at each placement change (top) and the pause it cost (bottom)."""
    mig = result.migrations
    if not _has(mig, "replica", "time_s", "bytes", "pause_s"):
        return None
    mig = mig.sort_values(["time_s", "replica"])
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    replicas = sorted(int(r) for r in mig["replica"].unique())
    groups = ([(f"replica {r}", mig[mig["replica"] == r]) for r in replicas]
              if len(replicas) <= MAX_REPLICA_LINES else [("all replicas", mig)])
    # Replicas re-plan at nearly the same times, so plotly's automatic bar width (from the
    # closest pair of x values) would be invisible: size bars from the gap between re-plans.
    times = np.sort(mig["time_s"].to_numpy(dtype=float))
    extent = float(times[-1] - times[0])
    distinct = times[np.concatenate(([True], np.diff(times) > 0.01 * max(extent, 1.0)))]
    gap = float(np.median(np.diff(distinct))) if distinct.size > 1 else max(extent, 1.0)
    width = 0.7 * gap / len(groups)
    for k, (name, sub) in enumerate(groups):
        colour = DEFAULT_PLOTLY_COLORS[k % len(DEFAULT_PLOTLY_COLORS)]
        t = sub["time_s"].to_numpy(dtype=float)
        bars = {"x": t, "name": name, "legendgroup": name, "marker": {"color": colour},
                "width": width, "offset": -0.35 * gap + k * width}
        fig.add_trace(go.Bar(y=sub["bytes"].to_numpy(dtype=float) / 1e9, **bars,
                             hovertemplate=f"t=%{{x:.2f}}s: %{{y:.4g}} GB<extra>{name}</extra>"),
                      row=1, col=1)
        fig.add_trace(go.Bar(y=sub["pause_s"].to_numpy(dtype=float) * 1e3, showlegend=False,
                             **bars,
                             hovertemplate=f"t=%{{x:.2f}}s: %{{y:.4g}} ms<extra>{name}</extra>"),
                      row=2, col=1)
    fig.update_layout(barmode="overlay")
    fig.update_yaxes(title="weights copied (GB)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title="pause (ms)", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title="simulated time (s)", row=2, col=1)
    total = format_kpi("bytes", float(mig["bytes"].sum()))
    pause = format_kpi("pause_s", float(mig["pause_s"].sum()))
    title = f"Expert weight migrations ({len(mig)} placement changes, {total} copied, {pause} paused)"
    return _style(fig, title, height=420)


def oom_events(result: RunResult) -> go.Figure | None:
    """Per replica: passes whose MoE activations (+ spilled weights) overflowed HBM, the first
    one's time and the peak MoE activation bytes; only drawn when some pass overflowed."""
    oom = result.oom
    if not _has(oom, "replica", "oom_passes"):
        return None
    passes = pd.to_numeric(oom["oom_passes"], errors="coerce").fillna(0)
    if passes.sum() <= 0:
        return None
    first = (oom["first_oom_s"] if "first_oom_s" in oom.columns
             else pd.Series([None] * len(oom), index=oom.index))
    peak = (oom["peak_moe_activation_bytes"] if "peak_moe_activation_bytes" in oom.columns
            else pd.Series([None] * len(oom), index=oom.index))
    cells = [
        oom["replica"].astype(str).tolist(),
        [format_kpi("oom_passes", int(v)) for v in passes],
        [format_kpi("first_oom_s", None if pd.isna(v) else float(v)) for v in first],
        [format_kpi("peak_moe_activation_bytes", None if pd.isna(v) else float(v)) for v in peak],
    ]
    colour = ["#fde0dd" if v > 0 else "white" for v in passes]
    fig = go.Figure(go.Table(
        header={"values": ["replica", "OOM passes", "first OOM at", "peak MoE activation"],
                "fill": {"color": "#e8edf3"}, "align": "left"},
        cells={"values": cells, "align": "left", "fill": {"color": [colour] * 4}},
    ))
    title = (f"OOM events: {int(passes.sum()):,} passes over HBM "
             f"(MoE activations + spilled weights; a real server would have crashed)")
    return _style(fig, title, height=int(min(600, 110 + 26 * len(oom))))


MOE_PANELS: tuple[tuple[str, Callable[[RunResult], go.Figure | None]], ...] = (
    ("imbalance_before_after", imbalance_before_after),
    ("placement_map", placement_map),
    ("rank_load_timeline", rank_load_timeline),
    ("migrations", migrations_timeline),
    ("oom_events", oom_events),
)
"""The MoE panels as ``(name, builder)``, in page order (after ``figures.PANELS``)."""
