"""Calibration profile files: measured kernel latencies of one GPU + software stack, as JSON.

A profile holds what was measured (raw samples, with repetitions and spread), what was fitted
from it (tables the ``CalibratedCost`` model interpolates), and where it came from (provenance).
This module reads, checks and writes the file; it needs neither torch nor the engine.

Layout (``schema_version`` 1)::

    {
      "format": "moesim-calibration",
      "schema_version": 1,
      "provenance": {"gpu_name", "sm_count", "clocks", "driver", "cuda", "torch", "date",
                     "command", "device", "source", ...},
      "settings": {"quick", "warmup", "repeats", ...},
      "samples": {op: [row, ...]},          # raw measurements, one row per measured point
      "fit": {"tables": {mode: {op: ...}},  # mode "eager" always; "graph" (CUDA graphs) if measured
              "roofline": {"flops_per_s": {dtype: x}, "bytes_per_s": x, "launch_s": x},
              "spread": {op: relative spread}, "errors": {...}},
      "content_hash": "sha256:<hex>"        # of everything above, canonical JSON
    }

Every sample row carries ``median_s``, ``spread`` (relative half inter-quartile range of its
repetitions, (q75 - q25) / (2 median)) and ``reps``; the op-specific keys are listed in
``SAMPLE_KEYS``. Times are seconds, sizes bytes, as everywhere in moesim.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.core.errors import ConfigError

__all__ = [
    "FORMAT", "PROVENANCE_KEYS", "SAMPLE_KEYS", "SCHEMA_VERSION", "Profile", "ProfileError", "content_hash", "load_profile",
    "parse_profile", "seal", "write_profile",
]

FORMAT = "moesim-calibration"
SCHEMA_VERSION = 1
PROVENANCE_KEYS = ("gpu_name", "sm_count", "clocks", "driver", "cuda", "torch", "date", "command", "device")
SAMPLE_KEYS: dict[str, tuple[str, ...]] = {
    "gemm": ("dtype", "m", "k", "n"),
    "grouped_ffn": ("dtype", "hidden", "intermediate", "active", "tokens_per_expert"),
    "attention": ("phase", "flops_per_pair", "kv_bytes_per_token", "pairs", "kv_tokens"),
    "memory": ("kind", "nbytes"),
    "host": ("kind",),
    "collective": ("op", "gpus", "nbytes"),
}
"""Keys every raw sample row of an op must have (besides ``median_s``, ``spread``, ``reps``)."""
TABLE_OPS = ("gemm", "grouped_ffn", "attention", "memory", "collective")


class ProfileError(ConfigError):
    """A calibration profile is unreadable, corrupted, of a foreign version or incomplete."""


@dataclass(frozen=True)
class Profile:
    """A checked calibration profile. ``data`` is the parsed JSON; ``path`` where it came from."""

    data: dict[str, Any]
    path: str = "<memory>"

    @property
    def content_hash(self) -> str:
        """``sha256:<hex>`` of the profile content (what run provenance records)."""
        return str(self.data["content_hash"])

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.data["provenance"])

    @property
    def samples(self) -> dict[str, list[dict[str, Any]]]:
        return self.data["samples"]

    @property
    def fit(self) -> dict[str, Any]:
        return self.data["fit"]

    def modes(self) -> list[str]:
        """Timing modes with fitted tables (``eager``; ``graph`` when CUDA graphs were measured)."""
        return sorted(self.fit["tables"])

    def tables(self, mode: str = "eager") -> dict[str, Any]:
        """Fitted tables of one mode; a ProfileError naming the modes present if absent."""
        tables = self.fit["tables"]
        if mode not in tables:
            raise ProfileError(f"{self.path}: no {mode!r} tables; this profile has {sorted(tables)}",
                               field="hardware.calibration")
        return tables[mode]

    def describe(self) -> str:
        """One line: GPU, device, date and hash prefix."""
        p = self.data["provenance"]
        return f"{p.get('gpu_name')} ({p.get('device')}, {p.get('date')}, {self.content_hash[:19]})"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def content_hash(data: dict[str, Any]) -> str:
    """``sha256:<hex>`` of ``data`` without its ``content_hash`` key, as canonical JSON."""
    body = {k: v for k, v in data.items() if k != "content_hash"}
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def _fail(where: str, msg: str) -> ProfileError:
    return ProfileError(f"{where}: {msg}", field="hardware.calibration")


def _check_samples(where: str, samples: Any) -> None:
    if not isinstance(samples, dict):
        raise _fail(where, "'samples' must be a mapping of op -> list of rows")
    for op, rows in samples.items():
        if op not in SAMPLE_KEYS:
            raise _fail(where, f"unknown sample op {op!r}; known: {', '.join(SAMPLE_KEYS)}")
        if not isinstance(rows, list):
            raise _fail(where, f"samples.{op} must be a list")
        need = SAMPLE_KEYS[op] + ("median_s", "spread", "reps")
        for i, row in enumerate(rows):
            missing = [k for k in need if not isinstance(row, dict) or k not in row]
            if missing:
                raise _fail(where, f"samples.{op}[{i}] lacks {', '.join(missing)}")
            t = row["median_s"]
            if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise _fail(where, f"samples.{op}[{i}].median_s = {t!r} is not a positive time")


def _check_fit(where: str, fit: Any) -> None:
    if not isinstance(fit, dict) or not isinstance(fit.get("tables"), dict) or "eager" not in fit["tables"]:
        raise _fail(where, "'fit.tables.eager' is missing; re-run `moesim calibrate` (or its fit step)")
    roof = fit.get("roofline")
    if not isinstance(roof, dict) or not {"flops_per_s", "bytes_per_s", "launch_s"} <= set(roof):
        raise _fail(where, "'fit.roofline' needs flops_per_s, bytes_per_s and launch_s")
    for mode, tables in fit["tables"].items():
        if not isinstance(tables, dict):
            raise _fail(where, f"fit.tables.{mode} must be a mapping")
        unknown = set(tables) - set(TABLE_OPS)
        if unknown:
            raise _fail(where, f"fit.tables.{mode} has unknown ops {sorted(unknown)}")
    if not isinstance(fit.get("spread", {}), dict):
        raise _fail(where, "'fit.spread' must be a mapping of op -> relative spread")


def parse_profile(data: Any, *, path: str = "<memory>", check_hash: bool = True) -> Profile:
    """Check a decoded profile and wrap it. Raises ProfileError saying what is wrong and where."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _fail(path, f"not a moesim calibration profile (expected \"format\": \"{FORMAT}\")")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(path, f"schema_version {version!r} is not supported (this moesim reads version "
                          f"{SCHEMA_VERSION}); re-run `moesim calibrate` with this moesim version")
    missing = [k for k in ("provenance", "settings", "samples", "fit", "content_hash") if k not in data]
    if missing:
        raise _fail(path, f"missing top-level field(s): {', '.join(missing)}")
    prov = data["provenance"]
    if not isinstance(prov, dict):
        raise _fail(path, "'provenance' must be a mapping")
    lacking = [k for k in PROVENANCE_KEYS if k not in prov]
    if lacking:
        raise _fail(path, f"provenance lacks {', '.join(lacking)} (null is allowed where unknown)")
    _check_samples(path, data["samples"])
    _check_fit(path, data["fit"])
    if check_hash:
        want = content_hash(data)
        if data["content_hash"] != want:
            raise _fail(path, f"content hash mismatch (file says {str(data['content_hash'])[:23]}..., content is "
                              f"{want[:23]}...): the file was changed or damaged after it was written; "
                              "re-run `moesim calibrate`")
    return Profile(data, path)


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile file; every failure is a ProfileError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise _fail(str(p), f"cannot read profile ({e.strerror or e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(str(p), f"corrupted profile: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from e
    return parse_profile(data, path=str(p))


def seal(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with format, version and a fresh content hash filled in (a new dict)."""
    out = {"format": FORMAT, "schema_version": SCHEMA_VERSION}
    out.update({k: v for k, v in data.items() if k not in ("format", "schema_version", "content_hash")})
    out["content_hash"] = content_hash(out)
    return out


def write_profile(data: dict[str, Any], path: str | Path) -> Profile:
    """Seal ``data`` (format, version, hash), check it and write it atomically; returns the Profile."""
    sealed = seal(data)
    prof = parse_profile(json.loads(json.dumps(sealed)), path=str(path))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(sealed, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(p)
    return prof
