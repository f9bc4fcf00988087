"""Run folders cannot be mixed, clobbered or half-deleted: a lock per run, temporaries created
exclusively and always cleaned up, --overwrite that removes only what it checked, a full disk
said in one line, runs stopped early that resume and evaluate, untrusted metadata files."""
from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from rnnofrnns.experiments import _files
from rnnofrnns.experiments.errors import RunError, UsageError
from rnnofrnns.experiments.training import data as rdata
from rnnofrnns.experiments.training.config import TrainConfig
from rnnofrnns.experiments.training.loop import train
from rnnofrnns.experiments.training.run_folder import prepare_out
from test_cli_reliability import RUN, one_line_error
from test_training import cli

TS = ["task-switching", "--blocks", "2", "--block-length", "0.002", "--no-progress", "--threads", "1"]
SUP = ["superposition", "--hidden", "2", "--features", "1", "--delay", "1", "--sparsities", "0.5", "--seeds", "1",
       "--steps", "5", "--no-progress", "--threads", "1"]


def snapshot(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder)) if (folder / f).is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    res = cli(*RUN, "--epochs", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


def test_a_second_run_into_a_held_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    with _files.hold_run_folder(str(out)):  # held by this process; the commands run in others
        line = one_line_error(cli(*RUN, "--epochs", "1", "--out", str(out), process=True), 2)
        assert "in use by another run" in line
        line = one_line_error(cli(*TS, "--out", str(out), process=True), 2)
        assert "in use by another run" in line
    assert os.listdir(out) == []
    assert cli(*RUN, "--epochs", "1", "--out", str(out)).returncode == 0  # free again


@pytest.mark.parametrize("argv", [["demo", "--epochs", "1", "--no-progress", "--threads", "1"], TS, SUP])
def test_no_command_replaces_another_commands_run(finished_run, tmp_path, argv):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    before = snapshot(copy)
    line = one_line_error(cli(*argv, "--out", str(copy)), 2)
    assert str(copy) in line
    assert snapshot(copy) == before


def test_task_switching_and_superposition_refuse_each_others_runs(tmp_path):
    ts, sup = tmp_path / "ts", tmp_path / "sup"
    assert cli(*TS, "--out", str(ts)).returncode == 0
    assert cli(*SUP, "--out", str(sup)).returncode == 0
    assert json.loads((ts / "metrics.json").read_text())["command"] == "task-switching"
    assert cli(*TS, "--out", str(ts)).returncode == 0  # a rerun replaces its own run
    before = snapshot(sup)
    assert "never writes" in one_line_error(cli(*TS, "--out", str(sup)), 2)
    assert snapshot(sup) == before
    assert "never writes" in one_line_error(cli(*SUP, "--out", str(ts)), 2)


def test_the_demo_replaces_only_its_own_run(tmp_path):
    out = tmp_path / "demo"
    demo = ["demo", "--epochs", "1", "--no-progress", "--threads", "1", "--out", str(out)]
    assert cli(*demo).returncode == 0
    assert cli(*demo).returncode == 0
    # the demo run of an earlier release (the model's defaults were others) is the demo's too
    config = json.loads((out / "config.json").read_text())
    config.update(feedback_step="euler", areas="sparse", alpha=0.5, learn_timescales=False, readout="last",
                  input_timescales=False, input_encoder=0)
    (out / "config.json").write_text(json.dumps(config))
    assert cli(*demo).returncode == 0
    assert json.loads((out / "config.json").read_text())["input_encoder"] == 16
    # a run of another task is not
    config.update(task="seq-digits")
    (out / "config.json").write_text(json.dumps(config))
    assert cli(*demo).returncode == 2


def test_writes_never_follow_a_planted_link(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside.txt"
    run.mkdir()
    outside.write_text("keep me")
    # the names temporaries had before, and the target itself, as links to a file outside
    os.symlink(outside, run / f"config.json.tmp-{os.getpid()}")
    os.symlink(outside, run / "metrics.json")
    _files.atomic_write_json({"a": 1}, str(run / "config.json"))
    _files.atomic_write_json({"b": 2}, str(run / "metrics.json"))
    assert outside.read_text() == "keep me"
    assert not (run / "metrics.json").is_symlink() and json.loads((run / "metrics.json").read_text()) == {"b": 2}
    assert json.loads((run / "config.json").read_text()) == {"a": 1}
    assert sorted(os.listdir(run)) == ["config.json", f"config.json.tmp-{os.getpid()}", "metrics.json"]


def test_overwrite_checks_everything_before_deleting_anything(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    (copy / ".metrics.json.abc123.tmp").mkdir()  # a folder named like a temporary file
    before = snapshot(copy)
    line = one_line_error(cli(*RUN, "--epochs", "1", "--out", str(copy), "--overwrite"), 2)
    assert ".metrics.json.abc123.tmp is not a regular file" in line
    assert snapshot(copy) == before
    (copy / ".metrics.json.abc123.tmp").rmdir()
    # only the entries that were checked are removed: a file written after the check stays
    checked = prepare_out(str(copy), resume=False, overwrite=True)
    (copy / "best.pt.tmp-1").write_bytes(b"written after the check")
    _files.remove_entries(str(copy), checked)
    assert os.listdir(copy) == ["best.pt.tmp-1"]


def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    def no_space(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_files.torch, "save", no_space)
    with pytest.raises(RunError, match=r"^no space left on device while writing .*best\.pt$"):
        _files.atomic_save({}, str(tmp_path / "best.pt"))
    assert os.listdir(tmp_path) == []
    out = tmp_path / "run"
    cfg = TrainConfig(model="gw", task="row-digits", epochs=1, num_areas=4, area_size=8, progress=False, threads=1,
                      out=str(out))
    with pytest.raises(RunError, match="no space left on device while writing .*last.pt|best.pt"):
        train(cfg, log=lambda *a: None)
    assert not [f for f in os.listdir(out) if _files.temporary_of(f)]
    stop = json.loads((out / "metrics.json").read_text())
    assert stop["stopped"] == "error" and "no space left on device" in stop["reason"]


def test_a_run_stopped_in_its_first_epoch_resumes_from_the_start(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    for name in os.listdir(copy):
        if name != "config.json":
            os.remove(copy / name)
    res = cli("train", "--out", str(copy), "--resume", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "starting from epoch 1" in res.stdout
    assert json.loads((copy / "metrics.json").read_text())["epochs"] == 1


def test_evaluate_of_a_run_that_stopped(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    (copy / "metrics.json").write_text(json.dumps(dict(stopped="interrupted", reason="interrupted",
                                                       last_checkpoint="last.pt")))
    res = cli("evaluate", str(copy))
    assert res.returncode == 0, res.stderr
    assert "did not finish (interrupted" in res.stdout and "test accuracy" in res.stdout


def test_metadata_that_is_not_a_regular_file_is_refused(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    os.remove(copy / "metrics.json")
    os.symlink("/dev/zero", copy / "metrics.json")
    line = one_line_error(cli("evaluate", str(copy)), 1)
    assert "metrics.json is not a regular file" in line
    os.remove(copy / "metrics.json")
    os.mkfifo(copy / "metrics.json")
    assert "metrics.json is not a regular file" in one_line_error(cli("evaluate", str(copy)), 1)


def test_data_files_that_are_not_regular_files_or_unreadable(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(rdata.DataError, match="train-images-idx3-ubyte is not a regular file"):
        rdata.load_task("smnist", str(tmp_path))
    os.remove(tmp_path / "train-images-idx3-ubyte")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"x")
    real_open = open

    def denied(path, *a, **k):
        if str(path).endswith("idx3-ubyte"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(rdata.DataError, match=r"cannot read .*train-images-idx3-ubyte: permission denied"):
        rdata.load_task("smnist", str(tmp_path))


@pytest.mark.parametrize("key,value,match", [
    ("epochs", "5", r"'epochs' must be an integer, got \"5\""),
    ("epochs", -5, r"'epochs' must be a positive integer, got -5"),
    ("lr", None, r"'lr' must be an integer or a number, got null"),
    ("surprise", 1, r"unknown setting 'surprise'"),
])
def test_a_hand_edited_config_json_is_named_with_its_key(finished_run, tmp_path, key, value, match):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg[key] = value
    (copy / "config.json").write_text(json.dumps(cfg))
    for argv in (["evaluate", str(copy)], ["train", "--out", str(copy), "--resume", "--no-progress"]):
        line = one_line_error(cli(*argv), 1)
        assert str(copy / "config.json") in line and __import__("re").search(match, line), line


def test_no_empty_folder_is_left_by_a_failed_start(tmp_path):
    res = cli("task-switching", "--network", "image", "--features", str(tmp_path / "missing.pt"), "--no-progress",
              cwd=tmp_path)
    assert res.returncode != 0
    assert not (tmp_path / "runs").exists()
    out = tmp_path / "a" / "b" / "run"
    res = cli(*RUN, "--epochs", "1", "--out", str(out), "--data-dir", str(tmp_path / "nothing"), "--task", "smnist")
    assert res.returncode != 0 and not (tmp_path / "a").exists()


def test_out_must_name_a_usable_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in one_line_error(cli(*RUN, "--out", str(tmp_path / "file" / "run")), 2)
    assert "--out must name a folder" in one_line_error(cli(*RUN, "--out", ""), 2)


def test_hold_run_folder_removes_what_it_created_on_error(tmp_path):
    with pytest.raises(UsageError):
        with _files.hold_run_folder(str(tmp_path / "x" / "y")):
            raise UsageError("stop")
    assert os.listdir(tmp_path) == []
