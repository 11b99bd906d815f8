"""SI units inside moesim; human strings ("400Gb/s", "80GiB", "2ms") are parsed only here.

Rates are bytes per second, sizes bytes, times seconds, compute FLOP/s. ``b`` is a bit and ``B``
a byte; ``K, M, G, T, P`` are decimal, ``Ki, Mi, Gi, Ti`` binary.
"""

from __future__ import annotations

import re

__all__ = ["parse_bytes", "parse_rate", "parse_seconds", "parse_flops", "GB", "GiB", "MS", "US"]

KB, MB, GB, TB = 1e3, 1e6, 1e9, 1e12
KiB, MiB, GiB, TiB = 2.0**10, 2.0**20, 2.0**30, 2.0**40
MS, US, NS = 1e-3, 1e-6, 1e-9

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "Ki": KiB, "Mi": MiB, "Gi": GiB, "Ti": TiB}
_NUM = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
_SIZE_RE = re.compile(_NUM + r"(Ki|Mi|Gi|Ti|k|K|M|G|T|P)?([bB])\s*$")
_RATE_RE = re.compile(_NUM + r"(Ki|Mi|Gi|Ti|k|K|M|G|T|P)?(b|B)(?:/s|ps)\s*$")
_TIME_RE = re.compile(_NUM + r"(ns|us|µs|ms|s|min|h)\s*$")
_FLOPS_RE = re.compile(_NUM + r"(k|K|M|G|T|P)?FLOP/?s\s*$", re.IGNORECASE)
_TIME_SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def _number_or(value: float | int | str, pattern: re.Pattern[str], what: str, example: str) -> re.Match[str] | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = pattern.match(str(value))
    if m is None:
        raise ValueError(f"cannot read {value!r} as {what}; write it like {example!r} or as a plain number in SI units")
    return m


def _bytes_of(value: float | int | str, pattern: re.Pattern[str], what: str, example: str) -> float:
    """A number of bytes from ``<number><prefix><b|B>`` (bits are divided by 8)."""
    m = _number_or(value, pattern, what, example)
    if isinstance(m, float):
        return m
    scale = _PREFIX[m.group(2) or ""]
    return float(m.group(1)) * scale / (8.0 if m.group(3) == "b" else 1.0)


def parse_bytes(value: float | int | str) -> float:
    """``"80GiB"`` → 85899345920.0 bytes; ``"1Mb"`` → 125000.0 bytes; numbers pass through."""
    return _bytes_of(value, _SIZE_RE, "a size", "80GiB")


def parse_rate(value: float | int | str) -> float:
    """``"400Gb/s"`` / ``"400Gbps"`` → 5e10 bytes/s; ``"900GB/s"`` → 9e11 bytes/s."""
    return _bytes_of(value, _RATE_RE, "a data rate", "400Gb/s")


def parse_seconds(value: float | int | str) -> float:
    """``"2ms"`` → 0.002; ``"1h"`` → 3600.0; numbers are seconds."""
    m = _number_or(value, _TIME_RE, "a duration", "2ms")
    if isinstance(m, float):
        return m
    return float(m.group(1)) * _TIME_SCALE[m.group(2)]


def parse_flops(value: float | int | str) -> float:
    """``"989TFLOP/s"`` → 9.89e14 FLOP/s; numbers are FLOP/s."""
    m = _number_or(value, _FLOPS_RE, "a compute rate", "989TFLOP/s")
    if isinstance(m, float):
        return m
    return float(m.group(1)) * _PREFIX[(m.group(2) or "").upper() if m.group(2) != "k" else "k"]
