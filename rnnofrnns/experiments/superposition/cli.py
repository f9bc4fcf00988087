"""`python -m rnnofrnns superposition`: its arguments and the command."""
from __future__ import annotations

import argparse

from .experiment import SuperpositionConfig, run_superposition


def _superposition(args: argparse.Namespace) -> int:
    cfg = SuperpositionConfig(hidden=args.hidden, features=args.features, delays=args.delay,
                              sparsities=args.sparsities, seeds=args.seeds, steps=args.steps,
                              batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, variant=args.variant,
                              tied_readout=args.tied_readout, output_bias=not args.no_output_bias,
                              record_every=args.record_every, importance_decay=args.importance_decay,
                              out=args.out, threads=args.threads, progress=not args.no_progress)
    run_superposition(cfg)
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the superposition command to the CLI."""
    sd = SuperpositionConfig()
    sp = sub.add_parser("superposition", help="temporal superposition: train small RNNs over a sparsity grid")
    sp.add_argument("--hidden", type=int, default=sd.hidden, help="hidden size of every RNN")
    sp.add_argument("--features", type=int, default=sd.features, help="number of input features F")
    sp.add_argument("--delay", type=int, nargs="+", default=sd.delays, help="delay(s) k to recall")
    sp.add_argument("--sparsities", type=float, nargs="+", default=sd.sparsities, help="input sparsities 1 - p")
    sp.add_argument("--seeds", type=int, default=sd.seeds, help="instances per (delay, sparsity)")
    sp.add_argument("--steps", type=int, default=sd.steps, help="Adam steps")
    sp.add_argument("--batch-size", type=int, default=sd.batch_size, help="sequences per Adam step, per RNN")
    sp.add_argument("--seq-len", type=int, default=sd.seq_len, help="steps per sequence")
    sp.add_argument("--lr", type=float, default=sd.lr, help="Adam learning rate")
    sp.add_argument("--variant", choices=["linear", "relu_readout", "relu"], default=sd.variant,
                    help="where the relus are (SmallRNN)")
    sp.add_argument("--tied-readout", choices=["none", "input", "output-direction"], default=sd.tied_readout,
                    help="the readout W_y: its own (none), W_x (input) or W_h^k W_x, the direction a feature's "
                         "input takes after the delay k (output-direction, the paper's main figures)")
    sp.add_argument("--record-every", type=int, default=sd.record_every,
                    help="Adam steps between the recorded losses and projections w_y . w_s (dynamics.json)")
    sp.add_argument("--importance-decay", type=float, default=sd.importance_decay,
                    help="feature f's squared error weighs DECAY^f (1: every feature alike); metrics.json and "
                         "feature_recall.png then say which features each net keeps as the delay grows")
    sp.add_argument("--no-output-bias", action="store_true", help="no trainable output bias (b = 0)")
    sp.add_argument("--out", default=sd.out, help="output folder (metrics.json, ensemble.pt, plots)")
    sp.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=_superposition)
