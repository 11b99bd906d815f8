"""``moesim`` command line: run | presets | config.

Exit codes: 0 ok, 2 bad input (config, preset, parallelism, memory), 3 infeasible placement,
1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from moesim.cli.calibrate import register as register_calibration
from moesim.core.errors import MoesimError

__all__ = ["main"]


def _progress_printer(stream=sys.stderr):  # noqa: ANN001, ANN202
    """A progress bar on a terminal, shown once a run has taken more than a second of wall time."""
    start = time.perf_counter()
    live = stream.isatty()

    def show(done: float, total: float) -> None:
        if not live or time.perf_counter() - start < 1.0:
            return
        frac = 1.0 if total <= 0 else min(done / total, 1.0)
        bar = "#" * int(frac * 30)
        stream.write(f"\r  simulating [{bar:<30}] {frac:6.1%}  t={done:,.0f}s")
        if frac >= 1.0:
            stream.write("\n")
        stream.flush()

    return show


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    return "-" if v is None else str(v)


SUMMARY_ROWS = [
    ("requests finished / arrived", ("requests_finished", "requests_arrived")),
    ("unfinished / rejected / preemptions", ("requests_unfinished", "requests_rejected", "preemptions")),
    ("TTFT p50 / p99 (s)", ("ttft_p50_s", "ttft_p99_s")),
    ("TPOT p50 / p99 (s)", ("tpot_p50_s", "tpot_p99_s")),
    ("E2E p50 / p99 (s)", ("e2e_p50_s", "e2e_p99_s")),
    ("output tok/s (total / per GPU)", ("output_tokens_per_s", "output_tokens_per_s_per_gpu")),
    ("goodput req/s, SLO attainment", ("goodput_requests_per_s", "slo_attainment")),
    ("batch size mean, busy fraction", ("batch_size_mean", "busy_fraction_mean")),
    ("KV occupancy mean / max", ("kv_occupancy_mean", "kv_occupancy_max")),
    ("expert imbalance (max/mean rank)", ("expert_imbalance_mean",)),
    ("forward passes, DES events", ("forward_passes", "des_events")),
]


TRAINING_ROWS = [
    ("parallelism, schedule", ("parallelism", "schedule")),
    ("step time mean / p99 (s)", ("step_time_mean_s", "step_time_p99_s")),
    ("compute / exposed EP comm / bubble (s)", ("step_compute_s", "step_ep_comm_s", "step_bubble_s")),
    ("imbalance / straggler wait (s)", ("step_imbalance_wait_s", "step_straggler_wait_s")),
    ("MFU, tokens/s per GPU", ("mfu", "tokens_per_s_per_gpu")),
    ("expert imbalance, MaxVio first / last", ("expert_imbalance_mean", "maxvio_global_first", "maxvio_global_last")),
    ("time to train (days), GPU-hours", ("time_to_train_days", "gpu_hours")),
    ("failures, goodput", ("failures", "goodput")),
    ("peak memory (bytes), OOM steps", ("memory_peak_bytes", "oom_steps")),
]


def print_summary(summary: dict[str, object], out: Path, wall_s: float) -> None:
    """The short table printed after a run (training runs get their own rows)."""
    if summary.get("mode") == "training":
        print(f"{summary['scenario']}: training {summary['model']} on {summary['gpus']} x {summary['gpu']}, "
              f"{summary['steps']} steps ({summary['sim_time_s']:,.1f} s simulated) in {wall_s:.1f} s")
        for label, keys in TRAINING_ROWS:
            print(f"  {label:<40} {' / '.join(_fmt(summary.get(k)) for k in keys)}")
        print(f"  report: {out / 'report.html'}")
        return
    print(f"{summary['scenario']}: {summary['model']} on {summary['gpus']} x {summary['gpu']} "
          f"({summary['replicas']} replicas), {summary['sim_time_s']:,.1f} s simulated in {wall_s:.1f} s")
    for label, keys in SUMMARY_ROWS:
        print(f"  {label:<36} {' / '.join(_fmt(summary.get(k)) for k in keys)}")
    if summary.get("prefill_replicas"):
        print(f"  {'KV transfers, p50 / p99 (s)':<36} {_fmt(summary.get('kv_transfers'))}, "
              f"{_fmt(summary.get('kv_transfer_p50_s'))} / {_fmt(summary.get('kv_transfer_p99_s'))}")
    print(f"  report: {out / 'report.html'}")


def cmd_run(args: argparse.Namespace) -> int:
    from moesim.config.load import load_scenario
    from moesim.engine.run import run
    from moesim.report import write_html

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    scenario = load_scenario(args.scenario, overrides)
    out = Path(args.output or Path("reports") / scenario.name)
    result = run(scenario, progress=None if args.quiet else _progress_printer())
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(result.to_json_dict(), indent=2, sort_keys=True) + "\n")
    result.requests.to_csv(out / "requests.csv", index=False)
    if not args.no_report:
        write_html(result, out / "report.html")
    if not args.quiet:
        print_summary(result.summary, out, result.provenance["wall_s"])
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from moesim.config.presets import list_presets, load_gpu, load_model
    from moesim.spec.model import ModelShape

    print("models:")
    for name in list_presets("models"):
        m = load_model(name)
        sh = ModelShape.build(m)
        kind = (f"MoE {m.moe.n_routed_experts}x top-{m.moe.top_k}" if m.moe else "dense")
        print(f"  {name:<18} {sh.total_params() / 1e9:7.1f}B total {sh.active_params() / 1e9:6.1f}B active  "
              f"{m.n_layers} layers, {m.attention.kind.upper()}, {kind}")
    print("gpus:")
    for name in list_presets("gpus"):
        g = load_gpu(name)
        print(f"  {name:<18} {g.flops_for('bf16') / 1e12:6.0f} TFLOP/s bf16  {g.hbm_bytes / 1e9:5.0f} GB HBM "
              f"{g.hbm_bytes_per_s / 1e12:4.2f} TB/s  NVLink {g.nvlink_bytes_per_s / 1e9:4.0f} GB/s/dir")
    print("topologies:")
    for name in list_presets("topologies"):
        print(f"  {name}")
    print("scenarios:")
    for name in list_presets("scenarios"):
        print(f"  {name}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from moesim.config.load import dump_yaml, load_scenario

    print(dump_yaml(load_scenario(args.scenario, list(args.set or []))), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moesim", description="Simulate MoE clusters.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="simulate a scenario and write run.json + report.html")
    r.add_argument("scenario", nargs="?", default=None, help="scenario YAML or preset name (default: built-in)")
    r.add_argument("-o", "--output", help="output folder (default: reports/<scenario name>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. seed=3")
    r.add_argument("--seed", type=int, help="shorthand for --set seed=N")
    r.add_argument("--no-report", action="store_true", help="skip report.html")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    r.set_defaults(func=cmd_run)
    pr = sub.add_parser("presets", help="list models, GPUs, topologies and scenarios")
    pr.set_defaults(func=cmd_presets)
    c = sub.add_parser("config", help="print the resolved scenario after overrides and validation")
    c.add_argument("scenario", nargs="?", default=None)
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(func=cmd_config)
    register_calibration(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moesim`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MoesimError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
