"""`python -m rnnofrnns ARGS` for the tests, in this process or in a fresh one."""
from __future__ import annotations

import contextlib
import io
import os
import random
import subprocess
import sys
import warnings
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch


@dataclass
class CliResult:
    """What a command left: its exit status and everything it printed (as subprocess.run's)."""
    returncode: int
    stdout: str
    stderr: str


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def cli(*args: str, cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
        process: bool = False) -> CliResult:
    """Run the command line with `args`.

    By default in this process through rnnofrnns.__main__.main, printing captured: a fresh
    interpreter spends about 4 s importing torch and torch._dynamo (for the optimiser), most of
    a small run's time. The process-wide state a command may change is put back afterwards:
    torch's thread count, the random generators of random, numpy and torch, the environment.
    Warnings are printed into the captured stderr under a fresh interpreter's filters, so a
    warning a user would see still breaks a test's "one line" check. An exception that escapes
    main (a bug: the command line turns every error into one line) fails the test.

    In a fresh interpreter (`python -m rnnofrnns`) with process=True, or when `env` or `cwd` is
    given (settings read at import, a relative --out): for what only a real process shows.
    """
    if process or env is not None or cwd is not None:
        res = subprocess.run([sys.executable, "-m", "rnnofrnns", *args], capture_output=True, text=True, cwd=cwd,
                             env=None if env is None else dict(env), timeout=600)
        return CliResult(res.returncode, res.stdout, res.stderr)
    from rnnofrnns.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    generators = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    environ = dict(os.environ)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = _print_warning
            try:
                code = main(list(args))
                code = 0 if code is None else code
            except SystemExit as e:  # argparse: --help, and its errors (already printed)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        torch.set_num_threads(threads)
        random.setstate(generators[0])
        np.random.set_state(generators[1])
        torch.random.set_rng_state(generators[2])
        os.environ.clear()
        os.environ.update(environ)
    return CliResult(code, out.getvalue(), err.getvalue())
