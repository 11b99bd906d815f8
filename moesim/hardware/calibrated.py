"""``CalibratedCost``: operator latencies interpolated from a measured calibration profile.

Inside the measured grid a latency is interpolated linearly in log space (log time over log
sizes), which is exact for power laws and keeps monotone data monotone. Outside it the model
falls back to a roofline whose efficiency is taken from the nearest measurement: with the query
clamped onto the grid, ``t(q) = roof(q) * t(clamped) / roof(clamped)``, continuous at the edge of
the domain. Every query outside the domain is counted per op (``out_of_domain``), so a run can
say how much of its prediction was extrapolated. ``relative_spread`` gives the measured
run-to-run spread of each op, from which a run derives a ± band.

Table layouts are documented in ``moesim.calibration.fit``; this module only reads them.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from moesim.config.schema import DTYPE_BYTES, GpuSpec
from moesim.hardware.profile import Profile, ProfileError

__all__ = ["OPS", "CalibratedCost", "RegularGrid", "RowGrid", "host_costs"]

OPS = ("gemm", "grouped_ffn", "attention", "memory")
"""The CostModel ops a calibrated model answers (and counts)."""
_MATCH_RTOL = 1e-6


def _dtype_bytes(dtype: str) -> float:
    if dtype in DTYPE_BYTES:
        return DTYPE_BYTES[dtype]
    return 1.0 if dtype.startswith(("fp8", "int8")) else 0.5 if dtype.startswith(("fp4", "w4", "int4")) else 2.0


def _log(x: Any) -> np.ndarray:
    return np.log(np.maximum(np.asarray(x, dtype=np.float64), 1e-300))


class RegularGrid:
    """Multilinear interpolation of log time on a regular grid of log coordinates.

    ``axes``: d sorted 1-D arrays of positive sizes; ``seconds``: array of shape ``[len(a) for a in axes]``.
    """

    def __init__(self, axes: list[Any], seconds: Any) -> None:
        self.axes = [_log(a) for a in axes]
        self.logt = _log(seconds)
        if self.logt.shape != tuple(len(a) for a in self.axes):
            raise ValueError(f"grid shape {self.logt.shape} does not match axes {[len(a) for a in self.axes]}")
        for a in self.axes:
            if len(a) > 1 and np.any(np.diff(a) <= 0):
                raise ValueError("grid axes must be strictly increasing")

    def __call__(self, *coords: Any) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(log time at the clamped point, in-domain mask, clamped coordinates) for broadcastable coords."""
        lc = np.broadcast_arrays(*[_log(c) for c in coords])
        shape = lc[0].shape
        inside = np.ones(shape, bool)
        idx, wts, clamped = [], [], []
        for ax, x in zip(self.axes, lc):
            lo, hi = ax[0], ax[-1]
            inside &= (x >= lo - 1e-9) & (x <= hi + 1e-9)
            xc = np.clip(x, lo, hi)
            clamped.append(np.exp(xc))
            if len(ax) == 1:
                idx.append(np.zeros(shape, np.int64))
                wts.append(np.zeros(shape))
                continue
            i = np.clip(np.searchsorted(ax, xc, side="right") - 1, 0, len(ax) - 2)
            idx.append(i)
            wts.append((xc - ax[i]) / (ax[i + 1] - ax[i]))
        out = np.zeros(shape)
        d = len(self.axes)
        for corner in range(1 << d):
            w = np.ones(shape)
            ix = []
            for j in range(d):
                up = (corner >> j) & 1
                if len(self.axes[j]) == 1 and up:
                    w = w * 0.0
                    ix.append(idx[j])
                    continue
                w = w * (wts[j] if up else 1.0 - wts[j])
                ix.append(idx[j] + up)
            out = out + w * self.logt[tuple(ix)]
        return out, inside, clamped


class RowGrid:
    """Interpolation of log time over (y, x) where each row (one y) has its own x knots.

    Suits measurements that are regular in one coordinate only (prefill attention: rows are the
    mean context per query token, x the equivalent sequences; decode attention: rows are
    sequences, x the KV tokens per sequence; grouped experts: rows are active experts, x the
    tokens per expert). Between rows the two rows' values are blended linearly in log y; a point
    is in the domain when it lies inside both rows' x range.
    """

    def __init__(self, rows: list[dict[str, Any]], *, ykey: str, xkey: str) -> None:
        self.ykey, self.xkey = ykey, xkey
        rows = sorted(rows, key=lambda r: r[ykey])
        if not rows:
            raise ValueError("a row grid needs at least one row")
        self.ly = _log([r[ykey] for r in rows])
        self.rows = []
        for r in rows:
            lx, lt = _log(r[xkey]), _log(r["s"])
            order = np.argsort(lx)
            self.rows.append((lx[order], lt[order]))

    def __call__(self, y: Any, x: Any) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(log time at the clamped point, in-domain mask, clamped (y, x)) for broadcastable y, x."""
        by, bx = np.broadcast_arrays(_log(y), _log(x))
        shape = by.shape
        ly, lx = by.ravel(), bx.ravel()
        n = len(self.ly)
        inside = (ly >= self.ly[0] - 1e-9) & (ly <= self.ly[-1] + 1e-9)
        lyc = np.clip(ly, self.ly[0], self.ly[-1])
        if n == 1:
            j0 = j1 = np.zeros(ly.shape, np.int64)
            w = np.zeros(ly.shape)
        else:
            j0 = np.clip(np.searchsorted(self.ly, lyc, side="right") - 1, 0, n - 2)
            j1 = j0 + 1
            w = (lyc - self.ly[j0]) / (self.ly[j1] - self.ly[j0])
        val = np.zeros(ly.shape)
        lxc = np.zeros(ly.shape)
        for j, wj in ((j0, 1.0 - w), (j1, w)):
            for r in np.unique(j):
                m = j == r
                kx, kt = self.rows[r]
                xr = lx[m]
                inside[m] &= (xr >= kx[0] - 1e-9) & (xr <= kx[-1] + 1e-9)
                xc = np.clip(xr, kx[0], kx[-1])
                val[m] += wj[m] * np.interp(xc, kx, kt)
                lxc[m] += wj[m] * xc
            if n == 1:
                break
        return val.reshape(shape), inside.reshape(shape), [np.exp(lyc).reshape(shape), np.exp(lxc).reshape(shape)]


def _attn_grid(table: dict[str, Any]) -> RowGrid:
    """The row grid of an attention table: decode rows by sequences over KV tokens per sequence
    (``seqs``, ``kv``); prefill rows (and decode tables of older fits) by ``u`` over ``x``."""
    rows = table["rows"]
    if rows and "seqs" in rows[0]:
        return RowGrid(rows, ykey="seqs", xkey="kv")
    return RowGrid(rows, ykey="u", xkey="x")


def host_costs(rows: list[dict[str, Any]], launch_s: float) -> dict[str, float]:
    """Per-pass host costs (``fit.host``) from a profile's ``host`` samples.

    ``per_op_s``: host time to issue one op; ``launch_s``: one tiny kernel launched back to back;
    ``kernel_s``: the larger of the two, the least an eager kernel takes (a stream of kernels
    goes no faster than the host issues them or the device launches them; the eager tables
    include it, so a pass model charges it only through them);
    ``graph_launch_s``: one CUDA graph replay. What was not measured takes ``launch_s`` (the
    roofline's launch latency where the samples lack it too).
    """
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(str(r["kind"]), []).append(float(r["median_s"]))
    med = {k: float(np.exp(np.mean(np.log(v)))) for k, v in by.items()}
    launch = med.get("launch", float(launch_s))
    per_op = med.get("per_op", launch)
    return {"per_op_s": per_op, "launch_s": launch, "kernel_s": max(per_op, launch),
            "graph_launch_s": med.get("graph_launch", launch)}


class _Counter:
    """Per-op query, out-of-domain and predicted-time tallies."""

    def __init__(self) -> None:
        self.queries = dict.fromkeys(OPS, 0)
        self.out_of_domain = dict.fromkeys(OPS, 0)
        self.seconds = dict.fromkeys(OPS, 0.0)

    def add(self, op: str, active: np.ndarray, ood: np.ndarray, t: np.ndarray) -> None:
        self.queries[op] += int(np.count_nonzero(active))
        self.out_of_domain[op] += int(np.count_nonzero(ood & active))
        self.seconds[op] += float(np.sum(np.where(active, t, 0.0)))


class CalibratedCost:
    """A CostModel answering from a calibration profile's fitted tables (see module docstring).

    ``gpu`` supplies peak FLOP/s ratios for dtypes the profile did not measure; ``mode`` picks the
    table set (``eager``, or ``graph`` for kernel-only times measured under CUDA graphs). With
    ``strict`` (the default) a profile lacking a table the forward pass needs is rejected.

    Host overhead per pass (``host_overhead_s``): the framework's own time ``host_overhead_s``
    (scheduling, sampling: a scenario setting), plus in graph mode one CUDA-graph launch
    (``fit.host.graph_launch_s``). Kernel launches are not charged on top in eager mode: the
    eager tables time each op launched back to back from Python, so each answer already is the
    larger of the op's host issue time and its device time (a 256-byte copy: 11 us eager, 2 us
    in a graph on the H200); a pass model that prices every kernel (``hardware.layer_ops``) thus
    charges each kernel max(host, device), and nothing per kernel in graph mode.
    """

    name = "calibrated"

    def __init__(self, profile: Profile, *, gpu: GpuSpec | None = None, weight_dtype: str = "bf16",
                 activation_dtype: str = "bf16", host_overhead_s: float = 0.0, mode: str = "eager",
                 strict: bool = True) -> None:
        self.profile = profile
        self.profile_hash = profile.content_hash
        self.mode = mode
        self.framework_host_s = float(host_overhead_s)
        tables = profile.tables(mode)
        roof = profile.fit["roofline"]
        self.bytes_per_s = float(roof["bytes_per_s"])
        self.launch_s = float(roof["launch_s"])
        self.host = {k: float(v) for k, v in (profile.fit.get("host")
                                              or host_costs(profile.samples.get("host", []), self.launch_s)).items()}
        self._flops = {str(k): float(v) for k, v in roof["flops_per_s"].items()}
        if not self._flops:
            raise ProfileError(f"{profile.path}: fit.roofline.flops_per_s is empty", field="hardware.calibration")
        self.gpu = gpu
        self.wdt, self.adt = weight_dtype, activation_dtype
        self.wb, self.ab = _dtype_bytes(weight_dtype), _dtype_bytes(activation_dtype)
        self.spread = {op: float(profile.fit.get("spread", {}).get(op, 0.0)) for op in OPS}
        self.counter = _Counter()
        self._gemm = self._build_gemm(tables.get("gemm", {}))
        self._grouped = [(g, RowGrid(g["rows"], ykey="active", xkey="tokens")) for g in tables.get("grouped_ffn", [])]
        self._attn = [(a, _attn_grid(a)) for a in tables.get("attention", [])]
        self._memory = {k: RegularGrid([v["nbytes"]], v["s"]) for k, v in tables.get("memory", {}).items()}
        self._coll = {(c["op"], int(c["gpus"])): RegularGrid([c["nbytes"]], c["s"]) for c in tables.get("collective", [])}
        missing = [op for op, t in (("gemm", self._gemm), ("grouped_ffn", self._grouped), ("attention", self._attn),
                                    ("memory", self._memory)) if not t]
        if missing and strict:
            raise ProfileError(f"{profile.path}: no fitted {'/'.join(missing)} tables in mode {mode!r}; "
                               "the profile cannot drive a forward pass", field="hardware.calibration")
        self._gemm_cache: dict[tuple[int, int], Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {}

    # ------------------------------------------------------------------ host
    @property
    def host_overhead_s(self) -> float:
        """Host time per pass: the framework's, plus one graph launch in graph mode."""
        return self.framework_host_s + (self.host["graph_launch_s"] if self.mode == "graph" else 0.0)

    @host_overhead_s.setter
    def host_overhead_s(self, value: float) -> None:
        self.framework_host_s = float(value)

    # ------------------------------------------------------------------ reporting
    @property
    def out_of_domain(self) -> dict[str, int]:
        """Queries answered by the roofline fallback, per op (each array element counts once)."""
        return dict(self.counter.out_of_domain)

    @property
    def queries(self) -> dict[str, int]:
        """All non-empty queries answered, per op."""
        return dict(self.counter.queries)

    def relative_spread(self, op: str) -> float:
        """Measured relative run-to-run spread of ``op`` (median over its samples)."""
        return self.spread.get(op, 0.0)

    def effective_spread(self) -> float:
        """Spread of all answers so far, weighted by predicted time (errors assumed correlated)."""
        total = sum(self.counter.seconds.values())
        if total <= 0:
            return 0.0
        return sum(self.counter.seconds[op] * self.spread[op] for op in OPS) / total

    # ------------------------------------------------------------------ rooflines
    def flops_for(self, dtype: str) -> float:
        """Achieved peak FLOP/s of ``dtype`` from the profile; other dtypes scale by the GPU's peak ratio."""
        if dtype in self._flops:
            return self._flops[dtype]
        base_dt = "bf16" if "bf16" in self._flops else next(iter(self._flops))
        base = self._flops[base_dt]
        if self.gpu is None:
            return base
        return base * self.gpu.flops_for(dtype) / self.gpu.flops_for(base_dt)

    def _gemm_roof(self, m: np.ndarray, k: Any, n: Any, dtype: str) -> np.ndarray:
        flops = 2.0 * m * k * n
        nbytes = np.asarray(k, np.float64) * n * self.wb + m * (np.asarray(k, np.float64) + n) * self.ab
        return np.maximum(flops / self.flops_for(dtype), nbytes / self.bytes_per_s) + self.launch_s

    def _expert_roof(self, a: np.ndarray, n: np.ndarray, h: float, i: float, dtype: str) -> np.ndarray:
        """Roofline of one expert's share of a grouped SwiGLU FFN over ``a`` active experts."""
        flops = 6.0 * h * i * n
        nbytes = 3.0 * h * i * self.wb + n * (2 * h + 3 * i) * self.ab
        return np.maximum(flops / self.flops_for(dtype), nbytes / self.bytes_per_s) + 3.0 * self.launch_s / a

    # ------------------------------------------------------------------ CostModel
    def _build_gemm(self, gemm: dict[str, Any]) -> dict[str, RegularGrid]:
        return {dt: RegularGrid([t["m"], t["k"], t["n"]], t["s"]) for dt, t in gemm.items()}

    def _gemm_curve(self, k: int, n: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        dtype = self.wdt if self.wdt in self._gemm else ("bf16" if "bf16" in self._gemm else next(iter(self._gemm)))
        grid = self._gemm[dtype]
        foreign = dtype != self.wdt

        def curve(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            lt, inside, (mc, kc, nc) = grid(m, k, n)
            t = np.exp(lt)
            ood = ~inside | foreign
            if np.any(ood):
                fb = self._gemm_roof(m, k, n, self.wdt) * t / self._gemm_roof(mc, kc, nc, dtype)
                t = np.where(ood, fb, t)
            return t, ood

        return curve

    def gemm_s(self, m: Any, k: int, n: int) -> np.ndarray:
        """``[m, k] x [k, n]`` GEMM time; ``m`` tokens (array)."""
        m = np.asarray(m, dtype=np.float64)
        key = (int(k), int(n))
        curve = self._gemm_cache.get(key)
        if curve is None:
            curve = self._gemm_curve(*key)
            self._gemm_cache[key] = curve
        active = m > 0
        t, ood = curve(np.maximum(m, 1.0))
        t = np.where(active, t, 0.0)
        self.counter.add("gemm", active, ood, t)
        return t

    def _grouped_table(self, hidden: int, intermediate: int, experts: int) -> tuple[dict[str, Any], RowGrid, bool]:
        """The table of the same expert shape and dtype (else the nearest: foreign) and, among those,
        the fewest resident experts at least ``experts``: a grouped kernel's time follows its active
        experts and their tokens (the table's rows), empty resident experts cost next to nothing, so
        a GPU with 16 resident experts reads the 64-expert table at its active count, in domain."""
        def shape_dist(g: dict[str, Any]) -> float:
            d = math.log(g["hidden"] / hidden) ** 2 + math.log(g["intermediate"] / intermediate) ** 2
            return d + (0.0 if g.get("dtype", "bf16") == self.wdt else 100.0)

        def key(gg: tuple[dict[str, Any], RowGrid]) -> tuple[float, int, float]:
            g = gg[0]
            e = g.get("experts") or experts
            return (round(shape_dist(g), 9), 0 if e >= experts else 1, abs(math.log(e / max(experts, 1))))
        g, grid = min(self._grouped, key=key)
        return g, grid, shape_dist(g) > 1e-12

    def grouped_ffn_s(self, tokens_per_expert: np.ndarray, hidden: int, intermediate: int) -> np.ndarray:
        """Grouped SwiGLU experts: the sum of per-expert shares ``f(a, n_e) / a`` of the measured
        uniform-load time ``f(active experts, tokens per expert)``; exact for uniform loads. The
        last axis is the GPU's resident experts (it selects the table where that matters)."""
        n = np.asarray(tokens_per_expert, dtype=np.float64)
        a = np.broadcast_to(np.count_nonzero(n, axis=-1)[..., None], n.shape).astype(np.float64)
        nz = n > 0
        g, grid, foreign = self._grouped_table(hidden, intermediate, n.shape[-1])
        per = np.zeros(n.shape)
        ood_e = np.zeros(n.shape, bool)
        if np.any(nz):
            av, nv = a[nz], n[nz]
            lt, inside, (ac, nc) = grid(av, nv)
            share = np.exp(lt) / ac            # one expert's share of the group time, at the clamped point
            ood = ~inside | foreign
            if np.any(ood):
                gd = g.get("dtype", "bf16")
                fb = (self._expert_roof(av, nv, hidden, intermediate, self.wdt) * share
                      / self._expert_roof(ac, nc, g["hidden"], g["intermediate"], gd))
                share = np.where(ood, fb, share)
            per[nz] = share
            ood_e[nz] = ood
        out = per.sum(axis=-1)
        self.counter.add("grouped_ffn", nz.any(axis=-1), ood_e.any(axis=-1), out)
        return out

    def _attn_table(self, decode: bool, fpp: float, kvb: float) -> tuple[dict[str, Any], RowGrid, bool]:
        phase = "decode" if decode else "prefill"
        cands = [(a, g) for a, g in self._attn if a["phase"] == phase] or self._attn

        def dist(a: dict[str, Any]) -> float:
            return math.log(a["flops_per_pair"] / fpp) ** 2 + math.log(a["kv_bytes_per_token"] / kvb) ** 2
        a, g = min(cands, key=lambda ag: dist(ag[0]))
        exact = (a["phase"] == phase and abs(a["flops_per_pair"] / fpp - 1) < _MATCH_RTOL
                 and abs(a["kv_bytes_per_token"] / kvb - 1) < _MATCH_RTOL)
        return a, g, not exact

    def attention_s(self, *, decode: bool, pairs: Any, kv_tokens: Any, flops_per_pair: float,
                    kv_bytes_per_token: float, seqs: Any = None) -> np.ndarray:
        """Attention core from the measured variant with the same per-pair FLOPs and per-token KV bytes.

        Decode is a 2-D table over (sequences, KV tokens per sequence) measured on a batch x KV
        length grid: at equal KV tokens many short sequences and a few long ones differ (work per
        block, split-KV). ``seqs=None`` is taken as one sequence. Prefill rows are keyed by the
        mean context per query token ``u`` and indexed by the number of sequences: the given
        ``seqs``, with ``u`` that of fresh prompts of those sequences doing the same FLOPs
        (``pairs / seqs = s (s + 1) / 2``, ``u = (s + 1) / 2``); without ``seqs`` the equivalent
        batch of a fresh causal prefill ``kv / (2u - 1)`` with ``u = pairs / kv``. Both agree on
        fresh prompts, which is what the table measured.
        """
        pairs = np.asarray(pairs, dtype=np.float64)
        kv = np.broadcast_to(np.asarray(kv_tokens, dtype=np.float64), pairs.shape)
        n = np.broadcast_to(np.maximum(np.asarray(1.0 if seqs is None else seqs, dtype=np.float64), 1.0), pairs.shape)
        active = pairs > 0
        a, grid, foreign = self._attn_table(decode, float(flops_per_pair), float(kv_bytes_per_token))
        p, k = np.maximum(pairs, 1.0), np.maximum(kv, 1.0)
        per_seq = a["phase"] == "decode" and grid.ykey == "seqs"
        if per_seq:                                     # (sequences, KV tokens per sequence)
            y, x = n, np.maximum(k / n, 1.0)
        elif a["phase"] == "decode":                    # a 1-D table of profiles fitted before seqs
            y, x = np.ones_like(k), k
        elif seqs is not None:
            s = 0.5 * (np.sqrt(1.0 + 8.0 * p / n) - 1.0)
            y, x = np.maximum((s + 1.0) / 2.0, 1.0), n
        else:
            y = np.maximum(p / k, 1.0)
            x = k / (2.0 * y - 1.0)
        lt, inside, (yc, xc) = grid(y, x)
        t = np.exp(lt)
        ood = ~inside | foreign
        if np.any(ood):
            f_attn = self.flops_for(self.adt)

            def roof(pp: np.ndarray, kk: np.ndarray, fpp: float, kvb: float) -> np.ndarray:
                return np.maximum(pp * fpp / f_attn, kk * kvb / self.bytes_per_s) + self.launch_s
            if per_seq:
                kc = pc = yc * xc
            elif a["phase"] == "decode":
                kc = pc = xc
            else:                                       # fresh prompts: x sequences of 2u - 1 tokens
                kc = xc * (2.0 * yc - 1.0)
                pc = yc * kc
            fb = (roof(p, k, flops_per_pair, kv_bytes_per_token) * t
                  / roof(pc, kc, a["flops_per_pair"], a["kv_bytes_per_token"]))
            t = np.where(ood, fb, t)
        t = np.where(active, t, 0.0)
        self.counter.add("attention", active, ood, t)
        return t

    def _bytes_1d(self, grid: RegularGrid, nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lt, inside, (nc,) = grid(np.maximum(nbytes, 1.0))
        t = np.exp(lt)
        t = np.where(inside, t, t * (self.launch_s + nbytes / self.bytes_per_s) / (self.launch_s + nc / self.bytes_per_s))
        return t, ~inside

    def memory_s(self, nbytes: Any) -> np.ndarray:
        """A streaming kernel moving ``nbytes`` (read + write) through device memory. Below the
        smallest measured copy a kernel takes that copy's (launch-bound) time: in the domain."""
        nbytes = np.asarray(nbytes, dtype=np.float64)
        grid = self._memory.get("d2d") or next(iter(self._memory.values()))
        active = nbytes > 0
        t, ood = self._bytes_1d(grid, nbytes)
        ood &= nbytes > np.exp(grid.axes[0][0])
        t = np.where(active, t, 0.0)
        self.counter.add("memory", active, ood, t)
        return t

    # ------------------------------------------------------------------ extras (not in the protocol)
    def copy_s(self, kind: str, nbytes: Any) -> np.ndarray:
        """A copy of ``nbytes`` of ``kind`` (``d2d``, ``h2d_pinned``, ``h2d_pageable``, ``d2h_pinned``, ...)."""
        if kind not in self._memory:
            raise ProfileError(f"{self.profile.path}: no {kind!r} copy table; has {sorted(self._memory)}",
                               field="hardware.calibration")
        nbytes = np.asarray(nbytes, dtype=np.float64)
        return np.where(nbytes > 0, self._bytes_1d(self._memory[kind], nbytes)[0], 0.0)

    def collective_s(self, op: str, gpus: int, nbytes: Any) -> np.ndarray:
        """A measured collective (``all_reduce``, ``all_gather``, ``reduce_scatter``, ``alltoall``) over
        ``gpus`` GPUs with ``nbytes`` of payload per GPU."""
        grid = self._coll.get((op, int(gpus)))
        if grid is None:
            raise ProfileError(f"{self.profile.path}: no {op} table for {gpus} GPUs; has {sorted(self._coll)}",
                               field="hardware.calibration")
        nbytes = np.asarray(nbytes, dtype=np.float64)
        lt, inside, (nc,) = grid(np.maximum(nbytes, 1.0))
        t = np.exp(lt)
        # outside the grid: latency of the smallest size + bytes at the bus bandwidth of the largest
        lat = float(np.exp(grid.logt[0]))
        bw = float(np.exp(grid.axes[0][-1] - grid.logt[-1]))
        t = np.where(inside, t, t * (lat + nbytes / bw) / (lat + nc / bw))
        return np.where(nbytes > 0, t, 0.0)
