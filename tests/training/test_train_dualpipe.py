"""DualPipe: the order's invariants, the report's bubble and memory closed forms, hidden all-to-all."""

from __future__ import annotations

from collections import Counter
from typing import get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from train_helpers import FixedCollectives, dense_scenario, moe_scenario

from moesim.config.training import ScheduleCfg, TrainingCfg
from moesim.core.errors import ConfigError
from moesim.engine.training import run_training
from moesim.engine.training.memory import alive_counts
from moesim.engine.training.pipeline import exposed_hide, replay, simulate
from moesim.engine.training.schedule import SCHEDULE_KINDS, B, F, W, build_plan
from moesim.engine.training.setup import build_training
from moesim.engine.training.steps import BREAKDOWN

SIZES = [(2, 4), (4, 8), (4, 12), (6, 12), (8, 20), (8, 16), (16, 120)]


def _times(plan, f: float, b: float, w: float) -> np.ndarray:
    return np.array([(f, b, w)[k] for k in plan.op_kind])


@pytest.mark.parametrize("p,m", SIZES)
def test_every_rank_runs_each_op_once_with_both_directions(p: int, m: int) -> None:
    plan = build_plan("dualpipe", pp=p, micro_batches=m)
    assert plan.kinds == 3 and plan.chunks == p
    for s, ops in enumerate(plan.device_ops):
        kinds = Counter(plan.op_kind[me] for me, _, _ in ops)
        assert kinds == {F: m, B: m, W: m}
        assert plan.stage_chunks[s] == tuple(sorted({s, p - 1 - s}))      # stages s and pp-1-s
        for me, _, _ in ops:                                              # direction 0 on rank c, 1 on pp-1-c
            c, mb = plan.op_chunk[me], plan.op_mb[me]
            assert s == (c if mb < m // 2 else p - 1 - c)
    for stage, fused in zip(plan.slots, plan.slot_fused):
        for slot, fuse in zip(stage, fused):
            kinds = [plan.op_kind[me] for me, _, _ in slot]
            mbs = {plan.op_mb[me] for me, _, _ in slot}
            if fuse:                                                      # F&B: a forward + a full backward
                assert kinds == [F, B, W] and len(mbs) == 2
            else:                                                         # one op, or a full backward
                assert kinds in ([F], [B], [W], [B, W]) and len(mbs) == 1


@pytest.mark.parametrize("p,m", SIZES)
def test_bubble_matches_the_report_for_equal_ops_and_no_communication(p: int, m: int) -> None:
    """F = B = W = t (B the input part; the report's B is the full backward 2t), F&B = F + 2t:
    every rank's step is its 3 m t of work plus (PP/2 - 1)(F&B + B_full - 3W)."""
    plan = build_plan("dualpipe", pp=p, micro_batches=m)
    t = 0.7
    run = simulate(plan, _times(plan, t, t, t).tolist(), [0.0] * plan.n_ops)
    f, b_full, w = t, 2 * t, t
    fb = f + b_full
    bubble = (p / 2 - 1) * (fb + b_full - 3 * w)
    assert run.stage_end == pytest.approx([3 * m * t + bubble] * p)
    one_f_one_b = build_plan("1f1b", pp=p, micro_batches=m)
    base = simulate(one_f_one_b, [(f, b_full)[k] for k in one_f_one_b.op_kind], [0.0] * one_f_one_b.n_ops)
    assert base.makespan - 3 * m * t == pytest.approx((p - 1) * (f + b_full))    # the report's 1F1B row
    assert run.makespan < base.makespan or p == 2


@pytest.mark.parametrize("p,m", SIZES)
def test_activations_alive_peak_at_pp_plus_one(p: int, m: int) -> None:
    plan = build_plan("dualpipe", pp=p, micro_batches=m)
    assert [int(a.sum(axis=1).max()) for a in alive_counts(plan)] == [p + 1] * p


@settings(max_examples=30, deadline=None)
@given(half=st.integers(1, 4), extra=st.integers(0, 3), seed=st.integers(0, 10_000))
def test_des_matches_list_scheduling_with_fused_slots(half: int, extra: int, seed: int) -> None:
    p = 2 * half
    m = 2 * (p + extra)
    plan = build_plan("dualpipe", pp=p, micro_batches=m)
    rng = np.random.default_rng(seed)
    dur = rng.uniform(0.1, 2.0, plan.n_ops)
    hide = np.where(np.asarray(plan.op_kind) == W, 0.0, rng.uniform(0.0, 1.0, plan.n_ops) * dur)
    p2p = rng.uniform(0.0, 0.2, plan.n_ops).tolist()
    a = simulate(plan, dur.tolist(), p2p, hide.tolist())
    b = replay(plan, dur.tolist(), p2p, hide.tolist())
    assert np.allclose(a.start, b.start) and np.allclose(a.end, b.end)
    exposed = exposed_hide(plan, dur, hide)
    for stage in plan.slots:
        prev = 0.0
        for slot in stage:
            ops = [me for me, _, _ in slot]
            t0, t1 = a.start[ops[0]], a.end[ops[0]]
            assert all(a.start[o] == t0 and a.end[o] == t1 for o in ops) and t0 >= prev - 1e-12
            prev = t1
            # a slot lasts its computation plus the communication it could not hide
            assert t1 - t0 == pytest.approx(sum(dur[o] - hide[o] + exposed[o] for o in ops))
            for me, dep, cross in slot:
                if dep >= 0:
                    assert t0 >= a.end[dep] + (p2p[me] if cross else 0.0) - 1e-12


def test_fused_slots_hide_communication_below_their_computation() -> None:
    """With F = B = W = t and c of all-to-all on every F and B: the F&B slots stay 3t while
    2c <= 3t, so the step grows only through the standalone ops, the same for any micro-batches."""
    t = 1.0
    growth = {}
    for m in (16, 32, 64):
        plan = build_plan("dualpipe", pp=8, micro_batches=m)
        kind = np.asarray(plan.op_kind)
        ends = []
        for c in (0.0, 0.5, 1.5):
            hide = np.where(kind == W, 0.0, c)
            run = simulate(plan, (_times(plan, t, t, t) + hide).tolist(), [0.0] * plan.n_ops, hide.tolist())
            fused = [s for stage, f in zip(plan.slots, plan.slot_fused) for s, x in zip(stage, f) if x]
            assert all(run.end[s[0][0]] - run.start[s[0][0]] == pytest.approx(3 * t) for s in fused)
            ends.append(run.makespan)
        growth[m] = (ends[1] - ends[0], ends[2] - ends[0])
    assert growth[16] == pytest.approx(growth[32]) and growth[32] == pytest.approx(growth[64])
    one = build_plan("1f1b", pp=8, micro_batches=64)
    base = [simulate(one, [(t, 2 * t)[k] + c for k in one.op_kind], [0.0] * one.n_ops).makespan for c in (0.0, 1.5)]
    assert base[1] - base[0] == pytest.approx((64 + 8 - 1) * 2 * 1.5)   # 1F1B pays the all-to-all of every op
    assert growth[64][1] < 0.2 * (base[1] - base[0])


def _hiding(kind: str, gbs: int, a2a_s: float) -> dict:
    scenario = moe_scenario(parallel={"pp": 4, "ep": 2}, schedule={"kind": kind}, data={"global_batch_seqs": gbs},
                            steps=1)
    return run_training(scenario, collectives=FixedCollectives(a2a_s=a2a_s)).summary


def _fused_share(m: int) -> float:
    """Share of a rank's F and B ops that run in F&B slots (the same on every rank)."""
    plan = build_plan("dualpipe", pp=4, micro_batches=m)
    shares = set()
    for stage, fused in zip(plan.slots, plan.slot_fused):
        n = sum(1 for slot in stage for me, _, _ in slot if plan.op_kind[me] != W)
        hidden = sum(1 for slot, f in zip(stage, fused) if f for me, _, _ in slot if plan.op_kind[me] != W)
        shares.add(round(hidden / n, 12))
    assert len(shares) == 1
    return shares.pop()


def test_engine_hides_the_all_to_all_in_f_and_b_chunks() -> None:
    """Step-time growth with the all-to-all time does not depend on the micro-batches with
    DualPipe (only warm-up / cool-down ops expose it) but does with 1F1B; the breakdown adds up."""
    lo, hi = 1e-4, 4e-4                                          # both below the paired computation
    growth = {}
    for kind in ("dualpipe", "1f1b"):
        for gbs in (16, 32):                                     # 8 and 16 micro-batches
            a, b = _hiding(kind, gbs, lo), _hiding(kind, gbs, hi)
            growth[kind, gbs] = b["step_time_mean_s"] - a["step_time_mean_s"]
            if kind == "dualpipe":                                   # hidden: the F and B ops of F&B slots
                share = b["step_ep_comm_hidden_s"] / (b["step_ep_comm_hidden_s"] + b["step_ep_comm_s"])
                assert share == pytest.approx(_fused_share(b["micro_batches"]), rel=1e-9)
    assert growth["dualpipe", 32] == pytest.approx(growth["dualpipe", 16], rel=1e-6)
    assert growth["1f1b", 32] > 1.5 * growth["1f1b", 16]
    assert growth["dualpipe", 32] < 0.3 * growth["1f1b", 32]


def test_breakdown_adds_up_with_dualpipe() -> None:
    res = run_training(moe_scenario(parallel={"pp": 4, "ep": 2}, schedule={"kind": "dualpipe"},
                                    stragglers={"slow_gpus": 1, "jitter_cv": 0.05}))
    st_ = res.train_steps
    parts = st_[[f"{k}_s" for k in BREAKDOWN]]
    assert (parts.to_numpy() >= -1e-9).all()
    assert np.allclose(parts.sum(axis=1), st_["step_s"], rtol=1e-9)
    assert res.summary["schedule"] == "dualpipe" and res.summary["step_ep_comm_hidden_s"] > 0
    tl = res.train_timeline
    assert set(tl["op"]) >= {"F", "B", "W"} and tl["fused"].any()


def test_memory_counts_parameters_twice_and_pp_plus_one_activations() -> None:
    kw = {"parallel": {"pp": 4}, "optimizer": {"zero": 0}}
    one = build_training(dense_scenario(**kw)).memory_table
    dual = build_training(dense_scenario(schedule={"kind": "dualpipe"}, **kw)).memory_table
    p = 4
    for key in ("weights", "grads", "optimizer"):
        assert dual[key] == pytest.approx(one[key] + one[key][::-1])     # stages s and pp-1-s
    assert dual["weights"].sum() == pytest.approx(2 * one["weights"].sum())
    # 2 layers per stage, equal activations per chunk: 1F1B's stage 0 keeps pp micro-batches
    per_chunk = one["activations"][0] / p
    assert one["activations"] == pytest.approx(per_chunk * np.arange(p, 0, -1))
    assert dual["activations"] == pytest.approx([per_chunk * (p + 1)] * p)


def test_zero1_shards_over_both_copies() -> None:
    kw = {"parallel": {"pp": 4}, "optimizer": {"zero": 1}}
    one = build_training(dense_scenario(**kw))
    dual = build_training(dense_scenario(schedule={"kind": "dualpipe"}, **kw))
    # the optimizer state of stages s and pp-1-s is spread over both copies' 2 x dp GPUs
    assert dual.memory_table["optimizer"] == pytest.approx((one.memory_table["optimizer"]
                                                            + one.memory_table["optimizer"][::-1]) / 2)


@pytest.mark.parametrize("training,field", [
    ({"parallel": {"pp": 1}}, "training.parallel.pp"),
    ({"parallel": {"pp": 4}, "data": {"global_batch_seqs": 12}}, "training.data.global_batch_seqs"),  # m = 6 < 8
    ({"parallel": {"pp": 2}, "data": {"global_batch_seqs": 20}}, "training.data.global_batch_seqs"),  # m = 5 odd
])
def test_dualpipe_size_errors_name_the_field(training: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_training(dense_scenario(schedule={"kind": "dualpipe"}, **training))
    assert e.value.field == field and "dualpipe" in str(e.value)


def test_schedule_kinds_match_the_config() -> None:
    assert get_args(ScheduleCfg.model_fields["kind"].annotation) == SCHEDULE_KINDS
    for kind in SCHEDULE_KINDS:
        build_plan(kind, pp=2, micro_batches=4, virtual=2 if kind == "interleaved_1f1b" else 1)


def test_ep_comm_overlap_is_for_the_other_schedules() -> None:
    assert ScheduleCfg(kind="1f1b", ep_comm_overlap=0.5).ep_comm_overlap == 0.5
    with pytest.raises(ValueError, match="ep_comm_overlap"):
        TrainingCfg.model_validate({"schedule": {"kind": "dualpipe", "ep_comm_overlap": 0.5}})
