"""rnnofrnns: fused kernels and stable models for RNNs of RNNs.

Layers, each importing only those below it: ops/ (the fused kernels' Python side, one folder
per op), stability.py and topology.py, models/, experiments/ (training, task switching,
superposition); RNNEnsemble.sample_batch alone reaches up, to the superposition task.
"""
from ._openmp import choose_wait_policy_for_the_cli

choose_wait_policy_for_the_cli()  # before torch is imported: it starts OpenMP (see _openmp.py)

from .ops._backend import BACKENDS, cpu_capability, cpu_extension_available, triton_available  # noqa: E402
from .ops import gated_paths, gated_paths_reference, modular_rnn, modular_rnn_reference  # noqa: E402
from . import stability, topology  # noqa: E402
from .models import (  # noqa: E402
    GatedLinearNetwork, GlobalWorkspaceNet, ModularRNN, RNNEnsemble, SmallRNN, SparseComboNet, SVDComboNet,
)

__version__ = "0.1.0"
__all__ = [
    "modular_rnn", "modular_rnn_reference", "gated_paths", "gated_paths_reference", "GatedLinearNetwork",
    "ModularRNN", "SparseComboNet", "SVDComboNet", "GlobalWorkspaceNet",
    "SmallRNN", "RNNEnsemble",
    "stability", "topology", "BACKENDS", "cpu_capability", "cpu_extension_available", "triton_available",
]
