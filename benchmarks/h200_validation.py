"""Pass-time fidelity on the H200: stored measurements vs what the current code predicts (issue 5).

    python benchmarks/h200_validation.py [--dir calibration/h200-validation] [--profile calibration/h200-sxm.json]
                                         [--markdown PATH] [--stored]

Measured: ``calibration/h200-validation/<model>/validate.json``, written by ``moesim validate`` on
an NVIDIA H200 (``calibration/run_on_gpu.sh``): the torch reference MoE transformer
(``moesim/calibration/reference.py``) timed eagerly and as a CUDA graph, per prefill / decode case.
Predicted: ``predict_cases`` (the engine's ``PassCostModel`` with the calibrated cost model of the
stored profile), re-run now with the model and layer count the json records, so the table follows
the code. ``--stored`` prints the predictions the json holds (as made when it was measured)
instead. Needs neither torch nor a GPU. Error = predicted / measured - 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "calibration" / "h200-validation"
DEFAULT_PROFILE = ROOT / "calibration" / "h200-sxm.json"
COLUMNS = ("model", "phase", "batch", "tokens", "mode", "measured_ms", "predicted_ms", "error_pct")
STORED = "stored_error_pct"
"""Column added when re-predicting: the error of the prediction made at measurement time."""


def load_runs(folder: Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``(meta, rows)`` of every ``<model>/validate.json`` under ``folder``, sorted by folder name."""
    runs = []
    for path in sorted(folder.glob("*/validate.json")):
        data = json.loads(path.read_text())
        runs.append((data["meta"], data["rows"]))
    if not runs:
        raise SystemExit(f"no */validate.json under {folder}")
    return runs


def repredict(meta: dict[str, Any], rows: list[dict[str, Any]], profile_path: Path) -> list[dict[str, Any]]:
    """``rows`` with ``predicted_ms`` / ``error_pct`` / ``host_ms`` recomputed by the current code."""
    from moesim.calibration import load_profile
    from moesim.calibration.reference import Case, resolve_model
    from moesim.cli.calibrate import predict_cases

    profile = load_profile(str(profile_path))
    spec = resolve_model(meta["model"], layers=int(meta["layers"]))
    out = [{**r, STORED: r["error_pct"]} for r in rows]
    for mode in sorted({r["mode"] for r in rows}):
        mine = [r for r in out if r["mode"] == mode]
        cases = [Case(r["phase"], int(r["batch"]), int(r["tokens"])) for r in mine]
        for r, p in zip(mine, predict_cases(str(profile_path), profile, spec, cases, mode)):
            r["predicted_ms"] = 1e3 * p["predicted_s"]
            r["host_ms"] = 1e3 * p["host_s"]
            r["error_pct"] = 100.0 * (r["predicted_ms"] / r["measured_ms"] - 1.0)
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median and max |error| (%) of ``rows``, overall and per mode."""
    def stats(rs: list[dict[str, Any]]) -> tuple[float, float]:
        e = np.abs([r["error_pct"] for r in rs])
        return (float(np.median(e)), float(e.max())) if e.size else (float("nan"), float("nan"))
    out: dict[str, float] = {"n": len(rows)}
    out["median"], out["max"] = stats(rows)
    for mode in ("eager", "graph"):
        out[f"median_{mode}"], out[f"max_{mode}"] = stats([r for r in rows if r["mode"] == mode])
        for phase in ("prefill", "decode"):
            out[f"median_{phase}_{mode}"], out[f"max_{phase}_{mode}"] = stats(
                [r for r in rows if r["mode"] == mode and r["phase"] == phase])
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table_markdown(rows: list[dict[str, Any]]) -> str:
    cols = COLUMNS + ((STORED,) if rows and STORED in rows[0] else ())
    head = "| " + " | ".join(cols) + " |\n|" + "|".join("---" if c in ("model", "phase", "mode") else "--:"
                                                    for c in cols) + "|\n"
    body = "".join("| " + " | ".join(f"{r[c]:+.1f}" if c.endswith("error_pct") else _fmt(r[c]) for c in cols)
                   + " |\n" for r in rows)
    return head + body


def summary_markdown(per_model: dict[str, dict[str, float]]) -> str:
    """Median / max |error| per model: all passes, then by timing mode and phase."""
    parts = [(f"{p} {m}", f"median_{p}_{m}", f"max_{p}_{m}") for m in ("eager", "graph") for p in ("prefill", "decode")]
    lines = ["| model | passes | median abs err % | max abs err % | " + " | ".join(f"{n} median / max %" for n, _, _ in parts)
             + " |", "|---|--:|--:|--:|" + "--:|" * len(parts)]
    for name, s in per_model.items():
        lines.append(f"| {name} | {s['n']:.0f} | {s['median']:.1f} | {s['max']:.1f} | "
                     + " | ".join(f"{s[a]:.1f} / {s[b]:.1f}" for _, a, b in parts) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="folder of <model>/validate.json")
    p.add_argument("--profile", type=Path, default=DEFAULT_PROFILE, help="the calibration profile measured with them")
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables as markdown to this file")
    p.add_argument("--stored", action="store_true", help="report the stored predictions instead of re-predicting")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    stored_rows: list[dict[str, Any]] = []
    per_model: dict[str, dict[str, float]] = {}
    per_model_stored: dict[str, dict[str, float]] = {}
    for meta, stored in load_runs(args.dir):
        mine = stored if args.stored else repredict(meta, stored, args.profile)
        name = f"{meta['model']} ({meta['layers']} layers{', quick' if meta.get('quick') else ''})"
        per_model[name], per_model_stored[name] = summary(mine), summary(stored)
        rows += mine
        stored_rows += stored
    per_model["all"], per_model_stored["all"] = summary(rows), summary(stored_rows)
    what = "stored predictions" if args.stored else "re-predicted by the current code"
    text = (f"H200 pass times, measured vs {what} (profile {args.profile.name}, "
            f"{time.perf_counter() - t0:.1f} s)\n\n" + table_markdown(rows) + "\n" + summary_markdown(per_model))
    if not args.stored:
        text += "\nAt measurement time (the stored predictions):\n\n" + summary_markdown(per_model_stored)
    print(text, end="")
    if args.markdown is not None:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
