"""OpenMP's wait policy: the CLI sleeps instead of spinning on a busy machine (rnnofrnns/_openmp.py)."""
from __future__ import annotations


def test_the_cli_sleeps_instead_of_spinning_on_a_busy_machine(monkeypatch):
    import sys

    from rnnofrnns import _openmp

    assert _openmp.busy_cores(0.01) is None or _openmp.busy_cores(0.01) >= 0
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.delitem(sys.modules, "torch")  # as before `python -m rnnofrnns` imports it
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(_openmp, "busy_cores", lambda window=0.1: 0.0)
    _openmp.choose_wait_policy_for_the_cli()
    assert "OMP_WAIT_POLICY" not in __import__("os").environ  # a quiet machine keeps spinning threads
    monkeypatch.setattr(_openmp, "busy_cores", lambda window=0.1: 1.0)
    _openmp.choose_wait_policy_for_the_cli()
    assert __import__("os").environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice is kept
    _openmp.choose_wait_policy_for_the_cli()
    assert __import__("os").environ["OMP_WAIT_POLICY"] == "ACTIVE"
