"""OpenMP's wait policy for the command line, chosen before torch starts its runtime.

OpenMP threads spin while they wait for work. On a quiet machine that is what makes short
parallel regions fast; when another process keeps a core busy, the spinning threads take
turns with it and training runs several times slower. So `python -m rnnofrnns`, before it
imports torch, looks at how busy the cores are (0.1 s of /proc/stat) and, if a core's worth
of work is already running, asks OpenMP to sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE).
An OMP_WAIT_POLICY set by the user is left alone. Code that imports the package itself has
started torch already; on a shared machine, set OMP_WAIT_POLICY=PASSIVE before importing torch.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, Tuple


def _cpu_times() -> Optional[Tuple[int, int]]:
    """(busy, total) jiffies of all cores, or None where /proc/stat cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window: float = 0.1) -> Optional[float]:
    """How many cores' worth of work other processes ran during `window` seconds."""
    a = _cpu_times()
    time.sleep(window)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)


def choose_wait_policy_for_the_cli() -> None:
    """Set OMP_WAIT_POLICY=PASSIVE when running as `python -m rnnofrnns` on a busy machine."""
    if sys.argv[:1] != ["-m"] or "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    busy = busy_cores()
    if busy is not None and busy >= 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
