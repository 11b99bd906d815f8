"""Tests for moesim.workload.synthetic and the RequestSet value type."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.config.schema import LengthDist, SyntheticWorkloadCfg
from moesim.core.errors import ConfigError
from moesim.workload import RequestSet, build_requests, synthetic_requests
from moesim.workload.synthetic import sample_lengths


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_poisson_rate_within_confidence_interval() -> None:
    rate, duration = 50.0, 2000.0
    cfg = SyntheticWorkloadCfg(kind="poisson", rate_per_s=rate, duration_s=duration)
    reqs = synthetic_requests(cfg, rng(1))
    expected = rate * duration
    assert abs(len(reqs) - expected) < 4 * math.sqrt(expected)  # Poisson count: sd = sqrt(mean)
    gaps = np.diff(reqs.arrival_s)
    assert gaps.mean() == pytest.approx(1 / rate, rel=4 / math.sqrt(len(gaps)))
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)  # exponential: cv = 1
    assert reqs.arrival_s[0] >= 0 and reqs.arrival_s[-1] < duration


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_gaps_have_requested_mean_and_cv(cv: float) -> None:
    rate = 20.0
    cfg = SyntheticWorkloadCfg(kind="gamma", rate_per_s=rate, cv=cv, duration_s=10_000.0)
    gaps = np.diff(synthetic_requests(cfg, rng(2)).arrival_s)
    assert len(gaps) > 150_000
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_arrivals_sorted_and_inside_horizon() -> None:
    reqs = synthetic_requests(SyntheticWorkloadCfg(rate_per_s=3.0, cv=3.0, duration_s=60.0), rng(3))
    assert (np.diff(reqs.arrival_s) >= 0).all()
    assert reqs.arrival_s.min() >= 0 and reqs.arrival_s.max() < 60.0


def test_zero_duration_gives_empty_set() -> None:
    reqs = synthetic_requests(SyntheticWorkloadCfg(duration_s=0.0), rng())
    assert len(reqs) == 0 and reqs.span_s == 0.0


def test_lengths_within_bounds() -> None:
    prompt = LengthDist(kind="lognormal", mean=1000, cv=2.0, low=16, high=3000)
    output = LengthDist(kind="uniform", low=5, high=9)
    cfg = SyntheticWorkloadCfg(rate_per_s=100.0, duration_s=200.0, prompt_tokens=prompt, output_tokens=output)
    reqs = synthetic_requests(cfg, rng(4))
    assert reqs.prompt_tokens.min() >= 16 and reqs.prompt_tokens.max() <= 3000
    assert reqs.prompt_tokens.max() == 3000  # the clip binds with cv = 2
    assert set(np.unique(reqs.output_tokens).tolist()) == {5, 6, 7, 8, 9}  # both ends inclusive
    assert reqs.prompt_tokens.dtype == np.int64 and reqs.output_tokens.dtype == np.int64


def test_lognormal_mean_and_cv_when_unclipped() -> None:
    dist = LengthDist(kind="lognormal", mean=500, cv=0.8, low=1, high=10**9)
    x = sample_lengths(dist, 200_000, rng(5)).astype(float)
    assert x.mean() == pytest.approx(500, rel=0.01)
    assert x.std() / x.mean() == pytest.approx(0.8, rel=0.03)
    assert x.min() >= 1


def test_fixed_lengths_and_tiny_lognormal_are_at_least_one() -> None:
    assert (sample_lengths(LengthDist(kind="fixed", mean=7.4), 10, rng()) == 7).all()
    assert (sample_lengths(LengthDist(kind="fixed", mean=0.2), 3, rng()) == 1).all()
    tiny = LengthDist(kind="lognormal", mean=0.3, cv=1.0, low=1, high=5)
    assert sample_lengths(tiny, 1000, rng()).min() == 1


def test_low_above_high_is_a_config_error() -> None:
    bad = SyntheticWorkloadCfg(prompt_tokens=LengthDist(kind="uniform", low=10, high=5))
    with pytest.raises(ConfigError, match="low=10 exceeds high=5") as err:
        synthetic_requests(bad, rng())
    assert err.value.field == "workload.prompt_tokens.low"


def test_deterministic_by_seed() -> None:
    cfg = SyntheticWorkloadCfg(rate_per_s=10.0, duration_s=100.0)
    a, b, c = synthetic_requests(cfg, rng(9)), synthetic_requests(cfg, rng(9)), synthetic_requests(cfg, rng(10))
    for name in ("arrival_s", "prompt_tokens", "output_tokens"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert len(a) != len(c) or not np.array_equal(a.arrival_s, c.arrival_s)
    assert a.source == b.source and "gamma" in a.source


def test_build_requests_dispatches_synthetic() -> None:
    cfg = SyntheticWorkloadCfg(kind="poisson", rate_per_s=5.0, duration_s=10.0)
    assert np.array_equal(build_requests(cfg, rng(1)).arrival_s, synthetic_requests(cfg, rng(1)).arrival_s)


# --------------------------------------------------------------------------- RequestSet
def test_request_set_validates_and_freezes() -> None:
    reqs = RequestSet([0.0, 1.0, 1.0], [5, 6, 7], [1, 2, 3], source="unit")
    assert len(reqs) == 3 and reqs.arrival_s.dtype == np.float64
    with pytest.raises(ValueError):
        reqs.arrival_s[0] = 2.0  # read-only
    assert len(reqs.head(2)) == 2
    with pytest.raises(ValueError, match="sorted"):
        RequestSet([1.0, 0.5], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        RequestSet([0.0, 1.0], [1], [1, 1])
    with pytest.raises(ValueError, match="output_tokens must be >= 1"):
        RequestSet([0.0], [1], [0])
    with pytest.raises(ValueError, match="finite"):
        RequestSet([-1.0], [1], [1])
