"""The import paths of earlier releases keep working after the package was layered
(rnnofrnns/_compat.py), and the public names of `rnnofrnns` are all still there."""
from __future__ import annotations

import importlib
import pickle

import pytest

import rnnofrnns
from rnnofrnns import _compat

SAME_MODULE = {old: new for old, new in _compat.ALIASES.items() if isinstance(new, str)}


@pytest.mark.parametrize("old,new", sorted(SAME_MODULE.items()))
def test_old_path_is_the_new_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_old_imports_of_the_documented_names():
    from rnnofrnns.analysis import superposition as geo
    from rnnofrnns.data import DataError, TaskData, load_task  # noqa: F401
    from rnnofrnns.ensemble import RNNEnsemble, SmallRNN, instance_generator  # noqa: F401
    from rnnofrnns.superposition import SuperpositionConfig, run_superposition  # noqa: F401
    from rnnofrnns.task_switching import GradientFlow, TaskSwitchingConfig, run_task_switching  # noqa: F401
    from rnnofrnns.tasks import blocked_curriculum, compose_mean, compose_rows, delayed_recall, teachers
    from rnnofrnns.training import RNNClassifier, TrainConfig, atomic_save, evaluate, train  # noqa: F401
    from rnnofrnns.experiments.superposition import geometry
    from rnnofrnns.experiments.superposition.task import delayed_recall as new_recall
    from rnnofrnns.experiments.task_switching import tasks

    assert geo is geometry and delayed_recall is new_recall
    assert (teachers, blocked_curriculum, compose_mean, compose_rows) == (
        tasks.teachers, tasks.blocked_curriculum, tasks.compose_mean, tasks.compose_rows)
    import rnnofrnns.analysis.superposition as geo2
    assert geo2 is geometry


def test_public_names_of_the_package():
    for name in rnnofrnns.__all__:
        assert getattr(rnnofrnns, name) is not None
    from rnnofrnns.ops.ensemble import ensemble_loss, ensemble_loss_reference  # noqa: F401
    from rnnofrnns.ops.modular_rnn.reference import dense_feedback  # noqa: F401


def test_objects_pickled_under_an_old_path_load():
    from rnnofrnns.experiments.training.loop import TrainConfig

    blob = pickle.dumps(TrainConfig(epochs=3), protocol=0).replace(b"rnnofrnns.experiments.training.loop", b"rnnofrnns.training")
    assert b"rnnofrnns.training" in blob
    assert pickle.loads(blob) == TrainConfig(epochs=3)


def test_unknown_old_names_still_fail():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("rnnofrnns.no_such_module")
