"""bench/ops/scaling.py at a tiny size: the grid, the GRU sized to a parameter budget, one
measurement in process, and the report (table, exponents, plots) from a results file."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("scaling", os.path.join(ROOT, "bench", "ops", "scaling.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_grid_varies_one_factor_at_a_time(scaling):
    cfgs = scaling.configs()
    assert len(cfgs) == 10 and scaling.BASE in cfgs
    for cfg in cfgs:
        assert sum(cfg[k] != scaling.BASE[k] for k in cfg) <= 1


def test_the_gru_of_a_parameter_budget(scaling):
    budget = scaling.star_params(16, 32)
    h = scaling.gru_hidden_for(budget)
    count = lambda h: 3 * (h + h * h + 2 * h)  # noqa: E731  (input size 1)
    assert count(h) <= budget < count(h + 1)


@pytest.mark.parametrize("contender", ["euler_star", "cayley_pairs", "cayley_pairs_dense", "reference", "gru_params"])
def test_one_measurement(scaling, contender):
    row = scaling.measure(contender, 4, 3, 5, 2, rounds=1)
    assert row["time_s"] > 0 and row["peak_gb"] > -1e-3  # (ru_maxrss in KB against pages: rounding)


def test_the_report_from_results(scaling, tmp_path, capsys):
    rows = []
    for cfg in scaling.configs():
        for c in scaling.CONTENDERS:
            size = cfg["p"] * cfg["n"] * cfg["T"] * cfg["B"]
            rows.append(dict(contender=c, **cfg, time_s=1e-9 * size, peak_gb=1e-8 * size))
    rows[-1] = {k: v for k, v in rows[-1].items() if k not in ("time_s", "peak_gb")} | {"skipped": "over 1 s"}
    (tmp_path / "scaling.json").write_text(json.dumps(rows))
    scaling.report(str(tmp_path))
    out = capsys.readouterr().out
    assert "| euler_star | 1.00 (1) / 1.00 (2) / 1.00 (1) / 1.00 (1) |" in out  # time linear in every factor
    assert "n/a" in out  # the skipped measurement
    assert (tmp_path / "scaling_time.png").exists() and (tmp_path / "scaling_memory.png").exists()


def test_a_measurement_leaves_the_process_s_float_settings_alone(scaling):
    import torch

    scaling.measure("euler_star", 3, 2, 3, 2, rounds=1)
    assert (torch.tensor([1e-38]) / 100).item() != 0  # subnormals still there: nothing was flushed globally
