"""The timing machinery: a ``Timer`` for zero-argument callables, input rotation past the cache, CPU threads.

Timing: on CUDA, CUDA events around ``inner`` back-to-back calls after a warm-up, synchronised
before and after, repeated ``repeats`` times; inputs rotate over enough copies to defeat the L2
cache, as a real forward pass streams its weights. Where capture works the same calls are also
timed as a CUDA graph replay (``graph_median_s``: kernel time without launch overhead). On CPU,
the same loop is timed with the CPU time of the timing thread (``time.thread_time``; torch runs
one intra-op thread, see ``cpu_threads``), not the wall clock: on a shared machine other
processes preempt a 10 ms forward pass far more often than a 0.1 ms kernel, and wall time would
then inflate passes against the kernels they are predicted from (``Settings.cpu_clock="wall"``
restores the wall clock). Each row keeps the median, the relative spread and the repetition count.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from moesim.calibration.fit import summarise_times
from moesim.calibration.plan import Settings
from moesim.core.errors import MissingExtra

__all__ = ["Timer", "cpu_threads", "import_torch"]


def import_torch() -> Any:
    """torch, or a MissingExtra saying how to install it."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingExtra("calibration needs torch: pip install 'moesim[calibrate]'") from e
    return torch


class Timer:
    """Times a zero-argument callable: warm-up, repetitions, median and spread."""

    def __init__(self, torch: Any, settings: Settings) -> None:
        self.torch = torch
        self.s = settings
        self.cuda = settings.device == "cuda"
        self.clock = time.thread_time if not self.cuda and settings.cpu_clock == "thread" else time.perf_counter

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def _inner(self, fn: Callable[[], Any]) -> int:
        trials = []
        for _ in range(3):
            self._sync()
            t0 = self.clock()
            fn()
            self._sync()
            trials.append(self.clock() - t0)
        one = max(min(trials), 1e-7)
        return int(min(max(1, math.ceil(self.s.min_rep_s / one)), self.s.max_inner))

    def _loop_times(self, run: Callable[[], None], inner: int) -> list[float]:
        torch = self.torch
        times = []
        if self.cuda:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.s.repeats)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.s.repeats)]
            torch.cuda.synchronize()
            for a, b in zip(starts, ends):
                a.record()
                run()
                b.record()
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 / inner for a, b in zip(starts, ends)]
        for _ in range(self.s.repeats):
            t0 = self.clock()
            run()
            times.append((self.clock() - t0) / inner)
        return times

    def time(self, fn: Callable[[], Any]) -> dict[str, Any]:
        """``{median_s, spread, min_s, max_s, reps, inner}`` and, on CUDA when capturable, ``graph_*``."""
        for _ in range(self.s.warmup):
            fn()
        inner = self._inner(fn)

        def run() -> None:
            for _ in range(inner):
                fn()
        row = {**summarise_times(self._loop_times(run, inner)), "inner": inner}
        if self.cuda and self.s.graphs:
            g = self._graph(fn, inner)
            if g is not None:
                gs = summarise_times(self._loop_times(g.replay, inner))
                row.update({"graph_median_s": gs["median_s"], "graph_spread": gs["spread"]})
        return row

    def _graph(self, fn: Callable[[], Any], inner: int) -> Any:
        """``inner`` calls of ``fn`` captured as one CUDA graph, or None where capture fails."""
        torch = self.torch
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(inner):
                    fn()
            for _ in range(self.s.warmup):
                graph.replay()
            return graph
        except Exception:  # noqa: BLE001 - ops with host syncs cannot be captured; eager timing stands
            try:
                torch.cuda.synchronize()
            except RuntimeError:
                pass
            return None


def _cache_bytes(torch: Any, device: str) -> int:
    if device == "cuda":
        return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20) or (50 << 20))
    return 32 << 20


def _copies(torch: Any, device: str, input_bytes: float) -> int:
    """How many input copies to rotate over so that one pass over them overflows the cache."""
    return int(min(16, max(1, math.ceil(2 * _cache_bytes(torch, device) / max(input_bytes, 1.0)))))


class _Cycle:
    """Calls ``op(*inputs[i])`` for i cycling over prepared input copies."""

    def __init__(self, op: Callable[..., Any], inputs: list[tuple[Any, ...]]) -> None:
        self.op, self.inputs, self.i = op, inputs, 0

    def __call__(self) -> Any:
        args = self.inputs[self.i]
        self.i = (self.i + 1) % len(self.inputs)
        return self.op(*args)


@contextmanager
def cpu_threads(torch: Any, device: str, threads: int = 1) -> Iterator[None]:
    """On CPU, time with ``threads`` intra-op threads (one by default: a parallel region waits for
    its slowest thread, so on a shared machine more threads mostly add outliers); restored after."""
    if device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

