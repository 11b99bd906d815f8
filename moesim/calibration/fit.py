"""Fit the tables of a calibration profile from its raw samples (numpy only, no torch).

Tables (seconds; every size axis strictly increasing), per timing mode:

``gemm``
    ``{dtype: {"m": [...], "k": [...], "n": [...], "s": [[[...]]]}}``: a full (M, K, N) grid.
    Cells that were not measured (or were held back) are filled by interpolating along the axes
    in log space, then by linear extrapolation from the two nearest values.
``grouped_ffn``
    ``[{"dtype", "hidden", "intermediate", "experts", "impl", "rows": [{"active": a, "tokens": [...], "s": [...]}]}]``:
    uniform-load time of ``a`` active experts with ``tokens`` tokens each (rows by ``a``);
    ``experts`` is the number of experts resident on the GPU when the kernel's time depends on it
    (fused kernels, imported tables), None when only the active ones matter (measured grouped GEMMs).
``attention``
    ``[{"phase", "flops_per_pair", "kv_bytes_per_token", "rows": [...]}]``:
    prefill rows ``{"u": u, "x": [...], "s": [...]}``: ``u`` = pairs / KV tokens (mean context per
    query token), ``x`` = KV tokens / (2u - 1), the equivalent number of sequences (the batch of a
    fresh causal prefill of ``2u - 1`` tokens), so a batch x sequence-length grid is rectangular;
    decode rows ``{"seqs": b, "kv": [...], "s": [...]}``: one row per number of sequences ``b``
    (the sample's ``batch``; 1 where a row does not say), over KV tokens per sequence.
``memory``
    ``{kind: {"nbytes": [...], "s": [...]}}`` with kinds ``d2d`` (bytes read + written),
    ``h2d_pinned``, ``h2d_pageable``, ``d2h_pinned``, ``d2h_pageable`` (bytes copied).
``collective``
    ``[{"op", "gpus", "nbytes": [...], "s": [...]}]``.

Duplicate measurements of one point are averaged in log space. ``fit.roofline`` holds the best
achieved FLOP/s per dtype, the best streaming bandwidth and the launch latency: the shape of the
fallback outside the grid. ``fit.spread`` is each op's median relative spread. ``fit.host`` holds
the per-pass host costs: ``per_op_s`` (host time to issue one op), ``launch_s`` (back-to-back
launch of a tiny kernel), ``kernel_s`` (the larger of the two: the least one eager kernel takes,
already inside the eager tables' small end) and ``graph_launch_s`` (one CUDA graph replay; ``launch_s``
where graphs were not measured).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from moesim.hardware.calibrated import CalibratedCost, host_costs
from moesim.hardware.profile import PROVENANCE_KEYS, SAMPLE_KEYS, Profile, parse_profile, seal

__all__ = ["fill_holes", "fit_profile", "fit_tables", "holdout_errors", "host_costs", "predict_rows",
           "summarise_times"]

MODES = {"eager": "median_s", "graph": "graph_median_s"}


def summarise_times(times_s: Iterable[float]) -> dict[str, float]:
    """Median, relative spread (half the inter-quartile range over the median: robust to the odd
    preempted repetition), min, max and count of repeated timings."""
    t = np.asarray(list(times_s), dtype=np.float64)
    med = float(np.median(t))
    q25, q75 = np.percentile(t, [25, 75])
    return {"median_s": med, "spread": float((q75 - q25) / (2 * med)) if med > 0 else 0.0,
            "min_s": float(t.min()), "max_s": float(t.max()), "reps": int(t.size)}


def _logmean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def _line_fill(x: np.ndarray, y: np.ndarray, extrapolate: bool) -> np.ndarray:
    ok = np.isfinite(y)
    if ok.sum() < 2 or ok.all():
        return y
    xs, ys = x[ok], y[ok]
    out = y.copy()
    miss = ~ok
    inner = miss & (x >= xs[0]) & (x <= xs[-1])
    out[inner] = np.interp(x[inner], xs, ys)
    if extrapolate:
        # log-log slopes clipped to [0, 1]: a kernel never gets faster with size, nor slower than linear
        lo, hi = miss & (x < xs[0]), miss & (x > xs[-1])
        s_lo = np.clip((ys[1] - ys[0]) / (xs[1] - xs[0]), 0.0, 1.0)
        s_hi = np.clip((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0, 1.0)
        out[lo] = ys[0] + (x[lo] - xs[0]) * s_lo
        out[hi] = ys[-1] + (x[hi] - xs[-1]) * s_hi
    return out


def fill_holes(log_axes: list[np.ndarray], logt: np.ndarray) -> np.ndarray:
    """Fill NaN cells of an n-D grid of log time: interpolate along axes, then extrapolate, then mean."""
    g = logt.copy()
    for extrapolate in (False, True):
        for _ in range(4 * g.ndim):
            before = np.isnan(g).sum()
            if before == 0:
                return g
            for ax in range(g.ndim):
                moved = np.moveaxis(g, ax, -1)
                flat = moved.reshape(-1, moved.shape[-1])
                for r in np.where(np.isnan(flat).any(axis=1))[0]:
                    flat[r] = _line_fill(log_axes[ax], flat[r], extrapolate)
                g = np.moveaxis(flat.reshape(moved.shape), -1, ax)
            if np.isnan(g).sum() == before:
                break
    if np.isnan(g).any():
        g[np.isnan(g)] = np.nanmean(g) if np.isfinite(g).any() else 0.0
    return g


def _fit_gemm(rows: list[dict[str, Any]], tkey: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by_dt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get(tkey):
            by_dt[r["dtype"]].append(r)
    for dt, rs in sorted(by_dt.items()):
        axes = [sorted({float(r[a]) for r in rs}) for a in ("m", "k", "n")]
        index = [{v: i for i, v in enumerate(a)} for a in axes]
        cells: dict[tuple[int, int, int], list[float]] = defaultdict(list)
        for r in rs:
            cells[tuple(index[j][float(r[a])] for j, a in enumerate(("m", "k", "n")))].append(r[tkey])  # type: ignore[index]
        logt = np.full([len(a) for a in axes], np.nan)
        for ix, ts in cells.items():
            logt[ix] = np.log(_logmean(ts))
        logt = fill_holes([np.log(a) for a in axes], logt)
        out[dt] = {"m": axes[0], "k": axes[1], "n": axes[2], "s": np.exp(logt).tolist()}
    return out


def _rows(points: list[tuple[float, float, float]], ykey: str, xkey: str) -> list[dict[str, Any]]:
    """(y, x, seconds) points -> rows keyed by y, duplicates averaged in log space."""
    by_y: dict[float, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for y, x, t in points:
        by_y[round(y, 9)][round(x, 9)].append(t)
    rows = []
    for y in sorted(by_y):
        xs = sorted(by_y[y])
        rows.append({ykey: y, xkey: xs, "s": [_logmean(by_y[y][x]) for x in xs]})
    return rows


def _fit_grouped(rows: list[dict[str, Any]], tkey: str) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, int, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get(tkey) and r.get("skew", "uniform") == "uniform":
            groups[(r["dtype"], int(r["hidden"]), int(r["intermediate"]), int(r.get("experts") or 0))].append(r)
    out = []
    for (dt, h, i, e), rs in sorted(groups.items()):
        pts = [(float(r["active"]), float(r["tokens_per_expert"]), float(r[tkey])) for r in rs]
        impls = sorted({str(r.get("impl", "unknown")) for r in rs})
        out.append({"dtype": dt, "hidden": h, "intermediate": i, "experts": e or None, "impl": "+".join(impls),
                    "rows": _rows(pts, "active", "tokens")})
    return out


def _attn_point(phase: str, pairs: float, kv: float, seqs: float = 1.0) -> tuple[float, float]:
    """(row key, x) of an attention measurement (see the module docstring): prefill ``(u, x)``,
    decode ``(sequences, KV tokens per sequence)``."""
    if phase == "decode":
        seqs = max(seqs, 1.0)
        return seqs, kv / seqs
    u = max(pairs / kv, 1.0)
    return u, kv / (2.0 * u - 1.0)


def _fit_attention(rows: list[dict[str, Any]], tkey: str) -> list[dict[str, Any]]:
    groups: dict[tuple[str, float, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get(tkey):
            groups[(r["phase"], float(r["flops_per_pair"]), float(r["kv_bytes_per_token"]))].append(r)
    out = []
    for (phase, fpp, kvb), rs in sorted(groups.items()):
        pts = [_attn_point(phase, float(r["pairs"]), float(r["kv_tokens"]), float(r.get("batch") or 1))
               + (float(r[tkey]),) for r in rs]
        variant = sorted({str(r.get("variant", "")) for r in rs} - {""})
        keys = ("seqs", "kv") if phase == "decode" else ("u", "x")
        out.append({"phase": phase, "flops_per_pair": fpp, "kv_bytes_per_token": kvb, "variant": ",".join(variant),
                    "rows": _rows(pts, *keys)})
    return out


def _fit_1d(rows: list[dict[str, Any]], key: Any, tkey: str) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get(tkey):
            groups[key(r)][float(r["nbytes"])].append(float(r[tkey]))
    return {k: {"nbytes": sorted(v), "s": [_logmean(v[b]) for b in sorted(v)]} for k, v in groups.items()}


def fit_tables(samples: dict[str, list[dict[str, Any]]], tkey: str = "median_s") -> dict[str, Any]:
    """Tables of one timing mode from raw samples (``tkey`` names the time field)."""
    tables: dict[str, Any] = {}
    if samples.get("gemm"):
        tables["gemm"] = _fit_gemm(samples["gemm"], tkey)
    if samples.get("grouped_ffn"):
        tables["grouped_ffn"] = _fit_grouped(samples["grouped_ffn"], tkey)
    if samples.get("attention"):
        tables["attention"] = _fit_attention(samples["attention"], tkey)
    if samples.get("memory"):
        tables["memory"] = _fit_1d(samples["memory"], lambda r: str(r["kind"]), tkey)
    if samples.get("collective"):
        coll = _fit_1d(samples["collective"], lambda r: (str(r["op"]), int(r["gpus"])), tkey)
        tables["collective"] = [{"op": op, "gpus": g, **v} for (op, g), v in sorted(coll.items())]
    return {k: v for k, v in tables.items() if v}


def _roofline(samples: dict[str, list[dict[str, Any]]], given: dict[str, Any] | None) -> dict[str, Any]:
    flops: dict[str, float] = {}
    for r in samples.get("gemm", []):
        f = 2.0 * r["m"] * r["k"] * r["n"] / r["median_s"]
        flops[r["dtype"]] = max(flops.get(r["dtype"], 0.0), f)
    d2d = sorted((r["nbytes"], r["median_s"]) for r in samples.get("memory", []) if r["kind"] == "d2d")
    bw = [n / t for n, t in d2d]
    if len(d2d) >= 2 and d2d[-1][1] > d2d[-2][1] and d2d[-1][0] > d2d[-2][0]:
        # the slope between the two largest copies: bandwidth without the fixed latency
        bw.append((d2d[-1][0] - d2d[-2][0]) / (d2d[-1][1] - d2d[-2][1]))
    launch = [r["median_s"] for r in samples.get("host", []) if r["kind"] == "launch"] or [t for _, t in d2d[:1]]
    roof = {"flops_per_s": flops, "bytes_per_s": max(bw) if bw else 0.0, "launch_s": min(launch) if launch else 0.0}
    for k, v in (given or {}).items():     # values stated by the caller (an importer) win
        if k == "flops_per_s":
            roof["flops_per_s"] = {**roof["flops_per_s"], **v}
        else:
            roof[k] = v
    if not roof["flops_per_s"]:
        roof["flops_per_s"] = {"bf16": 1e12}
    if not roof["bytes_per_s"]:
        roof["bytes_per_s"] = 1e11
    return roof


def fit_profile(samples: dict[str, list[dict[str, Any]]], *, provenance: dict[str, Any], settings: dict[str, Any],
                roofline: dict[str, Any] | None = None) -> dict[str, Any]:
    """The unsealed profile dict (provenance, settings, samples, fit) ready for ``write_profile``."""
    tables = {"eager": fit_tables(samples, "median_s")}
    graph = fit_tables(samples, "graph_median_s")
    if graph:
        # ops measured only eagerly keep their eager table in graph mode; say which
        filled = sorted(set(tables["eager"]) - set(graph))
        graph.update({op: tables["eager"][op] for op in filled})
        tables["graph"] = graph
    spread = {op: float(np.median([r["spread"] for r in rows])) for op, rows in samples.items() if rows}
    roof = _roofline(samples, roofline)
    fit: dict[str, Any] = {"tables": tables, "roofline": roof, "spread": spread,
                           "host": host_costs(samples.get("host", []), roof["launch_s"])}
    if graph:
        fit["graph_tables_from_eager"] = filled
    data = {"provenance": provenance, "settings": settings, "samples": samples, "fit": fit}
    errs = _skew_errors(data)
    if errs:
        fit["errors"] = {"grouped_ffn_skewed": errs}
    return data


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    e = 100.0 * np.abs(pred / meas - 1.0)
    return {"n": int(e.size), "median_abs_pct": float(np.median(e)), "p90_abs_pct": float(np.percentile(e, 90)),
            "max_abs_pct": float(e.max())}


def predict_rows(profile: Profile, op: str, rows: list[dict[str, Any]], mode: str = "eager") -> np.ndarray:
    """Predicted seconds of raw sample rows through the CostModel methods the engine calls."""
    costs: dict[str, CalibratedCost] = {}

    def cost(dtype: str = "bf16") -> CalibratedCost:
        if dtype not in costs:
            costs[dtype] = CalibratedCost(profile, weight_dtype=dtype, strict=False, mode=mode)
        return costs[dtype]

    out = []
    for r in rows:
        if op == "gemm":
            out.append(float(cost(r["dtype"]).gemm_s(r["m"], int(r["k"]), int(r["n"]))))
        elif op == "grouped_ffn":
            counts = np.asarray(r.get("counts") or [r["tokens_per_expert"]] * int(r["active"]), np.float64)
            if r.get("experts"):    # resident experts that got no tokens
                counts = np.concatenate([counts, np.zeros(max(int(r["experts"]) - counts.size, 0))])
            out.append(float(cost(r["dtype"]).grouped_ffn_s(counts, int(r["hidden"]), int(r["intermediate"]))))
        elif op == "attention":
            out.append(float(cost().attention_s(decode=r["phase"] == "decode", pairs=r["pairs"],
                                                kv_tokens=r["kv_tokens"], flops_per_pair=r["flops_per_pair"],
                                                kv_bytes_per_token=r["kv_bytes_per_token"],
                                                seqs=r.get("batch"))))
        elif op == "memory":
            out.append(float(cost().copy_s(r["kind"], r["nbytes"])))
        elif op == "collective":
            out.append(float(cost().collective_s(r["op"], r["gpus"], r["nbytes"])))
        else:
            raise ValueError(f"no prediction for op {op!r}")
    return np.asarray(out)


def _profile(data: dict[str, Any]) -> Profile:
    """An in-memory Profile of a fitted dict (provenance padded: only the tables matter here)."""
    full = dict(data)
    full["provenance"] = {**dict.fromkeys(PROVENANCE_KEYS), **data.get("provenance", {})}
    return parse_profile(seal(full), path="<fit>")


def _skew_errors(data: dict[str, Any]) -> dict[str, float] | None:
    rows = [r for r in data["samples"].get("grouped_ffn", []) if r.get("skew", "uniform") != "uniform"]
    if not rows or "grouped_ffn" not in data["fit"]["tables"]["eager"]:
        return None
    pred = predict_rows(_profile(data), "grouped_ffn", rows)
    return _errors(pred, np.array([r["median_s"] for r in rows]))


def holdout_errors(samples: dict[str, list[dict[str, Any]]], *, fraction: float = 0.1, seed: int = 0,
                   roofline: dict[str, Any] | None = None,
                   ops: Iterable[str] = ("gemm", "grouped_ffn", "attention", "memory", "collective"),
                   ) -> dict[str, dict[str, float]]:
    """Hold back ``fraction`` of each op's rows, fit on the rest, report the error on the held rows.

    Skewed grouped-expert rows are never fitted (only uniform loads are); they are scored apart.
    """
    rng = np.random.default_rng(seed)
    train: dict[str, list[dict[str, Any]]] = {}
    held: dict[str, list[dict[str, Any]]] = {}
    for op, rows in samples.items():
        if op not in SAMPLE_KEYS:
            continue
        mask = rng.random(len(rows)) < fraction if op in ops else np.zeros(len(rows), bool)
        if op == "grouped_ffn":
            mask &= np.array([r.get("skew", "uniform") == "uniform" for r in rows], bool)
        train[op] = [r for r, h in zip(rows, mask) if not h]
        held[op] = [r for r, h in zip(rows, mask) if h]
    prof = _profile(fit_profile(train, provenance={}, settings={}, roofline=roofline))
    out = {}
    for op, rows in held.items():
        if rows:
            pred = predict_rows(prof, op, rows)
            meas = np.array([r["median_s"] for r in rows])
            groups = np.array([str(r.get(_BREAKDOWN.get(op, ""), "")) for r in rows])
            by = {g: _errors(pred[groups == g], meas[groups == g]) for g in sorted(set(groups))}
            out[op] = {**_errors(pred, meas), "fitted_on": len(train[op]), "by": by if len(by) > 1 else {}}
    return out


_BREAKDOWN = {"gemm": "dtype", "grouped_ffn": "dtype", "attention": "phase", "collective": "op", "memory": "kind"}
"""The row key each op's held-back errors are also broken down by."""
