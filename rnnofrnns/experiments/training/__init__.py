"""The main job: train and evaluate sequence classifiers on offline data sets
(`python -m rnnofrnns train | evaluate | demo`)."""
from .data import TASKS, DataError, TaskData, load_task
from .config import MODELS, TrainConfig
from .evaluation import evaluate
from .loop import train

__all__ = ["TrainConfig", "train", "evaluate", "MODELS", "TASKS", "TaskData", "load_task", "DataError"]
