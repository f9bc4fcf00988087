"""Files of an experiment's run folder, written so that a crash never leaves half a file:
checkpoints, JSON and PNG figures go to a temporary name first and are renamed over the target."""
from __future__ import annotations

import importlib
import json
import os
import pickle
import re
from typing import Any, List, Type

import torch


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file, then rename it over the target."""
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _legacy_numpy_globals() -> List[Any]:
    """What numpy's generator state in a checkpoint written before 2026-12-02 names: a uint32 array."""
    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1
        multiarray = importlib.import_module("numpy.core.multiarray")
    return [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_torch_load(path: str, what: str, error: Type[Exception] = RuntimeError) -> Any:
    """torch.load(path, weights_only=True): tensors, numbers, strings, lists, tuples and dicts
    only, so that a crafted file cannot run code. Raises `error` with one line naming the file
    (and, for a refused file, what it tried to call)."""
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise error(f"{path} is not a {what} of rnnofrnns: it refers to {found.group(1)}, which a {what} "
                        "never holds; refused without running it") from None
        raise error(f"{path} is not a readable {what} (UnpicklingError: {_first_line(e)})") from None
    except Exception as e:  # truncated, or not a torch file
        raise error(f"{path} is not a readable {what} ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def atomic_write_text(text: str, path: str) -> None:
    """Write text to a temporary file, then rename it over the target."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_write_json(obj: Any, path: str) -> None:
    """json.dump to a temporary file, then rename it over the target."""
    atomic_write_text(json.dumps(obj, indent=2), path)


def pyplot():
    """matplotlib.pyplot with the Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> str:
    """Save a figure as PNG through a temporary file and close it; returns the path."""
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    pyplot().close(fig)
    return path
