"""Tests for moesim.workload.routing_load: exact invariants, distribution checks, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesim.config.schema import RoutingLoadCfg
from moesim.core.errors import ConfigError
from moesim.workload import RoutingLoadGenerator
from moesim.workload.routing_load import _cumsum_columns, capped_inclusion


def make(kind: str = "uniform", *, layers: int = 4, experts: int = 8, top_k: int = 2, seed: int = 0,
         **cfg: object) -> RoutingLoadGenerator:
    return RoutingLoadGenerator(RoutingLoadCfg(kind=kind, **cfg), n_layers=layers, n_experts=experts,
                                top_k=top_k, rng=np.random.default_rng(seed))


@st.composite
def generators(draw: st.DrawFn) -> tuple[RoutingLoadGenerator, int]:
    kind = draw(st.sampled_from(["uniform", "zipf", "hot_experts"]))
    experts = draw(st.integers(1, 40))
    top_k = draw(st.integers(1, experts))
    cfg = RoutingLoadCfg(
        kind=kind,
        zipf_s=draw(st.floats(0.0, 3.0)),
        hot_fraction=draw(st.floats(0.0, 1.0)),
        hot_experts=draw(st.integers(1, experts)),
        shuffle_per_layer=draw(st.booleans()),
    )
    gen = RoutingLoadGenerator(cfg, n_layers=draw(st.integers(1, 6)), n_experts=experts, top_k=top_k,
                               rng=np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    tokens = draw(st.one_of(st.integers(0, 40), st.integers(0, 20_000)))
    return gen, tokens


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generators())
def test_invariants_hold_exactly(case: tuple[RoutingLoadGenerator, int]) -> None:
    gen, tokens = case
    for counts in (gen.sample(tokens), gen.sample(tokens)):
        assert counts.shape == (gen.n_layers, gen.n_experts)
        assert counts.dtype == np.int64
        assert (counts.sum(axis=1) == tokens * gen.top_k).all()
        assert counts.min() >= 0
        assert counts.max() <= tokens
    assert np.allclose(gen.inclusion.sum(axis=1), gen.top_k)
    assert gen.inclusion.min() >= 0 and gen.inclusion.max() <= 1


def test_zero_tokens_and_bad_arguments() -> None:
    gen = make("zipf")
    assert not gen.sample(0).any()
    with pytest.raises(ValueError, match="tokens"):
        gen.sample(-1)
    with pytest.raises(ConfigError, match="top_k"):
        make(experts=4, top_k=5)
    with pytest.raises(ConfigError, match="hot_experts") as err:
        make("hot_experts", experts=4, hot_experts=5)
    assert err.value.field == "routing.hot_experts"


def test_uniform_imbalance_tends_to_one() -> None:
    gen = make("uniform", layers=8, experts=8, top_k=2)
    small, large = gen.sample(64), gen.sample(1_000_000)
    imbalance_small = (small.max(axis=1) / small.mean(axis=1)).mean()
    imbalance_large = (large.max(axis=1) / large.mean(axis=1)).max()
    assert imbalance_large < 1.01
    assert imbalance_small > imbalance_large


def test_uniform_matches_exact_marginals() -> None:
    """Counts of k-of-E uniform picks are Binomial(T, k/E): check mean and variance."""
    tokens, experts, top_k = 4096, 8, 2
    gen = make("uniform", layers=2000, experts=experts, top_k=top_k, seed=3)
    counts = gen.sample(tokens).astype(float)
    p = top_k / experts
    assert counts.mean() == pytest.approx(tokens * p)
    assert counts.var() == pytest.approx(tokens * p * (1 - p), rel=0.08)
    # Expected maximum over experts from exact per-token sampling is ~1066 here (simulated).
    assert counts.max(axis=1).mean() == pytest.approx(1066, rel=0.01)


def test_zipf_hottest_share_is_one_over_harmonic_number() -> None:
    experts, top_k, s = 16, 2, 1.0
    harmonic = (1.0 / np.arange(1, experts + 1) ** s).sum()
    gen = make("zipf", layers=8, experts=experts, top_k=top_k, zipf_s=s, shuffle_per_layer=False)
    tokens = 100_000
    counts = gen.sample(tokens)
    share = counts[:, 0].sum() / (tokens * top_k * gen.n_layers)
    assert share == pytest.approx(1.0 / harmonic, rel=0.01)
    assert (counts.argmax(axis=1) == 0).all()


def test_zipf_shuffle_moves_the_hot_expert_per_layer() -> None:
    gen = make("zipf", layers=32, experts=16, top_k=2, zipf_s=1.2, shuffle_per_layer=True)
    counts = gen.sample(50_000)
    hottest = counts.argmax(axis=1)
    assert len(set(hottest.tolist())) > 4
    harmonic = (1.0 / np.arange(1, 17) ** 1.2).sum()
    assert counts.max(axis=1).mean() / (50_000 * 2) == pytest.approx(1.0 / harmonic, rel=0.01)
    assert (gen.sample(50_000).argmax(axis=1) == hottest).all()  # the order is fixed at construction


def test_zipf_caps_experts_every_token_must_pick() -> None:
    pi = capped_inclusion(1.0 / np.arange(1, 9) ** 2.0, 4)
    assert pi[0] == 1.0 and pi.sum() == pytest.approx(4.0) and pi.max() <= 1.0
    gen = make("zipf", experts=8, top_k=4, zipf_s=2.0, shuffle_per_layer=False)
    assert (gen.sample(333)[:, 0] == 333).all()


def test_hot_experts_r95_h1() -> None:
    tokens, top_k = 1000, 2
    gen = make("hot_experts", experts=8, top_k=top_k, hot_fraction=0.95, hot_experts=1, shuffle_per_layer=False)
    counts = gen.sample(tokens)
    # 950 hot tokens put slot 0 on expert 0 (and slot 1 on a cold expert); cold tokens avoid it.
    assert (counts[:, 0] == 950).all()
    assert (counts[:, 0] / (tokens * top_k) >= 0.95 / top_k).all()
    assert (counts[:, 1:].sum(axis=1) == 950 + 50 * 2).all()
    assert counts[:, 1:].max() - counts[:, 1:].min() <= 1  # cold experts dealt round-robin


def test_hot_experts_matches_authors_generator_when_h_equals_k() -> None:
    gen = make("hot_experts", layers=1, experts=8, top_k=2, hot_fraction=0.7, hot_experts=2,
               shuffle_per_layer=False)
    # test_llep.py "70:2": 700 hot tokens -> experts 0 and 1; 300 cold tokens x 2 slots over 6 cold.
    assert gen.sample(1000)[0].tolist() == [700, 700, 100, 100, 100, 100, 100, 100]


def test_hot_experts_shuffle_permutes_ids_per_layer() -> None:
    gen = make("hot_experts", layers=16, experts=32, top_k=4, hot_fraction=0.9, hot_experts=1)
    counts = gen.sample(2048)
    assert (counts.max(axis=1) == round(0.9 * 2048)).all()
    assert len(set(counts.argmax(axis=1).tolist())) > 1
    assert np.array_equal(counts, gen.sample(2048))  # deterministic given the construction


@pytest.mark.parametrize("kind", ["uniform", "zipf", "hot_experts"])
def test_same_seed_same_draws(kind: str) -> None:
    a, b, c = make(kind, seed=7), make(kind, seed=7), make(kind, seed=8)
    draws_a = [a.sample(t) for t in (1, 33, 4096)]
    draws_b = [b.sample(t) for t in (1, 33, 4096)]
    assert all(np.array_equal(x, y) for x, y in zip(draws_a, draws_b))
    if kind != "hot_experts":
        assert not all(np.array_equal(x, c.sample(t)) for x, t in zip(draws_a, (1, 33, 4096)))


def test_expected_counts() -> None:
    gen = make("zipf", experts=16, top_k=4)
    assert np.allclose(gen.expected_counts(1000).sum(axis=1), 4000)
    hot = make("hot_experts", hot_fraction=0.5, hot_experts=2)
    assert np.array_equal(hot.expected_counts(100), hot.sample(100))


@pytest.mark.parametrize("kind", ["uniform", "zipf", "hot_experts"])
def test_sample_many_keeps_the_invariants(kind: str) -> None:
    """Batched draws: every draw's rows sum to T*k, entries in [0, T], draws differ."""
    gen = RoutingLoadGenerator(RoutingLoadCfg(kind=kind, zipf_s=1.2), n_layers=5, n_experts=16, top_k=4,
                               rng=np.random.default_rng(3))
    many = gen.sample_many(100, 8)
    assert many.shape == (8, 5, 16)
    assert (many.sum(axis=-1) == 400).all() and many.min() >= 0 and many.max() <= 100
    if kind != "hot_experts":
        assert len({d.tobytes() for d in many}) == 8


@pytest.mark.parametrize("shape", [(512, 8), (1, 8), (3, 1), (40, 16), (100, 64)])
def test_column_cumsum_is_numpys_bit_for_bit(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    x = rng.random(shape) * 10.0 ** rng.integers(-3, 6, shape)
    assert np.array_equal(_cumsum_columns(x), np.cumsum(x, axis=1))
