"""Append-only recorders the engine writes during a run (no analysis here).

``PassLog`` keeps one row per forward pass of one replica, appended in chunks (a fast-forwarded
run of decode passes appends a chunk of many rows at once), so its content is identical whether
passes were stepped one by one or advanced together. ``RequestLog`` holds per-request outcome
arrays indexed by request id. ``LevelLog`` keeps (time, value) change points of a level
(queue depth) for time-weighted statistics.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LevelLog", "PassLog", "RequestLog"]

PASS_FIELDS = ("start_s", "duration_s", "batch_size", "prefill_tokens", "decode_tokens", "kv_blocks", "tokens",
               "sample", "imbalance", "moe_comm_s", "comm_s")


class PassLog:
    """Per-pass rows of one replica: start_s, duration_s [s], batch_size [seqs], prefill_tokens,
    decode_tokens [tokens], kv_blocks [blocks held during the pass], tokens (pool key), sample
    (routing sample index), imbalance (max/mean EP-rank load after balancing, mean over layers;
    1 for a dense model), moe_comm_s (dispatch + combine + expert-weight copies in the pass),
    comm_s (all communication of the pass: TP all-reduces + moe_comm_s).

    Rows live in one ``[capacity, fields]`` table grown by doubling: runs of rows are written
    into it as they come, single rows are buffered as tuples (with their pass numbers) and written
    into their places when a column is read."""

    def __init__(self) -> None:
        self._table = np.empty((0, len(PASS_FIELDS)))
        self._rows: list[tuple[float, ...]] = []  # single rows not yet in the table
        self._row_at: list[int] = []              # their pass numbers
        self.passes = 0

    def add(self, **columns: np.ndarray | float) -> None:
        """Append rows; every column is an array of the same length or a scalar repeated on every
        row (``start_s`` must be an array; single rows are buffered)."""
        n = len(columns["start_s"])
        if n == 1:
            self.add_row(tuple(float(v if np.ndim(v) == 0 else v[0]) for v in (columns[f] for f in PASS_FIELDS)))
            return
        self._reserve(self.passes + n)
        block = self._table[self.passes:self.passes + n]
        for i, f in enumerate(PASS_FIELDS):
            block[:, i] = columns[f]
        self.passes += n

    def add_row(self, row: tuple[float, ...]) -> None:
        """Append one row, its values in ``PASS_FIELDS`` order."""
        self._rows.append(row)
        self._row_at.append(self.passes)
        self.passes += 1
        if len(self._rows) >= 65536:
            self._pack()

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` rows (the table may end before buffered single rows' places)."""
        size = self._table.shape[0]
        if rows > size:
            kept = min(self.passes, size)
            grown = np.empty((max(rows, 2 * size, 4096), len(PASS_FIELDS)))
            grown[:kept] = self._table[:kept]
            self._table = grown

    def _pack(self) -> None:
        if self._rows:
            self._reserve(self.passes)
            self._table[self._row_at] = np.array(self._rows, dtype=np.float64)
            self._rows, self._row_at = [], []

    def column(self, name: str) -> np.ndarray:
        """All rows of one column (a float64 copy)."""
        self._pack()
        return self._table[:self.passes, PASS_FIELDS.index(name)].copy()


class RequestLog:
    """Outcome of every request, indexed by request id (NaN = did not happen)."""

    def __init__(self, n: int) -> None:
        self.replica = np.full(n, -1, np.int64)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.generated = np.zeros(n, np.int64)
        self.preemptions = np.zeros(n, np.int64)
        self.rejected = np.zeros(n, bool)
        self.decode_replica = np.full(n, -1, np.int64)
        """Disaggregated serving: the replica that decoded the request (-1: none / same as ``replica``)."""
        self.kv_transfer_s = np.full(n, np.nan)
        """Disaggregated serving: end of prefill to the KV cache landing on the decode replica."""


class LevelLog:
    """Change points (time_s, replica, value) of a piecewise-constant level such as queue depth."""

    def __init__(self) -> None:
        self.time_s: list[float] = []
        self.replica: list[int] = []
        self.value: list[int] = []

    def set(self, time_s: float, replica: int, value: int) -> None:
        self.time_s.append(time_s)
        self.replica.append(replica)
        self.value.append(value)
