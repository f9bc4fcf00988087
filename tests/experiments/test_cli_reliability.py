"""Nothing lost, nothing silent at the command line: run folders, resume, divergence, bad input."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from hypothesis import given, strategies as st

from rnnofrnns.__main__ import main
from test_training import SMALL, cli

RUN = ["train", "--model", "gw", "--task", "row-digits", *SMALL]


def one_line_error(res, code):
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_a_copied_run_resumes_in_its_own_folder(stopped_run, tmp_path):
    before = {f: (stopped_run / f).read_bytes() for f in os.listdir(stopped_run)}
    copy = tmp_path / "b"
    shutil.copytree(stopped_run, copy)
    assert "out" not in json.loads((copy / "config.json").read_text())  # nothing points back to runs/a
    res = cli("train", "--out", str(copy), "--resume", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert (copy / "metrics.json").exists() and json.loads((copy / "metrics.json").read_text())["epochs"] == 2
    assert {f: (stopped_run / f).read_bytes() for f in os.listdir(stopped_run)} == before  # the original untouched
    moved = tmp_path / "moved"
    shutil.copytree(stopped_run, tmp_path / "tmp-a")
    os.rename(tmp_path / "tmp-a", moved)
    assert cli("evaluate", str(copy)).returncode == 0 and cli("evaluate", str(moved)).returncode == 0


def test_resume_refuses_settings_that_contradict_the_run(stopped_run):
    line = one_line_error(cli("train", "--out", str(stopped_run), "--resume", "--model", "lstm", "--task", "seq-digits",
                              "--no-progress"), 2)
    assert "--model lstm (the run has gw)" in line and "--task seq-digits (the run has row-digits)" in line
    line = one_line_error(cli("train", "--out", str(stopped_run), "--resume", "--overwrite"), 2)
    assert "contradict" in line


def test_a_non_empty_folder_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    assert cli(*RUN, "--epochs", "1", "--out", str(out)).returncode == 0
    assert (out / "connectivity.png").exists()
    stamp = (out / "metrics.json").read_bytes()
    line = one_line_error(cli("train", "--model", "lstm", "--epochs", "1", "--out", str(out), *SMALL), 2)
    assert "already holds a run" in line and "--overwrite" in line
    assert (out / "metrics.json").read_bytes() == stamp
    res = cli("train", "--model", "lstm", "--epochs", "1", "--out", str(out), "--overwrite", *SMALL)
    assert res.returncode == 0, res.stderr
    assert not (out / "connectivity.png").exists()  # the old gw run's plots are gone
    assert json.loads((out / "metrics.json").read_text())["model"] == "lstm"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    line = one_line_error(cli(*RUN, "--out", str(tmp_path / "mine"), "--overwrite"), 2)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me" and "notes.txt" in line


def test_a_diverging_run_stops_at_once_and_says_why(tmp_path):
    out = tmp_path / "run"
    res = cli(*RUN, "--epochs", "3", "--lr", "1e30", "--no-guarantee", "--clip", "0", "--alpha", "1",
              "--no-learn-timescales", "--no-input-timescales", "--out", str(out))
    line = one_line_error(res, 1)
    assert "the loss became" in line and "epoch 1, step" in line
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped"] == "diverged" and m["epoch"] == 1
    assert not (out / "best.pt").exists()  # no epoch finished


def test_superposition_and_task_switching_never_end_well_on_nan(tmp_path):
    res = cli("superposition", "--hidden", "2", "--features", "1", "--delay", "1", "--sparsities", "0.5", "--seeds",
              "2", "--steps", "50", "--lr", "1e30", "--out", str(tmp_path / "sup"), "--no-progress", "--threads", "1")
    line = one_line_error(res, 1)
    assert "diverged" in line and json.loads((tmp_path / "sup" / "metrics.json").read_text())["stopped"] == "diverged"
    res = cli("task-switching", "--blocks", "2", "--block-length", "0.05", "--dt", "0.01", "--tau-w", "0.01",
              "--tau-c", "0.01", "--init-scale", "1e30", "--out", str(tmp_path / "ts"), "--no-progress")
    assert "diverged" in one_line_error(res, 1)


def test_task_switching_with_blocks_shorter_than_the_record_interval(tmp_path):
    res = cli("task-switching", "--blocks", "2", "--block-length", "0.002", "--out", str(tmp_path / "ts"),
              "--no-progress", "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ts" / "task_switching.png").exists()


def test_truncated_checkpoints_are_named(stopped_run, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(stopped_run, copy)
    with open(copy / "last.pt", "r+b") as f:
        f.truncate(100)
    line = one_line_error(cli("train", "--out", str(copy), "--resume", "--no-progress"), 1)
    assert str(copy / "last.pt") in line and "not a readable checkpoint" in line
    shutil.copy(stopped_run / "best.pt", copy / "best.pt")
    with open(copy / "best.pt", "r+b") as f:
        f.truncate(100)
    line = one_line_error(cli("evaluate", str(copy)), 1)
    assert str(copy / "best.pt") in line


@pytest.mark.parametrize("args,match", [
    (["--device", "cuda"], "--device cuda: this torch"),
    (["--clip", "-1"], "--clip must be a number >= 0"),
    (["--topology", "bogus"], "--topology applies to --model scn"),
    (["--model", "scn", "--topology", "bogus"], "--topology 'bogus'"),
    (["--workspace-size", "0"], "--workspace-size must be a positive integer, got 0"),
    (["--epochs", "-1"], "--epochs must be a positive integer"),
    (["--lr", "0"], "--lr must be positive"),
    (["--alpha", "1.5"], "--alpha must be in (0, 1]"),
    (["--form", "lstm"], "--form must be hopfield or rate"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_train_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, match):
    if args[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    try:
        code = main(["train", "--out", str(out), *args])
    except SystemExit as e:  # argparse's own errors, in the same format
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("argv,match", [
    (["train", "--seed", "-1"], "--seed must be an integer >= 0"),
    (["train", "--lr-schedule", "linear"], "--lr-schedule must be none or cosine or step, got 'linear'"),
    (["train", "--model", "scn", "--topology", ""], "--topology ''"),
    (["train", "--num-areas", "10000000"], "--num-areas 10000000 x --area-size 32 with --batch-size"),
    (["train", "--batch-size", "10000000000"], "--batch-size 10000000000 on row-digits needs about"),
    (["train", "--threads", "2000"], "--threads must be at most the"),
    (["task-switching", "--init-gate", "nan"], "--init-gate must be a finite number, got nan"),
    (["task-switching", "--init-scale", "inf"], "--init-scale must be a finite number >= 0, got inf"),
    (["task-switching", "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["task-switching", "--d-in", "100000000000"], "--d-in 100000000000"),
    (["task-switching", "--threads", "2000"], "--threads must be at most the"),
    (["superposition", "--delay", "2", "2"], "--delay must not repeat a value"),
    (["superposition", "--sparsities", "0.5", "0.7", "0.5"], "--sparsities must not repeat a value"),
    (["superposition", "--seeds", "100000000"], "RNNs of --hidden 2"),
    (["superposition", "--threads", "2000"], "--threads must be at most the"),
])
def test_usage_errors_of_every_command_before_any_work(tmp_path, capsys, argv, match):
    """Nonsense and sizes beyond the machine: exit 2, one line naming the flag, no folder."""
    out = tmp_path / "a" / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "a").exists()


def test_backend_triton_on_cpu_without_the_interpreter(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0")
    line = one_line_error(cli(*RUN, "--backend", "triton", "--out", str(tmp_path / "o"), env=env), 2)
    assert "--backend triton" in line and not (tmp_path / "o").exists()


def test_out_naming_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["train", "--out", str(tmp_path / "f")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for fragment in ("(default: 100)", "(default: 0.01)", "default: runs/MODEL-TASK", "(default: 0.3)",
                     "(default: cayley)", "(default: svd)", "(default: 0.999)"):
        assert fragment in " ".join(text.split()), fragment


BAD = [["--epochs", "0"], ["--batch-size", "-2"], ["--lr", "-1"], ["--lr", "nan"], ["--clip", "-0.5"],
       ["--alpha", "0"], ["--gamma", "1"], ["--density", "0"], ["--feedback-sparsity", "1"], ["--num-areas", "0"],
       ["--area-size", "0"], ["--workspace-size", "-1"], ["--hidden-size", "0"], ["--dtype", "float16"],
       ["--nonlinearity", "sigmoid"], ["--model", "rnn"], ["--task", "imagenet"], ["--epochs", "x"],
       ["--device", "tpu"], ["--backend", "cuda-magic"], ["--threads", "0"], ["--weight-decay", "-1"],
       ["--feedback-step", "rk4"], ["--areas", "dense"], ["--sigma-max", "1"], ["--alpha", "0.1,0.2"],
       ["--alpha", "0.1,x"], ["--areas", "svd", "--workspace-size", "8"], ["--input-encoder", "-1"],
       ["--drive-scale", "lru"], ["--num-layers", "0"], ["--between-layers", "relu"], ["--alpha-log-spread", "0.5"], ["--alpha-log-spread", "0.5,0.1"]]
GOOD = [["--seed", "3"], ["--epochs", "2"], ["--no-guarantee"], ["--form", "rate"], ["--alpha", "0.3"],
        ["--model", "scn"], ["--num-areas", "3"], ["--no-progress"], ["--batch-size", "16"],
        ["--feedback-step", "euler", "--areas", "sparse", "--alpha", "0.5", "--no-learn-timescales",
         "--no-input-timescales"],
        ["--num-areas", "3", "--alpha", "0.2,0.3,0.05"], ["--sigma-max", "0.99"]]


@pytest.mark.parametrize("argv,message", [
    (["--feedback-step", "euler"], "need --feedback-step cayley: add --no-learn-timescales"),
    (["--alpha", "1"], "--alpha must be below 1 with --learn-timescales"),
    (["--feedback-step", "euler", "--no-learn-timescales", "--no-input-timescales", "--alpha", "0.2,0.3,0.4",
      "--num-areas", "3"],
     "per-area --alpha and --learn-timescales need --feedback-step cayley"),
    (["--feedback-step", "euler", "--no-learn-timescales", "--alpha", "0.5"],
     "--input-timescales needs --feedback-step cayley (its map keeps constant rates while the areas' follow the "
     "input): add --no-input-timescales for the euler step"),
    (["--alpha", "1", "--no-learn-timescales"], "--alpha must be below 1 with --input-timescales"),
    (["--input-timescales", "--alpha-min", "0.5"], "--alpha-min must be in (0, --alpha = 0.3) with --input-timescales"),
])
def test_settings_that_clash_with_the_defaults(tmp_path, capsys, argv, message):
    assert main(["train", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


@given(bad=st.sampled_from(BAD), extras=st.lists(st.sampled_from(GOOD), max_size=3), bad_last=st.booleans())
def test_random_bad_combinations(tmp_path_factory, bad, extras, bad_last):
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("cli")
    out = folder / "run"
    argv = ["train", "--out", str(out)] + [a for e in extras if e[0] != bad[0] for a in e]
    argv = argv + bad if bad_last else argv[:3] + bad + argv[3:]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
    lines = err.getvalue().strip().splitlines()
    assert code == 2, (argv, code, lines)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err.getvalue()
    assert os.listdir(folder) == []
