"""The package builds as a wheel and works when installed outside the source tree."""
from __future__ import annotations

import os
import pathlib
import platform
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import os, sys
sys.path.insert(0, os.environ["SITE"])
import torch, rnnofrnns, rnnofrnns.kernels.modular_rnn as tk
from rnnofrnns.ops import modular_rnn, modular_rnn_reference
assert rnnofrnns.__file__.startswith(os.environ["SITE"]), rnnofrnns.__file__
assert tk.__file__.startswith(os.environ["SITE"]), tk.__file__
assert rnnofrnns.cpu_extension_available()
from rnnofrnns.ops import _capability
assert rnnofrnns.cpu_capability() == _capability.choose(os.environ.get("RNNOFRNNS_CPU_CAPABILITY"),
                                                    _capability.cpu_supported(), _capability.installed())
torch.manual_seed(0)
drive = torch.randn(5, 3, 8, dtype=torch.float64)
W = 0.3 * torch.randn(2, 4, 4, dtype=torch.float64)
L = 0.3 * torch.randn(2, 4, 4, dtype=torch.float64)
idx = torch.tensor([[0, 1], [1, 0]])
out = modular_rnn(drive, W, L, idx, backend="cpu")
torch.testing.assert_close(out, modular_rnn_reference(drive, W, L, idx))
import rnnofrnns.experiments.training.loop as loop
assert loop.__file__.startswith(os.environ["SITE"]), loop.__file__
print("installed-ok", rnnofrnns.__file__)
"""


@pytest.mark.slow
def test_wheel_builds_and_imports_outside_source_tree(tmp_path):
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = wheel_dir.glob("rnnofrnns-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rnnofrnns/kernels/modular_rnn.py" in names
    for sub in ("ops/modular_rnn/functional.py", "ops/ensemble/functional.py", "models/modular.py",
                "experiments/training/loop.py", "experiments/superposition/geometry.py",
                "experiments/task_switching/experiment.py"):
        assert f"rnnofrnns/{sub}" in names, sub
    builds = sorted(n.split("/")[1].split(".")[0] for n in names if n.startswith("rnnofrnns/_C") and n.endswith(".so"))
    # one build of the kernels per CPU capability; the import picks the one this CPU runs
    assert builds == (["_C_avx2", "_C_avx512", "_C_default"] if platform.machine() in ("x86_64", "AMD64")
                      else ["_C_default"]), names
    top = {n.split("/")[0] for n in names}
    assert "kernels" not in top and "csrc" not in top and "tests" not in top, top

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = dict(os.environ, SITE=str(site))
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=run_dir, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "installed-ok" in res.stdout
