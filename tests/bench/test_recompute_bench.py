"""bench/ops/recompute.py at a tiny size: one measurement in process per kind of contender, and
the table from a results file (both allocators, the ratios to keeping every state)."""
from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def recompute():
    spec = importlib.util.spec_from_file_location("recompute", os.path.join(ROOT, "bench", "ops", "recompute.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("contender, segment", [("keep", None), ("4", 4), ("auto:0.001", 9)])
def test_one_measurement(recompute, contender, segment):
    row = recompute.measure(contender, T=9, B=2, rounds=1)
    assert row["time_s"] > 0 and row["peak_gb"] > -1e-3  # (ru_maxrss in KB against pages: rounding)
    assert row["segment"] == segment  # auto: all 9 steps fit in 1 MB


def test_the_table(recompute):
    rows = [dict(contender=c, allocator=a, time_s=t, peak_gb=m, segment=k)
            for c, k, t, m in (("keep", None, 2.0, 4.0), ("64", 64, 3.0, 0.5)) for a in recompute.ALLOCATORS]
    table = recompute.report(rows).splitlines()
    assert len(table) == 4
    assert table[2].startswith("| None (keep every state) | - | 2.00 (1.00x) / 2.00 (1.00x) |")
    assert table[3] == "| 64 | 64 | 3.00 (1.50x) / 3.00 (1.50x) | 0.50 (1/8.0) / 0.50 (1/8.0) |"
