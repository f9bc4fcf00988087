"""`python -m rnnofrnns sweep`: the topology x feedback-sparsity study of the Global Workspace
paper, every run a `train` run of one configuration (train's default, or the model and training
settings the sweep is given: `base`).

For every (topology, feedback sparsity, seed) a Sparse Combo Net trains into
DIR/runs/<name>/ with the training loop, checkpoints and errors of `train`; the sweep then
writes DIR/metrics.json (one row per run), DIR/summary.txt (also printed) and three PNGs.
A sweep that stopped resumes (the same settings; threads, progress bars and the data folder may
differ): finished runs are kept and skipped, a run that stopped halfway continues from its
last checkpoint. A run that fails (a non-finite loss) is kept as a row with
its reason, and the sweep goes on.

--shapes P1xN1 P2xN2 ... adds the design space the papers leave open: every run is repeated for
each number of areas x area size (e.g. 8x64 16x32 24x32 32x16: the first, second and fourth
hold 512 units), and the rows, table and plots name the shape beside the topology.
--workspace-sizes W1 W2 ... repeats the GW star (--topologies gw) for each size of its workspace
area (GlobalWorkspaceNet's workspace_size; areas of different sizes need --areas sparse).

Topologies: "gw" (a star through the last area), "all", "random:<density>" (each pair kept
with that probability), "random-pairs:<count>", and "random:matched": as many randomly chosen
pairs as the star has (p - 1), so that its trainable-parameter count is the star's exactly
(input projection, readout and area parameters do not depend on the topology; each pair is
one n x n block).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import _files
from ..errors import RunError, UsageError
from ... import topology as topo
from .data import TASKS
from .config import LEGACY_SETTINGS, RESUMABLE, TrainConfig
from .loop import train
from .run_folder import is_run_folder

SWEEP_FILE = "sweep.json"  # the sweep's own settings, to resume only the same sweep


def topology_spec(name: str, num_areas: int) -> str:
    """The scn --topology of a sweep topology (random:matched -> random-pairs:<p-1>); UsageError
    naming the topology when it cannot be used."""
    spec = f"random-pairs:{num_areas - 1}" if name == "random:matched" else name
    try:
        topo.resolve(spec, num_areas)
    except ValueError as e:
        raise UsageError(f"--topologies: {name!r} cannot be used ({e})") from None
    return spec


def run_name(task: str, topology: str, sparsity: float, seed: int, shape: Optional[Tuple[int, int]] = None,
             workspace_size: Optional[int] = None) -> str:
    prefix = (f"{shape[0]}x{shape[1]}-" if shape else "") + (f"ws{workspace_size}-" if workspace_size else "")
    return f"{task}-{prefix}{topology.replace(':', '')}-sparsity{sparsity:g}-seed{seed}"


def parse_shape(text: str) -> Tuple[int, int]:
    """--shapes: "PxN" (areas x units per area), each a positive integer."""
    try:
        p, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--shapes values must be PxN (areas x units per area, e.g. 16x32), got {text!r}") from None
    if p < 2 or n < 1:
        raise UsageError(f"--shapes values need at least 2 areas of at least 1 unit, got {text!r}")
    return p, n


def _finished(path: str) -> Optional[Dict[str, Any]]:
    """The metrics of a finished run, or None (no metrics.json, or one that says it stopped)."""
    try:
        with open(os.path.join(path, "metrics.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if "test_accuracy" in m else None


def row_of(metrics: Dict[str, Any], topology: str, sparsity: float, seed: int, run_dir: str) -> Dict[str, Any]:
    """One row of DIR/metrics.json from a run's metrics: drops are test accuracy minus the
    accuracy with one area silenced (mean over areas, and the worst area)."""
    acc = metrics["test_accuracy"]
    abl = metrics.get("ablation_test_accuracy") or []
    drops = [acc - a for a in abl]
    cert = metrics.get("certificate") or {}
    return dict(
        topology=topology, feedback_sparsity=sparsity, seed=seed, run=os.path.basename(run_dir),
        test_accuracy=acc, trainable_parameters=metrics.get("effective_trainable_parameters",
                                                            metrics["trainable_parameters"]),
        feedback_parameters=metrics.get("feedback_parameters"),
        certificate=dict(continuous_holds=cert.get("holds"), discrete_holds=cert.get("discrete_holds"),
                         rate=cert.get("rate"), step_factor=cert.get("step_factor")),
        ablation_test_accuracy=abl, mean_drop=sum(drops) / len(drops) if drops else None,
        worst_drop=max(drops) if drops else None, wall_time_s=metrics.get("wall_time_s"), stopped=None,
    )


def _check(task: str, topologies: Sequence[str], sparsities: Sequence[float], seeds: int, epochs: int) -> None:
    if task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if not topologies:
        raise UsageError("--topologies needs at least one topology")
    if len(set(topologies)) != len(topologies):
        raise UsageError(f"--topologies lists a topology twice: {' '.join(topologies)}")
    if not sparsities or len(set(sparsities)) != len(sparsities):
        raise UsageError(f"--feedback-sparsity needs distinct values, got {' '.join(map(str, sparsities))}")
    for s in sparsities:
        if not (0.0 <= s < 1.0 and math.isfinite(s)):
            raise UsageError(f"--feedback-sparsity values must be in [0, 1), got {s}")
    for name, value in (("seeds", seeds), ("epochs", epochs)):
        if value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value}")


def sweep(task: str, topologies: Sequence[str], sparsities: Sequence[float], *, seeds: int, epochs: int, out: str,
          base: Optional[TrainConfig] = None, log: Callable[[str], None] = print,
          shapes: Optional[Sequence[Tuple[int, int]]] = None,
          workspace_sizes: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """Train every (topology, sparsity, seed) of the study and write its results into `out`.

    base: the TrainConfig every run starts from (default: the certified default); its
    model, task, topology, feedback_sparsity, seed, epochs and out are set per run.
    shapes: (num_areas, area_size) pairs to repeat the study for (default: base's only).
    workspace_sizes: sizes of the GW star's workspace area to repeat it for (topologies: gw only)."""
    base = base or TrainConfig()
    _check(task, topologies, sparsities, seeds, epochs)
    if shapes is not None and (not shapes or len(set(shapes)) != len(shapes)):
        raise UsageError(f"--shapes needs distinct PxN values, got {' '.join(f'{p}x{n}' for p, n in shapes)}")
    if workspace_sizes is not None:
        if not workspace_sizes or len(set(workspace_sizes)) != len(workspace_sizes) or min(workspace_sizes) < 1:
            raise UsageError(f"--workspace-sizes needs distinct positive sizes, got {' '.join(map(str, workspace_sizes))}")
        if list(topologies) != ["gw"]:
            raise UsageError(f"--workspace-sizes sizes the GW star's workspace: --topologies must be gw alone, got "
                             f"{' '.join(topologies)}")
    grid = list(shapes) if shapes else [None]
    spaces = list(workspace_sizes) if workspace_sizes else [None]

    def config_of(shape, ws, t, s, seed, run_out):
        p, n = shape or (base.num_areas, base.area_size)
        if ws is not None:  # the GW net itself, with its workspace of ws units
            return replace(base, model="gw", task=task, topology=None, workspace_size=ws, feedback_sparsity=s,
                           seed=seed, epochs=epochs, out=run_out, num_areas=p, area_size=n)
        return replace(base, model="scn", task=task, topology=topology_spec(t, p), feedback_sparsity=s, seed=seed,
                       epochs=epochs, out=run_out, num_areas=p, area_size=n)

    for shape in grid:  # every run's settings are checked before anything is written
        for ws in spaces:
            for t in topologies:
                try:
                    config_of(shape, ws, t, sparsities[0], 0, out).validate()
                except UsageError as e:
                    raise UsageError(f"--workspace-sizes {ws}: {e}" if ws is not None else str(e)) from None
    settings = dict(task=task, topologies=list(topologies), feedback_sparsity=list(sparsities), seeds=seeds,
                    epochs=epochs, run_settings={k: v for k, v in base.run_settings().items()
                                                 if k not in ("model", "task", "topology", "feedback_sparsity",
                                                              "seed") + RESUMABLE})
    if shapes:  # (absent otherwise, so that a sweep from before the option resumes)
        settings["shapes"] = [f"{p}x{n}" for p, n in shapes]
    if workspace_sizes:
        settings["workspace_sizes"] = list(workspace_sizes)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file, not a folder")
    saved_path = os.path.join(out, SWEEP_FILE)
    if os.path.exists(saved_path):
        with open(saved_path) as f:
            saved = json.load(f)
        if isinstance(saved, dict) and isinstance(saved.get("run_settings"), dict):
            for name, value in LEGACY_SETTINGS.items():  # a sweep from before a setting existed ran without it
                saved["run_settings"].setdefault(name, value)
        wanted = json.loads(json.dumps(settings))
        if saved != wanted:
            differ = sorted(k for k in settings if saved.get(k) != wanted[k])
            if "run_settings" in differ and isinstance(saved.get("run_settings"), dict):
                names = sorted(k for k in wanted["run_settings"]
                               if saved["run_settings"].get(k) != wanted["run_settings"][k])
                differ[differ.index("run_settings")] = f"run_settings ({', '.join(names)})"
            raise UsageError(f"--out {out} holds another sweep (its {', '.join(differ)} differ); give the same "
                             "settings to resume it, or choose another folder")
    elif os.path.isdir(out) and os.listdir(out):
        raise UsageError(f"--out {out} already holds files that are not a sweep; choose another folder")
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    _files.atomic_write_json(settings, saved_path)

    rows = []
    combos = [(shape, ws, t, s, seed) for shape in grid for ws in spaces for t in topologies for s in sparsities
              for seed in range(seeds)]
    for k, (shape, ws, t, s, seed) in enumerate(combos, 1):
        run_dir = os.path.join(out, "runs", run_name(task, t, s, seed, shape, ws))
        p, n = shape or (base.num_areas, base.area_size)
        label = (f"{t} {p}x{n}" if shape else t) + (f" ws{ws}" if ws is not None else "")
        done = _finished(run_dir)
        if done is None:
            log(f"sweep: run {k}/{len(combos)}: {label}, feedback sparsity {s:g}, seed {seed}")
            cfg = config_of(shape, ws, t, s, seed, run_dir)
            # a run with a checkpoint continues; one that stopped before its first checkpoint
            # starts again (it has nothing to keep)
            resume = os.path.exists(os.path.join(run_dir, "last.pt"))
            try:
                done = train(cfg, resume=resume, log=log, overwrite=not resume and is_run_folder(run_dir))
            except RunError as e:  # the run keeps its files and its reason; the sweep goes on
                done = None
                rows.append(dict(topology=label, feedback_sparsity=s, seed=seed, run=os.path.basename(run_dir),
                                 test_accuracy=None, stopped=str(e)))
                log(f"sweep: run {k} stopped: {e}")
        else:
            log(f"sweep: run {k}/{len(combos)} is done already ({run_dir})")
        if done is not None:
            rows.append(row_of(done, label, s, seed, run_dir))
            if shape:
                rows[-1].update(num_areas=p, area_size=n)
            if ws is not None:
                rows[-1].update(workspace_size=ws)
        _files.atomic_write_json(dict(settings=settings, rows=rows), os.path.join(out, "metrics.json"))
    table = summary_table(rows, task)
    _files.atomic_write_text(table + "\n", os.path.join(out, "summary.txt"))
    log(table)
    pictures = save_plots(rows, out, task)
    log("plots: " + ", ".join(pictures))
    return rows


def _groups(rows: List[Dict[str, Any]]) -> Dict[tuple, List[Dict[str, Any]]]:
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        if r.get("test_accuracy") is not None:
            groups.setdefault((r["topology"], r["feedback_sparsity"]), []).append(r)
    return groups


def summary_table(rows: List[Dict[str, Any]], task: str) -> str:
    """Mean (min-max over seeds) per topology and sparsity."""
    def span(values: List[float]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        mean = sum(values) / len(values)
        return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"

    lines = [f"sweep on {task}: test accuracy, and its drop when one area is silenced (mean over areas, worst area);"
             " mean (min-max) over seeds",
             f"{'topology':<16}{'sparsity':>9}{'seeds':>6}{'trainable':>11}  {'test accuracy':<22}"
             f"{'mean drop':<22}{'worst drop':<22}certificates"]
    for (t, s), rs in _groups(rows).items():
        holds = all(r["certificate"]["continuous_holds"] and r["certificate"]["discrete_holds"] for r in rs)
        lines.append(f"{t:<16}{s:>9g}{len(rs):>6}{round(sum(r['trainable_parameters'] for r in rs) / len(rs)):>11,}  "
                     f"{span([r['test_accuracy'] for r in rs]):<22}{span([r['mean_drop'] for r in rs]):<22}"
                     f"{span([r['worst_drop'] for r in rs]):<22}{'all hold' if holds else 'SOME FAIL'}")
    stopped = [r for r in rows if r.get("test_accuracy") is None]
    for r in stopped:
        lines.append(f"stopped: {r['run']}: {r['stopped']}")
    return "\n".join(lines)


def save_plots(rows: List[Dict[str, Any]], out: str, task: str) -> List[str]:
    """accuracy_vs_parameters.png, area_drop.png and accuracy_vs_sparsity.png in `out`."""
    plt = _files.pyplot()
    groups = _groups(rows)
    topologies = list(dict.fromkeys(t for t, _ in groups))
    markers = "osD^v<>ph*"
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, t in enumerate(topologies):
        pts = [(r["trainable_parameters"], r["test_accuracy"], s) for (tt, s), rs in groups.items() if tt == t
               for r in rs]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], label=t, alpha=0.8)
        for (tt, s), rs in groups.items():
            if tt == t:
                ax.annotate(f"{s:g}", (rs[0]["trainable_parameters"], max(r["test_accuracy"] for r in rs)),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log"), ax.set_xlabel("trainable parameters"), ax.set_ylabel("test accuracy")
    ax.set_title(f"{task}: accuracy against trainable parameters"), ax.legend(title="labels: feedback sparsity")
    paths.append(_files.save_figure(fig, os.path.join(out, "accuracy_vs_parameters.png")))

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, t in enumerate(topologies):
        drops = [r["test_accuracy"] - a for (tt, _), rs in groups.items() if tt == t for r in rs
                 for a in r["ablation_test_accuracy"]]
        xs = [i + 0.25 * ((k * 0.618) % 1 - 0.5) for k in range(len(drops))]  # jitter, no randomness
        ax.scatter(xs, drops, s=10, alpha=0.6)
        if drops:
            ax.boxplot([drops], positions=[i], widths=0.5, showfliers=False)
    ax.set_xticks(range(len(topologies)), topologies)
    ax.set_ylabel("test accuracy lost with one area silenced"), ax.set_title(f"{task}: resilience to removing an area")
    paths.append(_files.save_figure(fig, os.path.join(out, "area_drop.png")))

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, t in enumerate(topologies):
        ss = sorted(s for tt, s in groups if tt == t)
        accs = [[r["test_accuracy"] for r in groups[(t, s)]] for s in ss]
        mean = [sum(a) / len(a) for a in accs]
        ax.errorbar(ss, mean, yerr=[[m - min(a) for m, a in zip(mean, accs)], [max(a) - m for m, a in zip(mean, accs)]],
                    marker=markers[i % len(markers)], capsize=3, label=t)
    ax.set_xlabel("feedback sparsity (fraction of inter-area weights fixed at 0)"), ax.set_ylabel("test accuracy")
    ax.set_title(f"{task}: accuracy against feedback sparsity (mean, min-max over seeds)"), ax.legend()
    paths.append(_files.save_figure(fig, os.path.join(out, "accuracy_vs_sparsity.png")))
    return paths
