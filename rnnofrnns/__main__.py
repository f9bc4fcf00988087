"""Command line: `python -m rnnofrnns COMMAND`.

Commands:
  train       train gw / scn / gru / lstm on a task (progress bar, checkpoints, metrics, plots)
  evaluate    reload a run and recompute its test accuracy and ablation
  demo        train the GW net on row-digits (what `make demo` runs)
  superposition  train an ensemble of small RNNs over a sparsity grid and analyse its geometry
  task-switching the gated multi-path linear network on a blocked curriculum of teachers
                 (two-timescale gradient flow; flexible or forgetful regime)

Each experiment adds its own arguments (rnnofrnns/experiments/*/cli.py); this module only
parses them and dispatches. Benchmarks are in bench/, not here.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

# Integer arguments that must be positive, in every command that has them.
_POSITIVE = ("area_size", "steps", "batch", "epochs", "hidden", "features", "seeds", "batch_size", "seq_len")


def main(argv: Optional[List[str]] = None) -> int:
    from rnnofrnns.experiments.superposition import cli as superposition_cli
    from rnnofrnns.experiments.task_switching import cli as task_switching_cli
    from rnnofrnns.experiments.training import cli as training_cli
    from rnnofrnns.experiments.training.data import DataError

    parser = argparse.ArgumentParser(prog="python -m rnnofrnns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for cli in (training_cli, superposition_cli, task_switching_cli):
        cli.register(sub)
    args = parser.parse_args(argv)
    for name in _POSITIVE:
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    try:
        return args.func(args)
    except (ValueError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
