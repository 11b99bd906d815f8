"""Stragglers (slow GPUs, jitter, degraded links) and failures over a whole training run.

**Stragglers.** A slow GPU multiplies its compute time by ``slow_factor``. Because the GPUs of an
EP group meet at every MoE layer (and a TP group at every layer), an op lasts as long as its
slowest GPU: the simulated pipeline runs, on every stage, the EP group holding a slow GPU (else
one touching a degraded host, else the first), and a stage's compute is multiplied by the largest
slow factor among the slow GPUs of that stage. With slow GPUs in *different* EP groups of
different stages this is an upper bound (the real step is the slowest bundle's, and the bundles
may be different ones per stage). Jitter: every op of every GPU draws a lognormal factor with
mean 1 and coefficient of variation ``jitter_cv``; the op takes the largest over the GPUs that
synchronise with it. A degraded host caps the bandwidth of its NICs at ``link_factor`` x the NIC
rate (``TiledTopology.degrade_nodes``), which slows every collective and transfer that crosses it.

**Failures** (``simulate_run``). The run needs ``steps`` steps of ``step_s`` seconds; every
``interval`` steps a checkpoint blocks training for ``block_s`` (sync: the whole write; async:
the copy to host memory) and becomes restorable ``commit_s`` after the snapshot (the storage
write; sizes and times from ``checkpoint.py``). A snapshot cannot start before the previous
checkpoint has drained to storage (it waits: ``checkpoint_drain_wait_s``, counted in the
blocking). Failures arrive as a Poisson process of rate ``rate_per_s`` (GPUs x 1/MTBF + hosts x
1/MTBF) plus injected wall-clock times. A failure at wall time ``f`` loses the work since the
restored state's resume time (the latest *committed* checkpoint, or the last restart) and costs
``restart_s`` (re-initialisation plus checkpoint load) before training resumes; a failure during
a restart starts the restart again. Time to train = useful work + checkpoint blocking + lost work
+ restarts; goodput = useful work / time to train.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.config.training import StragglerCfg
from moesim.engine.training.mesh import Mesh

__all__ = ["RunOutcome", "StragglerModel", "simulate_run"]


class StragglerModel:
    """Where the slow GPUs and degraded hosts are, and the per-op slow-down factors (module doc)."""

    def __init__(self, cfg: StragglerCfg, mesh: Mesh, *, n_nodes: int, rng: np.random.Generator) -> None:
        self.cfg = cfg
        gpus = set(cfg.slow_gpu_ids)
        if cfg.slow_gpus:
            gpus |= set(rng.choice(mesh.gpus, size=min(cfg.slow_gpus, mesh.gpus), replace=False).tolist())
        self.slow_gpus = sorted(g for g in gpus if 0 <= g < mesh.gpus)
        nodes = set(cfg.slow_link_nodes)
        if cfg.slow_links:
            nodes |= set(rng.choice(n_nodes, size=min(cfg.slow_links, n_nodes), replace=False).tolist())
        self.slow_nodes = sorted(n for n in nodes if 0 <= n < n_nodes)
        self.stage_factor = np.ones(mesh.pp)
        self.edp_choice = [0] * mesh.pp
        for node in self.slow_nodes:              # a degraded host: simulate an EP group that touches it
            first = node * mesh.gpus_per_node
            if first < mesh.gpus:
                loc = mesh.locate(first)
                self.edp_choice[loc["stage"]] = loc["edp"]
        for g in self.slow_gpus:                   # slow GPUs take precedence
            loc = mesh.locate(g)
            self.stage_factor[loc["stage"]] = max(self.stage_factor[loc["stage"]], cfg.slow_factor)
            self.edp_choice[loc["stage"]] = loc["edp"]
        self.sync_gpus = max(mesh.ep * mesh.etp, mesh.tp * mesh.cp)
        self.rng = rng

    @property
    def active(self) -> bool:
        """Whether any compute slow-down applies (slow GPUs or jitter)."""
        return bool(self.slow_gpus) or self.cfg.jitter_cv > 0

    def factors(self, micro_batches: int, stage_of_chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(forward [m, C], backward [m, C])`` compute multipliers of this step's ops (>= 1 mostly)."""
        base = self.stage_factor[stage_of_chunk][None, :]
        shape = (micro_batches, stage_of_chunk.size)
        cv = self.cfg.jitter_cv
        if cv <= 0:
            f = np.broadcast_to(base, shape)
            return f, f
        sigma2 = np.log1p(cv * cv)
        draws = self.rng.lognormal(-sigma2 / 2, np.sqrt(sigma2), size=(2, *shape, self.sync_gpus)).max(axis=-1)
        return base * draws[0], base * draws[1]


@dataclass(frozen=True)
class RunOutcome:
    """Time to train with failures: ``summary`` keys, ``failures`` rows and a ``progress`` curve."""

    summary: dict[str, float]
    failures: pd.DataFrame
    progress: pd.DataFrame


def simulate_run(*, steps: int, step_s: float, interval: int, block_s: float, commit_s: float, restart_s: float,
                 rate_per_s: float, inject_at_s: tuple[float, ...], rng: np.random.Generator,
                 tokens_per_step: float) -> RunOutcome:
    """Walk the whole run through checkpoints and failures (module doc)."""
    injected = sorted(float(x) for x in inject_at_s if x >= 0)
    poisson = float(rng.exponential(1.0 / rate_per_s)) if rate_per_s > 0 else np.inf

    def pop_failure() -> float:
        """The next failure time (Poisson or injected), consuming it."""
        nonlocal poisson
        if injected and injected[0] <= poisson:
            return injected.pop(0)
        f = poisson
        poisson = f + float(rng.exponential(1.0 / rate_per_s))
        return f

    t, done, resume_t, resume_steps = 0.0, 0, 0.0, 0
    commits: list[tuple[float, float, int]] = []       # (commit time, resume time, steps) per checkpoint
    rows, prog = [], [(0.0, 0)]
    ckpt_s = lost_total = restart_total = wait_total = pending = 0.0
    n_ckpt = 0
    fail = pop_failure() if (injected or np.isfinite(poisson)) else np.inf
    while done < steps:
        k = min(interval, steps - done)              # `done` is always a checkpoint boundary here
        last = done + k >= steps
        wait = 0.0 if last else max(0.0, pending - (t + k * step_s))   # the previous drain still running
        seg = k * step_s + (0.0 if last else wait + block_s)
        if fail >= t + seg:
            t += seg
            done += k
            if not last:
                ckpt_s += wait + block_s
                wait_total += wait
                n_ckpt += 1
                commits.append((t - block_s + commit_s, t, done))
                pending = commits[-1][0]
            prog.append((t, done))
            continue
        # a failure inside this segment, or during the restart before it (fail < t)
        restored = [c for c in commits if c[0] <= fail]
        base_t, base_steps = (restored[-1][1], restored[-1][2]) if restored else (0.0, 0)
        if resume_steps >= base_steps and resume_t > base_t:
            base_t, base_steps = resume_t, resume_steps
        in_work = fail >= t
        reached = done + int((fail - t) // step_s) if in_work else done
        lost = fail - base_t if in_work else 0.0
        lost_total += lost
        restart_total += restart_s
        rows.append({"time_s": fail, "lost_s": lost, "restart_s": restart_s, "step": min(reached, steps),
                     "restored_step": base_steps})
        prog.append((fail, min(reached, steps)))
        t = fail + restart_s
        pending = 0.0                                   # an unfinished drain died with the failure
        done = resume_steps = base_steps
        resume_t = t
        commits = [c for c in commits if c[2] <= base_steps]
        prog.append((t, done))
        fail = pop_failure() if (injected or np.isfinite(poisson)) else np.inf
    useful = steps * step_s
    summary = {
        "time_to_train_s": t, "useful_work_s": useful, "checkpoint_blocking_s": ckpt_s, "lost_work_s": lost_total,
        "restart_total_s": restart_total, "failures": float(len(rows)), "checkpoints": float(n_ckpt),
        "checkpoint_drain_wait_s": wait_total,
        "goodput": useful / t if t > 0 else 1.0,
    }
    p = np.asarray(prog, dtype=np.float64)
    progress = pd.DataFrame({"time_s": p[:, 0], "steps": p[:, 1], "tokens": p[:, 1] * tokens_per_step})
    failures = pd.DataFrame(rows, columns=["time_s", "lost_s", "restart_s", "step", "restored_step"])
    return RunOutcome(summary=summary, failures=failures, progress=progress)
