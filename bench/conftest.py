import os
import sys

import pytest
import torch

# The suites import their contenders and problems from bench/ops (the GPU suite too).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops"))


@pytest.fixture(autouse=True)
def flush_denormal():
    """Every contender runs with subnormals flushed to zero (16x slowdowns otherwise)."""
    old = torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False if not old else True)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Which build of the C++ kernels ran (bench/ops/report.py prints it with the CPU)."""
    import rnnofrnns

    machine_info["rnnofrnns_cpu_capability"] = rnnofrnns.cpu_capability()
    machine_info["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
