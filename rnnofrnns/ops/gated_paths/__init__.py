"""The gated multi-path matmul y = sum_p c_p * (W_p x), with path, sample or neuron gates."""
from .._backend import cpu_extension_available
from .autograd import register_op_pair
from .checks import check_gated_paths_args
from .functional import gated_paths
from .reference import gated_paths_reference
from . import triton_op  # noqa: F401  (registers the Triton custom ops)

if cpu_extension_available():
    register_op_pair("rnnofrnns::gated_paths_fwd", "rnnofrnns::gated_paths_bwd", weights_in_place=False)

__all__ = ["gated_paths", "gated_paths_reference", "check_gated_paths_args"]
