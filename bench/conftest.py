import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def flush_denormal():
    """Every contender runs with subnormals flushed to zero (16x slowdowns otherwise)."""
    old = torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False if not old else True)
