"""The public names of `rnnofrnns` are all there."""
from __future__ import annotations

import rnnofrnns


def test_public_names_of_the_package():
    for name in rnnofrnns.__all__:
        assert getattr(rnnofrnns, name) is not None
    from rnnofrnns.ops.ensemble import ensemble_loss, ensemble_loss_reference  # noqa: F401
    from rnnofrnns.ops.modular_rnn.reference import dense_feedback  # noqa: F401
