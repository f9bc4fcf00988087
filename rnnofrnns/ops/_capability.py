"""Which build of the C++ kernels this process loads: one per CPU capability.

setup.py compiles every kernel once per capability (rnnofrnns._C_avx512, _C_avx2,
_C_default), as ATen does with its own. At import, the best build that is installed and that
the CPU supports is loaded, by ATen's own check of the CPU
(torch.backends.cpu.get_cpu_capability(), which reads cpuinfo; ATEN_CPU_CAPABILITY lowers it).
RNNOFRNNS_CPU_CAPABILITY=avx512|avx2|default forces one; a forced build that the CPU cannot run
or that is not installed is an error, never a silent fallback. Only one build can be loaded
per process (they register the same ops), so a test of another capability runs in a
subprocess with the variable set.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Optional, Sequence, Tuple

import torch

ENV = "RNNOFRNNS_CPU_CAPABILITY"
CAPABILITIES = ("avx512", "avx2", "default")  # best first


class CapabilityError(ValueError):
    """RNNOFRNNS_CPU_CAPABILITY names a build that cannot run here."""


def cpu_supported() -> Tuple[str, ...]:
    """The capabilities this CPU runs, best first, by ATen's check."""
    aten = torch.backends.cpu.get_cpu_capability().upper()
    if aten.startswith("AVX512"):
        return CAPABILITIES
    if aten.startswith("AVX2"):
        return ("avx2", "default")
    return ("default",)


def installed() -> Tuple[str, ...]:
    """The capabilities whose build is installed, best first."""
    return tuple(c for c in CAPABILITIES if importlib.util.find_spec(f"rnnofrnns._C_{c}") is not None)


def choose(forced: Optional[str], supported: Sequence[str], built: Sequence[str]) -> Optional[str]:
    """The build to load: ``forced`` (the variable's value, None or "" when unset) or the best
    one in both ``supported`` and ``built``; None when no build is installed."""
    if forced:
        name = forced.strip().lower()
        if name not in CAPABILITIES:
            raise CapabilityError(f"{ENV}: expected one of {', '.join(CAPABILITIES)}, got {forced!r}")
        if name not in supported:
            raise CapabilityError(
                f"{ENV}={name}: this CPU runs only {', '.join(supported)} "
                f"(ATen reports {torch.backends.cpu.get_cpu_capability()}; ATEN_CPU_CAPABILITY lowers it)")
        if name not in built:
            raise CapabilityError(
                f"{ENV}={name}: that build is not installed (installed: {', '.join(built) or 'none'}); "
                "reinstall with `pip install --no-build-isolation -e .` or unset RNNOFRNNS_BUILD_CAPABILITIES")
        return name
    for name in CAPABILITIES:
        if name in supported and name in built:
            return name
    return None


def load() -> Tuple[Optional[str], Optional[BaseException]]:
    """Import the chosen build: (its capability, None), or (None, why not)."""
    try:
        name = choose(os.environ.get(ENV), cpu_supported(), installed())
    except CapabilityError as e:
        return None, e
    if name is None:
        return None, ImportError("no build of the C++ kernels (rnnofrnns._C_*) is installed")
    try:
        importlib.import_module(f"rnnofrnns._C_{name}")
    except ImportError as e:  # pragma: no cover - depends on how the package was installed
        return None, e
    return name, None
