"""Flexible task abstractions (Sandbrink et al., 2024): the gated linear network trained by
two-timescale gradient flow on a blocked curriculum (`python -m rnnofrnns task-switching`)."""
from .experiment import GradientFlow, TaskSwitchingConfig
from .run import run_task_switching
from .tasks import blocked_curriculum, compose_mean, compose_rows, teachers

__all__ = ["TaskSwitchingConfig", "run_task_switching", "GradientFlow", "teachers", "blocked_curriculum",
           "compose_mean", "compose_rows"]
