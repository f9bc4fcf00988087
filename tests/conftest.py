"""Test configuration: Triton's interpreter when there is no GPU, NaN-filled outputs."""
import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton is first imported (rnnofrnns imports it lazily).
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Fresh output buffers of the fused kernels start as NaN, so an unwritten element fails.
os.environ["RNNOFRNNS_DEBUG_NAN_FILL"] = "1"
os.environ.pop("RNNOFRNNS_BACKEND", None)

try:
    from hypothesis import settings

    settings.register_profile("rnnofrnns", deadline=None, max_examples=60, derandomize=True)
    settings.load_profile("rnnofrnns")
except ImportError:  # pragma: no cover
    pass
