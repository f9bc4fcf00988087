"""Which kernels are available, and which one a call uses."""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from ._capability import CapabilityError, load

BACKENDS = ("reference", "cpu", "triton")

# Loading one build of the shared library registers the C++ ops with the dispatcher.
_capability, _ext_error = load()


@contextlib.contextmanager
def flush_denormal():
    """torch.set_flush_denormal(True) inside the block; the caller's setting is restored after
    (it is probed, since torch has no getter: with flushing on, 1e-38 / 100 comes out as 0)."""
    was_on = bool((torch.tensor([1e-38]) / 100).item() == 0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


def cpu_extension_available() -> bool:
    """True when the compiled C++ kernels (one build of rnnofrnns._C_*) are loaded."""
    return _ext_error is None


def cpu_capability() -> Optional[str]:
    """The CPU capability of the loaded C++ kernels: "avx512", "avx2" or "default" (None when
    no build is installed). The best one the CPU supports, unless RNNOFRNNS_CPU_CAPABILITY
    forces one; a forced one that cannot run raises ValueError."""
    if isinstance(_ext_error, CapabilityError):
        raise _ext_error
    return _capability


# Looked up once at import: find_spec inside a call would stop torch.compile's tracing.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when triton is importable (GPU, or CPU tensors under TRITON_INTERPRET=1)."""
    return _TRITON_FOUND


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# The implementations of every op, by backend: op name -> {backend name -> callable}. Each op
# registers its backends in one place (ops/<op>/backends.py); `implementation` looks them up.
_IMPLEMENTATIONS: Dict[str, Dict[str, Callable[..., Any]]] = {}


def register(op: str, backend: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the function is `op`'s implementation on `backend` (one of BACKENDS)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        _IMPLEMENTATIONS.setdefault(op, {})[backend] = fn
        return fn

    return add


def backends_of(op: str) -> Tuple[str, ...]:
    """The backends that `op` has, in the order of BACKENDS."""
    table = _IMPLEMENTATIONS.get(op, {})
    return tuple(b for b in BACKENDS if b in table)


def implementation(op: str, backend: Optional[str], device: torch.device) -> Callable[..., Any]:
    """`op`'s implementation for tensors on `device`: the backend chosen by resolve_backend
    among those the op has registered."""
    return _IMPLEMENTATIONS[op][resolve_backend(backend, device, op=op, backends=backends_of(op))]


def resolve_backend(backend: Optional[str], device: torch.device, *, op: str = "this op",
                    backends: Sequence[str] = BACKENDS) -> str:
    """Pick the backend of one op for tensors on ``device``; every op resolves through here.

    Order: the ``backend`` argument, then the RNNOFRNNS_BACKEND environment variable,
    then the default (CPU tensors -> "cpu", CUDA tensors -> "triton", where the op has
    them, else "reference"). ``backends`` lists those the op has; the environment
    variable falls back to the default for an op without the backend it names. A forced
    backend that cannot run raises RuntimeError saying how to get it.
    """
    from_env = backend is None
    choice = backend if backend is not None else os.environ.get("RNNOFRNNS_BACKEND") or None
    if from_env and choice in BACKENDS and choice not in backends:
        choice = None  # e.g. RNNOFRNNS_BACKEND=triton for an op that has no Triton kernel
    if isinstance(_ext_error, CapabilityError) and device.type == "cpu" and "cpu" in backends \
            and choice in (None, "cpu"):
        raise _ext_error  # the user asked for a build that cannot run: not a silent fallback
    if choice is None:
        if device.type == "cuda" and "triton" in backends and triton_available():
            return "triton"
        if device.type == "cpu" and "cpu" in backends and cpu_extension_available():
            return "cpu"
        return "reference"
    if choice not in backends:
        raise ValueError(f"backend must be one of {tuple(backends)} or None for {op}, got {choice!r}")
    if choice == "cpu":
        if not cpu_extension_available():
            raise RuntimeError(
                "backend='cpu' needs the compiled extension rnnofrnns._C_*, which failed to load "
                f"({_ext_error}). Build it with `pip install --no-build-isolation -e .` "
                "(needs a C++ compiler and ninja), or use backend='reference'."
            )
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
    if choice == "triton":
        if not triton_available():
            raise RuntimeError(
                "backend='triton' needs triton: `pip install triton` (3.7.1 matches torch 2.13.0)."
            )
        if device.type == "cpu" and not triton_interpreting():
            raise RuntimeError(
                "backend='triton' on CPU tensors only runs in Triton's interpreter: set "
                "TRITON_INTERPRET=1 in the environment before triton is imported, or move the "
                "tensors to a GPU."
            )
    return choice
