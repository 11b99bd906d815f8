"""The measured kernels (grouped SwiGLU experts, GEMM, attention, copies, host launches) and one
measuring task per grid point of a ``Plan``."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from moesim.calibration.fit import summarise_times
from moesim.calibration.plan import Plan
from moesim.calibration.reference import attention_variants
from moesim.calibration.timing import Timer, _copies, _Cycle

__all__ = ["Task", "grouped_impl", "swiglu_experts"]


def _dt(torch: Any, name: str) -> Any:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


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

