"""Small RNNs for temporal superposition, and ensembles of them run as one fused call.

SmallRNN: h_t = W_x x_t + W_h sigma(h_{t-1}), output sigma_out(W_y^T h_t + b), h_0 = 0.
  variant "linear":       sigma = identity, sigma_out = identity
  variant "relu_readout": sigma = identity, sigma_out = relu
  variant "relu":         sigma = relu,     sigma_out = relu
  tied_readout: "none" (W_y trained on its own), "input" (W_y = W_x; True means the same) or
  "output-direction" (W_y = W_h^k W_x for the instance's delay k: the readout of feature s is
  the direction w_k = W_h^k w_s its input takes after k steps of the linear recurrence, the
  tie of Sharma et al. 2026's main figures); output_bias=False fixes b at 0 (a buffer).

An ensemble of I independent SmallRNNs is a block-diagonal RNN of RNNs without feedback:
each instance is one area of the modular recurrence (form "hopfield", alpha = 1, no
inter-area blocks), so all instances run as a single modular_rnn call. The loss is the sum
of the instances' losses, so with an element-wise optimiser every instance trains exactly
as it would alone.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._dtype import input_in_model_dtype, without_autocast
from ..ops import ensemble_drive, ensemble_loss, ensemble_readout_loss, modular_rnn
from ..ops._backend import cpu_extension_available

VARIANTS = ("linear", "relu_readout", "relu")
# Largest hidden size and feature count of the fused ensemble ops (csrc/cpu/ensemble_*.cpp);
# larger ensembles take the composed path (modular_rnn and the ops' references).
MAX_FUSED_DIM = 64


def _check(num_features: int, hidden_size: int, variant: str) -> None:
    for name, v in (("num_features", num_features), ("hidden_size", hidden_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def instance_generator(seed: int, index: int) -> torch.Generator:
    """The generator of instance `index`: a function of (seed, index) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


TIED_READOUTS = ("none", "input", "output-direction")


def tie_of(tied_readout: Union[bool, str]) -> str:
    """The readout tie's name: False -> "none", True -> "input", or one of TIED_READOUTS."""
    if tied_readout is True or tied_readout is False:
        return "input" if tied_readout else "none"
    if tied_readout not in TIED_READOUTS:
        raise ValueError(f"tied_readout must be True, False or one of {TIED_READOUTS}, got {tied_readout!r}")
    return tied_readout


def output_directions(W_x: torch.Tensor, W_h: torch.Tensor, delays: Sequence[int]) -> torch.Tensor:
    """W_h^k W_x per instance (W_x [I, n, F], W_h [I, n, n], delays k_i), differentiable: one
    batched matrix power per distinct delay."""
    ks = torch.as_tensor(list(delays), dtype=torch.int64)
    idx = [(ks == k).nonzero().squeeze(1).to(W_x.device) for k in sorted(set(ks.tolist()))]
    parts = [torch.linalg.matrix_power(W_h.index_select(0, i), int(ks[i[0]])) @ W_x.index_select(0, i) for i in idx]
    return torch.cat(parts).index_select(0, torch.argsort(torch.cat(idx)))


def init_small_rnn(num_features: int, hidden_size: int, tied_readout: bool, generator: torch.Generator,
                   dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """W_x [n, F], W_h [n, n], W_y [n, F] (None when tied to W_x), b [F]."""
    def u(shape, bound):
        return ((2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1) * bound).to(dtype)

    W_x = u((hidden_size, num_features), 1 / math.sqrt(num_features))
    W_h = u((hidden_size, hidden_size), 1 / math.sqrt(hidden_size))
    W_y = None if tied_readout else u((hidden_size, num_features), 1 / math.sqrt(hidden_size))
    b = torch.zeros(num_features, dtype=dtype)
    return W_x, W_h, W_y, b


def _act(variant: str) -> Tuple[str, bool]:
    """(nonlinearity of the recurrence, relu on the readout?)"""
    return ("relu" if variant == "relu" else "identity"), variant != "linear"


class SmallRNN(nn.Module):
    """h_t = W_x x_t + W_h sigma(h_{t-1}); output sigma_out(W_y^T h_t + b). x, output: [B, T, F].
    With tied_readout=True the readout uses W_x (W_y = W_x)."""

    def __init__(self, num_features: int, hidden_size: int, variant: str = "linear",
                 tied_readout: Union[bool, str] = False, seed: int = 0, generator: Optional[torch.Generator] = None,
                 backend: Optional[str] = None, dtype: Optional[torch.dtype] = None, output_bias: bool = True,
                 delay: int = 1) -> None:
        super().__init__()
        _check(num_features, hidden_size, variant)
        dtype = dtype or torch.get_default_dtype()
        tie = tie_of(tied_readout)
        self.num_features, self.hidden_size, self.variant = num_features, hidden_size, variant
        self.tied_readout, self.output_bias, self.delay, self.backend = tie, bool(output_bias), int(delay), backend
        W_x, W_h, W_y, b = init_small_rnn(num_features, hidden_size, tie != "none",
                                          generator or instance_generator(seed, 0), dtype)
        self.W_x, self.W_h = nn.Parameter(W_x), nn.Parameter(W_h)
        if output_bias:
            self.b = nn.Parameter(b)
        else:
            self.register_buffer("b", b)
        self.W_y = None if tie != "none" else nn.Parameter(W_y)

    def readout_weight(self) -> torch.Tensor:
        """W_y [n, F]: its own, W_x, or W_h^k W_x (tied_readout)."""
        if self.tied_readout == "output-direction":
            return output_directions(self.W_x[None], self.W_h[None], [self.delay])[0]
        return self.W_x if self.tied_readout == "input" else self.W_y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.num_features:
            raise ValueError(f"x must be [B, T, num_features={self.num_features}], got {tuple(x.shape)}")
        nl, relu_out = _act(self.variant)
        x = input_in_model_dtype(x, self.W_h.dtype, type(self).__name__)
        with without_autocast(x):
            drive = F.linear(x.transpose(0, 1), self.W_x).contiguous()  # [T, B, n]
            empty_L = self.W_h.new_zeros(0, self.hidden_size, self.hidden_size)
            empty_idx = torch.zeros(0, 2, dtype=torch.int64, device=x.device)
            h = modular_rnn(drive, self.W_h[None], empty_L, empty_idx, alpha=1.0, nonlinearity=nl, form="hopfield",
                            backend=self.backend)
        out = h.transpose(0, 1) @ self.readout_weight() + self.b
        return torch.relu(out) if relu_out else out


class RNNEnsemble(nn.Module):
    """I independent SmallRNNs with their own parameters and task settings, as one call.

    Parameters have a leading instance axis: W_x [I, n, F], W_h [I, n, n], W_y [I, n, F],
    b [I, F] (a buffer of zeros with output_bias=False; no W_y when the readout is tied, see
    the module's docstring). Instance i is initialised from (seed, i) alone, so it does not
    depend on the number of instances. forward(x): x [I, B, T, F] (each instance its own data) or
    [B, T, F] (shared) -> [I, B, T, F]. `feature_probability` and `delay` (one value, or
    one per instance) are the instances' task settings, used by `sample_batch`; `importance`
    ([F] or [I, F], >= 0; default ones) weighs each feature's squared error in training_loss.
    """

    def __init__(self, num_instances: int, num_features: int, hidden_size: int, variant: str = "linear",
                 tied_readout: Union[bool, str] = False, feature_probability: Union[float, Sequence[float]] = 0.1,
                 delay: Union[int, Sequence[int]] = 1, seed: int = 0, backend: Optional[str] = None,
                 dtype: Optional[torch.dtype] = None, output_bias: bool = True,
                 importance: Union[None, Sequence[float], torch.Tensor] = None) -> None:
        super().__init__()
        if not isinstance(num_instances, int) or num_instances < 1:
            raise ValueError(f"num_instances must be a positive integer, got {num_instances!r}")
        _check(num_features, hidden_size, variant)
        dtype = dtype or torch.get_default_dtype()
        I = num_instances
        self.num_instances, self.num_features, self.hidden_size = I, num_features, hidden_size
        tie = tie_of(tied_readout)
        self.variant, self.tied_readout, self.backend, self.seed = variant, tie, backend, seed
        self.output_bias = bool(output_bias)
        probs = torch.as_tensor(feature_probability, dtype=torch.float64).expand(I).clone()
        delays = torch.as_tensor(delay, dtype=torch.int64).expand(I).clone()
        if ((probs < 0) | (probs > 1)).any():
            raise ValueError(f"feature_probability must be in [0, 1], got {probs.tolist()}")
        if (delays < 0).any():
            raise ValueError(f"delay must be >= 0, got {delays.tolist()}")
        self.register_buffer("feature_probability", probs)
        self.register_buffer("delay", delays)
        weights = torch.ones(I, num_features, dtype=dtype) if importance is None else \
            torch.as_tensor(importance, dtype=dtype).clone()
        if weights.dim() == 1 and weights.numel() == num_features:
            weights = weights.expand(I, num_features).clone()
        if tuple(weights.shape) != (I, num_features) or not bool(torch.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError(f"importance must be F = {num_features} or [I, F] = [{I}, {num_features}] finite values "
                             f">= 0, got {tuple(weights.shape)} values {weights.flatten()[:4].tolist()}")
        self.register_buffer("importance", weights)
        inits = [init_small_rnn(num_features, hidden_size, tie != "none", instance_generator(seed, i), dtype)
                 for i in range(I)]
        self.W_x = nn.Parameter(torch.stack([w[0] for w in inits]))
        self.W_h = nn.Parameter(torch.stack([w[1] for w in inits]))
        self.W_y = None if tie != "none" else nn.Parameter(torch.stack([w[2] for w in inits]))
        b = torch.stack([w[3] for w in inits])
        if output_bias:
            self.b = nn.Parameter(b)
        else:
            self.register_buffer("b", b)
        self.register_buffer("_empty_L", torch.zeros(0, hidden_size, hidden_size, dtype=dtype))
        self.register_buffer("_empty_idx", torch.zeros(0, 2, dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # a state dict from before `importance` existed (2026-12-03) trained every feature alike
        state_dict.setdefault(prefix + "importance", torch.ones_like(self.importance))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def readout_weight(self) -> torch.Tensor:
        """W_y [I, n, F]: its own, W_x, or W_h^k W_x per instance (tied_readout)."""
        if self.tied_readout == "output-direction":
            return output_directions(self.W_x, self.W_h, self.delay.tolist())
        return self.W_x if self.tied_readout == "input" else self.W_y

    def _ensemble_backend(self) -> Optional[str]:
        """The fused ensemble ops exist for the cpu backend only, and for feature counts up to
        MAX_FUSED_DIM; elsewhere their reference runs."""
        if self.backend in (None, "cpu") and self.num_features <= MAX_FUSED_DIM:
            return None
        return "reference"

    def _per_instance(self, x: torch.Tensor) -> torch.Tensor:
        """x as [I, B, T, F] (shared [B, T, F] data becomes an expanded view, not a copy)."""
        I = self.num_instances
        if x.dim() == 3:
            x = x.unsqueeze(0).expand(I, *x.shape)
        if x.dim() != 4 or x.shape[0] != I or x.shape[-1] != self.num_features:
            raise ValueError(f"x must be [I={I}, B, T, F={self.num_features}] or [B, T, F], got {tuple(x.shape)}")
        return x

    def states(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden states of all instances as one modular_rnn output [T, B, I*n]."""
        x = input_in_model_dtype(self._per_instance(x), self.W_h.dtype, type(self).__name__)
        nl, _ = _act(self.variant)
        with without_autocast(x):
            drive = ensemble_drive(x, self.W_x, backend=self._ensemble_backend())
            return modular_rnn(drive, self.W_h, self._empty_L, self._empty_idx, alpha=1.0, nonlinearity=nl,
                               form="hopfield", backend=self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        I, n = self.num_instances, self.hidden_size
        h = self.states(x)
        T, B, _ = h.shape
        _, relu_out = _act(self.variant)
        out = torch.einsum("tbin,inf->ibtf", h.view(T, B, I, n), self.readout_weight()) + self.b[:, None, None, :]
        return torch.relu(out) if relu_out else out

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """training_losses(x, y).sum(): the same value and gradients as
        loss(self(x), y, self.importance)."""
        return self.training_losses(x, y).sum()

    def training_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every instance's loss [I], differentiable; their sum is loss(self(x), y, self.importance).
        On the CPU (backend None or "cpu") one fused op computes the loss and its parameter gradients in a single pass over
        x and y (ensemble_loss); elsewhere, above MAX_FUSED_DIM hidden units or features, or
        when x requires grad, the states come from modular_rnn and the fused readout+loss op
        (or its reference) finishes the loss."""
        I, F = self.num_instances, self.num_features
        if y.dim() != 4 or y.shape[0] != I or y.shape[-1] != F:
            raise ValueError(f"y must be [I={I}, B, T, F={F}], got {tuple(y.shape)}")
        nl, relu_out = _act(self.variant)
        x = self._per_instance(x)
        fits = max(self.hidden_size, self.num_features) <= MAX_FUSED_DIM
        W_y, b = self.readout_weight(), self.b
        if bool((self.importance != 1).any()):
            # importance c_f >= 0 weighs feature f's squared error: c (r(z) - y)^2 = (r(sqrt(c) z) -
            # sqrt(c) y)^2 for r = relu or the identity, so the fused ops run the weighted loss
            # with the readout's columns, the bias and the targets scaled by sqrt(c)
            root = self.importance.sqrt()
            W_y, b, y = W_y * root[:, None, :], b * root, y * root[:, None, None, :]
        if (self.backend in (None, "cpu") and y.device.type == "cpu" and cpu_extension_available()
                and not x.requires_grad and fits):
            return ensemble_loss(x, self.W_x, self.W_h, W_y, b, y, nl == "relu", relu_out, backend="cpu")
        return ensemble_readout_loss(self.states(x), W_y, b, y, relu_out, backend=self._ensemble_backend())

    def projections(self, steps: int) -> torch.Tensor:
        """w_y . w_s for s = 0..steps-1 per instance and feature, [I, steps, F]: how the readout
        of feature f reads the direction w_s = W_h^s W_x its input took s steps ago (the
        interference-free half-space is w_y . w_s <= 0 for s != k)."""
        w_y = self.readout_weight()
        w, out = self.W_x, []
        for _ in range(steps):
            out.append((w_y * w).sum(1))
            w = self.W_h @ w
        return torch.stack(out, 1)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, importance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sum over instances of each instance's mean (importance-weighted) squared error;
        importance: [F] or [I, F] (self.importance is the one training_loss uses)."""
        err = (pred - target).square()
        if importance is not None:
            err = err * (importance[:, None, None, :] if importance.dim() == 2 else importance)
        return err.mean(dim=(1, 2, 3)).sum()

    def sample_batch(self, batch_size: int, seq_len: int, generators: Optional[Sequence[torch.Generator]] = None):
        """A delayed-recall batch per instance with its own probability and delay: x, y [I, B, T, F]."""
        from ..experiments.superposition.task import ensemble_delayed_recall

        return ensemble_delayed_recall(self.feature_probability.tolist(), self.delay.tolist(), self.num_features,
                                       seq_len, batch_size, generators, dtype=self.W_x.dtype)

    @torch.no_grad()
    def instance(self, i: int) -> SmallRNN:
        """A standalone SmallRNN holding a copy of instance i's current parameters."""
        if not 0 <= i < self.num_instances:
            raise ValueError(f"instance index must be in [0, {self.num_instances - 1}], got {i}")
        m = SmallRNN(self.num_features, self.hidden_size, self.variant, self.tied_readout, backend=self.backend,
                     dtype=self.W_x.dtype, output_bias=self.output_bias,
                     delay=int(self.delay[i])).to(self.W_x.device)
        m.W_x.copy_(self.W_x[i])
        m.W_h.copy_(self.W_h[i])
        m.b.copy_(self.b[i])
        if self.W_y is not None:
            m.W_y.copy_(self.W_y[i])
        return m
