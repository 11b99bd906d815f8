"""DeepEP-style expert-parallel dispatch and combine as traffic patterns on the network model.

An expert-parallel (EP) group of n GPUs holds ``n_experts`` experts, ``n_experts / n`` per GPU in
order (GPU i holds experts ``i·E/n .. (i+1)·E/n - 1``). Every GPU dispatches its tokens to the GPUs
of their top-k experts and combines the experts' outputs back. Two kernel families (DeepEP,
https://github.com/deepseek-ai/DeepEP):

* **normal** (``mode="normal"``, prefill / training): a token goes to each destination GPU once,
  however many of its experts that GPU holds. Across hosts it goes first over RDMA to the GPU of
  the destination host with the sender's local rank (rail aligned), *once per destination host*,
  then over NVLink to each destination GPU of that host (``hierarchical`` all-to-all, forwarded at
  the destination); combine is the mirror (NVLink to the rail GPU, which reduces a token's partial
  outputs, then RDMA once per host: forwarded at the source). Dispatch carries FP8 activations
  with their per-128 scales and the token's top-k indices and weights; combine carries BF16. The
  kernels run on ``num_sms`` SMs, each copying at a fixed byte rate plus a fixed time per token
  message and per token held: that bounds how fast one GPU sends and receives (the SM-count limit
  of the measured tables; ``kernel_s``).
* **low-latency** (``mode="low_latency"``, decode): one message per (token, expert) selection,
  written straight from the source GPU into the destination GPU (RDMA across hosts, NVLink inside
  one), no forwarding, no de-duplication (``low_latency`` all-to-all). Its fixed cost grows with
  the number of experts (every GPU signals a count to every expert), the SMs copy small per-token
  messages at a fraction of NVLink's rate (``ll_bw_fraction``: a per-GPU injection limit, so it
  binds inside a host and not on a NIC slower than it), and dispatch is sent by one warp per
  top-k slot on ``min(E, SMs)`` SMs (few experts or top-1 leave it warp-limited). Checked across
  hosts against DeepEP's published H800 figures (``benchmarks/deepep_multinode.py``).

Time of one call = the collectives' all-to-all of that pattern with the kernel as its
``Protocol``: ``launch + path latencies + max(network time / bw_fraction, SM time)``, on whatever
``CollectiveCost`` (simple or flow-level) and topology is given, so contention,
oversubscription and skew come from the network model (the SM time counts the busiest GPU's own
messages; forwarding GPUs' extra kernel work across hosts is not added).

``ep_tokens`` counts the three token matrices from actual routing (``topk_idx``);
``expected_ep_tokens`` gives their expectation under uniform top-k routing (what DeepEP's and
aiconfigurator's benchmarks draw). ``DEEPEP_CALIBRATION`` holds the kernel knobs fitted to the
aiconfigurator DeepEP tables (``benchmarks/collectives_vs_measured.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moesim.network.collectives import Protocol, Seconds

__all__ = ["DEEPEP_CALIBRATION", "DeepEP", "DeepEPCalibration", "EpTokens", "combine_token_bytes",
           "deepep_calibration", "dispatch_token_bytes", "ep_tokens", "expected_ep_tokens", "hit_probability"]

MODES = ("normal", "low_latency")


@dataclass(frozen=True)
class DeepEPCalibration:
    """DeepEP kernel knobs of one GPU model (the link efficiency is the collectives' own).

    Attributes:
        gpu: GPU preset name; sm_count: its SMs (bounds the low-latency kernels' SMs).
        normal_dispatch_launch_s / normal_combine_launch_s: fixed cost of a normal kernel, s.
        normal_combine_s_per_hidden_byte: combine's fixed cost per byte of a BF16 token (its
            per-channel buffers scale with the hidden size), s.
        normal_{dispatch,combine}_sm_bytes_per_s: bytes/s one SM of a normal kernel copies.
        normal_{dispatch,combine}_sm_s_per_message: SM time per token message besides its bytes.
        normal_{dispatch,combine}_sm_s_per_token: SM time per token the GPU holds (the kernels
            scan every token for every destination rank, whether it goes there or not).
            A GPU's normal kernel needs ``(max(messages sent, received) x (token bytes /
            bytes_per_s + s_per_message) + tokens held x s_per_token) / num_sms`` seconds.
        ll_dispatch_launch_s / ll_combine_launch_s: fixed cost of a low-latency kernel, s.
        ll_dispatch_s_per_expert / ll_combine_s_per_expert: fixed cost per expert (count
            signals), s.
        ll_bw_fraction: share of the collectives' NVLink rate the low-latency kernels' SMs copy
            (fitted inside one host); it bounds what one GPU sends or receives per second on any
            path, so over RDMA, where the NIC moves the messages, it binds only when it is below
            the NIC's rate.
        ll_warp_bytes_per_s: bytes/s one sending warp of the low-latency dispatch moves.
        source: what the numbers were fitted to.
    """

    gpu: str
    sm_count: int
    normal_dispatch_launch_s: float
    normal_combine_launch_s: float
    normal_combine_s_per_hidden_byte: float
    normal_dispatch_sm_bytes_per_s: float
    normal_combine_sm_bytes_per_s: float
    normal_dispatch_sm_s_per_message: float
    normal_combine_sm_s_per_message: float
    normal_dispatch_sm_s_per_token: float
    normal_combine_sm_s_per_token: float
    ll_dispatch_launch_s: float
    ll_combine_launch_s: float
    ll_dispatch_s_per_expert: float
    ll_combine_s_per_expert: float
    ll_bw_fraction: float
    ll_warp_bytes_per_s: float
    source: str = ""


_AIC = ("aiconfigurator wideep_deepep_{normal,ll}_perf (SGLang 0.5.12, DeepEP intranode, 8 GPUs of one "
        "host, uniform random top-k), fitted on every other row")

_H100 = DeepEPCalibration(
    gpu="h100-sxm", sm_count=132,
    normal_dispatch_launch_s=25.5e-6, normal_combine_launch_s=23.3e-6, normal_combine_s_per_hidden_byte=1.63e-9,
    normal_dispatch_sm_bytes_per_s=22.1e9, normal_combine_sm_bytes_per_s=23.5e9,
    normal_dispatch_sm_s_per_message=55e-9, normal_combine_sm_s_per_message=0.0,
    normal_dispatch_sm_s_per_token=392e-9, normal_combine_sm_s_per_token=896e-9,
    ll_dispatch_launch_s=7.71e-6, ll_combine_launch_s=9.83e-6,
    ll_dispatch_s_per_expert=14.7e-9, ll_combine_s_per_expert=5.40e-9,
    ll_bw_fraction=0.809, ll_warp_bytes_per_s=1.99e9, source=_AIC + " (h100_sxm)")
_B200 = DeepEPCalibration(
    gpu="b200", sm_count=148,
    normal_dispatch_launch_s=33.6e-6, normal_combine_launch_s=29.5e-6, normal_combine_s_per_hidden_byte=1.76e-9,
    normal_dispatch_sm_bytes_per_s=23.2e9, normal_combine_sm_bytes_per_s=24.4e9,
    normal_dispatch_sm_s_per_message=88e-9, normal_combine_sm_s_per_message=0.0,
    normal_dispatch_sm_s_per_token=419e-9, normal_combine_sm_s_per_token=973e-9,
    ll_dispatch_launch_s=12.4e-6, ll_combine_launch_s=14.5e-6,
    ll_dispatch_s_per_expert=27.8e-9, ll_combine_s_per_expert=12.2e-9,
    ll_bw_fraction=1.0, ll_warp_bytes_per_s=1.75e9, source=_AIC + " (b200_sxm)")

DEEPEP_CALIBRATION: dict[str, DeepEPCalibration] = {
    "h100-sxm": _H100,
    "h200": replace(_H100, gpu="h200", source="h100-sxm values (same GH100 SMs, NVLink 4); validated on h200_sxm"),
    "h800": replace(_H100, gpu="h800", source="h100-sxm values (same GH100 SMs)"),
    "b200": _B200,
}
"""Fitted DeepEP kernel knobs per GPU preset (the benchmark's ``--fit`` prints them), used with the
collectives' ``NCCL_CALIBRATION`` efficiency: H100 normal kernels cost ~24 us fixed (+1.6 ns per
combined token byte); an SM copies ~22 GB/s and spends 55 ns per dispatched token message and
0.4 (dispatch) / 0.9 (combine) us per token held; LL kernels 8-10 us + 5-15 ns per expert, at 81 %
of NCCL's NVLink rate, dispatch sent at 2 GB/s per warp. B200's SM-side values are within 10-60 %
of H100's."""


def deepep_calibration(gpu: str) -> DeepEPCalibration:
    """The ``DeepEPCalibration`` of GPU preset ``gpu``; ValueError naming the known ones."""
    try:
        return DEEPEP_CALIBRATION[gpu]
    except KeyError:
        raise ValueError(f"no DeepEP calibration for GPU {gpu!r}; known: {sorted(DEEPEP_CALIBRATION)}") from None


# --------------------------------------------------------------------------- token matrices
@dataclass(frozen=True)
class EpTokens:
    """Token counts of one dispatch over an EP group of n GPUs on ``M`` hosts (combine moves the
    same tokens back).

    Attributes:
        pair: ``[..., n, n]`` tokens GPU i sends to GPU j, each token once per destination GPU.
        node: ``[..., n, M]`` tokens GPU i sends to host m, each token once per host (the
            group's distinct hosts in increasing order).
        copies: ``[..., n, n]`` (token, expert) selections of GPU i's tokens on GPU j's experts.
        held: ``[..., n]`` tokens each GPU dispatches (and gets back combined).
    """

    pair: np.ndarray
    node: np.ndarray
    copies: np.ndarray
    held: np.ndarray


def hit_probability(n_experts: int, top_k: int, held: ArrayLike) -> np.ndarray:
    """Probability that a uniform random top-k subset of ``n_experts`` experts contains at least
    one of ``held`` given experts (any shape): ``1 - C(E - h, k) / C(E, k)``."""
    h = np.asarray(held, dtype=np.float64)
    miss = np.ones_like(h)
    for t in range(top_k):
        miss = miss * np.clip((n_experts - h - t) / (n_experts - t), 0.0, None)
    return 1.0 - miss


def _hosts(n: int, node_of: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    nd = np.zeros(n, np.int64) if node_of is None else np.asarray(node_of, np.int64)
    if nd.shape != (n,):
        raise ValueError(f"node_of must give the host of each of the {n} GPUs, got shape {nd.shape}")
    hosts, m_of = np.unique(nd, return_inverse=True)
    return hosts, m_of


def expected_ep_tokens(tokens_per_gpu: ArrayLike, n_gpus: int, top_k: int, n_experts: int,
                       node_of: ArrayLike | None = None) -> EpTokens:
    """Expected ``EpTokens`` when every GPU holds ``tokens_per_gpu`` tokens (scalar, ``[n]`` or
    ``[..., n]``) routed to uniform random distinct top-k experts; ``node_of``: host of each group
    member (default: one host)."""
    if n_experts % n_gpus or not 1 <= top_k <= n_experts:
        raise ValueError(f"need n_experts ({n_experts}) a multiple of n_gpus ({n_gpus}) and 1 <= top_k <= n_experts")
    t = np.asarray(tokens_per_gpu, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(n_gpus, float(t))
    elif t.shape[-1] != n_gpus:
        raise ValueError(f"tokens_per_gpu must be a scalar or [..., {n_gpus}], got shape {t.shape}")
    per_gpu = n_experts // n_gpus
    _, m_of = _hosts(n_gpus, node_of)
    per_host = np.bincount(m_of) * per_gpu
    p_gpu = float(hit_probability(n_experts, top_k, per_gpu))
    p_host = hit_probability(n_experts, top_k, per_host)
    pair = t[..., :, None] * np.full(n_gpus, p_gpu)
    node = t[..., :, None] * p_host
    copies = t[..., :, None] * np.full(n_gpus, top_k * per_gpu / n_experts)
    return EpTokens(pair, node, copies, t)


def ep_tokens(topk_idx: ArrayLike, src: ArrayLike, n_gpus: int, n_experts: int,
              node_of: ArrayLike | None = None) -> EpTokens:
    """``EpTokens`` of actual routing: token t of GPU ``src[t]`` (group position) selects experts
    ``topk_idx[t, :]`` (-1: none)."""
    idx = np.asarray(topk_idx, np.int64)
    s = np.asarray(src, np.int64)
    if idx.ndim != 2 or s.shape != (idx.shape[0],):
        raise ValueError("topk_idx must be [tokens, k] and src [tokens]")
    if n_experts % n_gpus or idx.max(initial=-1) >= n_experts or np.any((s < 0) | (s >= n_gpus)):
        raise ValueError("expert ids must be < n_experts (a multiple of n_gpus), src in [0, n_gpus)")
    _, m_of = _hosts(n_gpus, node_of)
    valid = idx >= 0
    dest = np.where(valid, idx // (n_experts // n_gpus), 0)
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    hit = np.zeros((idx.shape[0], n_gpus), bool)
    hit[rows[valid.ravel()], dest[valid]] = True
    host_hit = np.zeros((idx.shape[0], int(m_of.max()) + 1), bool)
    host_hit[rows[valid.ravel()], m_of[dest[valid]]] = True
    onehot = np.zeros((idx.shape[0], n_gpus))
    onehot[np.arange(idx.shape[0]), s] = 1.0
    copies = np.zeros((n_gpus, n_gpus))
    np.add.at(copies, (np.repeat(s, idx.shape[1])[valid.ravel()], dest[valid]), 1.0)
    return EpTokens(onehot.T @ hit, onehot.T @ host_hit, copies, np.bincount(s, minlength=n_gpus).astype(np.float64))


def dispatch_token_bytes(hidden: int, top_k: int, *, mode: str = "normal", fp8: bool = True) -> float:
    """Bytes of one dispatched token message: FP8 activations + float32 scale per 128 values
    (or BF16), plus the top-k indices and weights (normal: 12 B per slot) or DeepEP LL's 16 B
    header."""
    payload = hidden + hidden / 128 * 4 if fp8 else 2.0 * hidden
    return payload + (16.0 if mode == "low_latency" else 12.0 * top_k)


def combine_token_bytes(hidden: int) -> float:
    """Bytes of one combined token message (BF16)."""
    return 2.0 * hidden


# --------------------------------------------------------------------------- kernels
def _host_link_rate(collectives: Any, gpu: int) -> float:
    """Bytes/s the collectives move between ``gpu`` and another GPU of its host (NVLink; any other
    GPU when it is alone on its host): the slope of their point-to-point time, so the topology's
    link and the collectives' efficiency both count."""
    node = np.asarray(collectives.topology.node_of)
    peers = np.flatnonzero(node == node[gpu])
    other = int(peers[peers != gpu][0]) if peers.size > 1 else (gpu + 1) % node.size
    big = 2.0**30
    return big / float(collectives.p2p_s(gpu, other, 2 * big) - collectives.p2p_s(gpu, other, big))


class DeepEP:
    """DeepEP dispatch / combine times of an EP ``group`` on a ``CollectiveCost`` that supports
    ``all_to_all_s(..., algorithm=, node_bytes=, forward_at=, protocol=)`` (``SimpleCollectives``
    or ``FlowCollectives``).

    Args:
        collectives: the network model (its link efficiency applies).
        group: global GPU indices of the EP group (group positions index the token matrices).
        calibration: a ``DeepEPCalibration`` or a GPU preset name (default: the topology's GPU).
    """

    def __init__(self, collectives: Any, group: tuple[int, ...],
                 calibration: DeepEPCalibration | str | None = None) -> None:
        self.collectives = collectives
        self.group = tuple(int(g) for g in group)
        if calibration is None:
            calibration = collectives.topology.gpu
        self.calibration = deepep_calibration(calibration) if isinstance(calibration, str) else calibration
        self.node_of = np.asarray(collectives.topology.node_of)[list(self.group)]
        self.nvlink_bytes_per_s = _host_link_rate(collectives, self.group[0])
        """A GPU's NVLink port rate per direction as the collectives achieve it (bytes/s)."""

    def expected_tokens(self, tokens_per_gpu: ArrayLike, top_k: int, n_experts: int) -> EpTokens:
        """``expected_ep_tokens`` on this group's hosts."""
        return expected_ep_tokens(tokens_per_gpu, len(self.group), top_k, n_experts, self.node_of)

    def protocol(self, kind: str, mode: str, *, hidden: int, top_k: int, n_experts: int) -> Protocol:
        """The kernel as a ``Protocol`` (launch cost, bandwidth share, low-latency warp limit)."""
        c = self.calibration
        if mode == "normal":
            launch = (c.normal_dispatch_launch_s if kind == "dispatch"
                      else c.normal_combine_launch_s + c.normal_combine_s_per_hidden_byte * combine_token_bytes(hidden))
            return Protocol(f"deepep-normal-{kind}", a2a_launch_s=launch)  # SM limit: ``kernel_s``
        if mode != "low_latency":
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        copy = c.ll_bw_fraction * self.nvlink_bytes_per_s  # the SMs' copy rate (see ``ll_bw_fraction``)
        if kind == "dispatch":
            groups = -(-n_experts // c.sm_count)  # warp groups per SM: one per expert
            sms = -(-n_experts // groups)
            warps = sms * min(top_k, 32 // groups)  # one sending warp per top-k slot
            return Protocol("deepep-ll-dispatch",
                            a2a_launch_s=c.ll_dispatch_launch_s + n_experts * c.ll_dispatch_s_per_expert,
                            injection_bytes_per_s=min(copy, warps * c.ll_warp_bytes_per_s))
        return Protocol("deepep-ll-combine", a2a_launch_s=c.ll_combine_launch_s + n_experts * c.ll_combine_s_per_expert,
                        injection_bytes_per_s=copy)

    def kernel_s(self, kind: str, tokens: EpTokens, token_bytes: float, num_sms: int) -> np.ndarray:
        """``[...]`` seconds the busiest GPU's ``num_sms`` SMs need for a normal ``kind`` kernel
        (see ``DeepEPCalibration``)."""
        if not num_sms > 0:
            raise ValueError(f"num_sms must be > 0, got {num_sms}")
        c = self.calibration
        rate, per_msg, per_tok = ((c.normal_dispatch_sm_bytes_per_s, c.normal_dispatch_sm_s_per_message,
                                   c.normal_dispatch_sm_s_per_token) if kind == "dispatch" else
                                  (c.normal_combine_sm_bytes_per_s, c.normal_combine_sm_s_per_message,
                                   c.normal_combine_sm_s_per_token))
        off = tokens.pair * (1.0 - np.eye(tokens.pair.shape[-1]))
        msgs = np.maximum(off.sum(axis=-1), off.sum(axis=-2))
        return (msgs * (token_bytes / rate + per_msg) + tokens.held * per_tok).max(axis=-1) / num_sms

    def dispatch_s(self, tokens: EpTokens, *, hidden: int, top_k: int, n_experts: int, mode: str = "normal",
                   num_sms: int = 24, fp8: bool = True) -> Seconds:
        """Seconds of one dispatch of ``tokens`` (leading dims kept)."""
        b = dispatch_token_bytes(hidden, top_k, mode=mode, fp8=fp8)
        p = self.protocol("dispatch", mode, hidden=hidden, top_k=top_k, n_experts=n_experts)
        if mode == "normal":
            return self.collectives.all_to_all_s(self.group, tokens.pair * b, "hierarchical",
                                                 node_bytes=tokens.node * b, protocol=p,
                                                 kernel_s=self.kernel_s("dispatch", tokens, b, num_sms))
        return self.collectives.all_to_all_s(self.group, tokens.copies * b, "low_latency", protocol=p)

    def combine_s(self, tokens: EpTokens, *, hidden: int, top_k: int, n_experts: int, mode: str = "normal",
                  num_sms: int = 24) -> Seconds:
        """Seconds of one combine sending ``tokens``' outputs back (BF16; leading dims kept)."""
        b = combine_token_bytes(hidden)
        p = self.protocol("combine", mode, hidden=hidden, top_k=top_k, n_experts=n_experts)
        if mode == "normal":
            return self.collectives.all_to_all_s(self.group, np.swapaxes(tokens.pair, -1, -2) * b, "hierarchical",
                                                 node_bytes=tokens.node * b, forward_at="source", protocol=p,
                                                 kernel_s=self.kernel_s("combine", tokens, b, num_sms))
        return self.collectives.all_to_all_s(self.group, np.swapaxes(tokens.copies, -1, -2) * b, "low_latency",
                                             protocol=p)
