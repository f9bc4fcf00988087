"""What this machine can run: its CPUs and its memory, checked before a command builds anything."""
from __future__ import annotations

import os
from typing import Optional

from .errors import UsageError


def cpu_count() -> int:
    return os.cpu_count() or 1


def check_threads(threads: Optional[int], flag: str = "--threads") -> None:
    """A positive thread count, at most the machine's CPUs (more only make the OpenMP threads
    wait for each other)."""
    if threads is None:
        return
    if not isinstance(threads, int) or threads < 1:
        raise UsageError(f"{flag} must be a positive integer, got {threads!r}")
    if threads > cpu_count():
        raise UsageError(f"{flag} must be at most the {cpu_count()} CPUs of this machine, got {threads}")


def run_threads_here(saved: Optional[int]) -> Optional[int]:
    """A run's saved thread count, at most this machine's CPUs (a run may move to a smaller one)."""
    return None if saved is None else min(saved, cpu_count())


def machine_memory() -> Optional[int]:
    """Bytes of physical memory, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(need: float, sizes: str) -> None:
    """A UsageError naming the size flags (`sizes`) when `need` bytes exceed the machine's memory."""
    total = machine_memory()
    if total is not None and need > total:
        raise UsageError(f"{sizes} needs about {need / 2**30:,.0f} GiB, more than the {total / 2**30:,.0f} GiB "
                         "of this machine; choose smaller sizes")
