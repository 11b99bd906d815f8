"""Recorded expert routing: the moesim routing-trace format, its reader and writer, and the ESFT converter.

A routing trace says, for a run of forward passes ("steps"), how many (token, slot) pairs every
expert of every MoE layer received, and optionally which experts each token picked.

Format, version 1: one NumPy ``.npz`` file (``numpy.savez_compressed``; no pickles) holding

========================  ====================  ===========================================================
array                     dtype, shape          meaning
========================  ====================  ===========================================================
``counts``                int, ``[S, L, E]``    (token, slot) pairs per step, MoE layer and routed expert
``step_tokens``           int, ``[S]``          tokens in each step (> 0)
``token_experts``         int, ``[N, L, k]``    optional: the ``k`` distinct expert ids of every token at
                                                every layer, tokens in step order (``N = sum(step_tokens)``,
                                                step ``s`` owns the next ``step_tokens[s]`` tokens)
``meta``                  str, ``[]``           JSON object, below
========================  ====================  ===========================================================

``meta`` keys: ``format`` (``"moesim-routing-trace"``) and ``version`` (``1``) and ``top_k``
(``k``) are required; ``model``, ``source`` (where the data came from), ``tokens_per_step``
(nominal; ``null`` when steps differ), ``layer_ids`` (the model's layer number of each of the
``L`` MoE layers), ``segments`` (consecutive runs of steps from one data set:
``[{"name", "steps", "tokens"}]``) and ``description`` are optional; other keys are kept.

Invariants checked on read (and on construction): ``counts[s, l].sum() == step_tokens[s] * k``,
``0 <= counts <= step_tokens[s]`` (a token picks ``k`` *distinct* experts), and, with
``token_experts``, ids in ``[0, E)``, distinct per (token, layer), and ``counts`` equal to their
per-step histogram. A violation raises ``TraceFormatError`` naming the file and the array.

``read_esft_routing`` converts the expert-routing logs of DeepSeek's ESFT repository (per-token
top-6 routing of a DeepSeek-V2-Lite-architecture model: 26 MoE layers x 64 experts) into a
``RoutingTrace``, cutting each task's token stream into steps of ``tokens_per_step`` tokens.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moesim.core.errors import TraceFormatError

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "RoutingTrace", "read_esft_routing", "read_routing_trace",
    "write_routing_trace",
]

FORMAT_NAME = "moesim-routing-trace"
FORMAT_VERSION = 1
_ESFT_FILE = re.compile(r"^expert_weights_(\d+)\.txt$")
_ESFT_TASKS = ("intent", "law", "summary", "translation")
_IN_MEMORY = "<in-memory routing trace>"


class RoutingTrace:
    """Recorded routing: per-step counts ``[S, L, E]`` and, optionally, per-token expert ids.

    Args:
        counts: ``int[S, L, E]`` (token, slot) pairs per step, layer and expert.
        step_tokens: ``int[S]`` tokens per step.
        top_k: experts per token ``k``.
        token_experts: optional ``int[N, L, k]`` expert ids per token (``N = sum(step_tokens)``).
        meta: free-form metadata (module doc); ``format``, ``version`` and ``top_k`` are set here.

    Raises:
        TraceFormatError: an invariant of the module doc does not hold.
    """

    def __init__(self, *, counts: np.ndarray, step_tokens: np.ndarray, top_k: int,
                 token_experts: np.ndarray | None = None, meta: Mapping[str, Any] | None = None,
                 source: str = _IN_MEMORY) -> None:
        self.counts = _as_int(counts, "counts", source, ndim=3)
        """``int64[S, L, E]`` (token, slot) pairs per step, MoE layer and routed expert."""
        self.step_tokens = _as_int(step_tokens, "step_tokens", source, ndim=1)
        """``int64[S]`` tokens per step."""
        self.top_k = int(top_k)
        self.token_experts = None if token_experts is None else _as_int(token_experts, "token_experts", source,
                                                                         ndim=3, dtype=_id_dtype(self.counts.shape[2]))
        """``int[N, L, k]`` expert ids per token, or None for a counts-only trace."""
        _check(self, source)
        self.meta: dict[str, Any] = {**dict(meta or {}), "format": FORMAT_NAME, "version": FORMAT_VERSION,
                                     "top_k": self.top_k}
        for arr in (self.counts, self.step_tokens, self.token_experts):
            if arr is not None:
                arr.setflags(write=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_token_experts(cls, token_experts: np.ndarray, *, n_experts: int, tokens_per_step: int,
                           segments: Sequence[tuple[str, int]] | None = None, drop_partial: bool = True,
                           meta: Mapping[str, Any] | None = None) -> RoutingTrace:
        """Aggregate per-token routing ``int[N, L, k]`` into steps of ``tokens_per_step`` tokens.

        Steps never straddle two ``segments`` (``(name, tokens)`` runs covering the ``N`` tokens in
        order; default one segment). With ``drop_partial`` the last, short step of each segment is
        dropped with its tokens; otherwise it is kept as a shorter step.
        """
        ids = np.asarray(token_experts)
        if ids.ndim != 3:
            raise TraceFormatError(f"{_IN_MEMORY}: token_experts: need [tokens, layers, k], got shape {ids.shape}")
        if tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be >= 1, got {tokens_per_step}")
        segs = list(segments) if segments is not None else [("all", ids.shape[0])]
        if sum(n for _, n in segs) != ids.shape[0]:
            raise ValueError(f"segments cover {sum(n for _, n in segs)} tokens, token_experts has {ids.shape[0]}")
        keep: list[np.ndarray] = []
        steps: list[int] = []
        seg_meta: list[dict[str, Any]] = []
        start = 0
        for name, n in segs:
            full, rest = divmod(int(n), tokens_per_step)
            sizes = [tokens_per_step] * full + ([rest] if rest and not drop_partial else [])
            used = sum(sizes)
            keep.append(ids[start:start + used])
            steps.extend(sizes)
            seg_meta.append({"name": name, "steps": len(sizes), "tokens": used})
            start += int(n)
        kept = np.concatenate(keep) if keep else ids[:0]
        step_tokens = np.asarray(steps, dtype=np.int64)
        counts = _histogram(kept, step_tokens, n_experts)
        info = {**dict(meta or {}), "tokens_per_step": int(tokens_per_step) if len(set(steps)) <= 1 else None,
                "segments": seg_meta}
        return cls(counts=counts, step_tokens=step_tokens, top_k=ids.shape[2], token_experts=kept, meta=info)

    def rebin(self, tokens_per_step: int, *, drop_partial: bool = True) -> RoutingTrace:
        """The same tokens in steps of ``tokens_per_step`` (needs ``token_experts``; keeps segments)."""
        ids = self._need_tokens("rebin")
        segs = self.meta.get("segments") or [{"name": "all", "tokens": ids.shape[0]}]
        meta = {k: v for k, v in self.meta.items() if k not in ("segments", "tokens_per_step")}
        return RoutingTrace.from_token_experts(ids, n_experts=self.n_experts, tokens_per_step=tokens_per_step,
                                               segments=[(s["name"], int(s["tokens"])) for s in segs],
                                               drop_partial=drop_partial, meta=meta)

    def slice_steps(self, start: int, stop: int) -> RoutingTrace:
        """Steps ``start..stop-1`` (``0 <= start < stop <= S``, with their tokens) as a new trace;
        segment metadata is dropped."""
        if not 0 <= start < stop <= self.n_steps:
            raise ValueError(f"need 0 <= start < stop <= {self.n_steps}, got {start}..{stop}")
        step_tokens = self.step_tokens[start:stop]
        ids = None
        if self.token_experts is not None:
            first = int(self.step_tokens[:start].sum())
            ids = self.token_experts[first:first + int(step_tokens.sum())]
        meta = {k: v for k, v in self.meta.items() if k != "segments"}
        return RoutingTrace(counts=self.counts[start:stop], step_tokens=step_tokens, top_k=self.top_k,
                            token_experts=ids, meta=meta)

    # ------------------------------------------------------------------ shape
    @property
    def n_steps(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.counts.shape[1])

    @property
    def n_experts(self) -> int:
        return int(self.counts.shape[2])

    @property
    def n_tokens(self) -> int:
        return int(self.step_tokens.sum())

    @property
    def tokens_per_step(self) -> int | None:
        """The common step size, or None when steps differ."""
        sizes = np.unique(self.step_tokens)
        return int(sizes[0]) if sizes.size == 1 else None

    def __repr__(self) -> str:
        tok = "with" if self.token_experts is not None else "without"
        return (f"RoutingTrace(steps={self.n_steps}, layers={self.n_layers}, experts={self.n_experts}, "
                f"top_k={self.top_k}, tokens={self.n_tokens}, {tok} token ids, model={self.meta.get('model')!r})")

    # ------------------------------------------------------------------ statistics
    @property
    def popularity(self) -> np.ndarray:
        """``float64[L, E]`` share of all (token, slot) pairs that went to each expert (rows sum to 1)."""
        return self.counts.sum(axis=0) / float(self.n_tokens * self.top_k)

    @property
    def step_shares(self) -> np.ndarray:
        """``float64[S, L, E]`` per-step slot shares (each ``[s, l]`` row sums to 1)."""
        return self.counts / (self.step_tokens[:, None, None] * float(self.top_k))

    def imbalance(self) -> np.ndarray:
        """``float64[S, L]`` max over experts / mean over experts of each step's counts."""
        mean = self.step_tokens[:, None] * self.top_k / self.n_experts
        return self.counts.max(axis=2) / mean

    def transitions(self, layer: int) -> np.ndarray:
        """``int64[E, E]`` token transitions from MoE layer ``layer`` to ``layer + 1``.

        Entry ``[a, b]`` counts the tokens that picked expert ``a`` at ``layer`` *and* expert ``b``
        at ``layer + 1`` (every token adds ``k * k`` pairs), so row ``a`` sums to ``k * c[a]`` and
        column ``b`` to ``k * c'[b]`` with ``c``, ``c'`` the two layers' total counts.
        """
        ids = self._need_tokens("transitions")
        if not 0 <= layer < self.n_layers - 1:
            raise IndexError(f"layer {layer}: transitions exist for layers 0..{self.n_layers - 2}")
        e = self.n_experts
        src = ids[:, layer, :].astype(np.int64)
        dst = ids[:, layer + 1, :].astype(np.int64)
        pair = (src[:, :, None] * e + dst[:, None, :]).ravel()
        return np.bincount(pair, minlength=e * e).reshape(e, e)

    def transition_matrix(self, layer: int) -> np.ndarray:
        """``float64[E, E]`` slot-level transition probabilities ``P(next expert b | expert a)``.

        ``transitions(layer)`` with each row divided by its sum (``k * c[a]``); a row of an expert
        no token picked is the next layer's popularity.
        """
        x = self.transitions(layer).astype(np.float64)
        rows = x.sum(axis=1, keepdims=True)
        fallback = np.broadcast_to(self.popularity[layer + 1], x.shape)
        return np.where(rows > 0, x / np.maximum(rows, 1.0), fallback)

    def _need_tokens(self, what: str) -> np.ndarray:
        if self.token_experts is None:
            raise ValueError(f"{what} needs per-token expert ids; this trace has counts only")
        return self.token_experts


# ---------------------------------------------------------------------- file I/O
def write_routing_trace(trace: RoutingTrace, path: str | Path) -> Path:
    """Write ``trace`` as a compressed moesim routing trace (``.npz``); returns the path written."""
    out = Path(path)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    arrays: dict[str, np.ndarray] = {
        "counts": trace.counts.astype(np.int32 if trace.step_tokens.max() < 2**31 else np.int64),
        "step_tokens": trace.step_tokens,
        "meta": np.array(json.dumps(trace.meta, sort_keys=True)),
    }
    if trace.token_experts is not None:
        arrays["token_experts"] = trace.token_experts
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
    return out


def read_routing_trace(path: str | Path) -> RoutingTrace:
    """Read a moesim routing trace (``.npz``, module doc).

    Raises:
        TraceFormatError: the file is missing, not an ``.npz``, lacks an array, or breaks an
            invariant; the message names the file and the array at fault.
    """
    src = Path(path)
    if not src.is_file():
        raise TraceFormatError(f"{src}: no such routing trace file")
    try:
        with np.load(src, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise TraceFormatError(f"{src}: not a moesim routing trace (.npz written by write_routing_trace): {e}") from e
    for name in ("counts", "step_tokens", "meta"):
        if name not in arrays:
            raise TraceFormatError(f"{src}: missing array {name!r} (has {sorted(arrays)})")
    meta = _read_meta(arrays["meta"], src)
    return RoutingTrace(counts=arrays["counts"], step_tokens=arrays["step_tokens"], top_k=meta["top_k"],
                        token_experts=arrays.get("token_experts"), meta=meta, source=str(src))


def _read_meta(raw: np.ndarray, src: Path) -> dict[str, Any]:
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise TraceFormatError(f"{src}: meta: need a JSON string, got {raw.dtype} array of shape {raw.shape}")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise TraceFormatError(f"{src}: meta: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise TraceFormatError(f"{src}: meta: need a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT_NAME:
        raise TraceFormatError(f"{src}: meta.format: expected {FORMAT_NAME!r}, got {meta.get('format')!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise TraceFormatError(f"{src}: meta.version: this moesim reads version {FORMAT_VERSION}, "
                               f"got {meta.get('version')!r}")
    if not isinstance(meta.get("top_k"), int) or isinstance(meta.get("top_k"), bool):
        raise TraceFormatError(f"{src}: meta.top_k: need an integer, got {meta.get('top_k')!r}")
    return meta


# ---------------------------------------------------------------------- checks
def _id_dtype(n_experts: int) -> type[np.integer[Any]]:
    return np.int16 if n_experts <= np.iinfo(np.int16).max else np.int32


def _as_int(arr: object, name: str, source: str, *, ndim: int, dtype: type[np.integer[Any]] = np.int64) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind not in "iu":
        raise TraceFormatError(f"{source}: {name}: need integers, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise TraceFormatError(f"{source}: {name}: need {ndim} dimensions, got shape {a.shape}")
    if a.size and a.min() < 0:
        raise TraceFormatError(f"{source}: {name}: negative entries (min {a.min()})")
    return a.astype(dtype, copy=True)


def _check(t: RoutingTrace, source: str) -> None:
    """Raise ``TraceFormatError`` unless the module doc's invariants hold."""
    s, n_layers, e = t.counts.shape
    if min(s, n_layers, e) < 1:
        raise TraceFormatError(f"{source}: counts: need at least one step, layer and expert, "
                               f"got shape {t.counts.shape}")
    if t.step_tokens.shape != (s,):
        raise TraceFormatError(f"{source}: step_tokens: need shape ({s},) to match counts, got {t.step_tokens.shape}")
    if t.step_tokens.min() < 1:
        raise TraceFormatError(f"{source}: step_tokens: every step needs >= 1 token (step "
                               f"{int(np.argmin(t.step_tokens))} has {t.step_tokens.min()})")
    if not 1 <= t.top_k <= e:
        raise TraceFormatError(f"{source}: meta.top_k: {t.top_k} must be in [1, n_experts={e}]")
    sums = t.counts.sum(axis=2)
    bad = np.argwhere(sums != t.step_tokens[:, None] * t.top_k)
    if bad.size:
        i, j = bad[0]
        raise TraceFormatError(f"{source}: counts: step {i} layer {j} sums to {sums[i, j]}, expected "
                               f"step_tokens * top_k = {t.step_tokens[i] * t.top_k} ({len(bad)} such rows)")
    over = np.argwhere(t.counts > t.step_tokens[:, None, None])
    if over.size:
        i, j, x = over[0]
        raise TraceFormatError(f"{source}: counts: step {i} layer {j} expert {x} has {t.counts[i, j, x]} > "
                               f"{t.step_tokens[i]} tokens (a token picks an expert at most once)")
    if t.token_experts is not None:
        _check_tokens(t, source)


def _check_tokens(t: RoutingTrace, source: str) -> None:
    ids = t.token_experts
    assert ids is not None
    want = (t.n_tokens, t.n_layers, t.top_k)
    if ids.shape != want:
        raise TraceFormatError(f"{source}: token_experts: need shape [sum(step_tokens), L, top_k] = {want}, "
                               f"got {ids.shape}")
    if ids.max() >= t.n_experts:
        raise TraceFormatError(f"{source}: token_experts: expert id {ids.max()} >= n_experts={t.n_experts}")
    srt = np.sort(ids, axis=2)
    dup = np.argwhere((srt[:, :, 1:] == srt[:, :, :-1]).any(axis=2))
    if dup.size:
        i, j = dup[0]
        raise TraceFormatError(f"{source}: token_experts: token {i} layer {j} repeats an expert "
                               f"({ids[i, j].tolist()}); a token's k experts must be distinct")
    hist = _histogram(ids, t.step_tokens, t.n_experts)
    if not np.array_equal(hist, t.counts):
        i = int(np.argwhere((hist != t.counts).any(axis=(1, 2)))[0, 0])
        raise TraceFormatError(f"{source}: counts: step {i} differs from the histogram of its token_experts")


def _histogram(ids: np.ndarray, step_tokens: np.ndarray, n_experts: int) -> np.ndarray:
    """``int64[S, L, E]`` per-step counts of per-token ids ``[N, L, k]``."""
    n, n_layers, _ = ids.shape
    step_of = np.repeat(np.arange(step_tokens.size), step_tokens)
    if step_of.size != n:
        raise TraceFormatError(f"{_IN_MEMORY}: token_experts: {n} tokens but steps hold {step_of.size}")
    cell = (step_of[:, None, None] * n_layers + np.arange(n_layers)[None, :, None]) * n_experts + ids
    out = np.bincount(cell.ravel().astype(np.int64), minlength=step_tokens.size * n_layers * n_experts)
    return out.reshape(step_tokens.size, n_layers, n_experts)


# ---------------------------------------------------------------------- ESFT logs
def read_esft_routing(path: str | Path, *, tasks: Iterable[str] | None = None, tokens_per_step: int = 1024,
                      max_tokens_per_task: int | None = None, drop_partial: bool = True,
                      n_experts: int = 64, top_k: int = 6) -> RoutingTrace:
    """Read ESFT expert-routing logs (``results/expert_scores/<task>/expert_weights_<layer>.txt``).

    Each line of ``expert_weights_<layer>.txt`` is one input sequence: the ``top_k`` expert ids
    of every token, flattened and tab-separated, then a double tab, then the matching gate
    weights (not kept). Line ``i`` of every layer's file is the same sequence, with the same
    tokens in the same order, so a token's ids line up across layers.

    Args:
        path: a task folder (holding ``expert_weights_*.txt``) or a folder of task folders.
        tasks: task folders to read, in this order (default: the four ESFT tasks that exist, or
            every sub-folder with logs).
        tokens_per_step: tokens per step; steps never mix two tasks (each task is a segment).
        max_tokens_per_task: keep only the first N tokens of each task (tests, quick looks).
        drop_partial: drop each task's last, short step (and its tokens).
        n_experts, top_k: the model's routed experts and experts per token (DeepSeek-V2-Lite: 64, 6).

    Raises:
        TraceFormatError: a missing file, a malformed line, or logs that disagree between layers;
            the message names the file and 1-based line.
    """
    root = Path(path)
    if not root.is_dir():
        raise TraceFormatError(f"{root}: no such ESFT routing folder")
    task_dirs = _esft_task_dirs(root, tasks)
    per_task: list[np.ndarray] = []
    layer_ids: list[int] | None = None
    for task_dir in task_dirs:
        layers = _esft_layer_files(task_dir)
        if layer_ids is None:
            layer_ids = sorted(layers)
        elif sorted(layers) != layer_ids:
            raise TraceFormatError(f"{task_dir}: has layers {sorted(layers)}, other tasks have {layer_ids}")
        cols = [_read_esft_layer(layers[n], n_experts, top_k, max_tokens_per_task) for n in layer_ids]
        lengths = [c[1] for c in cols]
        if any(ln != lengths[0] for ln in lengths):
            bad = next(n for n, ln in zip(layer_ids, lengths) if ln != lengths[0])
            raise TraceFormatError(f"{layers[bad]}: tokens per line differ from those of layer {layer_ids[0]} "
                                   f"({layers[layer_ids[0]].name}); every layer's file must log the same sequences")
        per_task.append(np.stack([c[0] for c in cols], axis=1))  # [N, L, k]
    assert layer_ids is not None
    ids = np.concatenate(per_task)
    meta = {
        "model": "deepseek-ai/ESFT-vanilla-lite (DeepSeek-V2-Lite architecture)",
        "source": f"github deepseek-ai/ESFT results/expert_scores ({root})",
        "layer_ids": layer_ids,
        "description": "real per-token top-6 routing over ESFT task training data; gate weights dropped",
    }
    return RoutingTrace.from_token_experts(ids, n_experts=n_experts, tokens_per_step=tokens_per_step,
                                           segments=[(d.name, a.shape[0]) for d, a in zip(task_dirs, per_task)],
                                           drop_partial=drop_partial, meta=meta)


def _esft_task_dirs(root: Path, tasks: Iterable[str] | None) -> list[Path]:
    if tasks is not None:
        dirs = [root / t for t in tasks]
        missing = [str(d) for d in dirs if not d.is_dir()]
        if missing:
            raise TraceFormatError(f"{root}: task folder(s) not found: {', '.join(missing)}")
        return dirs
    if any(_ESFT_FILE.match(p.name) for p in root.iterdir()):
        return [root]
    named = [root / t for t in _ESFT_TASKS if (root / t).is_dir()]
    others = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in _ESFT_TASKS
                    and any(_ESFT_FILE.match(q.name) for q in p.iterdir()))
    if not named and not others:
        raise TraceFormatError(f"{root}: no expert_weights_<layer>.txt files here or in its sub-folders")
    return named + others


def _esft_layer_files(task_dir: Path) -> dict[int, Path]:
    files = {int(m.group(1)): p for p in task_dir.iterdir() if (m := _ESFT_FILE.match(p.name))}
    if not files:
        raise TraceFormatError(f"{task_dir}: no expert_weights_<layer>.txt files")
    return files


def _read_esft_layer(path: Path, n_experts: int, top_k: int, max_tokens: int | None) -> tuple[np.ndarray, list[int]]:
    """``(int16[N, k] ids, tokens per line)`` of one layer's file (at most ``max_tokens`` tokens)."""
    rows: list[np.ndarray] = []
    lengths: list[int] = []
    total = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            ids_text, sep, weights_text = line.partition("\t\t")
            if not sep:
                raise TraceFormatError(f"{path}:{lineno}: no double tab between expert ids and gate weights")
            try:
                ids = np.array(ids_text.split("\t"), dtype=np.int64)
            except ValueError as e:
                raise TraceFormatError(f"{path}:{lineno}: expert ids must be integers ({e})") from e
            if ids.size % top_k or weights_text.count("\t") + 1 != ids.size:
                raise TraceFormatError(f"{path}:{lineno}: {ids.size} expert ids and "
                                       f"{weights_text.count(chr(9)) + 1} gate weights; need equal counts, "
                                       f"a multiple of top_k={top_k}")
            if ids.min() < 0 or ids.max() >= n_experts:
                raise TraceFormatError(f"{path}:{lineno}: expert id outside [0, {n_experts})")
            rows.append(ids.reshape(-1, top_k))
            lengths.append(rows[-1].shape[0])
            total += lengths[-1]
            if max_tokens is not None and total >= max_tokens:
                break
    if not rows:
        raise TraceFormatError(f"{path}: no routing lines")
    out = np.concatenate(rows).astype(np.int16)
    return (out if max_tokens is None else out[:max_tokens]), lengths
