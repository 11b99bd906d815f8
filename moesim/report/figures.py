"""Figures for a run report: pure functions ``RunResult -> plotly Figure | None``.

Each builder draws one panel and returns ``None`` when the run recorded nothing for it (a dense
model has no expert load, a run without a time series has no throughput plot), so that the HTML
page simply leaves the panel out. Builders never mutate the result.

``PANELS`` lists the panels in page order, ``all_panels`` adds the MoE panels of
``moe_figures``; ``build_figures`` runs them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

if TYPE_CHECKING:
    from collections.abc import Callable

    from moesim.metrics.result import RunResult

__all__ = [
    "PANELS", "all_panels", "batch_size_hist", "build_figures", "busy_fraction",
    "expert_load_heatmap", "imbalance_table", "kv_occupancy", "latency_cdf", "queue_depth", "rank_load_heatmap",
    "throughput",
]

MAX_CDF_POINTS = 2000
"""A CDF trace is thinned to this many points so that huge runs keep the page small."""
MAX_REPLICA_LINES = 16
"""Above this many replicas, per-replica lines become a min / mean / max band."""
MAX_DROPDOWN_REPLICAS = 8
"""Up to this many replicas, heatmaps get a dropdown to pick one replica or the sum."""

_LATENCIES = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E"), ("kv_transfer_s", "KV transfer"))
"""Request-table columns drawn by ``latency_cdf`` (KV transfer only with disaggregated prefill / decode)."""


def _style(fig: go.Figure, title: str, *, height: int = 380) -> go.Figure:
    """Apply the shared look: white template, compact margins, legend on top."""
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        hovermode="closest",
    )
    return fig


def _has(df: pd.DataFrame, *columns: str) -> bool:
    """True when ``df`` has rows and every named column."""
    return not df.empty and all(c in df.columns for c in columns)


def _bin_s(result: RunResult) -> float:
    """Width of a time-series bin in seconds: the median gap between distinct bin times."""
    times = np.unique(result.timeseries["t_s"].to_numpy(dtype=float))
    if times.size >= 2:
        return float(np.median(np.diff(times)))
    fallback = result.summary.get("sim_time_s")
    return float(fallback) if isinstance(fallback, (int, float)) and fallback > 0 else 1.0


def latency_cdf(result: RunResult) -> go.Figure | None:
    """Empirical CDFs of TTFT, TPOT, end-to-end latency and, with disaggregated prefill / decode, the
    KV-cache transfer (one trace each, log-x)."""
    fig = go.Figure()
    for column, label in _LATENCIES:
        if column not in result.requests.columns:
            continue
        values = result.requests[column].to_numpy(dtype=float)
        values = np.sort(values[np.isfinite(values) & (values > 0)])
        if values.size == 0:
            continue
        n = values.size
        idx = np.unique(np.linspace(0, n - 1, min(n, MAX_CDF_POINTS)).round().astype(np.int64))
        fig.add_trace(
            go.Scatter(
                x=values[idx],
                y=(idx + 1) / n,
                mode="lines",
                line={"shape": "hv"},
                name=f"{label} (n={n})",
                hovertemplate=f"{label} %{{x:.4s}}s<br>P(≤x) %{{y:.3f}}<extra></extra>",
            )
        )
    if not fig.data:
        return None
    fig.update_xaxes(type="log", title="latency (s, log scale)")
    fig.update_yaxes(title="fraction of requests", range=[0, 1.02])
    return _style(fig, "Latency CDF")


def throughput(result: RunResult) -> go.Figure | None:
    """Input (prefill) and output (decode) tokens per second over time, summed over replicas."""
    ts = result.timeseries
    if not _has(ts, "t_s", "prefill_tokens", "decode_tokens"):
        return None
    bin_s = _bin_s(result)
    total = ts.groupby("t_s")[["prefill_tokens", "decode_tokens"]].sum().sort_index()
    fig = go.Figure()
    for column, label in (("prefill_tokens", "input tok/s"), ("decode_tokens", "output tok/s")):
        fig.add_trace(
            go.Scatter(
                x=total.index.to_numpy(),
                y=total[column].to_numpy(dtype=float) / bin_s,
                mode="lines",
                name=label,
                hovertemplate="t=%{x:.1f}s: %{y:.4s} tok/s<extra></extra>",
            )
        )
    fig.update_xaxes(title="simulated time (s)")
    fig.update_yaxes(title="tokens / s (all replicas)", rangemode="tozero")
    return _style(fig, f"Throughput ({bin_s:g} s bins)")


def queue_depth(result: RunResult) -> go.Figure | None:
    """Requests waiting for admission over time, summed over replicas."""
    ts = result.timeseries
    if not _has(ts, "t_s", "queue_depth"):
        return None
    total = ts.groupby("t_s")["queue_depth"].sum().sort_index()
    fig = go.Figure(
        go.Scatter(
            x=total.index.to_numpy(),
            y=total.to_numpy(dtype=float),
            mode="lines",
            fill="tozeroy",
            name="queued requests",
            hovertemplate="t=%{x:.1f}s: %{y:.1f} queued<extra></extra>",
        )
    )
    fig.update_xaxes(title="simulated time (s)")
    fig.update_yaxes(title="queued requests (all replicas)", rangemode="tozero")
    return _style(fig, "Queue depth", height=320)


def _replica_lines(result: RunResult, column: str, *, title: str, y_title: str) -> go.Figure | None:
    """One line per replica of a fraction-valued column, or a min/mean/max band for many."""
    ts = result.timeseries
    if not _has(ts, "t_s", "replica", column):
        return None
    wide = ts.pivot_table(index="t_s", columns="replica", values=column, aggfunc="mean")
    wide = wide.sort_index()
    if wide.empty:
        return None
    x = wide.index.to_numpy()
    fig = go.Figure()
    hover = "t=%{x:.1f}s: %{y:.1%}<extra>%{fullData.name}</extra>"
    if wide.shape[1] <= MAX_REPLICA_LINES:
        for replica in wide.columns:
            y = wide[replica].to_numpy(dtype=float)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"replica {replica}",
                                     hovertemplate=hover))
    else:
        values = wide.to_numpy(dtype=float)
        band = {"width": 0.5, "color": "rgba(31,119,180,0.4)"}
        fig.add_trace(go.Scatter(x=x, y=np.nanmin(values, axis=1), mode="lines", line=band,
                                 name="min", hovertemplate=hover))
        fig.add_trace(go.Scatter(x=x, y=np.nanmax(values, axis=1), mode="lines", line=band,
                                 fill="tonexty", fillcolor="rgba(31,119,180,0.15)", name="max",
                                 hovertemplate=hover))
        fig.add_trace(go.Scatter(x=x, y=np.nanmean(values, axis=1), mode="lines",
                                 line={"color": "rgb(31,119,180)"},
                                 name=f"mean of {wide.shape[1]} replicas", hovertemplate=hover))
    fig.update_xaxes(title="simulated time (s)")
    fig.update_yaxes(title=y_title, tickformat=".0%", rangemode="tozero")
    return _style(fig, title, height=340)


def kv_occupancy(result: RunResult) -> go.Figure | None:
    """KV-cache occupancy (fraction of capacity) over time, per replica."""
    return _replica_lines(result, "kv_occupancy", title="KV-cache occupancy",
                          y_title="KV occupancy")


def busy_fraction(result: RunResult) -> go.Figure | None:
    """Fraction of each time bin a replica spent running forward passes."""
    return _replica_lines(result, "busy_frac", title="Busy fraction", y_title="busy fraction")


def batch_size_hist(result: RunResult) -> go.Figure | None:
    """Forward passes per batch size (stacked per replica when there are few replicas)."""
    hist = result.batch_hist
    if not _has(hist, "batch_size", "passes") or hist["passes"].sum() == 0:
        return None
    fig = go.Figure()
    hover = "batch %{x}: %{y} passes<extra>%{fullData.name}</extra>"
    replicas = hist["replica"].unique() if "replica" in hist.columns else []
    if 1 < len(replicas) <= MAX_DROPDOWN_REPLICAS:
        for replica in sorted(replicas):
            sub = hist[hist["replica"] == replica].groupby("batch_size")["passes"].sum()
            fig.add_trace(go.Bar(x=sub.index.to_numpy(), y=sub.to_numpy(),
                                 name=f"replica {replica}", hovertemplate=hover))
    else:
        total = hist.groupby("batch_size")["passes"].sum()
        fig.add_trace(go.Bar(x=total.index.to_numpy(), y=total.to_numpy(), name="all replicas",
                             hovertemplate=hover))
    fig.update_layout(barmode="stack", bargap=0.05, legend={"traceorder": "normal"})
    fig.update_xaxes(title="batch size (requests per forward pass)")
    fig.update_yaxes(title="forward passes")
    return _style(fig, "Batch-size histogram", height=340)


def _row_share(load: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows that sum to zero stay zero)."""
    load = np.asarray(load, dtype=float)
    sums = load.sum(axis=1, keepdims=True)
    return np.divide(load, sums, out=np.zeros_like(load), where=sums > 0)


def _load_heatmap(loads: list[np.ndarray], *, title: str, unit: str,
                  diverging: bool) -> go.Figure | None:
    """Heatmap of per-layer shares (``[moe_layers, columns]``), summed or picked by dropdown.

    With ``diverging`` the colour scale is centred on the balanced share ``1 / columns``.
    """
    arrays = [np.asarray(a) for a in loads]
    kept = [(i, a) for i, a in enumerate(arrays) if a.ndim == 2 and a.size]  # i = replica id
    if not kept or sum(float(a.sum()) for _, a in kept) == 0:
        return None
    same = [a for _, a in kept if a.shape == kept[0][1].shape]
    options = [(f"sum of {len(same)} replicas" if len(kept) > 1 else f"replica {kept[0][0]}",
                _row_share(sum(same)))]
    if 1 < len(kept) <= MAX_DROPDOWN_REPLICAS:
        options += [(f"replica {i}", _row_share(a)) for i, a in kept]
    fig = go.Figure()
    for k, (name, share) in enumerate(options):
        colours: dict[str, object] = {"colorscale": "Viridis", "zmin": 0.0}
        if diverging:
            colours = {"colorscale": "RdBu_r", "zmid": 1.0 / share.shape[1]}
        fig.add_trace(go.Heatmap(
            z=share, name=name, visible=k == 0, colorbar={"title": {"text": "share"},
                                                          "tickformat": ".1%"},
            hovertemplate=f"layer %{{y}}, {unit} %{{x}}: %{{z:.2%}}<extra>{name}</extra>",
            **colours,
        ))
    if len(options) > 1:
        buttons = [{"label": name, "method": "update",
                    "args": [{"visible": [j == k for j in range(len(options))]}]}
                   for k, (name, _) in enumerate(options)]
        fig.update_layout(updatemenus=[{"buttons": buttons, "x": 0.0, "xanchor": "left",
                                        "y": 1.01, "yanchor": "bottom"}])
    layers = options[0][1].shape[0]
    fig.update_xaxes(title=unit)
    fig.update_yaxes(title="MoE layer", autorange="reversed")
    _style(fig, title, height=int(min(900, max(360, 16 * layers + 180))))
    if len(options) > 1:  # room for the dropdown between the title and the plot
        fig.update_layout(margin={"t": 100}, title={"y": 0.98, "yanchor": "top"})
    return fig


def expert_load_heatmap(result: RunResult) -> go.Figure | None:
    """Share of each MoE layer's routed (token, slot) pairs per expert (layer x expert)."""
    return _load_heatmap(result.expert_load, title="Expert load (share of layer tokens)",
                         unit="expert", diverging=False)


def rank_load_heatmap(result: RunResult) -> go.Figure | None:
    """Share of each MoE layer's (token, slot) pairs per EP rank, centred on a balanced split."""
    return _load_heatmap(result.rank_load, title="EP rank load (share of layer tokens)",
                         unit="rank", diverging=True)


def imbalance_table(result: RunResult) -> go.Figure | None:
    """Per-replica rank imbalance (max / mean rank load, token-weighted) as a table."""
    imb = result.imbalance
    if not _has(imb, "replica"):
        return None
    columns = [c for c in ("imbalance_mean", "imbalance_p99") if c in imb.columns]
    if not columns:
        return None
    cells = [imb["replica"].astype(str).tolist()]
    cells += [[f"{v:.3f}×" if np.isfinite(v) else "—" for v in imb[c].to_numpy(dtype=float)]
              for c in columns]
    headers = ["replica"] + [c.replace("imbalance_", "imbalance ") for c in columns]
    fig = go.Figure(go.Table(
        header={"values": headers, "fill": {"color": "#e8edf3"}, "align": "left"},
        cells={"values": cells, "align": "left"},
    ))
    return _style(fig, "Rank imbalance (max / mean rank load)",
                  height=int(min(600, 110 + 26 * len(imb))))


PANELS: tuple[tuple[str, Callable[[RunResult], go.Figure | None]], ...] = (
    ("latency_cdf", latency_cdf),
    ("throughput", throughput),
    ("queue_depth", queue_depth),
    ("kv_occupancy", kv_occupancy),
    ("busy_fraction", busy_fraction),
    ("batch_size", batch_size_hist),
    ("expert_load", expert_load_heatmap),
    ("rank_load", rank_load_heatmap),
    ("imbalance", imbalance_table),
)
"""The general panels as ``(name, builder)``, in page order; ``name`` is the HTML ``data-figure``
(``all_panels`` appends the MoE ones)."""


def all_panels() -> tuple[tuple[str, Callable[[RunResult], go.Figure | None]], ...]:
    """``PANELS`` followed by the MoE panels of ``moe_figures.MOE_PANELS``, the network panels of
    ``network_figures.NETWORK_PANELS`` and the training panels of
    ``training_figures.TRAINING_PANELS`` (which draw nothing for inference runs)."""
    from moesim.report.moe_figures import MOE_PANELS  # late: moe_figures builds on this module
    from moesim.report.network_figures import NETWORK_PANELS
    from moesim.report.training_figures import TRAINING_PANELS

    return PANELS + MOE_PANELS + NETWORK_PANELS + TRAINING_PANELS


def build_figures(result: RunResult) -> dict[str, go.Figure]:
    """Run every panel builder; panels without data are left out. Keys keep ``all_panels`` order."""
    figures: dict[str, go.Figure] = {}
    for name, builder in all_panels():
        fig = builder(result)
        if fig is not None:
            figures[name] = fig
    return figures
