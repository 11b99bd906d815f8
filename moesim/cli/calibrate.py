"""``moesim calibrate`` and ``moesim validate``.

``calibrate`` measures kernels with torch (or imports aiconfigurator tables) and writes a profile.
``validate`` times a reference MoE transformer in torch and compares every pass with the
simulator's prediction for the same shape, made by the engine's own ``PassCostModel`` built from
a scenario whose ``hardware.calibration`` is the profile, exactly as ``moesim run`` builds it.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from moesim.core.errors import ConfigError

__all__ = ["register", "validate"]

GPU_PRESETS = (("h200", "h200"), ("h800", "h800"), ("b200", "b200"), ("a100", "a100-80gb"), ("h100", "h100-sxm"))


SCALE_HELP = ("shrink preset widths by this factor, e.g. 1/16 (hidden, vocab, intermediate sizes, LoRA ranks, "
              "heads, experts; per-head dims, top-k and layers kept), or PRESET@1/16; 'auto' (default): 1 on "
              "cuda, on cpu down to a hidden size <= 512 (deepseek-v3: 1/16). Use the same on calibrate and validate")


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` and ``validate`` subcommands."""
    c = subparsers.add_parser("calibrate", help="measure this GPU's kernels (torch) and write a calibration profile")
    c.add_argument("--out", required=True, help="profile path to write, e.g. calibration/h100-sxm.json")
    c.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if torch sees one, else cpu")
    c.add_argument("--quick", action="store_true", help="coarser grids and fewer repetitions")
    c.add_argument("--resume", action="store_true", help="continue from <out>.partial.json")
    c.add_argument("--budget-s", type=float, default=None, metavar="S",
                   help="stop measuring after S seconds, fit what was measured and keep the rest for --resume")
    c.add_argument("--model", action="append", metavar="PRESET",
                   help="model whose expert / attention shapes to measure (repeatable; 'tiny' on CPU)")
    c.add_argument("--scale", default="auto", help=SCALE_HELP)
    c.add_argument("--from-aiconfigurator", metavar="DIR",
                   help="import an aiconfigurator perf-data tree instead of measuring")
    c.add_argument("--system", default="h200_sxm", help="aiconfigurator system folder (default h200_sxm)")
    c.add_argument("--holdout", type=float, default=0.1, help="share of imported rows held back to score the fit")
    c.set_defaults(func=cmd_calibrate)
    v = subparsers.add_parser("validate", help="time a reference MoE model and compare with the simulator")
    v.add_argument("--profile", required=True, help="calibration profile (moesim calibrate)")
    v.add_argument("--model", default=None, help="model preset, or the built-in 'tiny' / 'small' shapes (default: tiny on cpu, olmoe-1b-7b on cuda)")
    v.add_argument("--layers", type=int, default=None, help="keep only this many layers (to fit one GPU)")
    v.add_argument("--scale", default="auto", help=SCALE_HELP)
    v.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: the profile's device")
    v.add_argument("--quick", action="store_true", help="fewer cases and repetitions")
    v.add_argument("-o", "--output", default=None, help="output folder (default reports/validate-<model>)")
    v.set_defaults(func=cmd_validate)


def _argv() -> str:
    return " ".join(["moesim", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("moesim") else ""


def _default_device() -> str:
    from moesim.calibration.measure import import_torch
    return "cuda" if import_torch().cuda.is_available() else "cpu"


def cmd_calibrate(args: argparse.Namespace) -> int:
    from moesim.calibration import write_profile

    if args.from_aiconfigurator:
        from moesim.calibration.aiconfigurator import import_aiconfigurator
        if not 0 <= args.holdout < 1:
            raise ConfigError(f"must be in [0, 1), got {args.holdout}", field="--holdout")
        data, report = import_aiconfigurator(args.from_aiconfigurator, system=args.system, holdout=args.holdout,
                                             command=_argv())
        prof = write_profile(data, args.out)
        print(f"imported {args.system} from {args.from_aiconfigurator} -> {args.out} ({prof.content_hash[:19]})")
        print(holdout_markdown(report))
        return 0
    from moesim.calibration.measure import calibrate
    from moesim.calibration.reference import scaled_name
    device = args.device or _default_device()
    models = tuple(scaled_name(m, device, args.scale) for m in args.model) if args.model else None
    if args.budget_s is not None and args.budget_s <= 0:
        raise ConfigError(f"must be > 0 seconds, got {args.budget_s}", field="--budget-s")
    prof = calibrate(args.out, device=device, quick=args.quick, resume=args.resume, models=models, command=_argv(),
                     budget_s=args.budget_s)
    n = {op: len(rows) for op, rows in prof.samples.items()}
    print(f"wrote {args.out}: {prof.describe()}")
    print("  samples: " + ", ".join(f"{op} {k}" for op, k in n.items()))
    errs = prof.fit.get("errors", {}).get("grouped_ffn_skewed")
    if errs:
        print(f"  skewed expert loads vs the additive model: median {errs['median_abs_pct']:.1f} %, "
              f"max {errs['max_abs_pct']:.1f} %")
    return 0


def holdout_markdown(report: dict[str, Any]) -> str:
    """The held-back-row fit errors as a markdown table."""
    lines = [f"held-back rows ({report['holdout_fraction']:.0%}, seed {report['seed']}) of {report['system']}:", "",
             "| op | fitted rows | held rows | median abs err % | p90 abs err % | max abs err % |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for op, e in report["errors"].items():
        lines.append(f"| {op} | {e['fitted_on']} | {e['n']} | {e['median_abs_pct']:.1f} | {e['p90_abs_pct']:.1f} | "
                     f"{e['max_abs_pct']:.1f} |")
        for g, b in e.get("by", {}).items():
            lines.append(f"| &nbsp;&nbsp;{op} {g} | | {b['n']} | {b['median_abs_pct']:.1f} | {b['p90_abs_pct']:.1f} | "
                         f"{b['max_abs_pct']:.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- validate
def default_cases(device: str, quick: bool) -> list[Any]:
    """Prefill and decode shapes to time: small on CPU, serving-sized on CUDA."""
    from moesim.calibration.reference import Case
    if device == "cpu":
        pre, dec = ([(1, 16), (2, 32)], [(1, 32), (4, 64)]) if quick else (
            [(1, 16), (1, 64), (4, 32), (2, 128)], [(1, 32), (4, 64), (8, 128), (16, 256)])
    else:
        pre, dec = ([(1, 512), (4, 1024)], [(8, 512), (64, 1024)]) if quick else (
            [(1, 128), (1, 512), (4, 512), (1, 2048), (8, 1024), (2, 4096)],
            [(1, 512), (8, 512), (32, 1024), (64, 2048), (128, 1024), (256, 512)])
    return [Case("prefill", b, s) for b, s in pre] + [Case("decode", b, c) for b, c in dec]


def _gpu_preset(profile: Any) -> str:
    name = str(profile.provenance.get("gpu_name") or "").lower()
    return next((preset for key, preset in GPU_PRESETS if key in name), "h100-sxm")


def predict_cases(profile_path: str, profile: Any, spec: Any, cases: list[Any], mode: str) -> list[dict[str, Any]]:
    """Simulated pass times of ``cases`` (mean over routing samples) with out-of-domain counts.

    The scenario: one replica on one GPU, uniform routing (a random-weight router spreads tokens
    evenly), zero framework host overhead (the reference loop has no scheduler or sampler). The
    pass model prices every kernel the forward launches (``hardware.layer_ops``; ``kernels`` in
    the result): in eager mode from the eager tables, whose answers include each kernel's host
    issue time, in graph mode from the graph tables plus one graph launch (``host_s``).
    """
    from moesim.config.schema import CostCfg, DeploymentCfg, HardwareCfg, RoutingLoadCfg, Scenario
    from moesim.core.rng import RngStreams
    from moesim.engine.build import build_deployment
    from moesim.engine.pass_time import GroupBatch
    from moesim.engine.run import _pass_models

    scenario = Scenario(
        name=f"validate-{spec.name}", model=spec,
        hardware=HardwareCfg(gpu=_gpu_preset(profile), topology="h100-8gpu-node",
                             calibration=f"{profile_path}#{mode}", cost=CostCfg(host_overhead_s=0.0)),
        deployment=DeploymentCfg(replicas=1, gpus_per_replica=1, attention_tp=1, attention_dp=1, ep=1, expert_tp=1),
        routing=RoutingLoadCfg(kind="uniform", samples_per_shape=8))
    d = build_deployment(scenario)
    pcm = _pass_models(scenario, d, RngStreams(scenario.seed))[0]
    cost = d.cost
    out = []
    for case in cases:
        b = case.batch
        if case.phase == "prefill":
            g = GroupBatch(prefill_chunk=np.full(b, case.tokens, np.int64), prefill_prior=np.zeros(b, np.int64))
        else:
            g = GroupBatch(decode_ctx=np.full(b, case.tokens, np.int64))
        before = sum(getattr(cost, "out_of_domain", {}).values())
        n = scenario.routing.samples_per_shape
        t = float(np.mean([pcm.pass_times([g], 1, np.array([i]))[0] for i in range(n)]))
        ood = sum(getattr(cost, "out_of_domain", {}).values()) - before
        out.append({"predicted_s": t, "ood_queries": int(ood), "host_s": float(cost.host_overhead_s),
                    "kernels": pcm.kernels_per_pass(g.tokens, g.seqs, g.decode_ctx.size)})
    return out


def validate(profile_path: str, *, model: str | None = None, layers: int | None = None, device: str | None = None,
             quick: bool = False, out: str | Path | None = None,
             scale: str | float | None = "auto") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Measure the reference model and predict the same passes; write CSV, markdown and HTML to ``out``.

    ``scale``: shrink a preset's widths (``auto``: on CPU down to a hidden size <= 512, see
    ``reference.scaled_name``); calibrate with the same scale so the shapes were measured."""
    from moesim.calibration import load_profile
    from moesim.calibration.reference import resolve_model, scaled_name, time_cases

    profile = load_profile(profile_path)
    device = device or str(profile.provenance.get("device") or "cpu")
    name = scaled_name(model or ("tiny" if device == "cpu" else "olmoe-1b-7b"), device, scale)
    spec = resolve_model(name, layers=layers)
    cases = default_cases(device, quick)
    measured = time_cases(spec, cases, device=device, quick=quick)
    modes = ["eager"] + (["graph"] if "graph" in profile.modes() else [])
    preds = {m: predict_cases(profile_path, profile, spec, cases, m) for m in modes}
    rows = []
    for i, (case, meas) in enumerate(zip(cases, measured)):
        for m in modes:
            key, spread_key = ("median_s", "spread") if m == "eager" else ("graph_median_s", "graph_spread")
            if key not in meas:
                continue
            p = preds[m][i]
            rows.append({"model": spec.name, "phase": case.phase, "batch": case.batch, "tokens": case.tokens,
                         "mode": m, "measured_ms": 1e3 * meas[key], "spread_pct": 100 * meas[spread_key],
                         "predicted_ms": 1e3 * p["predicted_s"], "host_ms": 1e3 * p["host_s"],
                         "error_pct": 100 * (p["predicted_s"] / meas[key] - 1.0), "ood_queries": p["ood_queries"],
                         "impl": meas["impl"]})
    errs = np.abs([r["error_pct"] for r in rows]) if rows else np.zeros(1)
    meta = {"profile": str(profile_path), "profile_hash": profile.content_hash, "profile_device": profile.describe(),
            "device": device, "model": spec.name, "layers": spec.n_layers, "quick": quick,
            "median_abs_error_pct": float(np.median(errs)), "max_abs_error_pct": float(errs.max()),
            "command": _argv() or f"moesim validate --profile {profile_path} --device {device}"}
    if out is not None:
        write_outputs(Path(out), rows, meta)
    return rows, meta


COLUMNS = ["model", "phase", "batch", "tokens", "mode", "measured_ms", "spread_pct", "predicted_ms", "host_ms", "error_pct",
           "ood_queries", "impl"]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The validation table plus a summary line, as markdown."""
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |\n" for r in rows)
    return (f"validate {meta['model']} ({meta['layers']} layers) on {meta['device']} with {meta['profile_device']}\n\n"
            + head + body + f"\nmedian |error| {meta['median_abs_error_pct']:.1f} %, max |error| "
            f"{meta['max_abs_error_pct']:.1f} % over {len(rows)} passes (H100 target: median <= 5 %, max <= 15 %)\n")


def _svg(rows: list[dict[str, Any]]) -> str:
    """Predicted vs measured, log-log, as an inline SVG (no scripts: opens anywhere)."""
    if not rows:
        return ""
    vals = [v for r in rows for v in (r["measured_ms"], r["predicted_ms"]) if v > 0]
    lo, hi = math.log10(min(vals)) - 0.1, math.log10(max(vals)) + 0.1
    size, pad = 380, 48

    def pos(v: float) -> float:
        return pad + (math.log10(v) - lo) / (hi - lo) * (size - 2 * pad)
    pts = "".join(
        f'<circle cx="{pos(r["measured_ms"]):.1f}" cy="{size - pos(r["predicted_ms"]):.1f}" r="4" '
        f'fill="{"#1f77b4" if r["phase"] == "prefill" else "#d62728"}" opacity="{0.9 if r["mode"] == "eager" else 0.5}">'
        f'<title>{html.escape(r["phase"])} b={r["batch"]} n={r["tokens"]} {r["mode"]}: '
        f'{r["error_pct"]:+.1f} %</title></circle>' for r in rows)
    return (f'<svg width="{size}" height="{size}" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'aria-label="predicted versus measured pass time">'
            f'<rect x="{pad}" y="{pad}" width="{size - 2 * pad}" height="{size - 2 * pad}" fill="none" stroke="#999"/>'
            f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" stroke="#999" stroke-dasharray="4"/>'
            f'<text x="{pad}" y="{size - pad + 14}" font-size="10">{10 ** lo:.3g}</text>'
            f'<text x="{size - pad}" y="{size - pad + 14}" font-size="10" text-anchor="end">{10 ** hi:.3g}</text>'
            f'<text x="{pad - 4}" y="{pad + 10}" font-size="10" text-anchor="end">{10 ** hi:.3g}</text>'
            f'{pts}<text x="{size / 2}" y="{size - 8}" text-anchor="middle" font-size="12">measured (ms, log)</text>'
            f'<text x="12" y="{size / 2}" font-size="12" transform="rotate(-90 12 {size / 2})" text-anchor="middle">'
            f'predicted (ms, log)</text></svg>')


def html_report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """A self-contained HTML page: summary, scatter plot and table."""
    def cell(r: dict[str, Any], c: str) -> str:
        style = ""
        if c == "error_pct":
            e = abs(r[c])
            style = ' style="background:%s"' % ("#d4f4d4" if e <= 5 else "#fff3c4" if e <= 15 else "#f8d0d0")
        return f"<td{style}>{html.escape(_fmt(r[c]))}</td>"
    table = ("<table><tr>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>"
             + "".join("<tr>" + "".join(cell(r, c) for c in COLUMNS) + "</tr>" for r in rows) + "</table>")
    info = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(_fmt(v))}</li>" for k, v in meta.items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>moesim validate</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:right}</style></head><body>"
            f"<h1>Predicted vs measured: {html.escape(meta['model'])} on {html.escape(meta['device'])}</h1>"
            f"<p>median |error| {meta['median_abs_error_pct']:.1f} %, max |error| {meta['max_abs_error_pct']:.1f} %. "
            "Prediction: the engine's PassCostModel with the calibrated cost model; measurement: the torch "
            "reference model (blue prefill, red decode; faint points are CUDA-graph timings).</p>"
            f"{_svg(rows)}<ul>{info}</ul>{table}</body></html>\n")


def write_outputs(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """``validate.csv``, ``validate.md``, ``validate.json`` and ``validate.html`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "validate.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({c: r[c] for c in COLUMNS} for r in rows)
    (out / "validate.md").write_text(markdown(rows, meta))
    (out / "validate.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / "validate.html").write_text(html_report(rows, meta))


def cmd_validate(args: argparse.Namespace) -> int:
    model = args.model
    out = Path(args.output or Path("reports") / f"validate-{model or 'default'}")
    rows, meta = validate(args.profile, model=model, layers=args.layers, device=args.device, quick=args.quick, out=out,
                          scale=args.scale)
    print(markdown(rows, meta), end="")
    print(f"  wrote {out}/validate.{{csv,md,html,json}}")
    return 0
