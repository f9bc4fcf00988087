"""`python -m rnnofrnns task-switching-study STUDY`: the grids that make the flexible task
abstractions paper's argument (Sandbrink et al., 2024), each a set of task-switching runs of the
gated linear network with one table and one plot.

    python -m rnnofrnns task-switching-study block-length --seeds 3 --out runs/ts-study

Studies:
  block-length  time per block of one task (0.05 to 2, the same total time of 20), flexible
                and forgetful regime: the paper's Fig. 5 (specialisation needs long enough blocks)
  constraints   the flexible regime with one constraint removed at a time: the fast gate
                timescale (tau_c = tau_W), non-negativity (lambda_nonneg 0), the bound on the
                gates' norm (lambda_norm 0); and all three (the forgetful regime)
  overlap       teachers with a controlled overlap (the cosine between rows of A and B, 0 to 0.9),
                both regimes: where specialisation breaks
  tasks         more paths than tasks and more than two tasks ((paths, teachers) = (2, 2), (3, 2),
                (4, 2), (3, 3), (4, 3); d_in 40), with the composition phase: the means of every
                consecutive pair of teachers (AB, BC, CA) solved by the gates alone

Every run is a folder STUDY/NAME-sSEED of a task-switching run; finished runs are kept, so the
command resumes. The table (study.md) gives per point the mean over seeds (and the range) of
the final specialisation, the mean time to reach the loss threshold over the second half of
the blocks (the switching speed; "not reached" counts the blocks that never did), and the
regime the run lands in: "flexible" when its paths specialise (final specialisation >= 0.9)
and it switches within the block, else "forgetful".
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .._files import atomic_write_json, atomic_write_text, pyplot, read_json, save_figure
from ..errors import UsageError
from .experiment import TaskSwitchingConfig
from .run import run_task_switching

TOTAL_TIME = 20.0  # the linear network's default: 20 blocks of 1
SPECIALISED = 0.9  # final specialisation of a run that lands in the flexible regime


@dataclass
class Point:
    """One point of a study: its label, the value on the study's axis, the series it belongs to
    (a line of the plot) and the task-switching settings that differ from the defaults."""

    name: str
    axis: float
    series: str
    settings: Dict[str, Any] = field(default_factory=dict)


def _block_length() -> List[Point]:
    points = []
    for regime in ("flexible", "forgetful"):
        for bl in (0.05, 0.1, 0.25, 0.5, 1.0, 2.0):
            points.append(Point(f"{regime}-block{bl:g}", bl, regime,
                                dict(regime=regime, block_length=bl, blocks=int(round(TOTAL_TIME / bl)))))
    return points


def _constraints() -> List[Point]:
    variants = [
        ("all constraints (flexible)", {}),
        ("no fast gates (tau_c = tau_W)", dict(tau_c=1.3)),
        ("no non-negativity", dict(lambda_nonneg=0.0)),
        ("no norm bound", dict(lambda_norm=0.0)),
        ("none (forgetful)", dict(regime="forgetful")),
    ]
    return [Point(f"constraints-{i}", float(i), label, dict(dict(regime="flexible"), **kw))
            for i, (label, kw) in enumerate(variants)]


def _overlap() -> List[Point]:
    return [Point(f"{regime}-overlap{c:g}", c, regime, dict(regime=regime, teacher_overlap=c))
            for regime in ("flexible", "forgetful") for c in (0.0, 0.25, 0.5, 0.75, 0.9)]


def _tasks() -> List[Point]:
    shapes = [(2, 2), (3, 2), (4, 2), (3, 3), (4, 3)]
    return [Point(f"paths{P}-teachers{M}", float(i), f"{P} paths, {M} teachers",
                  dict(regime="flexible", paths=P, teachers=M, d_in=40, blocks=10 * M, compose=True))
            for i, (P, M) in enumerate(shapes)]


STUDIES: Dict[str, Tuple[Callable[[], List[Point]], str]] = {
    "block-length": (_block_length, "block length (time per block; total time 20)"),
    "constraints": (_constraints, "constraint removed"),
    "overlap": (_overlap, "cosine between the teachers' rows"),
    "tasks": (_tasks, "paths and teachers"),
}


def _finished(path: str) -> Optional[Dict[str, Any]]:
    metrics = os.path.join(path, "metrics.json")
    if not os.path.isfile(metrics):
        return None
    saved = read_json(metrics, UsageError)
    return saved if isinstance(saved, dict) and "final_specialisation" in saved else None


def switching(metrics: Dict[str, Any]) -> Tuple[Optional[float], int]:
    """(mean time to threshold over the second half of the blocks that reached it, how many of
    those blocks never did)."""
    times = metrics["time_to_threshold"]
    late = times[len(times) // 2:]
    reached = [t for t in late if t is not None]
    return (sum(reached) / len(reached) if reached else None), len(late) - len(reached)


def regime_of(metrics: Dict[str, Any]) -> str:
    """'flexible' when the paths specialise and every late block reaches the threshold, else 'forgetful'."""
    _, missed = switching(metrics)
    return "flexible" if metrics["final_specialisation"] >= SPECIALISED and missed == 0 else "forgetful"


def run_study(study: str, seeds: int, out: str, threads: Optional[int] = None, progress: bool = True,
              log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Run (or resume) every point of `study` for seeds 0..seeds-1 under out/study; write
    study.json, study.md and study.png there and return the rows."""
    if study not in STUDIES:
        raise UsageError(f"study must be one of {tuple(STUDIES)}, got {study!r}")
    if not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"--seeds must be a positive integer, got {seeds!r}")
    points_of, axis_label = STUDIES[study]
    folder = os.path.join(out, study)
    os.makedirs(folder, exist_ok=True)
    rows = []
    for point in points_of():
        for seed in range(seeds):
            path = os.path.join(folder, f"{point.name}-s{seed}")
            metrics = _finished(path)
            if metrics is None:
                log(f"{study}: {point.name}, seed {seed}")
                cfg = TaskSwitchingConfig(**point.settings, seed=seed, out=path, threads=threads, progress=progress)
                metrics = run_task_switching(cfg, log=lambda _: None)
            mean_time, missed = switching(metrics)
            row = dict(point=point.name, series=point.series, axis=point.axis, seed=seed,
                       settings=point.settings, final_specialisation=metrics["final_specialisation"],
                       final_loss=metrics["final_loss"], switch_time=mean_time, blocks_not_reached=missed,
                       regime=regime_of(metrics), run=path)
            if "compose" in metrics:
                row["compose"] = {k: v["final_loss"] for k, v in metrics["compose"].items()}
            rows.append(row)
    atomic_write_json(dict(command="task-switching-study", study=study, seeds=seeds, rows=rows),
                      os.path.join(folder, "study.json"))
    table = study_table(rows, study, axis_label)
    atomic_write_text(table + "\n", os.path.join(folder, "study.md"))
    picture = plot_study(rows, study, axis_label, os.path.join(folder, "study.png"))
    log(table)
    log(f"table: {os.path.join(folder, 'study.md')}; plot: {picture}")
    return rows


def _span(values: List[float], fmt: str = "{:.3f}") -> str:
    if not values:
        return "-"
    mean = fmt.format(sum(values) / len(values))
    return mean if len(values) == 1 else f"{mean} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _by_point(rows: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["point"], []).append(r)
    return groups


def study_table(rows: List[Dict[str, Any]], study: str, axis_label: str) -> str:
    """One line per point: mean (range) over seeds of every measure."""
    compose = sorted({k for r in rows for k in r.get("compose", {})})
    categorical = study in ("constraints", "tasks")  # the series names the point: no axis column
    head = (["series"] if categorical else ["series", axis_label]) + [
        "seeds", "final specialisation", "switch time (late blocks)", "late blocks not reached", "final loss",
        "regime (runs)"] + [f"compose {k}: loss" for k in compose]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, group in _by_point(rows).items():
        first = group[0]
        times = [r["switch_time"] for r in group if r["switch_time"] is not None]
        regimes = {}
        for r in group:
            regimes[r["regime"]] = regimes.get(r["regime"], 0) + 1
        cells = [first["series"]] if categorical else [first["series"], f"{first['axis']:g}"]
        cells += [str(len(group)), _span([r["final_specialisation"] for r in group]), _span(times),
                  str(sum(r["blocks_not_reached"] for r in group)), _span([r["final_loss"] for r in group], "{:.4f}"),
                  ", ".join(f"{k} {v}" for k, v in sorted(regimes.items()))]
        cells += [_span([r["compose"][k] for r in group if k in r.get("compose", {})], "{:.4f}") for k in compose]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_study(rows: List[Dict[str, Any]], study: str, axis_label: str, path: str) -> str:
    """Final specialisation and switching time against the study's axis, one line per series."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series: Dict[str, List[Tuple[float, float, Optional[float]]]] = {}
    labels: Dict[float, str] = {}
    for name, group in _by_point(rows).items():
        spec = sum(r["final_specialisation"] for r in group) / len(group)
        times = [r["switch_time"] for r in group if r["switch_time"] is not None]
        series.setdefault(group[0]["series"], []).append(
            (group[0]["axis"], spec, sum(times) / len(times) if times else None))
        labels[group[0]["axis"]] = group[0]["series"]
    categorical = study in ("constraints", "tasks")
    for label, pts in series.items():
        pts.sort()
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], marker="o", label=None if categorical else label)
        tx = [(p[0], p[2]) for p in pts if p[2] is not None]
        if tx:
            axes[1].plot(*zip(*tx), marker="o", label=None if categorical else label)
    axes[0].axhline(SPECIALISED, color="grey", ls=":", lw=0.8)
    axes[0].set_ylabel("final specialisation")
    axes[1].set_ylabel("time to the loss threshold (late blocks)")
    for ax in axes:
        ax.set_xlabel(axis_label)
        if categorical:
            ticks = sorted(labels)
            ax.set_xticks(ticks)
            ax.set_xticklabels([labels[t] for t in ticks], rotation=20, ha="right", fontsize=7)
        elif study == "block-length":
            ax.set_xscale("log")
    if not categorical:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"task-switching study: {study} (mean over seeds)")
    fig.tight_layout()
    return save_figure(fig, path)


def _task_switching_study(args: argparse.Namespace) -> int:
    run_study(args.study, args.seeds, args.out, threads=args.threads, progress=not args.no_progress)
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the task-switching-study command to the CLI."""
    p = sub.add_parser("task-switching-study", help="the task-switching grids of the paper (block length, "
                       "constraints, teacher overlap, paths and tasks) with a table and a plot each",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=list(STUDIES), help="which grid")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per point")
    p.add_argument("--out", default="runs/task-switching-study", help="folder of the studies (STUDY/ below it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_task_switching_study)

