"""One serving replica: continuous batching with chunked prefill, paged KV, recompute preemption.

The replica is a SimPy process with one event per forward pass, except that a run of decode
passes whose batch cannot change (no prefill, no admission, no finish, KV suffices) is advanced
in one event. Its records are identical to stepping the passes one by one (see
tests/engine/test_fast_forward.py): pass times come from the same vectorised arithmetic, routing
samples are indexed by pass number, and a request routed here mid-run wakes the replica, which
then stops after the pass in flight — exactly where a stepped replica would next schedule.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from moesim.engine.moe_pool import MoeStats
from moesim.engine.pass_time import GroupBatch, PassCosts
from moesim.engine.traffic import LinkStats, SharedLinks

if TYPE_CHECKING:
    import simpy

    from moesim.config.schema import SchedulerCfg
    from moesim.engine.pass_time import PassCostModel
    from moesim.engine.replan import Replanner
    from moesim.engine.sampler import PassSampler
    from moesim.metrics.recorder import LevelLog, PassLog, RequestLog
    from moesim.workload.types import RequestSet

__all__ = ["Replica"]

MAX_RUN_PASSES = 1024
"""Longest fast-forwarded run; longer runs are chained (same result, bounded array sizes)."""

_EMPTY = np.zeros(0, np.int64)
_EMPTY.flags.writeable = False


class Seq:
    """A request's state inside a replica."""

    __slots__ = ("rid", "group", "prompt_total", "prefilled", "ctx", "output", "blocks")

    def __init__(self, rid: int, prompt: int, output: int) -> None:
        self.rid = rid
        self.group = -1
        self.prompt_total = prompt     # tokens to prefill (prompt + generated after a preemption)
        self.prefilled = 0
        self.ctx = 0                   # tokens in the KV cache
        self.output = output
        self.blocks = 0


@dataclass
class Plan:
    """The batch of one pass."""

    decode: list[Seq] = field(default_factory=list)
    prefill: list[tuple[Seq, int]] = field(default_factory=list)
    preempted: bool = False
    skipped: bool = False
    blocks: np.ndarray | None = None
    """``[passes, n_decode]`` KV blocks each decoding sequence needs in each pass of a run
    (set by ``Replica._run_length`` for runs it checked)."""


class Replica:
    """Scheduler and process of replica ``index`` (``dp_groups`` attention-DP groups, each with
    its own KV pool of ``kv_blocks_per_group`` blocks).

    Disaggregated serving: with a ``handoff`` the replica only prefills — a sequence whose prefill
    ends is handed to ``handoff(self, seq, now_s)`` and keeps its KV blocks until ``release(seq)``
    (a one-token request finishes here); a decode replica is one that arrivals are not routed to
    and whose sequences arrive with their KV cache through ``accept_kv``.
    """

    def __init__(self, *, index: int, env: simpy.Environment, cfg: SchedulerCfg, pcm: PassCostModel,
                 sampler: PassSampler, requests: RequestSet, log: RequestLog, passes: PassLog,
                 queue: LevelLog, dp_groups: int, kv_blocks_per_group: int, max_context: int,
                 fast_forward: bool, horizon_s: float | None, replanner: Replanner | None = None,
                 timeseries_bin_s: float = 1.0, shared: SharedLinks | None = None,
                 handoff: Callable[[Replica, Seq, float], None] | None = None) -> None:
        self.handoff = handoff
        self.kv_ready: deque[Seq] = deque()
        """Sequences whose KV cache has landed here (decode role), waiting for KV blocks."""
        self.index, self.env, self.cfg, self.pcm, self.sampler = index, env, cfg, pcm, sampler
        self.req, self.log, self.passes, self.queue = requests, log, passes, queue
        self.dp = dp_groups
        self.block = cfg.kv_block_tokens
        self._ceil_offsets = np.arange(MAX_RUN_PASSES) + self.block
        """``j + B`` for pass j of a run: a sequence of ``ctx`` tokens holds ``(ctx + j + B) // B``
        = ceil((ctx + j + 1) / B) blocks during it."""
        self.capacity = kv_blocks_per_group
        self.free = [kv_blocks_per_group] * dp_groups
        self.max_context = max_context
        self.fast_forward = fast_forward
        self.horizon = horizon_s
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.outstanding = 0
        self.events = 0
        self.wake: simpy.Event | None = None
        moe = pcm.moe
        self.moe_stats = (MoeStats(moe.placement.n_layers, moe.placement.n_experts, moe.placement.n_gpus,
                                   bin_s=timeseries_bin_s) if moe is not None else None)
        self.replanner = replanner
        net = getattr(pcm.coll, "network", None)
        self.links = LinkStats(net.tier, bin_s=timeseries_bin_s) if net is not None else None
        self.shared = shared if shared is not None and shared.contended[index] else None
        """Set when this replica's traffic can cross links another replica uses (no fast-forward)."""
        self._stretch = 1.0
        self.fault_times: tuple[float, ...] = ()
        self.clock = 0.0
        self.process = env.process(self.serve())

    # ------------------------------------------------------------------ arrivals
    def submit(self, rid: int) -> None:
        """Accept request ``rid`` (routed here). Reject (and count) a request that could never run:
        longer than the model's context, than one DP group's KV pool, or, without chunked
        prefill, than the token budget of a pass."""
        prompt, output = int(self.req.prompt_tokens[rid]), int(self.req.output_tokens[rid])
        self.log.replica[rid] = self.index
        too_long_unchunked = not self.cfg.chunked_prefill and prompt > self.cfg.max_batched_tokens
        if (prompt + output > self.max_context or self._blocks(prompt + output) > self.capacity
                or too_long_unchunked):
            self.log.rejected[rid] = True
            return
        self.waiting.append(Seq(rid, prompt, output))
        self.outstanding += 1
        self.queue.set(self.env.now, self.index, len(self.waiting))
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def accept_kv(self, rid: int, ctx: int, group: int) -> None:
        """Decode role: request ``rid``'s KV cache of ``ctx`` tokens has landed in DP group ``group``;
        it decodes once that group has the blocks (first in line, ahead of new prompts)."""
        s = Seq(rid, ctx, int(self.req.output_tokens[rid]))
        s.prefilled = s.ctx = ctx
        s.group = group
        self.kv_ready.append(s)
        self.outstanding += 1
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def release(self, s: Seq) -> None:
        """Prefill role: ``s``'s KV cache has left; free its blocks."""
        self.free[s.group] += s.blocks
        s.blocks = 0
        self.outstanding -= 1
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def incoming(self, group: int) -> int:
        """Sequences running or waiting for KV blocks in DP group ``group``."""
        return sum(1 for s in self.running if s.group == group) + sum(1 for s in self.kv_ready if s.group == group)

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.block)

    def _admit_kv(self) -> None:
        """Start decoding the sequences whose KV cache landed, in arrival order, while their group
        has the blocks (and the batch has room)."""
        while self.kv_ready and len(self.running) < self.cfg.max_num_seqs:
            s = self.kv_ready[0]
            need = self._blocks(s.ctx)
            if need > self.free[s.group]:
                break
            self.kv_ready.popleft()
            self.free[s.group] -= need
            s.blocks = need
            self.running.append(s)

    # ------------------------------------------------------------------ scheduling
    def _preempt(self, victim: Seq, plan: Plan) -> None:
        self.free[victim.group] += victim.blocks
        victim.blocks = 0
        victim.prompt_total = int(self.req.prompt_tokens[victim.rid]) + int(self.log.generated[victim.rid])
        victim.prefilled = victim.ctx = 0
        self.running.remove(victim)
        self.waiting.appendleft(victim)
        self.log.preemptions[victim.rid] += 1
        plan.preempted = True

    def _reserve(self, s: Seq, tokens_after: int, plan: Plan) -> bool:
        """Hold KV blocks for ``s`` to reach ``tokens_after`` tokens, preempting the newest running
        sequence of its group while short; False if ``s`` itself was preempted."""
        need = self._blocks(tokens_after) - s.blocks
        while need > self.free[s.group]:
            victim = next(v for v in reversed(self.running) if v.group == s.group)
            self._preempt(victim, plan)
            if victim is s:
                return False
        self.free[s.group] -= need
        s.blocks += need
        return True

    def schedule(self) -> Plan:
        """Choose this pass's batch (running sequences first, then FIFO admissions)."""
        plan = Plan()
        if self.kv_ready:
            self._admit_kv()
        budget = self.cfg.max_batched_tokens
        i = 0
        while i < len(self.running):
            s = self.running[i]
            chunk = min(s.prompt_total - s.prefilled, budget) if s.prefilled < s.prompt_total else min(1, budget)
            if chunk == 0:
                plan.skipped = True
                i += 1
                continue
            if not self._reserve(s, s.ctx + chunk, plan):
                continue
            budget -= chunk
            if s.prefilled < s.prompt_total:
                plan.prefill.append((s, chunk))
            else:
                plan.decode.append(s)
            i += 1
        if not plan.preempted:
            self._admit(plan, budget)
        return plan

    def _admit(self, plan: Plan, budget: int) -> None:
        admitted = False
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            s = self.waiting[0]
            chunk = s.prompt_total if not self.cfg.chunked_prefill else min(s.prompt_total, budget)
            if chunk > budget:
                break
            counts = [0] * self.dp
            for r in self.running:
                counts[r.group] += 1
            g = min(range(self.dp), key=lambda k: (counts[k], k))
            need = self._blocks(chunk)
            if need > self.free[g]:
                break
            self.waiting.popleft()
            s.group = g
            self.free[g] -= need
            s.blocks = need
            self.running.append(s)
            plan.prefill.append((s, chunk))
            budget -= chunk
            admitted = True
        if admitted:
            self.queue.set(self.env.now, self.index, len(self.waiting))

    # ------------------------------------------------------------------ passes
    def _groups(self, plan: Plan) -> list[GroupBatch]:
        groups = [([], [], []) for _ in range(self.dp)]
        for s in plan.decode:
            groups[s.group][0].append(s.ctx)
        for s, c in plan.prefill:
            groups[s.group][1].append(c)
            groups[s.group][2].append(s.ctx)
        return [GroupBatch(np.array(d, np.int64) if d else _EMPTY, np.array(c, np.int64) if c else _EMPTY,
                           np.array(p, np.int64) if p else _EMPTY) for d, c, p in groups]

    def _run_length(self, plan: Plan) -> int:
        """Passes the current decode-only batch can run unchanged (≥ 1)."""
        if (not self.fast_forward or self.shared is not None or not plan.decode or plan.prefill
                or plan.preempted or plan.skipped
                or len(plan.decode) != len(self.running)
                or (self.pcm.moe is not None and not self.pcm.moe.stationary)):
            return 1
        gen = self.log.generated
        k = min(min(s.output - gen.item(s.rid) for s in plan.decode), MAX_RUN_PASSES)
        # blocks held during pass j, non-decreasing in j; pass 0 is already reserved
        ctx = np.array([s.ctx for s in plan.decode], np.int64)
        plan.blocks = need = (ctx[None, :] + self._ceil_offsets[:k, None]) // self.block
        for g in range(self.dp):
            cols = [i for i, s in enumerate(plan.decode) if s.group == g]
            if not cols:
                continue
            held = sum(plan.decode[i].blocks for i in cols)
            per_pass = need.sum(axis=1) if len(cols) == ctx.size else need[:, cols].sum(axis=1)
            # the first pass whose blocks exceed what the group holds and has free
            k = min(k, int(np.searchsorted(per_pass, held + self.free[g], side="right")))
        return max(k, 1)

    def serve(self):  # noqa: ANN201 - SimPy process generator
        """The replica's process: schedule, run passes, commit, repeat."""
        env = self.env
        while True:
            if not self.running and not self.waiting and not self.kv_ready:
                self.wake = env.event()
                yield self.wake
                self.wake = None
                self.clock = env.now
                continue
            if self.replanner is not None and self.replanner.due(self.clock):
                pause = self.replanner.apply(self.clock, self.moe_stats)
                if pause > 0:
                    self.events += 1
                    self.clock += pause
                    yield env.timeout(max(0.0, self.clock - env.now))
                landing = self.replanner.in_flight()
                if landing:  # weights copied as DES flows: pause until the last byte lands
                    self.events += 1
                    yield env.all_of(landing)
                    self.replanner.settle(env.now)
                    self.clock = max(self.clock, env.now)
            plan = self.schedule()
            k = self._run_length(plan)
            groups = self._groups(plan)
            first = self.passes.passes
            idx = self.sampler.indices(first, k)
            costs = self.pcm.costs(groups, k, idx)
            durs = costs.duration_s
            if self.shared is not None:
                durs = self._contend(costs, durs)
            ends = np.cumsum(np.concatenate(([self.clock], durs)))[1:]
            if k > 1:
                k = self._cap_at_boundaries(ends, durs, k)
            self.events += 1
            if k == 1:
                yield env.timeout(max(0.0, float(ends[0]) - env.now))
            else:
                self.wake = env.event()
                yield env.any_of([env.timeout(max(0.0, float(ends[k - 1]) - env.now)), self.wake])
                self.wake = None
                if env.now < ends[k - 1]:
                    k = int(np.searchsorted(ends, env.now, side="left")) + 1
                    self.events += 1
                    yield env.timeout(max(0.0, float(ends[k - 1]) - env.now))
            self.clock = float(ends[k - 1])
            self._commit(plan, k, durs[:k], ends[:k], idx[:k], costs)

    def _contend(self, costs: PassCosts, durs: np.ndarray) -> np.ndarray:
        """Stretch this pass's communication by the traffic other replicas have in flight on shared
        links, and register this pass's own traffic until it commits."""
        comm, links = costs.comm_s, costs.link_bytes
        if links is None or not links.any():
            return durs
        self._stretch = self.shared.slowdown(self.index, links)
        durs = durs + comm * (self._stretch - 1.0)
        self.shared.begin(self.index, links, float(durs[0]))
        return durs

    def _cap_at_boundaries(self, ends: np.ndarray, durs: np.ndarray, k: int) -> int:
        """Shorten a run so it neither ends past the horizon nor starts a pass after a re-plan is
        due or after a network fault."""
        if self.horizon is not None:
            k = max(1, int(np.searchsorted(ends[:k], self.horizon, side="right")))
        if self.replanner is not None:
            starts = ends[:k] - durs[:k]
            k = max(1, int(np.searchsorted(starts, self.replanner.next_due_s, side="left")))
        upcoming = [t for t in self.fault_times if t > self.clock]
        if upcoming:  # a network change: passes that start after it are costed on the new network
            starts = ends[:k] - durs[:k]
            k = max(1, int(np.searchsorted(starts, upcoming[0], side="left")))
        return k

    def _commit(self, plan: Plan, k: int, durs: np.ndarray, ends: np.ndarray, idx: np.ndarray,
                costs: PassCosts) -> None:
        n_dec = len(plan.decode)
        pre_tokens = sum(c for _, c in plan.prefill)
        tokens = n_dec + pre_tokens
        kv0 = sum(self.capacity - f for f in self.free)
        starts = ends - durs
        if self.moe_stats is not None and tokens > 0:
            imbalance, comm = self.moe_stats.record(self.pcm.moe.pool_of_pass(tokens), idx, starts)
        else:
            imbalance, comm = np.ones(k), np.zeros(k)
        comm_s, links = costs.comm_s[:k], costs.link_bytes
        if self.shared is not None:
            self.shared.end(self.index)
            comm_s, self._stretch = comm_s * self._stretch, 1.0
        if links is not None and self.links is not None:
            if self.pcm.link_map is not None:  # a faulted network: count on the first network's links
                links = np.bincount(self.pcm.link_map, weights=links, minlength=self.links.total.size)
            self.links.record(links, starts)
        if k == 1:  # the common event: one row, no temporary arrays
            self.passes.add_row((float(starts[0]), float(durs[0]), n_dec + len(plan.prefill), pre_tokens,
                                 n_dec, float(kv0), tokens, float(idx[0]), float(imbalance[0]), float(comm[0]),
                                 float(comm_s[0])))
        else:  # a decode-only run (see _run_length): batch size = decode tokens = tokens = n_dec
            held = np.array([s.blocks for s in plan.decode], np.int64)
            kv = kv0 + (np.maximum(plan.blocks[:k], held) - held).sum(axis=1)
            n = float(n_dec)
            self.passes.add(start_s=starts, duration_s=durs, batch_size=n, prefill_tokens=0.0,
                            decode_tokens=n, kv_blocks=kv, tokens=n, sample=idx, imbalance=imbalance,
                            moe_comm_s=comm, comm_s=comm_s)
        now = float(ends[-1])
        gen = self.log.generated
        for s in plan.decode:
            s.ctx += k
            target = self._blocks(s.ctx)
            if target > s.blocks:
                self.free[s.group] -= target - s.blocks
                s.blocks = target
            gen[s.rid] += k
        for s, c in plan.prefill:
            s.prefilled += c
            s.ctx += c
            if s.prefilled == s.prompt_total:
                gen[s.rid] += 1
                if math.isnan(self.log.first_token_s[s.rid]):
                    self.log.first_token_s[s.rid] = now
        done = [s for s in self.running if s.prefilled == s.prompt_total and gen[s.rid] >= s.output]
        for s in done:
            self.running.remove(s)
            self.free[s.group] += s.blocks
            self.log.finish_s[s.rid] = now
            self.outstanding -= 1
        if self.handoff is not None:  # prefill role: prefilled sequences leave with their KV cache
            for s in [s for s in self.running if s.prefilled == s.prompt_total]:
                self.running.remove(s)
                self.handoff(self, s, now)
