"""Tests for moesim.workload.routing_trace: the moesim routing-trace format and the ESFT reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moesim.core.errors import ConfigError, TraceFormatError
from moesim.workload import RoutingTrace, read_esft_routing, read_routing_trace, write_routing_trace

ESFT = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "esft-deepseek-v2-lite-routing"


def random_ids(tokens: int, layers: int, experts: int, k: int, seed: int = 0) -> np.ndarray:
    """``[tokens, layers, k]`` distinct expert ids per (token, layer)."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((tokens, layers, experts)), axis=2)[:, :, :k].astype(np.int16)


def small_trace(*, tokens: int = 100, tokens_per_step: int = 10, with_ids: bool = True) -> RoutingTrace:
    tr = RoutingTrace.from_token_experts(random_ids(tokens, 3, 8, 2), n_experts=8, tokens_per_step=tokens_per_step,
                                         meta={"model": "toy", "source": "test"})
    if with_ids:
        return tr
    return RoutingTrace(counts=tr.counts, step_tokens=tr.step_tokens, top_k=tr.top_k, meta=tr.meta)


# ---------------------------------------------------------------------- construction and statistics
def test_from_token_experts_aggregates_steps() -> None:
    ids = random_ids(95, 3, 8, 2)
    tr = RoutingTrace.from_token_experts(ids, n_experts=8, tokens_per_step=10)
    assert tr.counts.shape == (9, 3, 8) and tr.n_tokens == 90  # the short last step is dropped
    assert (tr.counts.sum(axis=2) == 20).all()
    expected = np.stack([np.bincount(ids[:10, layer].ravel(), minlength=8) for layer in range(3)])
    assert np.array_equal(tr.counts[0], expected)
    kept = RoutingTrace.from_token_experts(ids, n_experts=8, tokens_per_step=10, drop_partial=False)
    assert kept.step_tokens.tolist() == [10] * 9 + [5] and kept.tokens_per_step is None
    assert tr.tokens_per_step == 10 and tr.meta["tokens_per_step"] == 10


def test_steps_never_straddle_segments() -> None:
    ids = random_ids(50, 2, 6, 2)
    tr = RoutingTrace.from_token_experts(ids, n_experts=6, tokens_per_step=10, segments=[("a", 25), ("b", 25)])
    assert tr.n_steps == 4 and tr.n_tokens == 40
    assert [s["steps"] for s in tr.meta["segments"]] == [2, 2]
    assert np.array_equal(tr.token_experts[20:30], ids[25:35])  # segment b starts a fresh step
    rebinned = tr.rebin(5)
    assert rebinned.n_steps == 8 and rebinned.meta["segments"][1]["tokens"] == 20


def test_popularity_transitions_and_imbalance() -> None:
    tr = small_trace(tokens=400)
    k = tr.top_k
    assert np.allclose(tr.popularity.sum(axis=1), 1.0)
    total = tr.counts.sum(axis=0)
    for layer in range(tr.n_layers - 1):
        x = tr.transitions(layer)
        assert np.array_equal(x.sum(axis=1), k * total[layer])
        assert np.array_equal(x.sum(axis=0), k * total[layer + 1])
        m = tr.transition_matrix(layer)
        assert np.allclose(m.sum(axis=1), 1.0)
        assert np.allclose(tr.popularity[layer] @ m, tr.popularity[layer + 1])
    assert tr.imbalance().shape == (tr.n_steps, tr.n_layers) and tr.imbalance().min() >= 1.0
    with pytest.raises(IndexError):
        tr.transitions(tr.n_layers - 1)
    with pytest.raises(ValueError, match="per-token"):
        small_trace(with_ids=False).transitions(0)


def test_slice_steps_keeps_tokens_aligned() -> None:
    tr = small_trace()
    part = tr.slice_steps(3, 6)
    assert part.n_steps == 3 and np.array_equal(part.counts, tr.counts[3:6])
    assert np.array_equal(part.token_experts, tr.token_experts[30:60])
    with pytest.raises(ValueError):
        tr.slice_steps(5, 5)


# ---------------------------------------------------------------------- file format
@pytest.mark.parametrize("with_ids", [True, False])
def test_round_trip(tmp_path: Path, with_ids: bool) -> None:
    tr = small_trace(with_ids=with_ids)
    path = write_routing_trace(tr, tmp_path / "toy")
    assert path.suffix == ".npz"
    back = read_routing_trace(path)
    assert np.array_equal(back.counts, tr.counts) and back.counts.dtype == np.int64
    assert np.array_equal(back.step_tokens, tr.step_tokens) and back.top_k == tr.top_k
    assert (back.token_experts is None) == (not with_ids)
    if with_ids:
        assert np.array_equal(back.token_experts, tr.token_experts)
    assert back.meta == tr.meta and back.meta["model"] == "toy"


def _write_raw(path: Path, **arrays: object) -> Path:
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path


def _meta(**extra: object) -> np.ndarray:
    return np.array(json.dumps({"format": "moesim-routing-trace", "version": 1, "top_k": 2, **extra}))


def test_malformed_files_name_the_file_and_the_field(tmp_path: Path) -> None:
    good = small_trace()
    ids = np.array(good.token_experts)
    counts = np.array(good.counts)
    cases: dict[str, tuple[dict[str, object], str]] = {
        "missing_counts": ({"step_tokens": good.step_tokens, "meta": _meta()}, "missing array 'counts'"),
        "float_counts": ({"counts": counts.astype(float), "step_tokens": good.step_tokens, "meta": _meta()},
                         "counts: need integers"),
        "bad_sum": ({"counts": counts + np.eye(8, dtype=np.int64)[0], "step_tokens": good.step_tokens,
                     "meta": _meta()}, "counts: step 0 layer 0 sums to"),
        "bad_steps": ({"counts": counts, "step_tokens": good.step_tokens[:-1], "meta": _meta()},
                      "step_tokens: need shape"),
        "bad_json": ({"counts": counts, "step_tokens": good.step_tokens, "meta": np.array("{nope")},
                     "meta: not valid JSON"),
        "bad_format": ({"counts": counts, "step_tokens": good.step_tokens, "meta": _meta(format="other")},
                       "meta.format"),
        "bad_version": ({"counts": counts, "step_tokens": good.step_tokens, "meta": _meta(version=9)}, "meta.version"),
        "dup_expert": ({"counts": counts, "step_tokens": good.step_tokens, "meta": _meta(),
                        "token_experts": np.concatenate([ids[:1, :, :1].repeat(2, axis=2), ids[1:]])},
                       "token_experts: token 0 layer 0 repeats an expert"),
        "ids_vs_counts": ({"counts": counts, "step_tokens": good.step_tokens, "meta": _meta(),
                           "token_experts": ids[::-1]}, "differs from the histogram"),
        "id_range": ({"counts": counts, "step_tokens": good.step_tokens, "meta": _meta(),
                      "token_experts": ids + 8}, "expert id"),
    }
    for name, (arrays, message) in cases.items():
        path = _write_raw(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(TraceFormatError, match=message) as err:
            read_routing_trace(path)
        assert str(path) in str(err.value), name
        assert isinstance(err.value, ConfigError)


def test_count_above_tokens_and_not_a_zip(tmp_path: Path) -> None:
    counts = np.array([[[3, 1, 0, 0]]])  # 2 tokens, k=2: sums to 4 but expert 0 got 3 > 2 tokens
    path = _write_raw(tmp_path / "over.npz", counts=counts, step_tokens=np.array([2]), meta=_meta())
    with pytest.raises(TraceFormatError, match="expert 0 has 3 > 2 tokens"):
        read_routing_trace(path)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(TraceFormatError, match="not a moesim routing trace"):
        read_routing_trace(junk)
    with pytest.raises(TraceFormatError, match="no such routing trace"):
        read_routing_trace(tmp_path / "absent.npz")


# ---------------------------------------------------------------------- ESFT logs
def _esft_line(ids: np.ndarray) -> str:
    flat = ids.ravel()
    return "\t".join(map(str, flat)) + "\t\t" + "\t".join(["0.1"] * flat.size) + "\n"


def _fake_esft(root: Path, *, layers: int = 3, k: int = 2, e: int = 8) -> np.ndarray:
    ids = random_ids(30, layers, e, k, seed=4)
    task = root / "intent"
    task.mkdir(parents=True)
    for layer in range(layers):  # two sequences: tokens 0..11 and 12..29
        (task / f"expert_weights_{layer + 1}.txt").write_text(
            _esft_line(ids[:12, layer]) + _esft_line(ids[12:, layer]))
    return ids


def test_esft_reader_on_a_synthetic_folder(tmp_path: Path) -> None:
    ids = _fake_esft(tmp_path)
    tr = read_esft_routing(tmp_path, tokens_per_step=10, n_experts=8, top_k=2)
    assert tr.counts.shape == (3, 3, 8) and tr.meta["layer_ids"] == [1, 2, 3]
    assert np.array_equal(tr.token_experts, ids)
    assert tr.meta["segments"] == [{"name": "intent", "steps": 3, "tokens": 30}]
    head = read_esft_routing(tmp_path / "intent", tokens_per_step=5, max_tokens_per_task=14, n_experts=8, top_k=2)
    assert head.n_tokens == 10 and np.array_equal(head.token_experts, ids[:10])


def test_esft_reader_rejects_malformed_lines(tmp_path: Path) -> None:
    _fake_esft(tmp_path)
    bad = tmp_path / "intent" / "expert_weights_2.txt"
    lines = bad.read_text().splitlines(keepends=True)
    bad.write_text(lines[0] + lines[1].replace("\t\t", "\t"))
    with pytest.raises(TraceFormatError, match=r"expert_weights_2\.txt:2: no double tab"):
        read_esft_routing(tmp_path, n_experts=8, top_k=2)
    bad.write_text(lines[0] + lines[1].replace("\t", "\tx", 1))
    with pytest.raises(TraceFormatError, match=r"expert_weights_2\.txt:2: expert ids must be integers"):
        read_esft_routing(tmp_path, n_experts=8, top_k=2)
    bad.write_text(lines[0])
    with pytest.raises(TraceFormatError, match="must log the same sequences"):
        read_esft_routing(tmp_path, n_experts=8, top_k=2)
    with pytest.raises(TraceFormatError, match="expert id outside"):
        read_esft_routing(tmp_path, n_experts=4, top_k=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TraceFormatError, match="no expert_weights"):
        read_esft_routing(empty, n_experts=8, top_k=2)
    with pytest.raises(TraceFormatError, match="task folder"):
        read_esft_routing(tmp_path, tasks=["law"], n_experts=8, top_k=2)


@pytest.fixture(scope="module")
def esft_dir() -> Path:
    if not (ESFT / "intent" / "expert_weights_1.txt").is_file():
        pytest.skip(f"ESFT routing logs not found at {ESFT}; see traces/README.md (routing traces)")
    return ESFT


def test_real_esft_shape_and_summary(esft_dir: Path) -> None:
    """The real logs: 26 MoE layers x 64 experts, top-6; shares match the repository's summary.json."""
    sub = read_esft_routing(esft_dir, tokens_per_step=512, max_tokens_per_task=2048)
    assert (sub.n_layers, sub.n_experts, sub.top_k) == (26, 64, 6)
    assert [s["name"] for s in sub.meta["segments"]] == ["intent", "law", "summary", "translation"]
    assert sub.n_steps == 16 and sub.meta["layer_ids"] == list(range(1, 27))
    intent = read_esft_routing(esft_dir, tasks=["intent"], drop_partial=False)
    summary = json.loads((esft_dir / "intent" / "summary.json").read_text())["token_scores"]
    ref = np.array([[summary[str(layer)][str(e)] for e in range(64)] for layer in range(1, 27)])
    assert np.abs(intent.popularity - ref).max() < 1e-4  # summary.json is rounded to 4 decimals
