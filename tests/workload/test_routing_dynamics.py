"""Tests for moesim.workload.routing_dynamics and build_routing: every routing kind, drift, cross-layer
correlation, trace replay, fitting (also on the real ESFT DeepSeek-V2-Lite routing) and source splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from moesim.config.schema import RoutingLoadCfg
from moesim.core.errors import ConfigError
from moesim.workload import (
    DynamicRouting,
    RoutingTrace,
    TraceExhausted,
    TraceReplay,
    build_routing,
    fit_routing,
    read_esft_routing,
    split_by_source,
    split_tokens_by_source,
    write_routing_trace,
)
from moesim.workload.routing_dynamics import comonotone_coupling

ESFT = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "esft-deepseek-v2-lite-routing"
SYNTHETIC_KINDS = ["uniform", "zipf", "hot_experts", "dirichlet", "drift", "correlated"]


def check_pass(counts: np.ndarray, tokens: int, layers: int, experts: int, k: int) -> None:
    assert counts.shape == (layers, experts) and counts.dtype == np.int64
    assert (counts.sum(axis=1) == tokens * k).all()
    assert counts.min() >= 0 and counts.max() <= tokens


def token_trace(tokens: int, layers: int, experts: int, k: int, *, seed: int = 0, tokens_per_step: int = 10,
                shift: bool = False) -> RoutingTrace:
    """Per-token routing with a skewed popularity; with ``shift`` the popularity order reverses halfway
    (a domain change, which ``fit`` sees as drift)."""
    rng = np.random.default_rng(seed)
    weight = np.broadcast_to(np.arange(1, experts + 1, dtype=float), (tokens, layers, experts)).copy()
    if shift:
        weight[tokens // 2:] = weight[tokens // 2:, :, ::-1]
    ids = np.argsort(rng.random((tokens, layers, experts)) ** 3 * weight, axis=2)[:, :, :k]
    return RoutingTrace.from_token_experts(ids, n_experts=experts, tokens_per_step=tokens_per_step)


# ---------------------------------------------------------------------- every kind: invariants and determinism
@st.composite
def models(draw: st.DrawFn) -> tuple[object, int, int, int, int]:
    kind = draw(st.sampled_from(SYNTHETIC_KINDS))
    experts = draw(st.integers(1, 24))
    k = draw(st.integers(1, experts))
    layers = draw(st.integers(1, 5))
    cfg = RoutingLoadCfg(kind=kind, zipf_s=draw(st.floats(0.0, 2.5)), hot_experts=draw(st.integers(1, experts)),
                         hot_fraction=draw(st.floats(0.0, 1.0)), dirichlet_alpha=draw(st.floats(0.05, 10.0)),
                         popularity=draw(st.sampled_from(["zipf", "dirichlet"])),
                         drift_tau_passes=draw(st.floats(0.5, 100.0)), drift_sigma=draw(st.floats(0.0, 2.0)),
                         layer_correlation=draw(st.floats(0.0, 1.0)))
    model = build_routing(cfg, n_layers=layers, n_experts=experts, top_k=k,
                          rng=np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    return model, draw(st.one_of(st.integers(0, 30), st.integers(0, 5000))), layers, experts, k


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models())
def test_every_kind_keeps_the_invariants(case: tuple[object, int, int, int, int]) -> None:
    model, tokens, layers, experts, k = case
    for _ in range(3):
        check_pass(model.next_pass(tokens), tokens, layers, experts, k)  # type: ignore[attr-defined]
    if model.stationary:  # type: ignore[attr-defined]
        many = model.sample_many(tokens, 3)  # type: ignore[attr-defined]
        assert many.shape == (3, layers, experts)
        for draw in many:
            check_pass(draw, tokens, layers, experts, k)


def _scenario_trace(tmp_path: Path) -> Path:
    return write_routing_trace(token_trace(800, 3, 8, 2, tokens_per_step=20, shift=True), tmp_path / "trace.npz")


@pytest.mark.parametrize("kind", [*SYNTHETIC_KINDS, "trace", "fitted"])
def test_same_seed_same_passes(kind: str, tmp_path: Path) -> None:
    cfg = RoutingLoadCfg(kind=kind, trace_path=str(_scenario_trace(tmp_path)), drift_tau_passes=5.0)

    def run(seed: int) -> list[np.ndarray]:
        model = build_routing(cfg, n_layers=3, n_experts=8, top_k=2, rng=np.random.default_rng(seed))
        return [model.next_pass(t) for t in (1, 7, 20, 333)]

    assert all(np.array_equal(a, b) for a, b in zip(run(5), run(5)))
    if kind not in ("hot_experts", "trace"):  # those two are deterministic by design
        assert not all(np.array_equal(a, b) for a, b in zip(run(5), run(6)))


@pytest.mark.parametrize(("kind", "stationary"), [
    ("uniform", True), ("zipf", True), ("hot_experts", True), ("dirichlet", True), ("correlated", True),
    ("drift", False), ("trace", False), ("fitted", False)])
def test_stationary_flag_and_pool_guard(kind: str, stationary: bool, tmp_path: Path) -> None:
    cfg = RoutingLoadCfg(kind=kind, trace_path=str(_scenario_trace(tmp_path)))
    model = build_routing(cfg, n_layers=3, n_experts=8, top_k=2, rng=np.random.default_rng(0))
    assert model.stationary is stationary
    if not stationary:
        with pytest.raises(TypeError, match="next_pass"):
            model.sample_many(10, 4)
    fitted_static = build_routing(cfg.model_copy(update={"kind": "fitted", "fit_drift": False}), n_layers=3,
                                  n_experts=8, top_k=2, rng=np.random.default_rng(0))
    assert fitted_static.stationary


def test_dirichlet_alpha_controls_skew() -> None:
    def imbalance(alpha: float) -> float:
        model = build_routing(RoutingLoadCfg(kind="dirichlet", dirichlet_alpha=alpha), n_layers=64, n_experts=32,
                              top_k=2, rng=np.random.default_rng(1))
        c = model.sample(100_000)
        return float((c.max(axis=1) / c.mean(axis=1)).mean())

    skewed, flat = imbalance(0.1), imbalance(1000.0)
    assert skewed > 8.0 and flat < 1.1


# ---------------------------------------------------------------------- drift
def test_drift_autocorrelation_matches_tau() -> None:
    """Log-popularity is AR(1) with lag-1 autocorrelation exp(-1/tau); fit() recovers tau and sigma."""
    tau, sigma, tokens = 10.0, 0.5, 4096
    model = DynamicRouting(popularity=np.ones((6, 32)), top_k=2, rng=np.random.default_rng(3), drift_sigma=sigma,
                           drift_tau=tau)
    logp, counts = [], []
    for _ in range(600):
        counts.append(model.next_pass(tokens))
        logp.append(np.log(model.popularity_now()))
    d = np.array(logp) - np.mean(logp, axis=0)
    lag1 = (d[1:] * d[:-1]).sum() / (d[:-1] ** 2).sum()
    assert lag1 == pytest.approx(np.exp(-1 / tau), abs=0.03)
    fitted = fit_routing(RoutingTrace(counts=np.array(counts), step_tokens=np.full(600, tokens), top_k=2))
    assert fitted.drift_tau_steps == pytest.approx(tau, rel=0.2)
    assert fitted.drift_sigma.mean() == pytest.approx(sigma, rel=0.1)


def test_drift_clock_and_mean() -> None:
    pop = np.array([[0.5, 0.3, 0.15, 0.05]])
    model = DynamicRouting(popularity=pop, top_k=1, rng=np.random.default_rng(0), drift_sigma=0.8, drift_tau=2.0,
                           tokens_per_step=100)
    model.next_pass(50)
    assert model.time == pytest.approx(0.5)  # a pass of T tokens moves T / tokens_per_step steps
    model.advance(10.0)
    assert model.time == pytest.approx(10.5)
    shares = []
    for _ in range(4000):
        model.advance(3.0)
        shares.append(model.popularity_now()[0])
    assert np.allclose(np.mean(shares, axis=0), pop[0], atol=0.02)  # the long-run mean is the popularity
    frozen = model.snapshot(np.random.default_rng(1))  # a stationary copy an engine may pool
    assert frozen.stationary and np.allclose(frozen.popularity, model.popularity_now())
    check_pass(frozen.sample_many(30, 2)[1], 30, 1, 4, 1)
    with pytest.raises(ValueError, match="drift_tau"):
        DynamicRouting(popularity=pop, top_k=1, rng=np.random.default_rng(0), drift_sigma=0.5)


# ---------------------------------------------------------------------- cross-layer correlation
def test_correlated_reproduces_a_planted_transition_matrix() -> None:
    layers, experts, k = 4, 10, 3
    rng = np.random.default_rng(7)
    pop = rng.dirichlet(np.full(experts, 3.0), size=layers)
    planted = rng.dirichlet(np.full(experts, 0.3), size=(layers - 1, experts))
    model = DynamicRouting(popularity=pop, top_k=k, rng=np.random.default_rng(8), transitions=planted)
    moves = np.zeros((layers - 1, experts, experts))
    for tokens in (40, 400) * 200:  # small passes go slot by slot, large ones column by column
        counts, m = model.next_pass_with_transitions(tokens)
        check_pass(counts, tokens, layers, experts, k)
        assert np.array_equal(m.sum(axis=2), counts[:-1])  # every slot of layer l moves on
        moves += m
    estimate = moves / moves.sum(axis=2, keepdims=True)
    assert np.abs(estimate - planted).max() < 0.02
    assert np.allclose(model.transitions, planted)


def test_layer_correlation_strength() -> None:
    def mutual_information(rho: float) -> float:
        model = build_routing(RoutingLoadCfg(kind="correlated", layer_correlation=rho), n_layers=2, n_experts=16,
                              top_k=2, rng=np.random.default_rng(0))
        m = model.transitions[0]
        p = model.popularity[0]
        q = p @ m
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(m > 0, p[:, None] * m * np.log(m / q[None, :]), 0.0)
        assert np.allclose(q, model.popularity[1])  # transitions keep the next layer's popularity
        return float(terms.sum())

    assert mutual_information(0.0) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < mutual_information(0.5) < mutual_information(1.0)


def test_comonotone_coupling_is_a_sparse_transport_plan() -> None:
    rng = np.random.default_rng(2)
    p, q = rng.dirichlet(np.ones(12)), rng.dirichlet(np.ones(12))
    coupling = comonotone_coupling(p, q, rng.permutation(12), rng.permutation(12))
    assert np.allclose(coupling.sum(axis=1), 1.0) and np.allclose(p @ coupling, q)
    assert (coupling > 0).sum() <= 2 * 12 - 1


def test_transition_file(tmp_path: Path) -> None:
    planted = np.random.default_rng(0).dirichlet(np.ones(6), size=(2, 6)) * 5.0  # rows need not be normalised
    np.save(tmp_path / "m.npy", planted)
    cfg = RoutingLoadCfg(kind="correlated", layer_correlation="m.npy")
    model = build_routing(cfg, n_layers=3, n_experts=6, top_k=2, rng=np.random.default_rng(0), base_dir=tmp_path)
    assert np.allclose(model.transitions, planted / planted.sum(axis=2, keepdims=True))
    with pytest.raises(ConfigError, match=r"shape \[L-1, E, E\]") as err:
        build_routing(cfg, n_layers=4, n_experts=6, top_k=2, rng=np.random.default_rng(0), base_dir=tmp_path)
    assert err.value.field == "routing.layer_correlation"


# ---------------------------------------------------------------------- replay
def test_token_replay_is_exact_and_cycles() -> None:
    trace = token_trace(50, 3, 8, 2)
    replay = TraceReplay(trace, rng=np.random.default_rng(0), cycle=True)
    first = replay.next_pass(30)
    expected = np.stack([np.bincount(trace.token_experts[:30, layer].ravel(), minlength=8) for layer in range(3)])
    assert np.array_equal(first, expected)
    wrapped = replay.next_pass(30)  # tokens 30..49 then 0..9
    ids = np.concatenate([trace.token_experts[30:], trace.token_experts[:10]])
    assert np.array_equal(replay.last_token_experts, ids)
    check_pass(wrapped, 30, 3, 8, 2)
    stop = TraceReplay(trace, rng=np.random.default_rng(0), cycle=False)
    stop.next_pass(30)
    with pytest.raises(TraceExhausted, match="trace_cycle"):
        stop.next_pass(30)
    stop.next_pass(20)
    assert stop.exhausted


def test_counts_replay_returns_steps_and_rescales() -> None:
    t = token_trace(40, 2, 6, 2, tokens_per_step=10)
    counts_only = RoutingTrace(counts=t.counts, step_tokens=t.step_tokens, top_k=2)
    replay = TraceReplay(counts_only, rng=np.random.default_rng(0), cycle=False)
    assert np.array_equal(replay.next_pass(10), t.counts[0])
    check_pass(replay.next_pass(1000), 1000, 2, 6, 2)
    replay.next_pass(10)
    replay.next_pass(10)
    with pytest.raises(TraceExhausted):
        replay.next_pass(10)


def test_build_routing_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as err:
        build_routing(RoutingLoadCfg(kind="trace", trace_path="nope.npz"), n_layers=3, n_experts=8, top_k=2,
                      rng=np.random.default_rng(0), base_dir=tmp_path)
    assert err.value.field == "routing.trace_path"
    path = _scenario_trace(tmp_path)
    with pytest.raises(ConfigError, match="the model needs") as err:
        build_routing(RoutingLoadCfg(kind="fitted", trace_path=str(path)), n_layers=3, n_experts=16, top_k=2,
                      rng=np.random.default_rng(0))
    assert err.value.field == "routing.trace_path"
    rebinned = build_routing(RoutingLoadCfg(kind="trace", trace_path=path.name, trace_tokens_per_step=40),
                             n_layers=3, n_experts=8, top_k=2, rng=np.random.default_rng(0), base_dir=tmp_path)
    assert rebinned.trace.tokens_per_step == 40


def test_schema_validation() -> None:
    with pytest.raises(ValidationError, match="needs trace_path"):
        RoutingLoadCfg(kind="fitted")
    with pytest.raises(ValidationError, match=r"must be in \[0, 1\]"):
        RoutingLoadCfg(kind="correlated", layer_correlation=1.5)
    with pytest.raises(ValidationError):
        RoutingLoadCfg(kind="drift", drift_tau_passes=0)
    assert RoutingLoadCfg(layer_correlation="0.25").layer_correlation == 0.25
    assert RoutingLoadCfg(layer_correlation="m.npy").layer_correlation == "m.npy"
    assert RoutingLoadCfg().kind == "zipf"  # defaults unchanged


# ---------------------------------------------------------------------- source-rank split
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 60), min_size=1, max_size=6), st.integers(1, 12),
       st.sampled_from(["uniform", "zipf", "hot_experts"]))
def test_split_by_source_invariants(seed: int, ranks: list[int], experts: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, experts + 1))
    rank_tokens = np.array(ranks)
    tokens = int(rank_tokens.sum())
    model = build_routing(RoutingLoadCfg(kind=kind, hot_fraction=0.9), n_layers=2, n_experts=experts, top_k=k, rng=rng)
    counts = model.sample(tokens)
    split = split_by_source(counts, rank_tokens, rng)
    assert split.shape == (2, len(ranks), experts)
    assert np.array_equal(split.sum(axis=1), counts)
    assert np.array_equal(split.sum(axis=2), np.broadcast_to(rank_tokens * k, (2, len(ranks))))
    assert split.min() >= 0 and (split <= rank_tokens[None, :, None]).all()


def test_split_by_source_is_unbiased_and_token_split_exact() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([[60, 40, 30, 10, 40, 20]])  # 100 tokens, k=2
    ranks = np.array([25, 75])
    mean = np.mean([split_by_source(counts, ranks, rng)[0, 0] for _ in range(3000)], axis=0)
    assert np.allclose(mean, counts[0] * 0.25, atol=0.3)
    trace = token_trace(40, 2, 6, 2)
    split = split_tokens_by_source(trace.token_experts, np.array([10, 30]), 6)
    assert np.array_equal(split[:, 0], np.stack([np.bincount(trace.token_experts[:10, l].ravel(), minlength=6)
                                                 for l in range(2)]))
    assert np.array_equal(split.sum(axis=1), trace.counts.sum(axis=0))


# ---------------------------------------------------------------------- the real trace
@pytest.fixture(scope="module")
def esft() -> RoutingTrace:
    if not (ESFT / "intent" / "expert_weights_1.txt").is_file():
        pytest.skip(f"ESFT routing logs not found at {ESFT}; see traces/README.md (routing traces)")
    return read_esft_routing(ESFT, tokens_per_step=512)


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ra, rb = np.argsort(np.argsort(a, axis=1), axis=1), np.argsort(np.argsort(b, axis=1), axis=1)
    return np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(ra, rb)])


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / x.size  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def test_fit_on_the_real_trace(esft: RoutingTrace) -> None:
    """Fitted on ESFT (4 domains, 64 steps of 512 tokens), the generator reproduces the trace's per-layer
    popularity and its distribution of per-(step, layer) imbalance max/mean (numbers: traces/README.md)."""
    fitted = fit_routing(esft)
    assert np.array_equal(fitted.popularity, esft.popularity)
    assert fitted.transitions is not None and fitted.transitions.shape == (25, 64, 64)
    assert fitted.drift_tau_steps is not None and 3.0 < fitted.drift_tau_steps < 40.0
    model = fitted.generator(np.random.default_rng(0))
    assert not model.stationary
    tokens = 512
    passes = np.stack([model.next_pass(tokens) for _ in range(150)])
    # The drifting model's popularity wanders (tau ~ 11 steps): 150 passes hold ~14 independent states.
    popularity = passes.sum(axis=0) / (passes.shape[0] * tokens * 6)
    assert np.abs(popularity - esft.popularity).sum(axis=1).mean() < 0.3
    assert _spearman(popularity, esft.popularity).mean() > 0.8
    imb_trace = esft.imbalance().ravel()
    imb_model = (passes.max(axis=2) / (tokens * 6 / 64)).ravel()
    assert np.median(imb_model) == pytest.approx(np.median(imb_trace), rel=0.15)
    assert _ks(imb_trace, imb_model) < 0.25
    static = fitted.generator(np.random.default_rng(0), drift=False)
    pooled = static.sample_many(tokens, 50)
    assert np.abs(pooled.sum(axis=0) / (50 * tokens * 6) - esft.popularity).sum(axis=1).max() < 0.05


def test_one_domain_fit_and_replay(esft: RoutingTrace) -> None:
    intent = esft.slice_steps(0, 16)
    model = fit_routing(intent).generator(np.random.default_rng(1))
    passes = np.stack([model.next_pass(512) for _ in range(100)])
    imb_model = (passes.max(axis=2) / (512 * 6 / 64)).ravel()
    assert _ks(intent.imbalance().ravel(), imb_model) < 0.2
    replay = TraceReplay(esft, rng=np.random.default_rng(0))
    assert np.array_equal(replay.next_pass(512), esft.counts[0])
    check_pass(replay.next_pass(700), 700, 26, 64, 6)


def test_esft_folder_as_trace_path(esft: RoutingTrace) -> None:
    """``routing.trace_path`` may name the ESFT folder itself (a DeepSeek-V2-Lite-shaped model)."""
    cfg = RoutingLoadCfg(kind="trace", trace_path=str(ESFT / "intent"), trace_tokens_per_step=512)
    replay = build_routing(cfg, n_layers=26, n_experts=64, top_k=6, rng=np.random.default_rng(0))
    assert np.array_equal(replay.next_pass(512), esft.counts[0])
    with pytest.raises(ConfigError, match="the model needs"):
        build_routing(cfg, n_layers=27, n_experts=64, top_k=6, rng=np.random.default_rng(0))
