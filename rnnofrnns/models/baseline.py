"""The torch.nn baselines the certified models are compared with."""
from __future__ import annotations

import torch
from torch import nn

from .readouts import make_readout


class RNNClassifier(nn.Module):
    """torch.nn.GRU / LSTM baseline with a readout of its states ("last", "mean", "glu" or "recent", as the
    certified classifiers; rnnofrnns.models.readouts)."""

    def __init__(self, kind: str, input_size: int, hidden_size: int, num_classes: int, readout: str = "last") -> None:
        super().__init__()
        cell = nn.GRU if kind == "gru" else nn.LSTM
        self.rnn = cell(input_size, hidden_size, batch_first=True)
        self.readout = make_readout(readout, hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.readout(out)
