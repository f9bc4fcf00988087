"""The classifiers built on ModularRNN (or a stack of them, num_layers > 1): SparseComboNet,
GlobalWorkspaceNet and SVDComboNet, each a recurrent network plus a readout."""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
from torch import nn

from .. import stability, topology as topo
from .areas import SVDAreas, area_kind
from .feedback import CayleyStep
from .modular import ModularRNN
from .readouts import make_readout
from .segments import RecomputeEvery, check_recompute, segment_length_for_budget, segmented_forward
from .stack import ModularRNNStack, StackCertificate


class SparseComboNet(nn.Module):
    """ModularRNN plus a readout (Kozachkov et al. 2022): `readout` "recent" (gated linear units
    of the states, each pooled over a learned window of the latest steps: the default, the
    study's best on short and long sequences), "glu" (the same units pooled by the mean over
    time), "last" (a linear map of the last state, the earliest default) or "mean" (of the mean
    state), or any module called as readout(output, h_n) (rnnofrnns.models.readouts). The
    readout is outside the recurrence: the certificate is the rnn's.

    num_layers > 1 stacks certified layers (ModularRNNStack; between_layers "none" or "tanh"),
    and the readout reads the last layer; the certificate is then the stack's.

    recompute_every: None (keep every state for the backward), K (run the sequence in segments
    of K steps and keep only each segment's starting state; the backward recomputes a segment at
    a time: memory (T/K + c K) instead of c T, one more forward in time) or "auto" (K from
    memory_budget_gb, the GB the states of a training step may take). Not saved in the
    state_dict; settable on a built net. See models/segments.py.

    forward(x, h0=None) -> logits [B, output_size]. Extra keyword arguments go to ModularRNN.
    """

    def __init__(self, input_size: int, output_size: int, num_areas: int = 16, area_size: int = 32,
                 topology: topo.Topology = "all", readout: Union[str, nn.Module] = "recent", num_layers: int = 1,
                 between_layers: str = "none", recompute_every: RecomputeEvery = None,
                 memory_budget_gb: Optional[float] = None, **kwargs) -> None:
        super().__init__()
        check_recompute(recompute_every, memory_budget_gb)
        if not isinstance(output_size, int) or output_size < 1:
            raise ValueError(f"output_size must be a positive integer, got {output_size!r}")
        sizes = kwargs.pop("area_sizes", (num_areas, area_size))
        if num_layers == 1 and between_layers == "none":  # one layer: the ModularRNN itself (its state_dict keys)
            self.rnn: Union[ModularRNN, ModularRNNStack] = ModularRNN(input_size, sizes, topology=topology, **kwargs)
        else:
            self.rnn = ModularRNNStack(input_size, sizes, num_layers, between_layers, topology=topology, **kwargs)
        self.readout = make_readout(readout, self.rnn.hidden_size, output_size, generator=kwargs.get("generator"),
                                    dtype=kwargs.get("dtype"))
        if recompute_every is not None and not (hasattr(self.readout, "pool") and hasattr(self.readout, "head")):
            raise ValueError(f"recompute_every needs a readout with pool() and head() (the built-in ones), got "
                             f"{type(self.readout).__name__}")
        self.recompute_every, self.memory_budget_gb = recompute_every, memory_budget_gb

    def segment_length(self, steps: int, batch: int) -> Optional[int]:
        """The segment length K that forward uses for `steps` x `batch` (None: one pass)."""
        check_recompute(self.recompute_every, self.memory_budget_gb)
        if self.recompute_every is None:
            return None
        if self.recompute_every == "auto":
            assert self.memory_budget_gb is not None
            hidden = self.rnn.hidden_size * getattr(self.rnn, "num_layers", 1)
            size = torch.finfo(next(self.parameters()).dtype).bits // 8
            return segment_length_for_budget(steps, batch, hidden, size, self.memory_budget_gb * 1e9)
        return min(int(self.recompute_every), steps)

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.recompute_every is not None and isinstance(x, torch.Tensor) and x.dim() == 3:
            batch_first = self.rnn.batch_first
            K = self.segment_length(x.shape[1 if batch_first else 0], x.shape[0 if batch_first else 1])
            if K is not None and K > 0:
                return segmented_forward(self.rnn, self.readout, x, h0, K)
        output, h_n = self.rnn(x, h0)
        return self.readout(output if self.rnn.batch_first else output.transpose(0, 1), h_n)

    def certify(self) -> Union[stability.Certificate, "StackCertificate"]:
        return self.rnn.certify()

    def certify_inputs(self) -> dict:
        """The one layer's certificate inputs (a stack has none: its certify() combines the layers')."""
        if not isinstance(self.rnn, ModularRNN):
            raise TypeError("certify_inputs: a stack of layers has no single set; use certify() or rnn.layers[l]")
        return self.rnn.certify_inputs()

    def ablate(self, areas: Union[int, Iterable[int]]):
        return self.rnn.ablate(areas)

    def num_feedback_parameters(self) -> int:
        return self.rnn.num_feedback_parameters()


class GlobalWorkspaceNet(SparseComboNet):
    """The global-workspace preset (Ennis et al. 2023): a star of feedback through one
    workspace area (the last), optionally of a different size (`workspace_size`), with an
    optional elementwise 0/1 sparsity of the inter-area weights (`feedback_sparsity`)."""

    def __init__(self, input_size: int, output_size: int, num_areas: int = 16, area_size: int = 32,
                 workspace_size: Optional[int] = None, **kwargs) -> None:
        if not isinstance(num_areas, int) or num_areas < 2:
            raise ValueError(f"a global workspace needs num_areas >= 2, got {num_areas!r}")
        if "topology" in kwargs:
            raise ValueError("GlobalWorkspaceNet fixes the topology (a star through the last area); "
                             "use SparseComboNet for another one")
        if workspace_size is None or workspace_size == area_size:
            sizes = (num_areas, area_size)
        else:
            sizes = [area_size] * (num_areas - 1) + [workspace_size]
        super().__init__(input_size, output_size, num_areas, area_size, topology="gw", area_sizes=sizes, **kwargs)


class SVDComboNet(SparseComboNet):
    """The SVD Combo Net (Kozachkov et al. 2022, Theorem 5, direct parameterisation): trainable
    areas W_i = Phi_i^{-1} U_i Sigma_i V_i^T Phi_i that contract by construction
    (areas="svd"), all-to-all negative feedback by default, and the cayley feedback step, so
    that the discrete certificate holds whatever the areas and the feedback learn."""

    def __init__(self, input_size: int, output_size: int, num_areas: int = 16, area_size: int = 32,
                 topology: topo.Topology = "all", **kwargs) -> None:
        kind = area_kind(kwargs.pop("areas", "svd"), sigma_max=kwargs.pop("sigma_max", None))
        if not isinstance(kind, SVDAreas):
            raise ValueError(f"SVDComboNet has areas='svd'; got areas={kind.name!r} (use SparseComboNet)")
        kwargs["areas"] = kind
        if kwargs.get("feedback") is None and kwargs.get("feedback_step") is None:
            kwargs["feedback"] = CayleyStep()
        super().__init__(input_size, output_size, num_areas, area_size, topology=topology, **kwargs)
