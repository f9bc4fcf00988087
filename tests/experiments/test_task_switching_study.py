"""task-switching-study at a tiny size: every study's points, a resumed run, the table and the
plot; teachers with a controlled overlap; the composition tasks of three teachers."""
from __future__ import annotations

import json
import os

import pytest
import torch

from rnnofrnns.__main__ import main
from rnnofrnns.experiments.errors import UsageError
from rnnofrnns.experiments.task_switching import study as ts_study
from rnnofrnns.experiments.task_switching.experiment import composition_tasks
from rnnofrnns.experiments.task_switching.tasks import teachers


def test_teachers_with_an_overlap():
    for c in (0.0, 0.3, 0.8, 1.0):
        T = teachers(20, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64, overlap=c)
        rows = torch.nn.functional.normalize(T, dim=-1)
        cos_ab = (rows[0] * rows[1]).sum(-1)
        cos_bc = (rows[1] * rows[2]).sum(-1)
        torch.testing.assert_close(cos_ab, torch.full_like(cos_ab, c))
        torch.testing.assert_close(cos_bc, torch.full_like(cos_bc, c * c))
        torch.testing.assert_close(T.norm(dim=-1), torch.full((3, 5), 20 ** -0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"overlap must be a cosine in \[0, 1\], got 1.5"):
        teachers(20, 5, 2, overlap=1.5)


def test_three_teachers_compose_every_consecutive_pair():
    T = teachers(30, 5, 3, generator=torch.Generator().manual_seed(0))
    names = [name for name, _ in composition_tasks(T)]
    assert names == ["mean", "rows", "mean BC", "mean CA"]
    torch.testing.assert_close(dict(composition_tasks(T))["mean CA"], 0.5 * (T[2] + T[0]))
    assert [name for name, _ in composition_tasks(T[:2])] == ["mean", "rows"]


def test_every_study_names_distinct_points():
    for name, (points, _) in ts_study.STUDIES.items():
        pts = points()
        assert len({p.name for p in pts}) == len(pts) >= 5, name


def test_a_study_runs_resumes_and_reports(tmp_path, monkeypatch):
    """The overlap study with every run cut to 2 blocks of 20 steps: runs, a table line per
    point, a plot; a second call trains nothing."""
    real = ts_study._overlap
    monkeypatch.setitem(ts_study.STUDIES, "overlap", (
        lambda: [ts_study.Point(p.name, p.axis, p.series, dict(p.settings, blocks=2, block_length=0.02, batch=16))
                 for p in real()[:3] + real()[5:6]], "cosine"))
    rows = ts_study.run_study("overlap", 2, str(tmp_path), progress=False, log=lambda _: None)
    assert len(rows) == 8 and {r["regime"] for r in rows} <= {"flexible", "forgetful"}
    folder = tmp_path / "overlap"
    table = (folder / "study.md").read_text()
    assert table.count("\n") == 2 + 4 and "| flexible | 0.25 | 2 |" in table
    assert (folder / "study.png").exists() and json.loads((folder / "study.json").read_text())["seeds"] == 2
    calls = []
    monkeypatch.setattr(ts_study, "run_task_switching", lambda *a, **k: calls.append(1))
    assert ts_study.run_study("overlap", 2, str(tmp_path), progress=False, log=lambda _: None) == rows
    assert calls == []


def test_the_cli_refuses_a_bad_study(capsys):
    with pytest.raises(SystemExit):
        main(["task-switching-study", "no-such-study"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--seeds must be a positive integer, got 0"):
        ts_study.run_study("overlap", 0, "unused")


def test_a_run_refuses_an_overlap_for_the_image_network(tmp_path):
    from rnnofrnns.experiments.task_switching.experiment import TaskSwitchingConfig
    with pytest.raises(UsageError, match="--teacher-overlap needs linear teachers"):
        TaskSwitchingConfig(network="image", teacher_overlap=0.5, out=str(tmp_path)).resolved()
    assert os.listdir(tmp_path) == []
