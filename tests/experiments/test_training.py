"""The main job: data sets, the train/evaluate CLI, checkpoints, resume, distributed training."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnnofrnns.experiments.training import data as rdata
from rnnofrnns.experiments.training.build import baseline_hidden_size, build_model, trainable_parameters
from rnnofrnns.experiments.training.config import TrainConfig
from rnnofrnns.experiments.training.loop import lr_at
from rnnofrnns.models import GlobalWorkspaceNet, RNNClassifier
from rnnofrnns.models.readouts import READOUTS
from run_cli import cli

SMALL = ["--num-areas", "4", "--area-size", "8", "--no-progress", "--threads", "1"]


# --- data ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task,T,F,n_train_val,n_test", [
    ("row-digits", 8, 8, 1437, 360), ("seq-digits", 64, 1, 1437, 360), ("mnist1d", 40, 1, 4000, 1000),
    ("smnist-5k", 784, 1, 4000, 1000),
])
def test_builtin_tasks(task, T, F, n_train_val, n_test):
    d = rdata.load_task(task, seed=0)
    assert d.x_train.shape[1:] == (T, F) and d.x_test.shape == (n_test, T, F)
    assert len(d.y_train) + len(d.y_val) == n_train_val and len(d.y_val) == round(0.1 * n_train_val)
    assert d.num_classes == 10 and d.x_train.dtype == torch.float32
    assert abs(float(d.x_train.mean())) < 1e-3 and abs(float(d.x_train.std()) - 1) < 1e-2
    again = rdata.load_task(task, seed=0)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_val, d.y_val)
    other = rdata.load_task(task, seed=1)
    assert torch.equal(other.y_test, d.y_test)            # the test split is fixed
    assert not torch.equal(other.y_val, d.y_val)          # the validation split follows the seed


def test_the_digits_are_scikit_learns_digits():
    """Read from scikit-learn's file without importing it: the same pixels and labels as
    load_digits, in the same order."""
    from sklearn.datasets import load_digits

    pixels, labels = rdata._digits_table()
    d = load_digits()
    assert np.array_equal(pixels, d.data) and np.array_equal(labels, d.target) and labels.dtype == np.int64


def test_the_digits_without_scikit_learn_are_one_line(monkeypatch):
    real = rdata.importlib.util.find_spec
    monkeypatch.setattr(rdata.importlib.util, "find_spec", lambda name: None if name == "sklearn" else real(name))
    with pytest.raises(rdata.DataError, match="row-digits and seq-digits need scikit-learn"):
        rdata.load_task("row-digits")


def test_permuted_mnist5k_is_a_fixed_permutation_of_the_pixels():
    s, p = rdata.load_task("smnist-5k"), rdata.load_task("psmnist-5k")
    assert torch.equal(s.y_test, p.y_test)
    a, b = s.x_test[:5, :, 0], p.x_test[:5, :, 0]
    assert not torch.equal(a, b)
    torch.testing.assert_close(a.sort(1).values, b.sort(1).values)


def write_idx(path, array, magic, gz=False):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open(path + ".gz", "wb") if gz else open(path, "wb")) as f:
        f.write(payload)


def fake_mnist(folder, gz=False, n_train=30, n_test=12):
    rng = np.random.default_rng(0)
    write_idx(os.path.join(folder, "train-images-idx3-ubyte"), rng.integers(0, 256, (n_train, 28, 28)), 2051, gz)
    write_idx(os.path.join(folder, "train-labels-idx1-ubyte"), rng.integers(0, 10, n_train), 2049, gz)
    write_idx(os.path.join(folder, "t10k-images-idx3-ubyte"), rng.integers(0, 256, (n_test, 28, 28)), 2051, gz)
    write_idx(os.path.join(folder, "t10k-labels-idx1-ubyte"), np.arange(n_test) % 10, 2049, gz)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("task", ["smnist", "psmnist"])
def test_mnist_from_data_dir(tmp_path, gz, task):
    fake_mnist(str(tmp_path), gz)
    d = rdata.load_task(task, str(tmp_path))
    assert d.x_test.shape == (12, 784, 1) and len(d.y_train) + len(d.y_val) == 30
    assert d.y_test.tolist() == [i % 10 for i in range(12)]


def test_mnist_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(rdata.DataError, match="train-images-idx3-ubyte.*" + str(tmp_path)):
        rdata.load_task("smnist", str(tmp_path))
    fake_mnist(str(tmp_path))
    path = os.path.join(tmp_path, "t10k-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(rdata.DataError, match="t10k-images-idx3-ubyte is corrupt"):
        rdata.load_task("smnist", str(tmp_path))
    with open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x01garbage")
    with pytest.raises(rdata.DataError, match="not an idx file"):
        rdata.load_task("smnist", str(tmp_path))
    with pytest.raises(rdata.DataError, match="--data-dir"):
        rdata.load_task("psmnist", None)


def test_cifar10_from_data_dir(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": list(range(4))}, f)
    d = rdata.load_task("scifar10", str(tmp_path))
    assert d.x_test.shape == (4, 1024, 3) and len(d.y_train) + len(d.y_val) == 20
    # one RGB pixel per step: feature c of step t is channel c of pixel t. Normalisation is a
    # positive affine map per channel, so the order of the steps within a channel is kept.
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"][0].astype(np.float32).reshape(3, 1024)
    x0 = d.x_test[0].numpy()  # [1024, 3]
    for c in range(3):
        assert np.array_equal(np.sign(np.diff(x0[:50, c])), np.sign(np.diff(raw[c, :50])))
    (folder / "data_batch_3").unlink()
    with pytest.raises(rdata.DataError, match="data_batch_3"):
        rdata.load_task("scifar10", str(tmp_path))
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(rdata.DataError, match="data_batch_3 is not a CIFAR-10 python batch"):
        rdata.load_task("scifar10", str(tmp_path))


# --- models of the CLI --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_baselines_have_a_comparable_parameter_count(kind):
    cfg = TrainConfig(model=kind)
    gw = trainable_parameters(build_model(TrainConfig(model="gw"), 8, 10))
    base = trainable_parameters(build_model(cfg, 8, 10))
    assert 0.9 * gw <= base <= gw
    h = baseline_hidden_size(kind, 8, 10, gw)
    assert trainable_parameters(RNNClassifier(kind, 8, h + 1, 10)) > gw


# --- the CLI ------------------------------------------------------------------------------

@pytest.mark.parametrize("args,code,match", [
    (["train", "--task", "imagenet"], 2, "invalid choice: 'imagenet'"),
    (["train", "--model", "transformer"], 2, "invalid choice: 'transformer'"),
    (["train", "--epochs", "0"], 2, "--epochs must be a positive integer"),
    (["train", "--area-size", "-3", "--out", "OUT"], 2, "--area-size must be a positive integer"),
    (["train", "--batch-size", "0", "--out", "OUT"], 2, "--batch-size must be a positive integer"),
    (["train", "--lr", "-1", "--out", "OUT"], 2, "--lr must be positive"),
    (["train", "--task", "smnist", "--data-dir", "EMPTY", "--out", "OUT"], 1, "train-images-idx3-ubyte"),
    (["train", "--recompute-every", "0", "--out", "OUT"], 2, "--recompute-every: must be a positive number of steps"),
    (["train", "--recompute-every", "auto", "--out", "OUT"], 2, "--recompute-every='auto' needs --memory-budget-gb"),
    (["train", "--model", "gru", "--recompute-every", "8", "--out", "OUT"], 2,
     "--recompute-every is for the certified nets (gw, scn), not --model gru"),
    (["evaluate", "NOWHERE"], 1, "config.json is missing"),
    (["train", "--resume", "--out", "NOWHERE"], 2, "nothing to resume"),
])
def test_bad_arguments_end_with_one_line(tmp_path, args, code, match):
    (tmp_path / "EMPTY").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "EMPTY")).replace("OUT", str(tmp_path / "out"))
            .replace("NOWHERE", str(tmp_path / "nowhere")) for a in args]
    res = cli(*args)
    assert res.returncode == code
    assert "Traceback" not in res.stderr
    assert match in res.stderr


def test_train_writes_everything_and_evaluate_reproduces(tmp_path):
    out = tmp_path / "run"
    res = cli("train", "--model", "gw", "--task", "row-digits", "--epochs", "2", "--out", str(out), *SMALL)
    assert res.returncode == 0, res.stderr
    for name in ("config.json", "metrics.json", "best.pt", "last.pt", "training_curves.png", "connectivity.png",
                 "ablation.png"):
        assert (out / name).exists(), name
    assert not list(out.glob("*.tmp*"))
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["test_accuracy"] <= 1 and len(m["ablation_test_accuracy"]) == 4
    assert m["certificate"]["holds"] and m["certificate"]["discrete_holds"]
    assert m["trainable_parameters"] > 0 and m["epochs"] == 2 and m["wall_time_s"] > 0
    assert "test accuracy" in res.stdout and "ablation" in res.stdout and "plots:" in res.stdout
    ev = cli("evaluate", str(out))
    assert ev.returncode == 0, ev.stderr
    assert "matches metrics.json: True" in ev.stdout


def test_baseline_run(tmp_path):
    out = tmp_path / "gru"
    res = cli("train", "--model", "gru", "--task", "row-digits", "--epochs", "1", "--out", str(out), *SMALL)
    assert res.returncode == 0, res.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["certificate"] is None and m["ablation_test_accuracy"] == []


@pytest.mark.parametrize("schedule", ["none", "cosine"])
def test_resume_continues_exactly(tmp_path, schedule):
    common = ["train", "--model", "gw", "--task", "row-digits", "--epochs", "3", "--lr-schedule", schedule, *SMALL]
    a, b = tmp_path / "straight", tmp_path / "interrupted"
    assert cli(*common, "--out", str(a)).returncode == 0
    res = cli(*common, "--out", str(b), "--stop-after", "1")
    assert res.returncode == 0 and "--resume" in res.stdout
    assert json.loads((b / "config.json").read_text())["epochs"] == 3 and not (b / "metrics.json").exists()
    res = cli("train", "--out", str(b), "--resume", "--epochs", "3", "--no-progress")
    assert res.returncode == 0, res.stderr
    sa = torch.load(a / "last.pt", weights_only=False)
    sb = torch.load(b / "last.pt", weights_only=False)
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(sa["history"]) == strip(sb["history"])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["test_accuracy"] == mb["test_accuracy"]
    assert [e["lr"] for e in sb["history"]] == [lr_at(0.01, schedule, e, 3) for e in range(3)]


def test_learning_rate_schedules():
    assert [lr_at(0.1, "none", e, 4) for e in range(4)] == [0.1] * 4
    assert lr_at(0.1, "cosine", 0, 4) == 0.1 and abs(lr_at(0.1, "cosine", 2, 4) - 0.05) < 1e-15
    assert 0 < lr_at(0.1, "cosine", 3, 4) < 0.015
    steps = [lr_at(1.0, "step", e, 9) for e in range(9)]
    assert steps[:3] == [1.0] * 3 and all(abs(v - 0.1) < 1e-15 for v in steps[3:6])
    assert all(abs(v - 0.01) < 1e-15 for v in steps[6:])


def test_two_gloo_processes_match_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) takes the same global batches as one process:
    the parameters after an epoch agree to rounding."""
    common = ["--model", "gw", "--task", "row-digits", "--epochs", "1", "--batch-size", "64", "--dtype", "float64",
              *SMALL]
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert cli("train", *common, "--out", str(single)).returncode == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "rnnofrnns", "train", *common, "--out", str(multi)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    s1 = torch.load(single / "last.pt", weights_only=False)["model"]
    s2 = torch.load(multi / "last.pt", weights_only=False)["model"]
    for k in s1:
        torch.testing.assert_close(s2[k], s1[k], rtol=1e-9, atol=1e-11, msg=lambda m: f"{k}: {m}")
    changed = any(not torch.equal(s1[k], build_model(TrainConfig(model="gw", num_areas=4, area_size=8,
                                                                 dtype="float64"), 8, 10).state_dict()[k])
                  for k in s1)
    assert changed  # training did move the parameters
    assert res.stdout.count("epoch   1/1") == 1  # only rank 0 logs


def test_config_of_a_run_from_before_the_cayley_step_reads_as_it_ran(tmp_path):
    """A config.json without feedback_step / areas / sigma_max / learn_timescales is a run of
    the Euler step with sparse areas: evaluate and --resume must rebuild that model."""
    from rnnofrnns.experiments.training.config import LEGACY_SETTINGS, read_run_config

    old = TrainConfig().run_settings()
    for name in LEGACY_SETTINGS:
        old.pop(name)
    old["alpha"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = read_run_config(str(tmp_path))
    assert (cfg.feedback_step, cfg.areas, cfg.learn_timescales) == ("euler", "sparse", False)
    cfg.validate()
    model = build_model(cfg, 8, 10)
    assert model.rnn.feedback_step == "euler" and model.rnn.area_kind == "sparse"
    assert cfg.readout == "last" and type(model.readout).__name__ == "LastStateReadout"


def test_per_area_alpha_round_trips_through_config_json(tmp_path):
    from rnnofrnns.experiments.training.config import read_run_config

    cfg = TrainConfig(num_areas=3, alpha=(0.2, 0.3, 0.05))
    (tmp_path / "config.json").write_text(json.dumps(cfg.run_settings()))
    back = read_run_config(str(tmp_path))
    assert back.alpha == (0.2, 0.3, 0.05)
    back.validate()
    assert build_model(back, 8, 10).rnn.alpha == (0.2, 0.3, 0.05)


def test_the_default_gw_net_is_the_certified_configuration_of_the_study():
    model = build_model(TrainConfig(), 1, 10)
    rnn = model.rnn
    assert (rnn.area_kind, rnn.feedback_step, rnn.learn_timescales, rnn.sigma_max) == ("svd", "cayley", True, 0.999)
    assert (rnn.input_timescales, rnn.input_encoder, type(model.readout).__name__) == (True, 16, "RecentGLUReadout")
    cert = model.certify()
    assert cert.holds and cert.discrete_holds
    # the library's GlobalWorkspaceNet without options is the same network as train's default
    plain = GlobalWorkspaceNet(1, 10, generator=torch.Generator().manual_seed(0))
    assert plain.state_dict().keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(plain.state_dict()[name], value), name


def test_a_run_with_the_input_path_options_trains_and_evaluates(tmp_path):
    out = tmp_path / "run"
    res = cli("train", "--model", "gw", "--task", "row-digits", "--epochs", "1", "--input-encoder", "4",
              "--drive-scale", "rate", "--alpha-log-spread", "0.05,0.5", *SMALL, "--out", str(out))
    assert res.returncode == 0, res.stderr
    saved = json.loads((out / "config.json").read_text())
    assert (saved["input_encoder"], saved["drive_scale"], saved["alpha_log_spread"]) == (4, "rate", [0.05, 0.5])
    res = cli("evaluate", str(out), "--threads", "1")
    assert res.returncode == 0 and "matches metrics.json: True" in res.stdout, res.stdout + res.stderr


def test_a_run_in_recomputed_segments_trains_and_evaluates(tmp_path):
    out = tmp_path / "run"
    res = cli("train", "--model", "gw", "--task", "row-digits", "--epochs", "1", "--recompute-every", "5",
              *SMALL, "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "config.json").read_text())["recompute_every"] == 5
    res = cli("evaluate", str(out), "--threads", "1")
    assert res.returncode == 0 and "matches metrics.json: True" in res.stdout, res.stdout + res.stderr


def test_a_run_with_stacked_layers_trains_and_evaluates(tmp_path):
    out = tmp_path / "run"
    res = cli("train", "--model", "gw", "--task", "row-digits", "--epochs", "1", "--num-layers", "2",
              "--between-layers", "tanh", *SMALL, "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "2 layers" in res.stdout and "ablation" in res.stdout, res.stdout
    cert = json.loads((out / "metrics.json").read_text())["certificate"]
    assert cert["discrete_holds"] and len(cert["layer_step_factors"]) == 2 and len(cert["coupling_gains"]) == 1
    assert len(json.loads((out / "metrics.json").read_text())["ablation_test_accuracy"]) == 8
    res = cli("evaluate", str(out), "--threads", "1")
    assert res.returncode == 0 and "matches metrics.json: True" in res.stdout, res.stdout + res.stderr


def test_a_run_with_input_timescales_trains_evaluates_and_resumes(tmp_path):
    out = tmp_path / "run"
    res = cli("train", "--model", "gw", "--task", "row-digits", "--epochs", "2", "--stop-after", "1",
              "--input-timescales", "--alpha-min", "0.05", *SMALL, "--out", str(out))
    assert res.returncode == 0, res.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["input_timescales"] is True and saved["alpha_min"] == 0.05
    res = cli("train", "--out", str(out), "--resume", "--epochs", "2")
    assert res.returncode == 0, res.stderr
    assert "input-driven area rates in [0.05, 1]" in res.stdout, res.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["certificate"]["discrete_holds"] and metrics["certificate"]["area_rate_range"] == [0.05, 1.0]
    res = cli("evaluate", str(out), "--threads", "1")
    assert res.returncode == 0 and "matches metrics.json: True" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("model", ["gw", "gru"])
def test_a_run_with_a_pooled_readout_trains_and_evaluates(tmp_path, model):
    out = tmp_path / "run"
    res = cli("train", "--model", model, "--task", "row-digits", "--epochs", "1", "--readout", "glu", *SMALL,
              "--out", str(out))
    assert res.returncode == 0, res.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["readout"] == "glu"
    res = cli("evaluate", str(out), "--threads", "1")
    assert res.returncode == 0 and "matches metrics.json: True" in res.stdout, res.stdout + res.stderr


def test_the_baselines_budget_counts_the_readout():
    """The GRU/LSTM of the equal-parameter comparison get the certified net's readout, and its
    parameters count against the same budget."""
    for readout in READOUTS:
        cfg = TrainConfig(model="gw", num_areas=4, area_size=8, readout=readout)
        budget = trainable_parameters(build_model(cfg, 1, 10))
        for kind in ("gru", "lstm"):
            net = build_model(TrainConfig(model=kind, num_areas=4, area_size=8, readout=readout), 1, 10)
            h = net.rnn.hidden_size
            assert type(net.readout) is type(build_model(cfg, 1, 10).readout)
            assert trainable_parameters(net) <= budget < trainable_parameters(
                type(net)(kind, 1, h + 1, 10, readout=readout))
