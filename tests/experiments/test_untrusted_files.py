"""Files users share cannot run code: checkpoints load with weights_only=True, CIFAR-10
batches through an unpickler that admits only what the format holds."""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from rnnofrnns.experiments._files import safe_torch_load
from rnnofrnns.experiments.training import data as rdata
from test_cli_reliability import one_line_error
from test_training import SMALL, cli


class _Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _write_cifar(folder, n=4, seed=1):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": [i % 10 for i in range(n)], b"batch_label": b"x"}, f)


def test_new_checkpoints_hold_only_what_weights_only_loads(stopped_run):
    ckpt = torch.load(stopped_run / "last.pt", weights_only=True)  # no allow-list needed
    assert isinstance(ckpt["rng"]["numpy"], dict) and ckpt["rng"]["numpy"]["keys"].dtype == torch.int64


@pytest.mark.parametrize("name,command", [("best.pt", "evaluate"), ("last.pt", "resume")])
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(stopped_run, tmp_path, name, command):
    copy = tmp_path / "run"
    shutil.copytree(stopped_run, copy)
    marker = tmp_path / "PWNED"
    ckpt = torch.load(copy / "last.pt", weights_only=True)
    ckpt["history"] = _Payload(marker)
    torch.save(ckpt, copy / name)
    res = cli("evaluate", str(copy)) if command == "evaluate" else \
        cli("train", "--out", str(copy), "--resume", "--no-progress")
    line = one_line_error(res, 1)
    assert str(copy / name) in line and "posix.system" in line and "refused without running it" in line, line
    assert "weights_only=False" not in line
    assert not marker.exists()


def test_checkpoints_of_earlier_versions_still_resume(stopped_run, tmp_path):
    """Before 2026-12-02 a checkpoint held numpy's generator state as numpy's own tuple."""
    copy = tmp_path / "old"
    shutil.copytree(stopped_run, copy)
    ckpt = torch.load(copy / "last.pt", weights_only=True)
    np.random.seed(3)
    ckpt["rng"]["numpy"] = np.random.get_state()
    torch.save(ckpt, copy / "last.pt")
    res = cli("train", "--out", str(copy), "--resume", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert json.loads((copy / "metrics.json").read_text())["epochs"] == 2


def test_safe_torch_load_names_the_file_in_one_line(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"f": _Payload(tmp_path / "PWNED")}, path)
    with pytest.raises(ValueError, match=r"x\.pt is not a thing of rnnofrnns: it refers to posix\.system") as e:
        safe_torch_load(str(path), "thing", ValueError)
    assert "\n" not in str(e.value) and not (tmp_path / "PWNED").exists()
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"x\.pt is not a readable thing"):
        safe_torch_load(str(path), "thing", ValueError)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x = np.arange(4 * 3072, dtype=np.int64).reshape(4, 3072).astype(np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": [1, 2, 3, 4], b"filenames": [b"a", b"b", b"c", b"d"]}, f,
                        protocol=protocol)
    d = rdata.load_task("scifar10", str(tmp_path))
    assert d.x_test.shape == (4, 1024, 3) and d.y_test.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("payload", ["call", "object-array"])
def test_a_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    marker = tmp_path / "PWNED"
    bad = _Payload(marker) if payload == "call" else np.array([_Payload(marker)], dtype=object)
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": bad, b"labels": [0]}, f)
    with pytest.raises(rdata.DataError, match="data_batch_2 is not a CIFAR-10 python batch") as e:
        rdata.load_task("scifar10", str(tmp_path))
    assert "refused without running it" in str(e.value)
    assert not marker.exists()


def test_evaluate_of_a_shared_run_whose_data_dir_holds_a_crafted_batch(tmp_path):
    data = tmp_path / "data"
    _write_cifar(data / "cifar-10-batches-py")
    out = tmp_path / "run"
    res = cli("train", "--model", "gw", "--task", "scifar10", "--data-dir", str(data), "--epochs", "1",
              "--out", str(out), *SMALL)
    assert res.returncode == 0, res.stderr
    marker = tmp_path / "PWNED"
    with open(data / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f)
    assert json.loads((out / "config.json").read_text())["data_dir"] == str(data)
    line = one_line_error(cli("evaluate", str(out)), 1)
    assert "test_batch is not a CIFAR-10 python batch" in line and "refused without running it" in line, line
    assert not marker.exists()
