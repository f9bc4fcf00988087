"""The kernels' builds per CPU capability: which one loads, forcing one, and that every build
the machine can run computes the same as the reference and as the others."""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnofrnns
from rnnofrnns.ops import _capability
from rnnofrnns.ops._capability import CAPABILITIES, CapabilityError, choose
from run_cli import cli

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("capability_probe.py")
X86 = platform.machine() in ("x86_64", "AMD64")
# The builds this machine can run (a subprocess can force each one).
RUNNABLE = [c for c in CAPABILITIES if c in _capability.cpu_supported() and c in _capability.installed()]

pytestmark = pytest.mark.skipif(not rnnofrnns.cpu_extension_available(), reason="needs the compiled extension")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("RNNOFRNNS_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=ROOT,
                          timeout=300)


def test_choose_takes_the_best_supported_and_installed():
    assert choose(None, CAPABILITIES, CAPABILITIES) == "avx512"
    assert choose("", ("avx2", "default"), CAPABILITIES) == "avx2"
    assert choose(None, CAPABILITIES, ("avx2", "default")) == "avx2"
    assert choose(None, ("default",), CAPABILITIES) == "default"
    assert choose(None, CAPABILITIES, ()) is None


def test_choose_forced():
    assert choose("AVX2", CAPABILITIES, CAPABILITIES) == "avx2"
    assert choose(" default ", CAPABILITIES, CAPABILITIES) == "default"
    with pytest.raises(CapabilityError, match=r"RNNOFRNNS_CPU_CAPABILITY: expected one of avx512, avx2, default, "
                                              r"got 'sse'"):
        choose("sse", CAPABILITIES, CAPABILITIES)
    with pytest.raises(CapabilityError, match=r"RNNOFRNNS_CPU_CAPABILITY=avx512: this CPU runs only avx2, default"):
        choose("avx512", ("avx2", "default"), CAPABILITIES)
    with pytest.raises(CapabilityError, match=r"avx2: that build is not installed \(installed: default\)"):
        choose("avx2", CAPABILITIES, ("default",))


def test_every_capability_is_built_on_x86():
    """setup.py compiles every kernel once per capability (unless told otherwise)."""
    if os.environ.get("RNNOFRNNS_BUILD_CAPABILITIES"):
        pytest.skip("RNNOFRNNS_BUILD_CAPABILITIES chose the builds")
    assert _capability.installed() == (CAPABILITIES if X86 else ("default",))


def test_the_loaded_build_is_the_best_one_here():
    expected = choose(os.environ.get("RNNOFRNNS_CPU_CAPABILITY"), _capability.cpu_supported(),
                      _capability.installed())
    assert rnnofrnns.cpu_capability() == expected
    assert expected in RUNNABLE


@pytest.mark.skipif(not (X86 and shutil.which("objdump")), reason="needs x86-64 and objdump")
@pytest.mark.parametrize("capability,forbidden", [("avx2", "zmm"), ("default", "ymm")])
def test_a_build_uses_no_wider_registers_than_its_capability(capability, forbidden):
    """The AVX2 build must load and run on a CPU without AVX-512 (and the portable one without
    AVX): not one instruction of theirs may touch a wider register."""
    spec = importlib.util.find_spec(f"rnnofrnns._C_{capability}")
    if spec is None:
        pytest.skip(f"the {capability} build is not installed")
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", spec.origin], capture_output=True, text=True,
                         check=True).stdout
    assert f"%{forbidden}" not in asm
    if capability == "avx2":
        assert "%ymm" in asm  # the check above means something only if the build is vectorised


def test_forcing_and_its_errors():
    """A forced build loads; one that cannot run is a one-line ValueError when the cpu kernels
    are used (also by default on CPU tensors), never a silent fallback to the reference."""
    if "avx2" in RUNNABLE:
        r = _python("import rnnofrnns; print(rnnofrnns.cpu_capability())", RNNOFRNNS_CPU_CAPABILITY="avx2")
        assert r.returncode == 0 and r.stdout.strip() == "avx2", r.stderr
        # ATen's own override lowers what the CPU is taken to support
        r = _python("import rnnofrnns; print(rnnofrnns.cpu_capability())", ATEN_CPU_CAPABILITY="avx2")
        assert r.returncode == 0 and r.stdout.strip() == "avx2", r.stderr
    code = ("import torch, rnnofrnns\n"
            "from rnnofrnns.ops import modular_rnn\n"
            "for call in (rnnofrnns.cpu_capability,\n"
            "             lambda: modular_rnn(torch.zeros(2, 1, 4), torch.zeros(2, 2, 2), torch.zeros(0, 2, 2),\n"
            "                                 torch.zeros(0, 2, dtype=torch.long))):\n"
            "    try:\n"
            "        call()\n"
            "    except ValueError as e:\n"
            "        print(e)\n")
    r = _python(code, RNNOFRNNS_CPU_CAPABILITY="avx3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["RNNOFRNNS_CPU_CAPABILITY: expected one of avx512, avx2, default, got 'avx3'"] * 2


def test_the_cli_reports_a_bad_capability_in_one_line(tmp_path):
    r = cli("train", "--task", "row-digits", "--epochs", "1", "--out", str(tmp_path / "run"),
            env={**os.environ, "RNNOFRNNS_CPU_CAPABILITY": "avx3"})
    assert r.returncode == 1
    assert r.stderr.strip() == "error: RNNOFRNNS_CPU_CAPABILITY: expected one of avx512, avx2, default, got 'avx3'"


def test_every_capability_matches_the_reference_and_the_others(tmp_path):
    """Each build the machine runs (forced in its own process): every op's outputs and
    gradients against the float64 reference and 1 vs 2 threads bitwise (inside the probe);
    then the builds against each other, to float32 rounding. Only the reduction order and
    tanh differ between vector widths: the largest difference measured was 2.6e-6."""
    results = {}
    for capability in RUNNABLE:
        out = tmp_path / f"{capability}.pt"
        r = subprocess.run([sys.executable, str(PROBE), str(out)], capture_output=True, text=True, cwd=ROOT,
                           timeout=600, env={**os.environ, "RNNOFRNNS_CPU_CAPABILITY": capability})
        assert r.returncode == 0, r.stdout + r.stderr
        results[capability] = torch.load(out)
        assert results[capability]["capability"] == capability
    first, *others = RUNNABLE
    for other in others:
        for name, tensors in results[first].items():
            if name == "capability":
                continue
            for i, (a, b) in enumerate(zip(tensors, results[other][name])):
                err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                assert err <= 2e-5, f"{name} output {i}: {first} vs {other} differ by {err:.1e}"
