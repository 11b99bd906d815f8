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

Timing: on CUDA, CUDA events around ``inner`` back-to-back calls after a warm-up, synchronised
before and after, repeated ``repeats`` times; inputs rotate over enough copies to defeat the L2
cache, as a real forward pass streams its weights. Where capture works the same calls are also
timed as a CUDA graph replay (``graph_median_s``: kernel time without launch overhead). On CPU,
the same loop is timed with the CPU time of the timing thread (``time.thread_time``; torch runs
one intra-op thread, see ``cpu_threads``), not the wall clock: on a shared machine other
processes preempt a 10 ms forward pass far more often than a 0.1 ms kernel, and wall time would
then inflate passes against the kernels they are predicted from (``Settings.cpu_clock="wall"``
restores the wall clock). Each row keeps the median, the relative spread and the repetition count.

A run is resumable: finished points go to ``<out>.partial.json`` as they complete, and
``resume=True`` skips them (the settings must match).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np

import moesim
from moesim.calibration.fit import fit_profile, summarise_times
from moesim.calibration.reference import attention_variants, resolve_model
from moesim.config.schema import ModelSpec
from moesim.core.errors import ConfigError, MissingExtra
from moesim.hardware.profile import Profile, write_profile
from moesim.spec.model import ModelShape

__all__ = ["Plan", "Settings", "Timer", "calibrate", "import_torch", "make_plan", "measure", "provenance"]


def import_torch() -> Any:
    """torch, or a MissingExtra saying how to install it."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingExtra("calibration needs torch: pip install 'moesim[calibrate]'") from e
    return torch


@dataclass(frozen=True)
class Settings:
    """How timings are taken."""

    device: str = "cuda"
    quick: bool = False
    warmup: int = 3
    repeats: int = 15
    min_rep_s: float = 2e-4
    """Each repetition loops the op until at least this long (short ops are timed in bulk)."""
    max_inner: int = 200
    graphs: bool = True
    """Also time CUDA graph replays (CUDA only)."""
    models: tuple[str, ...] = ()
    cpu_clock: str = "thread"
    """CPU only: ``thread`` (CPU time of the timing thread, immune to preemption) or ``wall``."""


@dataclass
class Plan:
    """The grid of points to measure."""

    gemm_m: list[int]
    gemm_k: list[int]
    gemm_n: list[int]
    gemm_dtypes: list[str]
    gemm_max_flops: float
    grouped_active: list[int]
    grouped_tokens: list[int]
    grouped_max_tokens: int
    attn_batch: list[int]
    attn_seq: list[int]
    attn_max_tokens: int
    decode_batch: list[int]
    decode_kv: list[int]
    decode_max_kv_tokens: int
    memory_bytes: list[int]
    copy_bytes: list[int]
    models: list[ModelSpec] = field(default_factory=list)


def _pow2(lo: int, hi: int, step: int = 1) -> list[int]:
    return [2 ** e for e in range(int(math.log2(lo)), int(math.log2(hi)) + 1, step)]


def make_plan(device: str, quick: bool, models: list[ModelSpec]) -> Plan:
    """The grids for ``device``: full size on CUDA; small on CPU, where the path is exercised and
    validated on small shapes (``quick``: tiny, for tests)."""
    hk = sorted({m.hidden_size for m in models})
    if device == "cuda":
        return Plan(
            gemm_m=_pow2(1, 16384, 2 if quick else 1), gemm_k=sorted({512, 2048, 8192, *hk}) if quick else
            sorted({512, 1024, 2048, 4096, 8192, 16384, *hk}),
            gemm_n=[64, 512, 2048, 8192, 32768, 131072] if quick else [64, 256, 1024, 2048, 4096, 8192, 16384,
                                                                      32768, 65536, 131072],
            gemm_dtypes=["bf16", "fp8"], gemm_max_flops=4e13,
            grouped_active=_pow2(1, 64, 2 if quick else 1), grouped_tokens=_pow2(1, 4096, 2 if quick else 1),
            grouped_max_tokens=131072,
            attn_batch=_pow2(1, 16, 2 if quick else 1), attn_seq=_pow2(128, 8192, 2 if quick else 1), attn_max_tokens=32768,
            decode_batch=_pow2(1, 256, 2 if quick else 1), decode_kv=_pow2(128, 32768, 2 if quick else 1),
            decode_max_kv_tokens=1 << 20,
            memory_bytes=_pow2(1 << 8, 1 << 30, 2 if quick else 1), copy_bytes=_pow2(1 << 12, 1 << 28, 2), models=models)
    if quick:
        return Plan(
            gemm_m=[1, 8, 64], gemm_k=sorted({32, 128, *hk}), gemm_n=[8, 64, 512], gemm_dtypes=["bf16"],
            gemm_max_flops=1e9, grouped_active=[1, 4], grouped_tokens=[1, 8, 64], grouped_max_tokens=512,
            attn_batch=[1, 4], attn_seq=[4, 16, 64], attn_max_tokens=1024, decode_batch=[1, 4],
            decode_kv=[4, 32, 256], decode_max_kv_tokens=4096, memory_bytes=[1 << 8, 1 << 12, 1 << 16, 1 << 20],
            copy_bytes=[], models=models)
    # CPU, full: the GEMM axes include the GEMMs the pass model asks for (k = hidden, n = the
    # attention projections, dense / shared FFNs, router and LM head), so validation stays in the grid
    ks, ns = set(hk), set()
    for m in models:
        a, sh, d = m.attention, ModelShape.build(m), m.hidden_size
        ns |= {d, m.vocab_size, sh.attn_params // d}
        ks |= {a.n_heads * a.head_dim}
        if sh.n_dense_layers:
            ns |= {sh.dense_ffn_params // d}
        if m.moe:
            ns |= {m.moe.n_routed_experts, 3 * m.moe.expert_intermediate}
            if sh.shared_params:
                ns |= {sh.shared_params // d}
    return Plan(
        gemm_m=[1, 4, 16, 64, 256], gemm_k=sorted({32, 128, *ks}), gemm_n=sorted({8, 64, 512, *ns}),
        gemm_dtypes=["bf16"], gemm_max_flops=4e9, grouped_active=[1, 2, 4, 8], grouped_tokens=[1, 4, 16, 64, 256],
        grouped_max_tokens=2048, attn_batch=[1, 2, 4, 8], attn_seq=[4, 16, 64, 256], attn_max_tokens=2048,
        decode_batch=[1, 4, 16], decode_kv=[4, 32, 256, 1024], decode_max_kv_tokens=16384,
        memory_bytes=[1 << 8, 1 << 12, 1 << 16, 1 << 20, 1 << 24], copy_bytes=[], models=models)


# --------------------------------------------------------------------------- timing
class Timer:
    """Times a zero-argument callable: warm-up, repetitions, median and spread."""

    def __init__(self, torch: Any, settings: Settings) -> None:
        self.torch = torch
        self.s = settings
        self.cuda = settings.device == "cuda"
        self.clock = time.thread_time if not self.cuda and settings.cpu_clock == "thread" else time.perf_counter

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def _inner(self, fn: Callable[[], Any]) -> int:
        trials = []
        for _ in range(3):
            self._sync()
            t0 = self.clock()
            fn()
            self._sync()
            trials.append(self.clock() - t0)
        one = max(min(trials), 1e-7)
        return int(min(max(1, math.ceil(self.s.min_rep_s / one)), self.s.max_inner))

    def _loop_times(self, run: Callable[[], None], inner: int) -> list[float]:
        torch = self.torch
        times = []
        if self.cuda:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.s.repeats)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.s.repeats)]
            torch.cuda.synchronize()
            for a, b in zip(starts, ends):
                a.record()
                run()
                b.record()
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 / inner for a, b in zip(starts, ends)]
        for _ in range(self.s.repeats):
            t0 = self.clock()
            run()
            times.append((self.clock() - t0) / inner)
        return times

    def time(self, fn: Callable[[], Any]) -> dict[str, Any]:
        """``{median_s, spread, min_s, max_s, reps, inner}`` and, on CUDA when capturable, ``graph_*``."""
        for _ in range(self.s.warmup):
            fn()
        inner = self._inner(fn)

        def run() -> None:
            for _ in range(inner):
                fn()
        row = {**summarise_times(self._loop_times(run, inner)), "inner": inner}
        if self.cuda and self.s.graphs:
            g = self._graph(fn, inner)
            if g is not None:
                gs = summarise_times(self._loop_times(g.replay, inner))
                row.update({"graph_median_s": gs["median_s"], "graph_spread": gs["spread"]})
        return row

    def _graph(self, fn: Callable[[], Any], inner: int) -> Any:
        """``inner`` calls of ``fn`` captured as one CUDA graph, or None where capture fails."""
        torch = self.torch
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(inner):
                    fn()
            for _ in range(self.s.warmup):
                graph.replay()
            return graph
        except Exception:  # noqa: BLE001 - ops with host syncs cannot be captured; eager timing stands
            try:
                torch.cuda.synchronize()
            except RuntimeError:
                pass
            return None


def _cache_bytes(torch: Any, device: str) -> int:
    if device == "cuda":
        return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20) or (50 << 20))
    return 32 << 20


def _copies(torch: Any, device: str, input_bytes: float) -> int:
    """How many input copies to rotate over so that one pass over them overflows the cache."""
    return int(min(16, max(1, math.ceil(2 * _cache_bytes(torch, device) / max(input_bytes, 1.0)))))


def _dt(torch: Any, name: str) -> Any:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


class _Cycle:
    """Calls ``op(*inputs[i])`` for i cycling over prepared input copies."""

    def __init__(self, op: Callable[..., Any], inputs: list[tuple[Any, ...]]) -> None:
        self.op, self.inputs, self.i = op, inputs, 0

    def __call__(self) -> Any:
        args = self.inputs[self.i]
        self.i = (self.i + 1) % len(self.inputs)
        return self.op(*args)


# --------------------------------------------------------------------------- ops
def swiglu_experts(torch: Any, x: Any, w13: Any, w2: Any, counts: Any, impl: str) -> Any:
    """Gated expert FFNs over tokens sorted by expert: ``x [T, h]``, ``w13 [E, h, 2i]``, ``w2 [E, i, h]``,
    ``counts [E]`` tokens per expert (a device int tensor for ``grouped_mm``, a list for ``loop``)."""
    f = torch.nn.functional
    if impl == "grouped_mm":
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        gu = torch._grouped_mm(x, w13, offs=offs)
        g, u = gu.chunk(2, dim=-1)
        return torch._grouped_mm(f.silu(g) * u, w2, offs=offs)
    out, start = [], 0
    for e, c in enumerate(counts):
        if c:
            gu = x[start:start + c] @ w13[e]
            g, u = gu.chunk(2, dim=-1)
            out.append((f.silu(g) * u) @ w2[e])
            start += c
    return torch.cat(out) if out else x[:0]


def grouped_impl(torch: Any, device: str, dtype: Any) -> str:
    """``grouped_mm`` if ``torch._grouped_mm`` runs here and agrees with the per-expert loop, else ``loop``."""
    if not hasattr(torch, "_grouped_mm"):
        return "loop"
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(40, 64, generator=gen).to(device, dtype)
        w13 = (torch.randn(4, 64, 64, generator=gen) / 8).to(device, dtype)
        w2 = (torch.randn(4, 32, 64, generator=gen) / 8).to(device, dtype)
        counts = [16, 0, 8, 16]
        a = swiglu_experts(torch, x, w13, w2, torch.tensor(counts, device=device), "grouped_mm")
        b = swiglu_experts(torch, x, w13, w2, counts, "loop")
        ok = bool(torch.allclose(a.float(), b.float(), rtol=5e-2, atol=5e-2))
        return "grouped_mm" if ok else "loop"
    except Exception:  # noqa: BLE001 - unsupported GPU / dtype / layout: the loop always works
        return "loop"


def _fp8_ok(torch: Any, device: str) -> bool:
    return (device == "cuda" and hasattr(torch, "_scaled_mm") and hasattr(torch, "float8_e4m3fn")
            and torch.cuda.get_device_capability(0) >= (8, 9))


# --------------------------------------------------------------------------- tasks
Task = tuple[str, str, Callable[[], dict[str, Any]]]
"""(op, unique key, measure -> row)."""


def _gemm_tasks(torch: Any, plan: Plan, timer: Timer, device: str, dtypes: list[str]) -> Iterator[Task]:
    for dt in [d for d in dtypes if d in plan.gemm_dtypes and (d != "fp8" or _fp8_ok(torch, device))]:
        for k in plan.gemm_k:
            for n in plan.gemm_n:
                for m in plan.gemm_m:
                    if 2.0 * m * k * n > plan.gemm_max_flops:
                        continue
                    yield "gemm", f"gemm/{dt}/{m}/{k}/{n}", _gemm_measure(torch, timer, device, dt, m, k, n)


def _gemm_measure(torch: Any, timer: Timer, device: str, dt: str, m: int, k: int, n: int) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        wbytes = 1 if dt == "fp8" else 2
        copies = _copies(torch, device, (k * n + m * k) * wbytes)
        if dt == "fp8":
            f8 = torch.float8_e4m3fn
            one = torch.ones((), device=device)
            inputs = [(torch.randn(m, k, device=device).to(f8), torch.randn(n, k, device=device).to(f8).t())
                      for _ in range(copies)]

            def op(a: Any, b: Any) -> Any:
                return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        else:
            d = _dt(torch, dt)
            inputs = [(torch.randn(m, k, device=device, dtype=d), torch.randn(k, n, device=device, dtype=d))
                      for _ in range(copies)]
            op = torch.matmul
        row = timer.time(_Cycle(op, inputs))
        return {"dtype": dt, "m": m, "k": k, "n": n, **row}
    return run


def _zipf_counts(total: int, active: int, s: float = 1.2) -> list[int]:
    w = 1.0 / np.arange(1, active + 1) ** s
    c = np.maximum(1, np.floor(total * w / w.sum())).astype(int)
    c[0] += total - int(c.sum())
    return [int(x) for x in c] if c[0] > 0 else [total // active] * active


def _spread_counts(loads: list[int], experts: int) -> list[int]:
    """Per-expert counts over ``experts`` resident experts: ``loads`` on evenly spaced ones, 0 elsewhere."""
    counts = [0] * experts
    for j, c in enumerate(loads):
        counts[j * experts // len(loads)] = c
    return counts


def _grouped_tasks(torch: Any, plan: Plan, timer: Timer, device: str, impl: str) -> Iterator[Task]:
    """Grouped SwiGLU over all resident experts of a GPU (EP 1, and EP 8 on CUDA), ``a`` of them active:
    the kernel call a serving framework makes, empty experts included."""
    shapes = set()
    for m in plan.models:
        if m.moe:
            e = m.moe.n_routed_experts
            shapes |= {(m.hidden_size, m.moe.expert_intermediate, r) for r in {e, max(e // 8, 1) if device == "cuda" else e}}
    for h, i, n_exp in sorted(shapes):
        actives = [x for x in plan.grouped_active if x < n_exp] + [n_exp]
        for a in actives:
            for n in plan.grouped_tokens:
                if a * n <= plan.grouped_max_tokens:
                    yield ("grouped_ffn", f"grouped/{h}/{i}/{n_exp}/{a}/{n}",
                           _grouped_measure(torch, timer, device, impl, h, i, _spread_counts([n] * a, n_exp), "uniform"))
        for a in [x for x in actives[-2:] if x > 1]:
            for n in plan.grouped_tokens[1::2]:
                if a * n <= plan.grouped_max_tokens:
                    counts = _spread_counts(_zipf_counts(a * n, a), n_exp)
                    yield ("grouped_ffn", f"grouped_skew/{h}/{i}/{n_exp}/{a}/{n}",
                           _grouped_measure(torch, timer, device, impl, h, i, counts, "zipf1.2"))


def _grouped_measure(torch: Any, timer: Timer, device: str, impl: str, h: int, i: int, counts: list[int],
                     skew: str) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        e, total = len(counts), sum(counts)
        a = sum(1 for c in counts if c)
        d = torch.bfloat16
        copies = _copies(torch, device, 3 * h * i * e * 2)
        inputs = []
        for _ in range(copies):
            w13 = torch.randn(e, h, 2 * i, device=device, dtype=d) / math.sqrt(h)
            w2 = torch.randn(e, i, h, device=device, dtype=d) / math.sqrt(i)
            x = torch.randn(total, h, device=device, dtype=d)
            c = torch.tensor(counts, device=device, dtype=torch.int32) if impl == "grouped_mm" else counts
            inputs.append((x, w13, w2, c))
        row = timer.time(_Cycle(lambda x, w13, w2, c: swiglu_experts(torch, x, w13, w2, c, impl), inputs))
        out = {"dtype": "bf16", "hidden": h, "intermediate": i, "experts": e, "active": a,
               "tokens_per_expert": total / a, "skew": skew, "impl": impl, **row}
        if skew != "uniform":
            out["counts"] = counts
        return out
    return run


def _attn_tasks(torch: Any, plan: Plan, timer: Timer, device: str) -> Iterator[Task]:
    seen = set()
    for model in plan.models:
        for v in attention_variants(model, tp=1):
            key = (v["phase"], v["q_heads"], v["kv_heads"], v["qk_dim"], v["v_dim"])
            if key in seen:
                continue
            seen.add(key)
            name = "{phase}-h{q_heads}-kv{kv_heads}-d{qk_dim}-v{v_dim}".format(**v)
            if v["phase"] == "prefill":
                pts = [(b, s) for s in plan.attn_seq for b in plan.attn_batch if b * s <= plan.attn_max_tokens]
            else:
                pts = [(b, s) for s in plan.decode_kv for b in plan.decode_batch if b * s <= plan.decode_max_kv_tokens]
            for b, s in pts:
                yield "attention", f"attn/{name}/{b}/{s}", _attn_measure(torch, timer, device, v, name, b, s)


def _attn_measure(torch: Any, timer: Timer, device: str, v: dict[str, Any], name: str, b: int,
                  s: int) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        d = torch.bfloat16
        prefill = v["phase"] == "prefill"
        q_len = s if prefill else 1
        kv_bytes = b * s * v["kv_heads"] * (v["qk_dim"] + v["v_dim"]) * 2
        copies = _copies(torch, device, kv_bytes)
        gqa = v["q_heads"] != v["kv_heads"]
        inputs = [(torch.randn(b, v["q_heads"], q_len, v["qk_dim"], device=device, dtype=d),
                   torch.randn(b, v["kv_heads"], s, v["qk_dim"], device=device, dtype=d),
                   torch.randn(b, v["kv_heads"], s, v["v_dim"], device=device, dtype=d)) for _ in range(copies)]
        row = timer.time(_Cycle(lambda q, k, vv: sdpa(q, k, vv, is_causal=prefill, enable_gqa=gqa), inputs))
        pairs = b * s * (s + 1) / 2 if prefill else b * s
        return {"phase": v["phase"], "variant": name, "batch": b, "seq": s, "pairs": pairs, "kv_tokens": b * s,
                "flops_per_pair": v["flops_per_pair"], "kv_bytes_per_token": v["kv_bytes_per_token"], **row}
    return run


def _memory_tasks(torch: Any, plan: Plan, timer: Timer, device: str) -> Iterator[Task]:
    for nb in plan.memory_bytes:
        yield "memory", f"mem/d2d/{nb}", _copy_measure(torch, timer, device, "d2d", nb)
    if device == "cuda":
        for kind in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"):
            for nb in plan.copy_bytes:
                yield "memory", f"mem/{kind}/{nb}", _copy_measure(torch, timer, device, kind, nb)


def _copy_measure(torch: Any, timer: Timer, device: str, kind: str, nbytes: int) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        n = nbytes // 2
        if kind == "d2d":
            # a streaming kernel moves the buffer twice (read + write): nbytes counts both
            n = max(nbytes // 4, 1)
            copies = _copies(torch, device, 2 * n * 2)
            inputs = [(torch.empty(n, device=device, dtype=torch.bfloat16),
                       torch.randn(n, device=device, dtype=torch.bfloat16)) for _ in range(copies)]
            row = timer.time(_Cycle(lambda dst, src: dst.copy_(src), inputs))
        else:
            pinned = kind.endswith("pinned")
            host = torch.empty(n, dtype=torch.bfloat16, pin_memory=pinned)
            dev = torch.empty(n, device=device, dtype=torch.bfloat16)
            src, dst = (host, dev) if kind.startswith("h2d") else (dev, host)
            row = timer.time(lambda: dst.copy_(src, non_blocking=pinned))
        return {"kind": kind, "nbytes": nbytes, **row}
    return run


def _host_tasks(torch: Any, timer: Timer, device: str) -> Iterator[Task]:
    def launch() -> dict[str, Any]:
        x = torch.zeros(1, device=device)
        return {"kind": "launch", **timer.time(lambda: x.add_(1.0))}

    def per_op() -> dict[str, Any]:
        # host-side cost of issuing one op (no synchronisation inside the loop)
        x = torch.zeros(1, device=device)
        times = []
        for _ in range(timer.s.repeats):
            t0 = timer.clock()
            for _ in range(200):
                x.add_(1.0)
            times.append((timer.clock() - t0) / 200)
        timer._sync()
        return {"kind": "per_op", **summarise_times(times)}
    def graph_launch() -> dict[str, Any]:
        # one replay of a captured one-kernel graph: what a CUDA-graph pass pays on the host
        x = torch.zeros(1, device=device)
        graph = timer._graph(lambda: x.add_(1.0), 1)
        if graph is None:
            return {"skipped": "CUDA graph capture failed"}
        return {"kind": "graph_launch", **timer.time(graph.replay)}
    yield "host", "host/launch", launch
    yield "host", "host/per_op", per_op
    if device == "cuda" and timer.s.graphs:
        yield "host", "host/graph_launch", graph_launch


# --------------------------------------------------------------------------- provenance
def _nvidia_smi() -> dict[str, Any]:
    query = "clocks.sm,clocks.max.sm,clocks.mem,driver_version,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    parts = [p.strip() for p in out.split(",")]
    if len(parts) < 5:
        return {}
    num = lambda s: float(s) if s.replace(".", "", 1).isdigit() else None  # noqa: E731
    return {"clocks": {"sm_mhz": num(parts[0]), "sm_max_mhz": num(parts[1]), "mem_mhz": num(parts[2])},
            "driver": parts[3], "power_limit_w": num(parts[4])}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(torch: Any, device: str, command: str) -> dict[str, Any]:
    """Where and how a profile was measured."""
    p: dict[str, Any] = {
        "device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "moesim": moesim.__version__,
        "python": platform.python_version(), "numpy": np.__version__, "source": "measured",
        "gpu_name": None, "sm_count": None, "clocks": None, "driver": None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        p.update({"gpu_name": props.name, "sm_count": props.multi_processor_count,
                  "memory_bytes": int(props.total_memory), "capability": f"{props.major}.{props.minor}",
                  "gpus_visible": torch.cuda.device_count()})
        p.update(_nvidia_smi())
    else:
        p.update({"gpu_name": f"cpu: {_cpu_name()}", "threads": torch.get_num_threads(), "cores": os.cpu_count()})
    return p


# --------------------------------------------------------------------------- driver
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


@contextmanager
def cpu_threads(torch: Any, device: str, threads: int = 1) -> Iterator[None]:
    """On CPU, time with ``threads`` intra-op threads (one by default: a parallel region waits for
    its slowest thread, so on a shared machine more threads mostly add outliers); restored after."""
    if device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
