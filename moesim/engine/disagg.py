"""Disaggregated prefill / decode: the KV-cache handoff between the two pools.

With ``deployment.prefill_replicas = P`` the first P replicas only prefill and the others only
decode. When a prompt's prefill ends on replica p (its first token is out: TTFT is taken there),
``KvHandoff`` picks a decode replica with the scenario's router over the decode pool's outstanding
requests, and in it the attention-DP group with the fewest sequences; then every GPU of the
prefill DP group sends its share of the KV cache (``ctx x kv_bytes_per_token`` bytes, the
per-GPU figure of the memory budget) to the GPU of the same TP rank in the decode group. With the
flow network model the copies are DES flows (``LiveFlows``: they share links max-min fairly with
every other transfer in flight, e.g. other requests' KV and expert migrations); with the closed-form
model they take ``collectives.transfers_s`` of the batch (alone on the network).
When the last byte lands the prefill replica frees the blocks and the decode replica queues the
sequence for its KV blocks. ``kv_transfer_s`` (per request) is the time from the end of prefill
to the landing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import simpy

    from moesim.engine.live_flows import LiveFlows
    from moesim.engine.replica import Replica, Seq
    from moesim.metrics.recorder import RequestLog

__all__ = ["KvHandoff", "group_gpus"]


def group_gpus(replica_gpus: tuple[int, ...], group: int, dp_groups: int) -> np.ndarray:
    """Global GPU indices of attention-DP group ``group`` of a replica (consecutive GPUs)."""
    tp = len(replica_gpus) // dp_groups
    return np.asarray(replica_gpus[group * tp:(group + 1) * tp], np.int64)


class KvHandoff:
    """Moves prefilled sequences to decode replicas (see the module doc)."""

    def __init__(self, env: simpy.Environment, *, decode: list[Replica], replica_gpus: tuple[tuple[int, ...], ...],
                 dp_groups: int, kv_bytes_per_token: float, router: Any, collectives: Any, live: LiveFlows | None,
                 log: RequestLog) -> None:
        self.env, self.decode, self.replica_gpus, self.dp = env, decode, replica_gpus, dp_groups
        self.kv_bytes_per_token, self.router, self.coll, self.live, self.log = (
            kv_bytes_per_token, router, collectives, live, log)
        self.bytes_moved = 0.0
        self.transfers = 0

    def __call__(self, prefill: Replica, seq: Seq, now_s: float) -> None:
        """Start moving ``seq``'s KV cache off ``prefill`` (called by the prefill replica)."""
        target = self.decode[self.router.choose([r.outstanding for r in self.decode])]
        group = min(range(self.dp), key=lambda g: (target.incoming(g), g))
        src = group_gpus(self.replica_gpus[prefill.index], seq.group, self.dp)
        dst = group_gpus(self.replica_gpus[target.index], group, self.dp)
        per_gpu = seq.ctx * self.kv_bytes_per_token
        self.bytes_moved += per_gpu * src.size
        self.transfers += 1
        self.log.decode_replica[seq.rid] = target.index
        self.env.process(self._move(prefill, target, seq, group, src, dst, per_gpu, now_s))

    def _move(self, prefill: Replica, target: Replica, seq: Seq, group: int, src: np.ndarray, dst: np.ndarray,
              per_gpu: float, start_s: float):  # noqa: ANN202 - SimPy process
        if self.live is not None:
            yield self.live.start(src, dst, np.full(src.size, per_gpu), kind="kv")
        else:
            yield self.env.timeout(float(self.coll.transfers_s(src, dst, np.full(src.size, per_gpu))))
        self.log.kv_transfer_s[seq.rid] = self.env.now - start_s
        prefill.release(seq)
        target.accept_kv(seq.rid, seq.ctx, group)
