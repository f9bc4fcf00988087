"""The modular recurrence: block-diagonal intra-area matrix plus block-sparse feedback."""
from .._backend import cpu_extension_available
from .autograd import register_op_pair
from .plan import CAYLEY_FORMS, FeedbackPlan, StarFactor, feedback_plan
from .checks import check_block_index, check_modular_rnn_args
from .functional import modular_rnn
from .reference import dense_feedback, modular_rnn_reference
from . import triton_op  # noqa: F401  (registers the Triton custom ops)

if cpu_extension_available():
    register_op_pair("rnnofrnns::modular_rnn_fwd", "rnnofrnns::modular_rnn_bwd")

__all__ = ["modular_rnn", "modular_rnn_reference", "dense_feedback", "check_modular_rnn_args", "check_block_index",
           "FeedbackPlan", "StarFactor", "feedback_plan", "CAYLEY_FORMS"]
