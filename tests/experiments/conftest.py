"""Fixtures shared by the tests of the experiments."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A gw run stopped after 1 of 2 epochs (as if interrupted)."""
    from test_cli_reliability import RUN
    from test_training import cli

    out = tmp_path_factory.mktemp("runs") / "a"
    res = cli(*RUN, "--epochs", "2", "--stop-after", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out
