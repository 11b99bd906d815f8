"""Tests for moesim.workload.azure against the real Azure LLM inference 2023 trace and tmp CSVs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.config.schema import TraceWorkloadCfg
from moesim.core.errors import ConfigError, TraceFormatError
from moesim.workload import build_requests, read_azure_trace

TRACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces" / "azure-llm-inference-2023"
CONV = TRACES / "AzureLLMInferenceTrace_conv.csv"
CODE = TRACES / "AzureLLMInferenceTrace_code.csv"
needs_traces = pytest.mark.skipif(
    not (CONV.is_file() and CODE.is_file()),
    reason=f"Azure trace samples not found in {TRACES.resolve()} (shared checkout absent)")
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def trace(path: Path, **kw: object) -> TraceWorkloadCfg:
    return TraceWorkloadCfg(path=str(path), **kw)


def write(tmp_path: Path, body: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def raw_offsets_s(path: Path) -> np.ndarray:
    """Seconds since the first row, computed independently of the reader."""
    stamps = pd.to_datetime(pd.read_csv(path)["TIMESTAMP"], format="%Y-%m-%d %H:%M:%S.%f")
    return (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()


@needs_traces
def test_reads_conv_fast_and_whole() -> None:
    start = time.perf_counter()
    reqs = read_azure_trace(trace(CONV))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert len(reqs) == 19_366
    assert reqs.arrival_s[0] == 0.0
    assert reqs.arrival_s[-1] == pytest.approx(3501.721937, abs=1e-6)
    assert reqs.prompt_tokens.max() == 14_050 and reqs.output_tokens.max() == 1_000
    assert reqs.notes == () and "AzureLLMInferenceTrace_conv.csv" in reqs.source


@needs_traces
def test_reads_code() -> None:
    reqs = read_azure_trace(trace(CODE))
    assert len(reqs) == 8_819
    assert reqs.prompt_tokens.max() == 7_437 and reqs.output_tokens.max() == 1_899
    assert np.isclose(reqs.prompt_tokens.mean(), 2048, rtol=0.01)


@needs_traces
def test_window_rebase_and_time_scale() -> None:
    offsets = raw_offsets_s(CONV)
    inside = offsets[(offsets >= 600.0) & (offsets < 900.0)]
    reqs = read_azure_trace(trace(CONV, start_s=600.0, duration_s=300.0))
    assert len(reqs) == len(inside) > 1000
    np.testing.assert_allclose(reqs.arrival_s, inside - 600.0, atol=1e-6)
    assert reqs.arrival_s.min() >= 0.0 and reqs.arrival_s.max() < 300.0

    faster = read_azure_trace(trace(CONV, start_s=600.0, duration_s=300.0, time_scale=0.5))
    np.testing.assert_allclose(faster.arrival_s, reqs.arrival_s * 0.5)
    np.testing.assert_array_equal(faster.prompt_tokens, reqs.prompt_tokens)

    capped = read_azure_trace(trace(CONV, start_s=600.0, max_requests=100))
    assert len(capped) == 100
    np.testing.assert_allclose(capped.arrival_s, reqs.arrival_s[:100])


@needs_traces
def test_build_requests_dispatches_trace() -> None:
    reqs = build_requests(trace(CODE, max_requests=10), np.random.default_rng(0))
    assert len(reqs) == 10


def test_relative_path_resolves_against_base_dir(tmp_path: Path) -> None:
    write(tmp_path, HEADER + "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47.0,10,2\n")
    reqs = read_azure_trace(TraceWorkloadCfg(path="trace.csv"), base_dir=tmp_path)
    assert reqs.arrival_s.tolist() == pytest.approx([0.0, 0.31941])


def test_malformed_rows_name_file_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER
                 + "2023-11-16 18:15:46.6805900,374,44\n"   # line 2: fine
                 + "2023-13-45 18:15:47.0,10,2\n"          # line 3: bad timestamp
                 + "2023-11-16 18:15:48.0,12,3\n"          # line 4: fine
                 + "2023-11-16 18:15:49.0,abc,3\n"         # line 5: bad context
                 + "2023-11-16 18:15:50.0,7,-3\n"          # line 6: negative output
                 + "2023-11-16 18:15:51.0,7,3\n"           # line 7: fine
                 + "2023-11-16 18:15:52.0,7,3,9\n"         # line 8: four fields
                 + "2023-11-16 18:15:53.0,1.5,3\n")        # line 9: not an integer
    with pytest.raises(TraceFormatError) as err:
        read_azure_trace(trace(path))
    msg = str(err.value)
    for line in (3, 5, 6, 8, 9):
        assert f"trace.csv line {line}:" in msg
    for line in (2, 4, 7):
        assert f"line {line}:" not in msg
    assert "ContextTokens='abc' is not a non-negative integer" in msg
    assert "GeneratedTokens='-3' is not a non-negative integer" in msg
    assert "TIMESTAMP='2023-13-45 18:15:47.0'" in msg
    assert "expected 3 fields, found 4" in msg


def test_many_bad_rows_are_counted_and_the_first_five_shown(tmp_path: Path) -> None:
    rows = "".join(f"2023-11-16 18:15:{i:02d}.0,x{i},1\n" for i in range(20))
    with pytest.raises(TraceFormatError, match=r"20 malformed rows \(first 5 shown\)") as err:
        read_azure_trace(trace(write(tmp_path, HEADER + rows)))
    assert "line 6:" in str(err.value) and "line 7:" not in str(err.value)


def test_missing_or_wrong_header(tmp_path: Path) -> None:
    no_header = write(tmp_path, "2023-11-16 18:15:46.6805900,374,44\n", "noheader.csv")
    with pytest.raises(TraceFormatError, match="noheader.csv line 1: header"):
        read_azure_trace(trace(no_header))
    missing_field = write(tmp_path, HEADER + "2023-11-16 18:15:46.6805900,374\n", "short.csv")
    with pytest.raises(TraceFormatError, match="short.csv line 2: expected 3 fields, found 2"):
        read_azure_trace(trace(missing_field))


def test_zero_tokens_become_one_and_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "2023-11-16 18:00:00.0,100,0\n2023-11-16 18:00:01.0,0,5\n"
                 + "2023-11-16 18:00:02.0,50,0\n")
    reqs = read_azure_trace(trace(path))
    assert reqs.output_tokens.tolist() == [1, 5, 1]
    assert reqs.prompt_tokens.tolist() == [100, 1, 50]
    assert "2 rows with GeneratedTokens=0 replayed as 1 token" in reqs.notes
    assert "1 rows with ContextTokens=0 replayed as 1 token" in reqs.notes
    assert "GeneratedTokens=0" in reqs.source


def test_out_of_order_rows_are_sorted_and_noted(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "2023-11-16 18:00:02.0,3,1\n2023-11-16 18:00:00.0,1,1\n"
                 + "2023-11-16 18:00:01.0,2,1\n")
    reqs = read_azure_trace(trace(path))
    assert reqs.arrival_s.tolist() == [0.0, 1.0, 2.0]
    assert reqs.prompt_tokens.tolist() == [1, 2, 3]
    assert any("out of timestamp order" in note for note in reqs.notes)


def test_utc_offsets_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "2024-05-10 00:00:00.5+00:00,3,1\n2024-05-10 01:00:00.5+01:00,3,1\n"
                 + "2024-05-10 00:00:02.5+00:00,3,1\n")
    assert read_azure_trace(trace(path)).arrival_s.tolist() == [0.0, 0.0, 2.0]


def test_empty_window_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "2023-11-16 18:00:00.0,3,1\n2023-11-16 18:00:05.0,3,1\n")
    with pytest.raises(ConfigError, match="holds no requests") as err:
        read_azure_trace(trace(path, start_s=10.0))
    assert err.value.field == "workload.start_s"


def test_missing_file_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        read_azure_trace(TraceWorkloadCfg(path="nope/trace.csv"), base_dir=tmp_path)
    assert err.value.field == "workload.path"
    msg = str(err.value)
    assert str(tmp_path / "nope" / "trace.csv") in msg
    assert "Azure/AzurePublicDataset" in msg and "AzureLLMInferenceTrace_conv.csv" in msg
