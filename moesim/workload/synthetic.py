"""Synthetic inference workloads: renewal arrivals plus random prompt and output lengths.

Arrivals form a renewal process over ``[0, duration_s)``: inter-arrival gaps are exponential with
mean ``1/rate_per_s`` (``kind="poisson"``) or gamma with the same mean and coefficient of
variation ``cv`` (shape ``1/cv**2``, scale ``cv**2/rate_per_s``; ``cv > 1`` is burstier than
Poisson). The first request arrives after one gap, not at time 0.

Draw order from the generator (so that a given ``rng`` state gives one answer): all gaps, then
all prompt lengths, then all output lengths.
"""

from __future__ import annotations

import math

import numpy as np

from moesim.config.schema import LengthDist, SyntheticWorkloadCfg
from moesim.core.errors import ConfigError
from moesim.workload.types import RequestSet

__all__ = ["sample_lengths", "synthetic_arrivals", "synthetic_requests"]


def synthetic_requests(cfg: SyntheticWorkloadCfg, rng: np.random.Generator) -> RequestSet:
    """Draw a synthetic workload: arrivals in ``[0, cfg.duration_s)`` and their lengths.

    Args:
        cfg: arrival process (``kind``, ``rate_per_s``, ``cv``, ``duration_s``) and the two
            length distributions.
        rng: the workload's random stream (consumed; same state => same requests).

    Returns:
        A :class:`RequestSet` with ``N ~ rate_per_s * duration_s`` requests.
    """
    arrival_s = synthetic_arrivals(cfg, rng)
    n = arrival_s.shape[0]
    prompt = sample_lengths(cfg.prompt_tokens, n, rng, field="workload.prompt_tokens")
    output = sample_lengths(cfg.output_tokens, n, rng, field="workload.output_tokens")
    gaps = "exponential" if cfg.kind == "poisson" else f"gamma cv={cfg.cv:g}"
    source = (f"synthetic {cfg.kind}: rate={cfg.rate_per_s:g}/s ({gaps} gaps), "
              f"duration={cfg.duration_s:g}s, prompt={_describe(cfg.prompt_tokens)}, "
              f"output={_describe(cfg.output_tokens)}")
    return RequestSet(arrival_s, prompt, output, source=source)


def synthetic_arrivals(cfg: SyntheticWorkloadCfg, rng: np.random.Generator) -> np.ndarray:
    """Arrival times ``float64[N]`` in seconds, strictly inside ``[0, cfg.duration_s)``.

    Gaps are drawn in chunks sized from the expected count (mean + 6 sd + 16), so one numpy
    call almost always suffices; more chunks are drawn until the horizon is passed.
    """
    duration_s = float(cfg.duration_s)
    if duration_s <= 0:
        return np.empty(0, dtype=np.float64)
    rate = float(cfg.rate_per_s)
    cv = 1.0 if cfg.kind == "poisson" else float(cfg.cv)
    expected = rate * duration_s
    chunk = int(expected + 6.0 * cv * math.sqrt(expected) + 16)
    parts: list[np.ndarray] = []
    t0 = 0.0
    while True:
        if cfg.kind == "poisson":
            gaps = rng.exponential(1.0 / rate, size=chunk)
        else:
            gaps = rng.gamma(1.0 / cv**2, cv**2 / rate, size=chunk)
        times = t0 + np.cumsum(gaps)
        parts.append(times)
        if times[-1] >= duration_s:
            break
        t0 = float(times[-1])
    arrival_s = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return arrival_s[: int(np.searchsorted(arrival_s, duration_s, side="left"))]


def sample_lengths(dist: LengthDist, n: int, rng: np.random.Generator, *, field: str = "length") -> np.ndarray:
    """``n`` token lengths ``int64[n]``, each >= 1, from ``dist``.

    - ``fixed``: ``round(mean)`` (at least 1) for everyone; draws nothing from ``rng``.
    - ``uniform``: integers uniform on ``[low, high]`` inclusive.
    - ``lognormal``: lognormal with the given mean and coefficient of variation
      (``sigma**2 = ln(1 + cv**2)``, ``mu = ln(mean) - sigma**2/2``), clipped to ``[low, high]``
      and rounded to the nearest integer >= 1. Clipping moves the realised mean a little.

    Raises:
        ConfigError: ``low > high`` for the uniform and lognormal kinds (``field`` names it).
    """
    if dist.kind == "fixed":
        return np.full(n, max(1, int(round(dist.mean))), dtype=np.int64)
    if dist.low > dist.high:
        raise ConfigError(f"low={dist.low} exceeds high={dist.high}; make low <= high", field=f"{field}.low")
    if dist.kind == "uniform":
        return rng.integers(dist.low, dist.high, size=n, endpoint=True, dtype=np.int64)
    sigma2 = math.log1p(dist.cv**2)
    mu = math.log(dist.mean) - sigma2 / 2.0
    values = rng.lognormal(mu, math.sqrt(sigma2), size=n)
    lengths = np.rint(np.clip(values, dist.low, dist.high)).astype(np.int64)
    return np.maximum(lengths, 1, out=lengths)


def _describe(dist: LengthDist) -> str:
    if dist.kind == "fixed":
        return f"fixed {max(1, int(round(dist.mean)))}"
    if dist.kind == "uniform":
        return f"uniform[{dist.low},{dist.high}]"
    return f"lognormal(mean={dist.mean:g}, cv={dist.cv:g}) in [{dist.low},{dist.high}]"
