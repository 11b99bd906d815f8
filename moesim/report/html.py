"""One self-contained HTML report per run: KPIs, provenance, config and every figure.

plotly.js is inlined exactly once, in the page head, and MathJax is never requested, so the file
opens offline. Figures are placed in ``<div class="figure" data-figure="<name>">`` blocks in the
order of ``figures.PANELS``; panels without data are left out.
"""

from __future__ import annotations

import json
import math
from html import escape
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plotly.offline

from moesim.report.figures import build_figures

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from moesim.metrics.result import RunResult

__all__ = ["format_kpi", "render_html", "write_html"]

_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Run", ("scenario", "model", "gpu", "gpus", "replicas", "sim_time_s")),
    ("Requests", ("requests_arrived", "requests_finished", "requests_unfinished", "preemptions",
                  "goodput_requests_per_s", "slo_attainment")),
    ("Throughput", ("input_tokens_per_s", "output_tokens_per_s", "output_tokens_per_s_per_gpu")),
    ("Utilisation", ("busy_fraction_mean", "batch_size_mean", "kv_occupancy_mean",
                     "kv_occupancy_max", "kv_capacity_tokens", "expert_imbalance_mean",
                     "expert_imbalance_placed_mean")),
    ("MoE health", ("tokens_dropped", "expert_weight_bytes_moved", "replans", "migration_pause_s",
                    "oom_passes", "peak_moe_activation_bytes", "moe_comm_fraction")),
    ("Disaggregation", ("prefill_replicas", "kv_transfers", "kv_transfer_bytes", "kv_transfer_p50_s",
                        "kv_transfer_p99_s", "flow_transfers")),
    ("Calibration", ("calibration_queries", "calibration_out_of_domain", "calibration_spread_rel")),
    ("Training", ("parallelism", "schedule", "micro_batches", "steps", "step_time_mean_s", "step_time_p99_s",
                  "tokens_per_s", "tokens_per_s_per_gpu", "mfu", "bubble_fraction", "memory_peak_bytes",
                  "memory_peak_runtime_bytes", "oom_steps")),
    ("Step breakdown", tuple(f"step_{k}_s" for k in (
        "compute", "recompute", "tp_comm", "ep_comm", "gate", "bubble", "pp_comm", "imbalance_wait",
        "straggler_wait", "dp_exposed", "optimizer", "param_gather", "migration"))),
    ("Routing", ("gate", "maxvio_global_first", "maxvio_global_last", "maxvio_micro_mean", "dropped_fraction",
                 "dispatch", "ep_internode_bytes_per_token")),
    ("Time to train", ("train_tokens", "time_to_train_days", "time_to_train_s", "time_to_train_ideal_s", "gpu_hours",
                       "goodput", "failures", "lost_work_s", "restart_total_s", "checkpoint_blocking_s",
                       "straggler_slowdown", "checkpoints", "checkpoint_bytes", "checkpoint_block_s",
                       "checkpoint_write_s", "checkpoint_reload_s")),
    ("Simulator", ("forward_passes", "des_events")),
)
_LATENCY_ROWS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E"))
_LATENCY_STATS = ("mean", "p50", "p90", "p99")
_LABELS = {
    "sim_time_s": "simulated time", "gpu": "GPU", "gpus": "GPUs",
    "slo_attainment": "SLO attainment",
    "goodput_requests_per_s": "goodput", "output_tokens_per_s_per_gpu": "output tokens / s / GPU",
    "des_events": "DES events", "kv_capacity_tokens": "KV capacity",
    "moesim_version": "moesim version", "wall_s": "wall time",
    "expert_imbalance_placed_mean": "expert imbalance before balancing",
    "expert_weight_bytes_moved": "weight bytes moved", "replans": "re-plans",
    "oom_passes": "OOM passes", "peak_moe_activation_bytes": "peak MoE activation",
    "moe_comm_fraction": "MoE comm share of pass time", "calibration_out_of_domain": "out of domain",
    "calibration_spread_rel": "measurement spread", "weight_bytes_per_gpu": "weights per GPU",
}
_DYNAMIC = {"Calibration": "calibration_out_of_domain_"}
"""Sections that also list every summary key with this prefix (one per measured op)."""
_PROVENANCE_ORDER = ("moesim_version", "seed", "scenario_hash", "calibration_hashes",
                     "created_at", "wall_s")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2733;
background:#f5f7fa}
main{max-width:1280px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6rem;margin:8px 0 2px}h2{font-size:1.15rem;margin:28px 0 8px}
.sub{color:#5b6777;margin:0 0 16px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:12px}
.card{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:8px 12px}
.card.wide{grid-column:span 2}@media(max-width:700px){.card.wide{grid-column:auto}}
.card h3{font-size:.95rem;margin:4px 0 6px;color:#34506f}
table{border-collapse:collapse;width:100%;font-size:.9rem}
td,th{padding:3px 6px;border-bottom:1px solid #eef1f4;text-align:left;vertical-align:top}
td.v,th.v{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font-size:.85rem;word-break:break-all}
details{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:8px 12px;margin-top:12px}
summary{cursor:pointer;font-weight:600}
pre{font-size:.8rem;overflow:auto;max-height:480px}
nav{font-size:.85rem;margin:6px 0}nav a{margin-right:10px;color:#2a5d9f}
.pm,.note{color:#5b6777}
.figure{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:6px;margin:14px 0}
"""


def _label(key: str) -> str:
    """Human label for a summary or provenance key."""
    if key in _LABELS:
        return _LABELS[key]
    if key.startswith("calibration_out_of_domain_"):
        return "out of domain: " + key.removeprefix("calibration_out_of_domain_")
    if key.endswith("_pm"):
        return "± " + _label(key.removesuffix("_pm"))
    if key.endswith("_per_s"):
        return key.removesuffix("_per_s").replace("_", " ") + " / s"
    return key.removesuffix("_s").replace("_", " ")


def _duration(seconds: float) -> str:
    """Seconds with a readable unit: µs, ms, s or min."""
    mag = abs(seconds)
    if mag == 0:
        return "0 s"
    if mag < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if mag < 1:
        return f"{seconds * 1e3:.3g} ms"
    if mag < 600:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.1f} min"


def _bytes(value: float) -> str:
    """Bytes with a decimal prefix (B, kB, MB, GB, TB, PB) and three significant digits."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}B"
    return f"{value:.3g} B"


def _si(value: float) -> str:
    """A number with an SI prefix (k, M, G) and three significant digits."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}"
    return f"{value:.3g} "


def format_kpi(key: str, value: Any) -> str:
    """Format one summary / provenance value for display, choosing the unit from the key name.

    ``*_per_s`` are rates, ``*_s`` durations, ``*bytes*`` sizes (kB, MB, GB …), fractions
    (occupancy, attainment, ``*_rel``) percentages, ``*imbalance*`` a max/mean ratio; integers get
    thousands separators. ``<key>_pm`` is the ± band of ``<key>``, in its unit.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    if not isinstance(value, Real):
        return str(value)
    if key.endswith("_pm"):
        return "± " + format_kpi(key.removesuffix("_pm"), value)
    if key.endswith("_per_s") or "_per_s_" in key:
        unit = "tok/s" if "tokens" in key else "req/s" if "requests" in key else "/s"
        return f"{_si(float(value))}{unit}" + ("/GPU" if key.endswith("per_gpu") else "")
    if key.endswith("_s"):
        return _duration(float(value))
    if "bytes" in key:
        return _bytes(float(value))
    if key.endswith("_rel") or any(word in key for word in ("fraction", "occupancy", "attainment")):
        return f"{float(value):.1%}"
    if "imbalance" in key:
        return f"{float(value):.3f}×"
    if isinstance(value, Integral):
        return f"{int(value):,}" + (" tokens" if key.endswith("_tokens") else "")
    return f"{float(value):,.4g}"


def _value(key: str, summary: Mapping[str, Any], notes: Mapping[str, str]) -> str:
    """Escaped value of ``summary[key]``, with its ± band (``<key>_pm``) and a note if any."""
    shown = escape(format_kpi(key, summary.get(key)))
    if summary.get(f"{key}_pm") is not None:
        shown += f" <span class=pm>{escape(format_kpi(f'{key}_pm', summary[f'{key}_pm']))}</span>"
    if key in notes:
        shown += f" <span class=note>({escape(notes[key])})</span>"
    return shown


def _rows(items: Iterable[tuple[str, str]]) -> str:
    """Table rows of (label, already-escaped value HTML)."""
    return "".join(f"<tr><td>{escape(k)}</td><td class=v>{v}</td></tr>" for k, v in items)


def _card(title: str, body: str, *, wide: bool = False) -> str:
    """A titled KPI card around a table body; a wide card spans two grid columns."""
    cls = "card wide" if wide else "card"
    return f'<div class="{cls}"><h3>{escape(title)}</h3><table>{body}</table></div>'


def _latency_card(summary: Mapping[str, Any]) -> str:
    """TTFT / TPOT / E2E x mean / p50 / p90 / p99 as one small matrix (empty if absent)."""
    present = [(m, label) for m, label in _LATENCY_ROWS
               if any(f"{m}_{s}_s" in summary for s in _LATENCY_STATS)]
    if not present:
        return ""
    head = "<tr><th></th>" + "".join(f"<th class=v>{s}</th>" for s in _LATENCY_STATS) + "</tr>"
    body = "".join(
        f"<tr><td>{label}</td>" + "".join(
            f"<td class=v>{_value(f'{m}_{s}_s', summary, {})}</td>"
            for s in _LATENCY_STATS) + "</tr>"
        for m, label in present)
    return _card("Latency", head + body, wide=True)


def _kpi_cards(summary: Mapping[str, Any], notes: Mapping[str, str] | None = None) -> str:
    """KPI cards by section; keys not in any section land in 'Other'; missing ones are skipped.

    A ``<key>_pm`` band is shown as ± next to its key; ``notes`` adds a remark to a key's value.
    """
    notes = notes or {}
    used = {f"{m}_{s}_s" for m, _ in _LATENCY_ROWS for s in _LATENCY_STATS}
    cards = []
    for title, keys in _SECTIONS:
        if title in _DYNAMIC:
            keys = keys + tuple(sorted(k for k in summary if k.startswith(_DYNAMIC[title])))
        used.update(keys)
        rows = [(_label(k), _value(k, summary, notes)) for k in keys if k in summary]
        if rows:
            cards.append(_card(title, _rows(rows)))
        if title == "Run":
            cards.append(_latency_card(summary))
    used.update([f"{k}_pm" for k in used if k in summary])  # bands are shown next to their key
    other = [(_label(k), escape(format_kpi(k, v))) for k, v in summary.items() if k not in used]
    if other:
        cards.append(_card("Other", _rows(other)))
    if not any(cards):
        return "<p>No summary recorded.</p>"
    return "<div class=cards>" + "".join(cards) + "</div>"


def _oom_note(result: RunResult) -> dict[str, str]:
    """``{"oom_passes": "first at …"}`` from the OOM table when some pass overflowed HBM."""
    oom = result.oom
    if oom.empty or "first_oom_s" not in oom.columns:
        return {}
    first = [float(t) for t in oom["first_oom_s"] if t is not None and not _isnan(t)]
    return {"oom_passes": f"first at {format_kpi('first_oom_s', min(first))}"} if first else {}


def _isnan(value: Any) -> bool:
    return isinstance(value, Real) and math.isnan(float(value))


def _provenance(provenance: Mapping[str, Any]) -> str:
    """Provenance as a table; nested mappings (calibration hashes) as name: hash lines."""
    keys = [k for k in _PROVENANCE_ORDER if k in provenance]
    keys += [k for k in provenance if k not in _PROVENANCE_ORDER]
    rows = []
    for key in keys:
        value = provenance[key]
        if isinstance(value, dict):
            shown = "<br>".join(f"{escape(str(k))}: <code>{escape(str(v))}</code>"
                                for k, v in value.items()) or "—"
        elif key.endswith("hash") or key == "created_at":
            shown = f"<code>{escape(str(value))}</code>"
        else:
            shown = escape(format_kpi(key, value))
        rows.append((_label(key), shown))
    return _card("Provenance", _rows(rows), wide=True) if rows else "<p>No provenance recorded.</p>"


def _figure_blocks(result: RunResult) -> tuple[str, list[str]]:
    """HTML of every figure (without plotly.js) and the list of figure names."""
    blocks, names = [], []
    for name, fig in build_figures(result).items():
        plot = fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False,
                           div_id=f"plot-{name}", config={"displaylogo": False})
        blocks.append(f'<div class="figure" id="fig-{name}" data-figure="{name}">{plot}</div>')
        names.append(name)
    return "\n".join(blocks), names


def render_html(result: RunResult, *, title: str | None = None) -> str:
    """The whole report as one self-contained HTML string (plotly.js inlined once)."""
    summary = result.summary
    scenario = str(summary.get("scenario") or result.config.get("name") or "run")
    title = title or f"moesim report: {scenario}"
    subtitle = " · ".join(
        escape(format_kpi(k, summary[k])) + (f" {_label(k)}" if k in ("gpus", "replicas") else "")
        for k in ("model", "gpu", "gpus", "replicas") if k in summary)
    figures, names = _figure_blocks(result)
    nav = "".join(f'<a href="#fig-{n}">{escape(n.replace("_", " "))}</a>' for n in names)
    config_json = json.dumps(result.config, indent=2, default=str)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_CSS}</style>
<script>window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
</head>
<body>
<main>
<h1>{escape(title)}</h1>
<p class=sub>{subtitle}</p>
<h2>Key results</h2>
{_kpi_cards(summary, _oom_note(result))}
<h2>Provenance</h2>
<div class=cards>{_provenance(result.provenance)}</div>
<details><summary>Scenario config (JSON)</summary><pre>{escape(config_json)}</pre></details>
<h2>Figures</h2>
<nav>{nav}</nav>
{figures or "<p>No figures: the run recorded no time series, latencies or loads.</p>"}
</main>
</body>
</html>
"""


def write_html(result: RunResult, path: str | Path) -> Path:
    """Write the report for ``result`` to ``path`` (parents created) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(result), encoding="utf-8")
    return out
