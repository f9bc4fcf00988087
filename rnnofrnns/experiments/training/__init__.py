"""The main job: train and evaluate sequence classifiers on offline data sets
(`python -m rnnofrnns train | evaluate | demo`)."""
from .data import TASKS, DataError, TaskData, load_task
from .loop import MODELS, TrainConfig, evaluate, train

__all__ = ["TrainConfig", "train", "evaluate", "MODELS", "TASKS", "TaskData", "load_task", "DataError"]
