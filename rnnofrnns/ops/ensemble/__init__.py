"""Fused ops of an ensemble of small RNNs: input projection, readout+loss, and the whole
training loss in one pass. cpu backend and dense references; no Triton kernels."""
from .._backend import cpu_extension_available
from .autograd import register_ops
from .functional import ensemble_drive, ensemble_loss, ensemble_readout_loss
from .reference import ensemble_drive_reference, ensemble_loss_reference, ensemble_readout_loss_reference

if cpu_extension_available():
    register_ops()

__all__ = ["ensemble_drive", "ensemble_readout_loss", "ensemble_loss", "ensemble_drive_reference",
           "ensemble_readout_loss_reference", "ensemble_loss_reference"]
