"""Fused ops of rnnofrnns, each with one dense PyTorch reference: one folder per op with
reference.py, checks.py, functional.py (the entry point), backends.py (the op's implementation
on each backend, registered in the table of _backend.py), autograd.py (fake implementations
and autograd of the compiled ops) and, where there are Triton kernels, triton_op.py. A new
backend is one registration per op in its backends.py (and its availability check in
_backend.resolve_backend)."""
from .ensemble import ensemble_drive, ensemble_loss, ensemble_readout_loss
from .gated_paths import gated_paths, gated_paths_reference
from .modular_rnn import CAYLEY_FORMS, FeedbackPlan, StarFactor, feedback_plan, modular_rnn, modular_rnn_reference

__all__ = ["modular_rnn", "modular_rnn_reference", "FeedbackPlan", "StarFactor", "CAYLEY_FORMS", "feedback_plan", "gated_paths",
           "gated_paths_reference", "ensemble_drive", "ensemble_readout_loss", "ensemble_loss"]
