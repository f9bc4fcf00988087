"""`python -m rnnofrnns sweep`: a shortened sweep writes its rows, table and plots, resumes
without retraining, and refuses what cannot work before writing anything."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from rnnofrnns.experiments.errors import UsageError
from rnnofrnns.experiments.training.config import TrainConfig
from rnnofrnns.experiments.training.sweep import sweep
from run_cli import cli

BASE = replace(TrainConfig(), num_areas=4, area_size=8, progress=False, threads=1)
ROW_KEYS = {"topology", "feedback_sparsity", "seed", "run", "test_accuracy", "trainable_parameters",
            "feedback_parameters", "certificate", "ablation_test_accuracy", "mean_drop", "worst_drop",
            "wall_time_s", "stopped"}


@pytest.fixture(scope="module")
def short_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    logs = []
    rows = sweep("row-digits", ["gw", "all", "random:matched"], [0.0, 0.5], seeds=1, epochs=1, out=str(out),
                 base=BASE, log=logs.append)
    return out, rows, logs


def test_rows_table_and_plots(short_sweep):
    out, rows, logs = short_sweep
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and len(rows) == 6
    for r in rows:
        assert set(r) == ROW_KEYS
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert len(r["ablation_test_accuracy"]) == 4
        drops = [r["test_accuracy"] - a for a in r["ablation_test_accuracy"]]
        assert r["mean_drop"] == pytest.approx(sum(drops) / 4) and r["worst_drop"] == pytest.approx(max(drops))
        assert r["certificate"]["continuous_holds"] and r["certificate"]["discrete_holds"]
        assert (out / "runs" / r["run"] / "best.pt").exists()
    by = {(r["topology"], r["feedback_sparsity"]): r for r in rows}
    # the matched random topology has as many pairs as the star: the same trainable parameters
    assert by[("random:matched", 0.0)]["trainable_parameters"] == by[("gw", 0.0)]["trainable_parameters"]
    assert by[("all", 0.0)]["trainable_parameters"] > by[("gw", 0.0)]["trainable_parameters"]
    # sparsity removes the masked inter-area weights from the count: half of the 3 blocks of 8 x 8
    assert by[("gw", 0.0)]["feedback_parameters"] == 3 * 64
    assert by[("gw", 0.0)]["trainable_parameters"] - by[("gw", 0.5)]["trainable_parameters"] == \
        by[("gw", 0.0)]["feedback_parameters"] - by[("gw", 0.5)]["feedback_parameters"] > 0
    table = (out / "summary.txt").read_text()
    assert "random:matched" in table and "all hold" in table and table.strip() in "\n".join(logs)
    for png in ("accuracy_vs_parameters.png", "area_drop.png", "accuracy_vs_sparsity.png"):
        assert (out / png).stat().st_size > 1000


def test_resume_skips_finished_runs_and_refuses_another_sweep(short_sweep):
    out, rows, _ = short_sweep
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.json")}
    logs = []
    again = sweep("row-digits", ["gw", "all", "random:matched"], [0.0, 0.5], seeds=1, epochs=1, out=str(out),
                  base=BASE, log=logs.append)
    assert again == rows
    assert sum("is done already" in line for line in logs) == 6
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.json")} == mtimes
    with pytest.raises(UsageError, match="holds another sweep .*epochs"):
        sweep("row-digits", ["gw", "all", "random:matched"], [0.0, 0.5], seeds=1, epochs=2, out=str(out), base=BASE)


def test_a_sweep_from_before_a_setting_resumes_with_the_setting_it_ran(short_sweep, tmp_path):
    """A sweep.json written before cayley_form existed ran the map now called "exact": resuming
    it with the default ("auto") is refused naming the setting, with --cayley-form exact it resumes."""
    import shutil

    out, rows, _ = short_sweep
    old = tmp_path / "old"
    shutil.copytree(out, old)
    saved = json.loads((old / "sweep.json").read_text())
    del saved["run_settings"]["cayley_form"]
    (old / "sweep.json").write_text(json.dumps(saved))
    args = ("row-digits", ["gw", "all", "random:matched"], [0.0, 0.5])
    with pytest.raises(UsageError, match=r"its run_settings \(cayley_form\) differ"):
        sweep(*args, seeds=1, epochs=1, out=str(old), base=BASE)
    again = sweep(*args, seeds=1, epochs=1, out=str(old), base=replace(BASE, cayley_form="exact"), log=lambda _: None)
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in rows]


@pytest.mark.parametrize("kwargs,message", [
    (dict(topologies=["gw", "ring"]), r"--topologies: 'ring' cannot be used"),
    (dict(topologies=["gw", "gw"]), r"lists a topology twice"),
    (dict(sparsities=[0.0, 1.0]), r"--feedback-sparsity values must be in \[0, 1\), got 1.0"),
    (dict(seeds=0), r"--seeds must be a positive integer, got 0"),
])
def test_bad_arguments_write_nothing(tmp_path, kwargs, message):
    args = dict(topologies=["gw"], sparsities=[0.0], seeds=1)
    args.update(kwargs)
    with pytest.raises(UsageError, match=message):
        sweep("row-digits", args["topologies"], args["sparsities"], seeds=args["seeds"], epochs=1,
              out=str(tmp_path / "s"), base=BASE)
    assert not (tmp_path / "s").exists()


def test_cli_one_line_error(tmp_path):
    r = cli("sweep", "--topologies", "gw", "ring", "--out", str(tmp_path / "s"),
            env={**os.environ, "RNNOFRNNS_TRACEBACK": "0"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: --topologies: 'ring' cannot be used")


def test_resume_may_change_threads_and_progress(short_sweep):
    out, rows, _ = short_sweep
    again = sweep("row-digits", ["gw", "all", "random:matched"], [0.0, 0.5], seeds=1, epochs=1, out=str(out),
                  base=replace(BASE, threads=2, progress=True), log=lambda s: None)
    assert again == rows


PAPERS = ["--feedback-step", "euler", "--areas", "sparse", "--alpha", "0.5", "--gamma", "0.9", "--no-learn-timescales",
          "--no-input-timescales", "--input-encoder", "0", "--readout", "last"]


def test_the_cli_sweep_takes_train_s_model_settings(tmp_path):
    """The papers' own configuration (fixed sparse areas, Euler step, only the feedback, input
    and readout trained) from the command line: every run has those settings, and a second
    sweep into the folder with other model settings is refused."""
    out = tmp_path / "s"
    common = ["sweep", "--task", "row-digits", "--topologies", "gw", "--feedback-sparsity", "0", "--seeds", "1",
              "--epochs", "1", "--num-areas", "3", "--area-size", "4", "--threads", "1", "--no-progress",
              "--out", str(out)]
    r = cli(*common, *PAPERS)
    assert r.returncode == 0, r.stderr
    (run,) = (out / "runs").iterdir()
    saved = json.loads((run / "config.json").read_text())
    assert (saved["feedback_step"], saved["areas"], saved["alpha"], saved["learn_timescales"], saved["readout"],
            saved["input_encoder"], saved["model"], saved["num_areas"]) == ("euler", "sparse", 0.5, False, "last",
                                                                            0, "scn", 3)
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert rows[0]["certificate"]["discrete_holds"] is True
    r = cli(*common, *PAPERS[:-1], "glu")
    assert r.returncode == 2 and r.stderr.startswith("error: --out") and "run_settings (readout) differ" in r.stderr, r.stderr


def test_the_design_space_axis_areas_by_area_size(tmp_path):
    """--shapes repeats every run for each number of areas x area size: the runs have those
    shapes, the rows and the table name them, and bad shapes are refused before anything runs."""
    out = tmp_path / "s"
    common = ["sweep", "--task", "row-digits", "--topologies", "gw", "--feedback-sparsity", "0", "--seeds", "1",
              "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(out)]
    r = cli(*common, "--shapes", "3x4", "4x3")
    assert r.returncode == 0, r.stderr
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["row-digits-3x4-gw-sparsity0-seed0", "row-digits-4x3-gw-sparsity0-seed0"]
    for name, (p, n) in zip(runs, [(3, 4), (4, 3)]):
        saved = json.loads((out / "runs" / name / "config.json").read_text())
        assert (saved["num_areas"], saved["area_size"]) == (p, n)
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert [(r["topology"], r["num_areas"], r["area_size"]) for r in rows] == [("gw 3x4", 3, 4), ("gw 4x3", 4, 3)]
    assert "gw 3x4" in (out / "summary.txt").read_text()
    for bad, message in ((["3by4"], "--shapes values must be PxN"), (["1x8"], "at least 2 areas"),
                         (["3x4", "3x4"], "--shapes needs distinct PxN values")):
        r = cli(*common[:-1], str(tmp_path / "other"), "--shapes", *bad)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "other").exists()


def test_the_workspace_size_axis(tmp_path):
    """--workspace-sizes repeats the GW star for each size of its workspace: the runs are GW nets
    with that workspace (sparse areas: sizes may differ), the rows name it, and what cannot work
    is refused before anything is written (another topology; svd areas of unequal sizes)."""
    out = tmp_path / "s"
    base = replace(BASE, num_areas=3, area_size=4, feedback_step="euler", areas="sparse", alpha=0.5,
                   learn_timescales=False, input_timescales=False, input_encoder=0, readout="last")
    logs = []
    rows = sweep("row-digits", ["gw"], [0.0], seeds=1, epochs=1, out=str(out), base=base, workspace_sizes=[4, 7],
                 log=logs.append)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["row-digits-ws4-gw-sparsity0-seed0", "row-digits-ws7-gw-sparsity0-seed0"]
    saved = json.loads((out / "runs" / runs[1] / "config.json").read_text())
    assert (saved["model"], saved["workspace_size"], saved["num_areas"]) == ("gw", 7, 3)
    assert [(r["topology"], r["workspace_size"]) for r in rows] == [("gw ws4", 4), ("gw ws7", 7)]
    assert rows[1]["trainable_parameters"] > rows[0]["trainable_parameters"]  # the larger workspace's blocks
    assert "gw ws7" in (out / "summary.txt").read_text()
    for kwargs, message in ((dict(topologies=["gw", "all"]), "--topologies must be gw alone"),
                            (dict(workspace_sizes=[4, 4]), "distinct positive sizes")):
        args = dict(topologies=["gw"], workspace_sizes=[4, 7])
        args.update(kwargs)
        with pytest.raises(UsageError, match=message):
            sweep("row-digits", args["topologies"], [0.0], seeds=1, epochs=1, out=str(tmp_path / "o"), base=base,
                  workspace_sizes=args["workspace_sizes"])
    with pytest.raises(UsageError, match="--workspace-sizes 7: "):
        sweep("row-digits", ["gw"], [0.0], seeds=1, epochs=1, out=str(tmp_path / "o"),
              base=replace(BASE, num_areas=3, area_size=4), workspace_sizes=[7])
    assert not (tmp_path / "o").exists()
