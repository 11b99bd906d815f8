"""Measure kernel latencies with torch and write a calibration profile.

What is timed (all in the model dtype, bf16, unless said otherwise):

- dense GEMM ``[m, k] x [k, n]`` over an (M, K, N) grid; fp8 (``torch._scaled_mm``) too on GPUs
  with compute capability >= 8.9;
- grouped SwiGLU expert FFNs for the (hidden, intermediate) shapes of the chosen models, over
  active experts x tokens per expert with uniform loads, plus a few skewed (Zipf) loads that test
  the per-expert additive model; ``torch._grouped_mm`` where it works (checked against a
  per-expert loop on the spot), the loop otherwise; the row says which (``impl``);
- attention cores with ``scaled_dot_product_attention``: causal prefill over batch x sequence and
  decode over batch x KV length, for each model's attention shape (MHA/GQA; MLA as its
  uncompressed prefill and absorbed latent decode);
- memory: device-to-device copies; on CUDA also host<->device copies, pinned and pageable;
- host: kernel launch latency, per-op host (dispatch) time and, on CUDA, the launch of a CUDA
  graph replay (``fit.host``); a calibrated model charges one graph launch per CUDA-graph pass
  (eager launches are inside the eager tables, which time ops launched back to back).

Timing (``timing``): median and spread of back-to-back calls, on CUDA with events and, where
capture works, as a CUDA graph replay; on CPU with the CPU time of the timing thread.

A run is resumable: finished points go to ``<out>.partial.json`` as they complete, and
``resume=True`` skips them (the settings must match). The grids are in ``plan``, the kernels and
their measuring tasks in ``kernels``, provenance in ``provenance``; this module drives a run.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, TextIO

from moesim.calibration.fit import fit_profile
from moesim.calibration.kernels import (_attn_tasks, _gemm_tasks, _grouped_tasks, _host_tasks, _memory_tasks,
                                        grouped_impl, swiglu_experts)
from moesim.calibration.plan import Plan, Settings, make_plan
from moesim.calibration.provenance import provenance
from moesim.calibration.reference import resolve_model
from moesim.calibration.timing import Timer, cpu_threads, import_torch
from moesim.core.errors import ConfigError
from moesim.hardware.profile import Profile, write_profile

__all__ = ["Plan", "Settings", "Timer", "calibrate", "cpu_threads", "grouped_impl", "import_torch", "make_plan",
           "measure", "provenance", "swiglu_experts"]


class _Progress:
    """A one-line progress bar on a terminal; a few plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream, self.t0 = max(total, 1), stream, time.perf_counter()
        self.live = stream.isatty()
        self.last_pct = -1

    def update(self, done: int, label: str) -> None:
        frac = done / self.total
        if self.live:
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r  calibrating [{bar:<30}] {done}/{self.total} {time.perf_counter() - self.t0:5.0f}s "
                              f"{label[:40]:<40}")
            if done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif int(frac * 4) > self.last_pct:
            self.last_pct = int(frac * 4)
            self.stream.write(f"  calibrating: {done}/{self.total} points ({time.perf_counter() - self.t0:.0f}s)\n")
            self.stream.flush()


def _partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.json")


def measure(settings: Settings, *, out: Path, resume: bool = False, stream: TextIO | None = None,
            budget_s: float | None = None) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Run every point of the plan (skipping those in the partial file when resuming).

    ``budget_s``: stop taking new points after this many seconds of wall time; the points left are
    listed as skipped (``time budget``) and ``--resume`` measures them later. The order puts what a
    serving pass needs first (host, memory, bf16 GEMM, grouped experts, attention) and fp8 GEMMs last.
    Returns the raw samples by op and the keys of points that could not be measured here.
    """
    torch = import_torch()
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available to torch; use --device cpu or a GPU machine", field="--device")
    models = [resolve_model(m) for m in settings.models]
    plan = make_plan(settings.device, settings.quick, models)
    timer = Timer(torch, settings)
    torch.manual_seed(0)
    impl = grouped_impl(torch, settings.device, torch.bfloat16)
    tasks = [*_host_tasks(torch, timer, settings.device), *_memory_tasks(torch, plan, timer, settings.device),
             *_gemm_tasks(torch, plan, timer, settings.device, ["bf16"]),
             *_grouped_tasks(torch, plan, timer, settings.device, impl), *_attn_tasks(torch, plan, timer, settings.device),
             *_gemm_tasks(torch, plan, timer, settings.device, ["fp8"])]
    partial = _partial_path(out)
    done: dict[str, Any] = {}
    key = asdict(settings)
    key["models"] = list(settings.models)
    if resume and partial.is_file():
        state = json.loads(partial.read_text())
        if state.get("settings") != key:
            raise ConfigError(f"{partial} was written with other settings ({state.get('settings')}); "
                              "rerun without --resume or with the same options", field="--resume")
        done = state["done"]
    bar = _Progress(len(tasks), stream or sys.stderr)
    t0 = last_save = time.perf_counter()
    out_of_time: list[str] = []
    for i, (op, tkey, run) in enumerate(tasks):
        if tkey not in done and budget_s is not None and time.perf_counter() - t0 > budget_s:
            out_of_time.append(tkey)
            continue
        if tkey not in done:
            done[tkey] = {"op": op, "row": _attempt(torch, run, tkey)}
            if time.perf_counter() - last_save > 2.0 or i == len(tasks) - 1:
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps({"settings": key, "done": done}))
                last_save = time.perf_counter()
        bar.update(i + 1, tkey)
    samples: dict[str, list[dict[str, Any]]] = {}
    for t in done.values():
        if "skipped" not in t["row"]:
            samples.setdefault(t["op"], []).append(t["row"])
    skipped = sorted(k for k, t in done.items() if "skipped" in t["row"])
    if out_of_time:
        partial.write_text(json.dumps({"settings": key, "done": done}))
        (stream or sys.stderr).write(f"  time budget of {budget_s:g} s spent: {len(out_of_time)} points not measured "
                                     f"(--resume measures them)\n")
        skipped += [f"{k} (time budget)" for k in out_of_time]
    if skipped:
        (stream or sys.stderr).write(f"  {len(skipped)} points skipped (out of memory or unsupported), e.g. "
                                     f"{', '.join(skipped[:3])}\n")
    return samples, skipped


def _attempt(torch: Any, run: Callable[[], dict[str, Any]], key: str) -> dict[str, Any]:
    """``run()``, or ``{"skipped": reason}`` when the point does not fit or the kernel is unsupported
    here (e.g. fp8 shapes ``_scaled_mm`` rejects, attention shapes without a fused kernel)."""
    try:
        return run()
    except (torch.cuda.OutOfMemoryError, RuntimeError, NotImplementedError, ValueError) as e:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        return {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}


def calibrate(out: str | Path, *, device: str = "cuda", quick: bool = False, resume: bool = False,
              models: tuple[str, ...] | None = None, command: str = "", stream: TextIO | None = None,
              repeats: int | None = None, budget_s: float | None = None) -> Profile:
    """Measure, fit and write a profile to ``out``; removes the partial file once every point is in
    (with ``budget_s`` left over, it stays for ``--resume``)."""
    out = Path(out)
    if models is None:
        models = ("tiny",) if device == "cpu" else ("olmoe-1b-7b", "qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v3")
    settings = Settings(device=device, quick=quick, models=tuple(models),
                        repeats=repeats or (7 if quick else 15), warmup=2 if quick else 3)
    torch = import_torch()
    with cpu_threads(torch, device):
        samples, skipped = measure(settings, out=out, resume=resume, stream=stream, budget_s=budget_s)
        prov = provenance(torch, device, command or f"moesim calibrate --out {out} --device {device}"
                          + (" --quick" if quick else ""))
    prov["grouped_impl"] = sorted({r.get("impl", "") for r in samples.get("grouped_ffn", [])})
    prov["collectives"] = "not measured (single-process calibration)"
    prov["skipped_points"] = skipped
    data = fit_profile(samples, provenance=prov, settings={**asdict(settings), "models": list(settings.models)})
    prof = write_profile(data, out)
    if not any(k.endswith("(time budget)") for k in skipped):
        _partial_path(out).unlink(missing_ok=True)
    return prof
