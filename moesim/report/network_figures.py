"""Network panels: link utilisation by tier over time and the busiest links (flow network model)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import plotly.graph_objects as go

from moesim.report.figures import _has, _style

if TYPE_CHECKING:
    from moesim.metrics.result import RunResult

__all__ = ["NETWORK_PANELS", "busiest_links", "link_utilisation"]

TOP_LINKS = 20


def link_utilisation(result: RunResult) -> go.Figure | None:
    """Utilisation of each tier (NVLink, PCIe, NIC, fabric) per time bin: bytes / (the tier's
    summed nominal capacity x bin)."""
    ts = result.link_timeseries
    if not _has(ts, "t_s", "tier", "utilisation") or not (ts["bytes"] > 0).any():
        return None
    fig = go.Figure()
    for tier, part in ts.groupby("tier", sort=True):
        if (part["bytes"] > 0).any():
            fig.add_trace(go.Scatter(x=part["t_s"], y=part["utilisation"] * 100, mode="lines", name=str(tier),
                                     hovertemplate="t=%{x:.0f}s: %{y:.2f}%<extra>%{fullData.name}</extra>"))
    fig.update_xaxes(title="simulated time (s)")
    fig.update_yaxes(title="utilisation of the tier (%)", rangemode="tozero")
    return _style(fig, "Link utilisation by tier", height=360)


def busiest_links(result: RunResult) -> go.Figure | None:
    """The most utilised links over the whole run (bytes / (capacity x simulated time))."""
    links = result.links
    if not _has(links, "src", "dst", "tier", "utilisation"):
        return None
    top = links.sort_values("utilisation", ascending=False).head(TOP_LINKS)
    fig = go.Figure(go.Bar(x=top["utilisation"] * 100, y=[f"{s} → {d}" for s, d in zip(top["src"], top["dst"])],
                           orientation="h", text=top["tier"], textposition="inside",
                           hovertemplate="%{y}: %{x:.2f}%<extra>%{text}</extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="utilisation over the run (%)", rangemode="tozero")
    return _style(fig, f"Busiest links (top {min(TOP_LINKS, len(top))})", height=160 + 22 * len(top))


NETWORK_PANELS: tuple[tuple[str, Callable[[RunResult], go.Figure | None]], ...] = (
    ("link_utilisation", link_utilisation),
    ("busiest_links", busiest_links),
)
