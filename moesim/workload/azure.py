"""Reader for the Azure LLM inference trace 2023 (Patel et al., Splitwise, ISCA 2024; CC-BY-4.0).

Getting the trace: the files are ``data/AzureLLMInferenceTrace_code.csv`` and
``data/AzureLLMInferenceTrace_conv.csv`` in the public GitHub repository
https://github.com/Azure/AzurePublicDataset (described in ``AzureLLMInferenceDataset2023.md``
there). Download one and point ``workload.path`` at it.

Format: a header ``TIMESTAMP,ContextTokens,GeneratedTokens`` then one row per request, e.g.
``2023-11-16 18:15:46.6805900,374,44`` (wall clock with 100 ns resolution; ISO 8601 with a UTC
offset is accepted too). Token counts are non-negative integers.

Mapping to a :class:`RequestSet`:

1. ``t`` = seconds since the earliest timestamp (the first row in a well-formed trace; rows out
   of order are sorted stably and counted in ``notes``).
2. Keep rows with ``start_s <= t < start_s + duration_s`` (trace seconds; no end when
   ``duration_s`` is None), re-base to ``t - start_s``, multiply by ``time_scale``.
3. Keep the first ``max_requests`` of those.
4. A zero ``GeneratedTokens`` (or ``ContextTokens``) becomes 1 token, since every request
   generates at least one token; how many rows this touched is written in ``notes``.

The happy path is vectorised pandas parsing (the 19,366-row conv file reads in ~20 ms); only when
it fails is the file re-read row by row to name the bad lines.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.config.schema import TraceWorkloadCfg
from moesim.core.errors import ConfigError, TraceFormatError
from moesim.workload.types import RequestSet

__all__ = ["AZURE_COLUMNS", "read_azure_trace", "resolve_trace_path"]

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_MAX_REPORTED = 5
_HOW_TO_GET = (
    "download data/AzureLLMInferenceTrace_conv.csv (or _code.csv) from the public GitHub repository "
    "https://github.com/Azure/AzurePublicDataset and set workload.path to it")


def resolve_trace_path(path: str | Path, base_dir: str | Path | None = None) -> Path:
    """The trace file for ``path``: absolute as is; relative against ``base_dir``, then the cwd.

    Raises:
        ConfigError: (field ``workload.path``) no such file; the message lists where it looked and
            how to get the trace.
    """
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else (
        ([Path(base_dir) / given] if base_dir is not None else []) + [Path.cwd() / given])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c.resolve()) for c in candidates)
    raise ConfigError(f"trace file {str(path)!r} not found (looked in: {looked}); {_HOW_TO_GET}",
                      field="workload.path")


def read_azure_trace(cfg: TraceWorkloadCfg, *, base_dir: str | Path | None = None) -> RequestSet:
    """Read an Azure LLM inference trace CSV into a windowed, time-scaled :class:`RequestSet`.

    Args:
        cfg: ``path``, window (``start_s``, ``duration_s`` in trace seconds), ``time_scale`` and
            ``max_requests``.
        base_dir: folder of the scenario file, for relative ``cfg.path``.

    Raises:
        ConfigError: the file is missing (field ``workload.path``) or the window holds no rows.
        TraceFormatError: a malformed header or row; names the file and 1-based line numbers.
    """
    path = resolve_trace_path(cfg.path, base_dir)
    ts_ns, context, generated = _parse(path)
    notes: list[str] = []
    order = np.argsort(ts_ns, kind="stable")
    n_unsorted = int(np.count_nonzero(order != np.arange(order.size)))
    if n_unsorted:
        ts_ns, context, generated = ts_ns[order], context[order], generated[order]
        notes.append(f"{n_unsorted} rows were out of timestamp order and were sorted")
    t_s = (ts_ns - ts_ns[0]) / 1e9 if ts_ns.size else np.empty(0)

    end_s = np.inf if cfg.duration_s is None else cfg.start_s + cfg.duration_s
    lo, hi = np.searchsorted(t_s, [cfg.start_s, end_s], side="left")
    if cfg.max_requests is not None:
        hi = min(hi, lo + cfg.max_requests)
    if hi <= lo:
        span = float(t_s[-1]) if t_s.size else 0.0
        raise ConfigError(
            f"window [{cfg.start_s:g}, {end_s:g}) s of {path} holds no requests; the trace spans "
            f"0 to {span:.3f} s after its first request ({t_s.size} rows)", field="workload.start_s")
    arrival_s = (t_s[lo:hi] - cfg.start_s) * cfg.time_scale
    prompt, output = context[lo:hi], generated[lo:hi]
    for name, arr in (("ContextTokens", prompt), ("GeneratedTokens", output)):
        zeros = int(np.count_nonzero(arr == 0))
        if zeros:
            notes.append(f"{zeros} rows with {name}=0 replayed as 1 token")
    source = (f"azure trace {path.name}: rows {lo + 1}-{hi} of {t_s.size} (sorted by time), window "
              f"[{cfg.start_s:g}, {end_s:g}) s, time_scale={cfg.time_scale:g}")
    if notes:
        source += "; " + "; ".join(notes)
    return RequestSet(arrival_s, np.maximum(prompt, 1), np.maximum(output, 1), source=source, notes=tuple(notes))


def _parse(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(timestamp ns int64[N], context int64[N], generated int64[N])`` in file order."""
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        header = f.readline().strip()
    if tuple(h.strip() for h in header.split(",")) != AZURE_COLUMNS:
        raise TraceFormatError(f"{path} line 1: header is {header!r}; expected {','.join(AZURE_COLUMNS)!r}")
    try:
        frame = pd.read_csv(path, encoding="utf-8-sig", engine="c", dtype={
            "TIMESTAMP": str, "ContextTokens": np.int64, "GeneratedTokens": np.int64})
        # utc=True: offsets are honoured (and may differ by row); naive times are read as UTC.
        stamps = pd.to_datetime(frame["TIMESTAMP"], format="ISO8601", errors="coerce", utc=True)
        context = frame["ContextTokens"].to_numpy(dtype=np.int64)
        generated = frame["GeneratedTokens"].to_numpy(dtype=np.int64)
        ok = (list(frame.columns) == list(AZURE_COLUMNS) and not stamps.isna().any()
              and (context >= 0).all() and (generated >= 0).all())
    except (ValueError, TypeError, OverflowError) as e:  # pandas' ParserError is a ValueError
        ok, fast_error = False, e
    else:
        fast_error = None
    if not ok:
        _raise_bad_rows(path, fast_error)
    ts_ns = stamps.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return ts_ns, context, generated


def _raise_bad_rows(path: Path, fast_error: Exception | None) -> None:
    """Re-read ``path`` row by row and raise a TraceFormatError naming the first bad lines."""
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        rows = [(reader.line_num, row) for row in reader if row and any(cell.strip() for cell in row)]
    bad: dict[int, str] = {}
    for line, row in rows:
        if len(row) != len(AZURE_COLUMNS):
            bad[line] = f"expected {len(AZURE_COLUMNS)} fields, found {len(row)}: {','.join(row)!r}"
            continue
        for name, value in zip(AZURE_COLUMNS[1:], row[1:]):
            text = value.strip()
            if not (text.isascii() and text.isdigit()):
                bad[line] = f"{name}={value!r} is not a non-negative integer"
                break
    three = [(line, row[0]) for line, row in rows if len(row) == len(AZURE_COLUMNS)]
    for line, stamp in zip((ln for ln, _ in three), _bad_stamps([s for _, s in three])):
        if stamp is not None:
            bad[line] = f"TIMESTAMP={stamp!r} is not a timestamp like '2023-11-16 18:15:46.6805900'"
    if not bad:  # pandas refused the file but every row looks fine on its own
        raise TraceFormatError(f"{path}: cannot parse as an Azure LLM trace: {fast_error}")
    lines = sorted(bad)
    shown = "; ".join(f"{path.name} line {line}: {bad[line]}" for line in lines[:_MAX_REPORTED])
    more = f" (first {_MAX_REPORTED} shown)" if len(lines) > _MAX_REPORTED else ""
    raise TraceFormatError(f"{path}: {len(lines)} malformed rows{more}: {shown}")


def _bad_stamps(stamps: list[str]) -> list[str | None]:
    """For each timestamp string: itself when it does not parse, else None."""
    try:
        parsed = pd.to_datetime(pd.Series(stamps, dtype=object), format="ISO8601", errors="coerce", utc=True)
        return [s if bad else None for s, bad in zip(stamps, parsed.isna().to_numpy())]
    except (ValueError, TypeError):  # e.g. a mix of UTC offsets and naive times: one at a time
        out: list[str | None] = []
        for s in stamps:
            try:
                ok = not pd.isna(pd.Timestamp(s))
            except (ValueError, TypeError):
                ok = False
            out.append(None if ok else s)
        return out
