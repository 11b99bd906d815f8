"""Report panels of a training run: pure functions ``RunResult -> plotly Figure | None``.

Each returns ``None`` when the run has no training records (every inference run), so inference
reports are unchanged. ``TRAINING_PANELS`` lists them in page order:

* ``train_timeline``: per-stage timeline of the detail step (forward / backward ops, exposed
  gradient sync, optimizer);
* ``train_breakdown``: mean step-time breakdown (compute, recompute, communication by kind,
  pipeline bubble, imbalance and straggler waits, exposed DP sync, optimizer, parameter gather);
* ``train_step_time``: the breakdown of every simulated step, stacked;
* ``train_imbalance``: routing imbalance over steps (global MaxVio, micro-batch MaxVio, EP-rank
  max/mean, dropped tokens);
* ``train_memory``: per-stage memory per GPU against the usable HBM;
* ``train_failures``: progress of the whole run over wall-clock time with its failures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

if TYPE_CHECKING:
    from collections.abc import Callable

    from moesim.metrics.result import RunResult

__all__ = ["TRAINING_PANELS", "breakdown_bars", "failure_timeline", "imbalance_trajectory", "memory_bars",
           "step_time_stack", "step_timeline"]

COMPONENTS = (
    ("compute", "compute", "#1f77b4"), ("recompute", "recompute", "#aec7e8"), ("tp_comm", "TP / CP comm", "#ff7f0e"),
    ("ep_comm", "EP all-to-all", "#ffbb78"), ("gate", "gate overhead", "#bcbd22"),
    ("bubble", "pipeline bubble", "#c7c7c7"),
    ("pp_comm", "PP send / recv", "#8c564b"), ("imbalance_wait", "imbalance wait", "#d62728"),
    ("straggler_wait", "straggler wait", "#9467bd"), ("dp_exposed", "exposed DP sync", "#2ca02c"),
    ("optimizer", "optimizer", "#17becf"), ("param_gather", "param all-gather", "#98df8a"),
)
"""Breakdown components: (column stem, label, colour), in stacking order."""
MAX_TIMELINE_OPS = 6000
"""Above this many ops the timeline keeps every op of the first and last stages and thins the rest."""
_KIND_COLOURS = {"forward": "#1f77b4", "backward": "#ff7f0e", "dp_sync": "#2ca02c", "optimizer": "#17becf"}


def _style(fig: go.Figure, title: str, *, height: int = 380) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01, "xanchor": "left"}, template="plotly_white", height=height,
                      margin={"l": 70, "r": 20, "t": 60, "b": 50},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0})
    return fig


def step_timeline(result: RunResult) -> go.Figure | None:
    """Gantt chart of the detail step: one row per pipeline stage, one bar per op."""
    tl = result.train_timeline
    if tl.empty or not {"stage", "kind", "start_s", "end_s"} <= set(tl.columns):
        return None
    if len(tl) > MAX_TIMELINE_OPS:
        last = tl["stage"].max()
        edge = tl["stage"].isin([0, last]) | ~tl["kind"].isin(["forward", "backward"])
        keep = tl[edge | (tl.index % max(1, len(tl) // MAX_TIMELINE_OPS) == 0)]
        tl = keep
    fig = go.Figure()
    for kind, colour in _KIND_COLOURS.items():
        sub = tl[tl["kind"] == kind]
        if sub.empty:
            continue
        mb = sub["micro_batch"].to_numpy() if "micro_batch" in sub else np.full(len(sub), -1)
        chunk = sub["chunk"].to_numpy() if "chunk" in sub else np.full(len(sub), -1)
        fig.add_trace(go.Bar(
            x=(sub["end_s"] - sub["start_s"]).to_numpy(), base=sub["start_s"].to_numpy(),
            y=[f"stage {s}" for s in sub["stage"]], orientation="h", name=kind.replace("_", " "),
            marker={"color": colour, "line": {"width": 0.3, "color": "white"}},
            customdata=np.stack([mb, chunk], axis=1),
            hovertemplate="%{y}: " + kind + " mb %{customdata[0]} chunk %{customdata[1]}<br>"
                          "%{base:.4f} s + %{x:.4f} s<extra></extra>"))
    stages = int(result.train_timeline["stage"].max()) + 1
    fig.update_layout(barmode="overlay", bargap=0.15)
    fig.update_xaxes(title="time in the step (s)")
    fig.update_yaxes(autorange="reversed", categoryorder="array",
                     categoryarray=[f"stage {s}" for s in range(stages)])
    step = result.summary.get("detail_step")
    return _style(fig, "Pipeline timeline of one step" + (f" (step {step})" if step is not None else ""),
                  height=int(min(900, 160 + 26 * stages)))


def breakdown_bars(result: RunResult) -> go.Figure | None:
    """Mean step time split into its components (one stacked horizontal bar)."""
    s = result.summary
    if s.get("mode") != "training":
        return None
    fig = go.Figure()
    mean = float(s.get("step_time_mean_s") or 0.0)
    for key, label, colour in COMPONENTS:
        v = float(s.get(f"step_{key}_s") or 0.0)
        if v <= 0:
            continue
        share = v / mean if mean > 0 else 0.0
        fig.add_trace(go.Bar(x=[v], y=["mean step"], orientation="h", name=label, marker={"color": colour},
                             text=[f"{share:.0%}" if share >= 0.04 else ""], textposition="inside",
                             hovertemplate=f"{label}: %{{x:.4g}} s ({share:.1%})<extra></extra>"))
    if not fig.data:
        return None
    fig.update_xaxes(title="seconds per step")
    _style(fig, f"Step-time breakdown (mean {mean:.4g} s over {s.get('steps', '?')} steps)", height=300)
    fig.update_layout(barmode="stack", legend={"orientation": "h", "yanchor": "top", "y": -0.35, "xanchor": "left",
                                               "x": 0.0, "traceorder": "normal"}, margin={"b": 110})
    return fig


def step_time_stack(result: RunResult) -> go.Figure | None:
    """Every simulated step's breakdown, stacked over the step index."""
    st = result.train_steps
    if st.empty or "step" not in st.columns:
        return None
    fig = go.Figure()
    x = st["step"].to_numpy()
    for key, label, colour in COMPONENTS:
        col = f"{key}_s"
        if col not in st or not (st[col] > 0).any():
            continue
        fig.add_trace(go.Scatter(x=x, y=st[col].to_numpy(), name=label, stackgroup="t", mode="lines",
                                 line={"width": 0.5, "color": colour},
                                 hovertemplate=f"step %{{x}} {label}: %{{y:.4g}} s<extra></extra>"))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="seconds", rangemode="tozero")
    _style(fig, "Step time over steps, by component", height=440)
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0.0,
                              "traceorder": "normal"}, margin={"b": 120})
    return fig


def imbalance_trajectory(result: RunResult) -> go.Figure | None:
    """Routing imbalance step by step: global and micro-batch MaxVio, EP-rank max/mean, drops."""
    st = result.train_steps
    if st.empty or "maxvio_global" not in st.columns:
        return None
    x = st["step"].to_numpy()
    fig = go.Figure()
    series = (("maxvio_global", "MaxVio, global batch"), ("maxvio_micro", "MaxVio, micro-batch"),
              ("rank_imbalance", "EP rank max / mean - 1"))
    for col, label in series:
        y = st[col].to_numpy(dtype=float) - (1.0 if col == "rank_imbalance" else 0.0)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label,
                                 hovertemplate=f"step %{{x}}: %{{y:.3f}}<extra>{label}</extra>"))
    if "dropped_fraction" in st and (st["dropped_fraction"] > 0).any():
        fig.add_trace(go.Scatter(x=x, y=st["dropped_fraction"], mode="lines", name="dropped share", yaxis="y2",
                                 line={"dash": "dot"}, hovertemplate="step %{x}: %{y:.2%} dropped<extra></extra>"))
        fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "tickformat": ".1%", "title": "dropped"})
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="imbalance (0 = balanced)", rangemode="tozero")
    gate = result.summary.get("gate")
    return _style(fig, "Expert-load imbalance over steps" + (f" (gate: {gate})" if gate else ""))


def memory_bars(result: RunResult) -> go.Figure | None:
    """Per-stage memory per GPU, stacked, against the usable HBM."""
    mem = result.train_memory
    if mem.empty or "stage" not in mem.columns:
        return None
    fig = go.Figure()
    gib = 2.0 ** 30
    for col, colour in (("weights", "#1f77b4"), ("grads", "#ff7f0e"), ("optimizer", "#2ca02c"),
                        ("activations", "#d62728"), ("workspace", "#9467bd")):
        if col in mem:
            fig.add_trace(go.Bar(x=mem["stage"], y=mem[col] / gib, name=col, marker={"color": colour},
                                 hovertemplate=f"stage %{{x}} {col}: %{{y:.2f}} GiB<extra></extra>"))
    if "capacity" in mem:
        fig.add_trace(go.Scatter(x=mem["stage"], y=mem["capacity"] / gib, mode="lines", name="usable HBM",
                                 line={"color": "black", "dash": "dash"}))
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title="pipeline stage", dtick=1)
    fig.update_yaxes(title="GiB per GPU")
    return _style(fig, "Memory per GPU by pipeline stage (balanced routing)")


def failure_timeline(result: RunResult) -> go.Figure | None:
    """Tokens trained over wall-clock days, with every failure and the failure-free pace."""
    prog = result.train_progress
    if prog.empty or "time_s" not in prog.columns:
        return None
    day = 86400.0
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=prog["time_s"] / day, y=prog["tokens"], mode="lines", name="trained tokens",
                             line={"shape": "linear"}, hovertemplate="day %{x:.2f}: %{y:.4s} tokens<extra></extra>"))
    tokens = float(prog["tokens"].max())
    rate = result.summary.get("tokens_per_s")
    if rate:
        useful = tokens / float(rate)
        fig.add_trace(go.Scatter(x=[0, float(useful) / day], y=[0, tokens], mode="lines", name="no failures",
                                 line={"dash": "dot", "color": "grey"}))
    fl = result.train_failures
    if not fl.empty:
        at = np.interp(fl["time_s"].to_numpy(), prog["time_s"].to_numpy(), prog["tokens"].to_numpy())
        fig.add_trace(go.Scatter(x=fl["time_s"] / day, y=at, mode="markers", name=f"failures ({len(fl)})",
                                 marker={"color": "#d62728", "symbol": "x", "size": 8},
                                 customdata=np.stack([fl["lost_s"] / 3600.0, fl["restart_s"] / 60.0], axis=1),
                                 hovertemplate="day %{x:.2f}: lost %{customdata[0]:.2f} h, restart "
                                               "%{customdata[1]:.1f} min<extra></extra>"))
    fig.update_xaxes(title="wall-clock days")
    fig.update_yaxes(title="tokens trained")
    goodput = result.summary.get("goodput")
    return _style(fig, "Training run with failures" + (f" (goodput {goodput:.1%})" if goodput is not None else ""))


TRAINING_PANELS: tuple[tuple[str, Callable[[RunResult], go.Figure | None]], ...] = (
    ("train_breakdown", breakdown_bars),
    ("train_timeline", step_timeline),
    ("train_step_time", step_time_stack),
    ("train_imbalance", imbalance_trajectory),
    ("train_memory", memory_bars),
    ("train_failures", failure_timeline),
)
"""The training panels as ``(name, builder)``, in page order."""
