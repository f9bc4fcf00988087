"""rnnofrnns: fused kernels and stable models for RNNs of RNNs."""
from ._backend import BACKENDS, cpu_extension_available, triton_available
from .ops import gated_paths, gated_paths_reference, modular_rnn, modular_rnn_reference
from . import stability, topology
from .models import GatedLinearNetwork, GlobalWorkspaceNet, ModularRNN, SparseComboNet
from .ensemble import RNNEnsemble, SmallRNN

__version__ = "0.1.0"
__all__ = [
    "modular_rnn", "modular_rnn_reference", "gated_paths", "gated_paths_reference", "GatedLinearNetwork",
    "ModularRNN", "SparseComboNet", "GlobalWorkspaceNet",
    "SmallRNN", "RNNEnsemble",
    "stability", "topology", "BACKENDS", "cpu_extension_available", "triton_available",
]
