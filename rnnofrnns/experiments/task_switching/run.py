"""`run_task_switching`: one entry point for the three networks of the experiment."""
from __future__ import annotations

from typing import Any, Callable, Dict

from .._files import command_run_folder
from .experiment import TaskSwitchingConfig, run_linear
from .fc import run_fc
from .image import run_image


def run_task_switching(cfg: TaskSwitchingConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the blocked curriculum (and, with cfg.compose, the composition phase) on
    cfg.network; write metrics.json and the figure into cfg.out and return the metrics."""
    cfg = cfg.resolved()
    run = {"linear": run_linear, "fc": run_fc, "image": run_image}[cfg.network]
    with command_run_folder(cfg.out, "task-switching", OWN_FILES):
        return run(cfg, log)


# Everything a task-switching run writes into its folder (a rerun replaces them).
OWN_FILES = ("metrics.json", "task_switching.png", "network.pt", "features.pt")
