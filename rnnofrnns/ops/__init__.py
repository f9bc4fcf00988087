"""Fused ops of rnnofrnns, each with one dense PyTorch reference: one folder per op with
reference.py, checks.py, functional.py (the entry point), autograd.py (fake implementations
and autograd of the compiled ops) and, where there are Triton kernels, triton_op.py."""
from .ensemble import ensemble_drive, ensemble_loss, ensemble_readout_loss
from .gated_paths import gated_paths, gated_paths_reference
from .modular_rnn import modular_rnn, modular_rnn_reference

__all__ = ["modular_rnn", "modular_rnn_reference", "gated_paths", "gated_paths_reference", "ensemble_drive",
           "ensemble_readout_loss", "ensemble_loss"]
