"""Fused ops of rnnofrnns, each with a dense PyTorch reference."""
from .gated_paths import gated_paths, gated_paths_reference
from .modular_rnn import modular_rnn, modular_rnn_reference

__all__ = ["modular_rnn", "modular_rnn_reference", "gated_paths", "gated_paths_reference"]
