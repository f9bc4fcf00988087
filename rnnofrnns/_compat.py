"""The module paths of earlier releases, kept importable.

Until the package was layered (ops -> models -> experiments) these were flat modules; code
and pickles that name them still work. An old path that maps to one module is that module
itself (the same object, so monkeypatching either name patches both); `rnnofrnns.tasks` and
`rnnofrnns.analysis` gathered names that now live in two places and become small modules
that hand those names on.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Dict, Optional, Sequence, Tuple, Union

# old path -> new module, or the new modules whose public names the old one gathered
ALIASES: Dict[str, Union[str, Tuple[str, ...]]] = {
    "rnnofrnns._backend": "rnnofrnns.ops._backend",
    "rnnofrnns.ensemble": "rnnofrnns.models.small_rnn",
    "rnnofrnns.training": "rnnofrnns.experiments.training.loop",
    "rnnofrnns.data": "rnnofrnns.experiments.training.data",
    "rnnofrnns.plots": "rnnofrnns.experiments.training.plots",
    "rnnofrnns.task_switching": ("rnnofrnns.experiments.task_switching.experiment",
                                 "rnnofrnns.experiments.task_switching.run"),
    "rnnofrnns.superposition": "rnnofrnns.experiments.superposition.experiment",
    "rnnofrnns.analysis.superposition": "rnnofrnns.experiments.superposition.geometry",
    "rnnofrnns.tasks": ("rnnofrnns.experiments.superposition.task", "rnnofrnns.experiments.task_switching.tasks"),
    "rnnofrnns.analysis": (),  # a package whose one module is rnnofrnns.analysis.superposition
}


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        target = ALIASES[spec.name]
        if isinstance(target, str):
            return importlib.import_module(target)
        module = types.ModuleType(spec.name, f"Old import path of rnnofrnns; the names live in {', '.join(target)}.")
        for name in target:
            new = importlib.import_module(name)
            for attr in getattr(new, "__all__", [a for a in vars(new) if not a.startswith("_")]):
                setattr(module, attr, getattr(new, attr))
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # create_module did all the work


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[types.ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in ALIASES:
            return None
        is_package = ALIASES[fullname] == ()
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(), is_package=is_package)


def install() -> None:
    """Put the finder of the old paths on sys.meta_path (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
