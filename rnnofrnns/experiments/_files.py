"""Files of an experiment's run folder, written so that a crash never leaves half a file:
checkpoints, JSON and PNG figures go to a temporary name first and are renamed over the target."""
from __future__ import annotations

import json
import os
from typing import Any

import torch


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file, then rename it over the target."""
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
