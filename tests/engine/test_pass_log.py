"""PassLog keeps rows in pass order whether they came one at a time or in runs."""

from __future__ import annotations

import numpy as np

from moesim.metrics.recorder import PASS_FIELDS, PassLog


def test_single_rows_and_runs_interleave_in_pass_order() -> None:
    log, expected = PassLog(), []
    rng = np.random.default_rng(0)
    for step in range(3000):  # enough rows to grow the table several times
        if step % 3:
            row = tuple(float(x) for x in rng.random(len(PASS_FIELDS)))
            log.add_row(row)
            expected.append(row)
        else:
            n = int(rng.integers(1, 9))
            cols = {f: rng.random(n) for f in PASS_FIELDS}
            cols["prefill_tokens"] = 0.0  # a scalar repeats on every row
            cols["sample"] = rng.integers(0, 16, n)
            log.add(**cols)
            expected += [tuple(float(np.broadcast_to(cols[f], (n,))[i]) for f in PASS_FIELDS) for i in range(n)]
        if step == 1500:  # reading a column mid-run changes nothing after
            assert np.array_equal(log.column("start_s"), [r[0] for r in expected])
    assert log.passes == len(expected)
    for i, f in enumerate(PASS_FIELDS):
        col = log.column(f)
        assert col.dtype == np.float64 and col.flags.c_contiguous
        assert np.array_equal(col, [r[i] for r in expected])
    assert PassLog().column("duration_s").shape == (0,)
