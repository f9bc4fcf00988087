"""Command line: `python -m rnnofrnns COMMAND`.

Commands:
  train       train gw / scn / gru / lstm on a task (progress bar, checkpoints, metrics, plots)
  evaluate    reload a run and recompute its test accuracy and ablation
  demo        train the GW net on row-digits (what `make demo` runs)
  sweep       train Sparse Combo Nets over topologies x feedback sparsities x seeds; accuracy,
              trainable parameters, certificates and the drop when one area is silenced
  superposition  train an ensemble of small RNNs over a sparsity grid and analyse its geometry
  task-switching the gated multi-path linear network on a blocked curriculum of teachers
                 (two-timescale gradient flow; flexible or forgetful regime)
  task-switching-study  the paper's grids of task-switching runs (block length, constraints,
                 teacher overlap, paths and tasks), a table and a plot each

Each experiment adds its own arguments (rnnofrnns/experiments/*/cli.py); this module only
parses them and dispatches. Benchmarks are in bench/, not here.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, NoReturn, Optional

# Integer arguments that must be positive, in every command that has them.
_POSITIVE = ("area_size", "steps", "batch", "epochs", "hidden", "features", "seeds", "batch_size", "seq_len",
             "record_every")


class _Parser(argparse.ArgumentParser):
    """argparse with every default in --help and its errors as one line, like the commands' own."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main(argv: Optional[List[str]] = None) -> int:
    from rnnofrnns.experiments.errors import RunError, UsageError
    from rnnofrnns.experiments.superposition import cli as superposition_cli
    from rnnofrnns.experiments.task_switching import cli as task_switching_cli
    from rnnofrnns.experiments.training import cli as training_cli
    from rnnofrnns.experiments.training.data import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="python -m rnnofrnns", description=__doc__, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for cli in (training_cli, superposition_cli, task_switching_cli):
        cli.register(sub)
    args = parser.parse_args(argv)
    args.argv = argv[1:]  # the command's own arguments, for the commands that need to know what was given
    for name in _POSITIVE:
        value = getattr(args, name, None)
        if isinstance(value, int) and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    try:
        from rnnofrnns import cpu_capability

        cpu_capability()  # a RNNOFRNNS_CPU_CAPABILITY that cannot run fails here, before any run starts
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RunError, DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line here, the traceback on request
        if os.environ.get("RNNOFRNNS_TRACEBACK") == "1":
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"error: internal error, {type(e).__name__}: {first} (RNNOFRNNS_TRACEBACK=1 shows where)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
