"""Gate policies: registry, loss-free bias convergence, capacity dropping, the others' models."""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import moe_scenario
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.config.training import GATE_KINDS, GateCfg, PhasesCfg
from moesim.engine.training import run_training
from moesim.policies.gate import (
    GATES, RouterAffinity, capacity_clip, congestion_equilibrium, max_violation, phase_gamma, softmax_rows)


def _zipf(e: int, s: float = 1.0, layers: int = 2) -> np.ndarray:
    w = np.arange(1, e + 1, dtype=float) ** -s
    return np.tile(np.log(w / w.sum()), (layers, 1))


def _trajectory(kind: str, steps: int, logits: np.ndarray, **kw: object) -> np.ndarray:
    gate = GATES.build(kind, **kw)
    state = gate.initial_state(*logits.shape)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        routing, state = gate.route(state, logits, rng=rng)
        out.append(max_violation(routing.share).mean())
        state = gate.observe(state, routing.share)
    return np.array(out)


def test_registry_matches_config_kinds() -> None:
    assert GATES.kinds() == sorted(GATE_KINDS)
    assert set(GateCfg.model_fields["kind"].annotation.__args__) == set(GATE_KINDS)  # type: ignore[union-attr]


def test_loss_free_bias_balances_a_stationary_skew_faster_with_larger_u() -> None:
    logits = _zipf(64)
    steps_to_balance = []
    for u in (5e-4, 1e-3, 2e-3, 4e-3):
        traj = _trajectory("loss_free_bias", 3000, logits, bias_rate=u, score_scale=0.1)
        assert traj[0] > 5 and traj[-200:].max() < 0.15            # from MaxVio ~12 to near balance
        steps_to_balance.append(int(np.argmax(traj < 0.5)))
    assert all(a > b for a, b in zip(steps_to_balance, steps_to_balance[1:]))
    # sign updates of size u overshoot by about u / score_scale in logits: larger u, larger residual
    small = _trajectory("loss_free_bias", 3000, logits, bias_rate=5e-4)[-200:].mean()
    large = _trajectory("loss_free_bias", 3000, logits, bias_rate=1e-2)[-200:].mean()
    assert small < large


def test_loss_free_bias_in_the_engine_drives_imbalance_down() -> None:
    st_ = run_training(moe_scenario(steps=60, gate={"kind": "loss_free_bias", "bias_rate": 5e-3})).train_steps
    assert st_["maxvio_global"].iloc[-1] < 0.3 * st_["maxvio_global"].iloc[0]
    assert st_["imbalance_wait_s"].iloc[-1] < st_["imbalance_wait_s"].iloc[0]
    none = run_training(moe_scenario(steps=60, gate={"kind": "none"})).train_steps
    assert none["maxvio_global"].iloc[-1] > 0.8 * none["maxvio_global"].iloc[0]


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), experts=st.integers(1, 64), factor=st.floats(0.1, 4.0))
def test_capacity_never_drops_when_capacity_covers_the_max_load(seed: int, experts: int, factor: float) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 1000, size=(3, experts))
    kept, dropped = capacity_clip(counts, factor)
    assert np.array_equal(kept + (counts - kept), counts) and (kept <= counts).all()
    assert np.array_equal(dropped, (counts - kept).sum(axis=-1))
    cap = np.ceil(factor * counts.sum(axis=-1) / experts - 1e-9)
    fits = cap >= counts.max(axis=-1)
    assert (dropped[fits] == 0).all()
    assert (dropped[~fits] > 0).all()
    big = counts.max(axis=-1).max() * experts / max(counts.sum(axis=-1).min(), 1) + 1
    assert (capacity_clip(counts, big)[1] == 0).all()


def test_engine_capacity_factor_drops_only_when_tight() -> None:
    loose = run_training(moe_scenario(gate={"capacity_factor": 100.0})).summary["dropped_fraction"]
    tight = run_training(moe_scenario(gate={"capacity_factor": 1.0})).summary["dropped_fraction"]
    assert loose == 0.0 and tight > 0.05


def test_aux_loss_equilibrium_and_scope() -> None:
    logits = _zipf(32)
    gate = GATES.build("aux_loss", aux_coeff=1e-2, aux_gain=10.0, restore_rate=0.02)
    traj = _trajectory("aux_loss", 2000, logits, aux_coeff=1e-2, aux_gain=10.0, restore_rate=0.02)
    # the learned correction settles at the congestion-game equilibrium with gamma = eta / rho
    assert traj[-1] == pytest.approx(max_violation(congestion_equilibrium(logits, gate.gamma)).mean(), rel=1e-3)
    micro = GATES.build("aux_loss", aux_scope="micro_batch").route(gate.initial_state(2, 32), logits,
                                                                    rng=np.random.default_rng(0))[0]
    glob = GATES.build("aux_loss", aux_scope="global_batch").route(gate.initial_state(2, 32), logits,
                                                                    rng=np.random.default_rng(0))[0]
    assert micro.dispersion > glob.dispersion == 1.0
    assert glob.overhead.allreduce_bytes > 0 == micro.overhead.allreduce_bytes


def test_bip_sinkhorn_expert_choice_balance() -> None:
    logits = _zipf(64)
    assert _trajectory("bip", 5, logits)[0] < 0.6 * max_violation(softmax_rows(logits)).mean()
    assert _trajectory("bip", 50, logits)[-1] < 1e-3
    rng = np.random.default_rng(0)
    sk = GATES.build("sinkhorn", sinkhorn_prob=0.5)
    used = [sk.route(sk.initial_state(2, 64), logits, rng=rng)[0].notes["sinkhorn_step"] for _ in range(400)]
    assert 0.4 < np.mean(used) < 0.6
    ec = GATES.build("expert_choice", top_k=8).route(GATES.build("none").initial_state(2, 64), logits, rng=rng)[0]
    assert ec.exact and ec.experts_per_token == 8 and max_violation(ec.share).max() == 0
    res = run_training(moe_scenario(gate={"kind": "expert_choice"})).summary
    assert res["expert_imbalance_mean"] == pytest.approx(1.0)


def test_three_phases_profile_and_drift() -> None:
    cfg = PhasesCfg(gamma_start=0, gamma_peak=4, gamma_end=1, surge_end=0.2, relax_start=0.5)
    assert [phase_gamma(cfg, x) for x in (0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)] == pytest.approx(
        [0, 2, 4, 4, 4, 2.5, 1])
    share = softmax_rows(_zipf(32, layers=1))
    aff = RouterAffinity(share, drift_sigma=0.0, drift_tau_steps=10, phases=cfg, steps=101,
                         rng=np.random.default_rng(0))
    vio = [max_violation(softmax_rows(aff.logits(k))).mean() for k in range(101)]
    assert vio[20] < vio[0] and vio[20] < vio[100] < vio[0]        # surge balances, relaxation lets go
    drift = RouterAffinity(share, drift_sigma=0.5, drift_tau_steps=5, phases=None, steps=10,
                           rng=np.random.default_rng(1))
    a, b = drift.logits(0), drift.logits(50)
    assert not np.allclose(a, b)
    with pytest.raises(ValueError):
        drift.logits(10)
