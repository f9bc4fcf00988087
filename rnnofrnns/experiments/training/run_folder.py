"""What a run folder holds: its files, checkpoints (loaded without running code) with the
generators' states, and the check of a folder before a run writes into it."""
from __future__ import annotations

import os
import random
from typing import Any, Dict, List

import numpy as np
import torch

from .._files import (check_only_own_files, safe_torch_load)
from ..errors import RunError, UsageError


# -- checkpoints ----------------------------------------------------------------------------

def rng_state() -> Dict[str, Any]:
    """The generators' states as tensors, numbers and strings only (weights_only loads them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                numpy=dict(kind=str(kind), keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                           has_gauss=int(has_gauss), cached_gaussian=float(gauss)),
                python=random.getstate())


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        npy = (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
               npy["cached_gaussian"])
    np.random.set_state(npy)  # checkpoints before 2026-12 hold numpy's own tuple
    random.setstate(state["python"])


RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.json", "training_curves.png", "connectivity.png",
             "ablation.png")
# Any of these marks a folder as a run's (the plots alone do not).
RUN_MARKERS = ("config.json", "last.pt", "best.pt", "metrics.json")


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint written by `train`, or RunError naming the file."""
    if not os.path.exists(path):
        raise RunError(f"{path} is missing")
    ckpt = safe_torch_load(path, "checkpoint", RunError)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise RunError(f"{path} is not a checkpoint of rnnofrnns train")
    return ckpt


def is_run_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in RUN_MARKERS)


def prepare_out(out: str, resume: bool, overwrite: bool) -> List[str]:
    """Check the run folder before anything is written (UsageError when it cannot be used);
    returns the entries that --overwrite will remove (the old run's own regular files)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file, not a folder")
    if resume:
        if overwrite:
            raise UsageError("--resume and --overwrite contradict each other: continue the run, or replace it")
        return []
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise UsageError(f"--out {out} already holds {'a run' if is_run_folder(out) else 'files'}; "
                             "pass --resume to continue it, --overwrite to replace it, or choose another folder")
        # a run's own files, and the temporary files an interrupted write of one leaves
        entries = check_only_own_files(out, RUN_FILES, "training")
        if not is_run_folder(out):
            raise UsageError(f"--overwrite replaces a training run, but {out} holds no config.json, checkpoint or "
                             "metrics.json; choose another folder")
        return entries
    return []
