"""Stacked certified layers: ModularRNNStack, num_layers ModularRNN layers of which layer l+1 is
driven by layer l's states through its input projection (optionally through tanh), and the
certificate of the whole stack.

Why the stack contracts (the hierarchical combination of the RNNs-of-RNNs paper, in discrete
time). Layer l contracts by rho_l per step in its metric N_l = M_l A_l^{-1} (its own certificate).
Layer l+1 reads h^l_t, so one step of the stack has a block lower-triangular Jacobian: block
(i, i) is layer i's own J_i, block (i, j) for j < i is G_{i,i-1} ... G_{j+1,j} J_j, where
G_{l+1,l} = dh^{l+1}_t / dx is the coupling through layer l+1's input. Its gain from N_l to N_{l+1}
is at most
    g_l = || N_{l+1}^{1/2} diag(a s) U_{l+1} N_l^{-1/2} ||_2
(a the upper layer's rates, s its drive scale, U its input projection): the Cayley map C is
orthogonal in N_{l+1}, and phi', the Euler step's a L h term and the tanh between the layers
enter only as diagonal factors in [0, 1] or not at all. With the bound matrix b_ii = rho_i,
b_ij = g_{i-1} ... g_j rho_j and metric weights w_l = s^(2 l) on N_l,
    ||J||_{diag(w_l N_l)} <= || [b_ij s^(i-j)] ||_2,
which tends to max_l rho_l as s -> 0 (it grows with s: the matrix is non-negative). `certify()`
picks the largest s whose bound is at most halfway from max_l rho_l to 1 and states it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import stability
from .modular import AreaSizes, ModularRNN

BETWEEN_LAYERS = ("none", "tanh")


@dataclass
class StackCertificate:
    """The certificate of a ModularRNNStack: each layer's own (`layers`), the coupling gains
    `coupling_gains[l]` from layer l to l+1 (in the layers' metrics N_l = M_l A_l^{-1}), and the
    whole stack's: it contracts by `step_factor` per step in the metric diag(w_l N_l) with
    `metric_weights` w_l. The other fields summarise the layers (the worst of each) so that a
    stack's certificate reads like a layer's."""

    layers: List[stability.Certificate]
    coupling_gains: List[float]
    metric_weights: List[float]
    step_factor: float
    holds: bool
    discrete_holds: bool
    reason: str = ""
    rate: float = field(init=False)
    worst_skew: float = field(init=False)
    max_alpha: float = field(init=False)
    alpha: float = field(init=False)
    kappa: float = field(init=False)
    omega: float = field(init=False)
    feedback_step: str = field(init=False)
    alphas: Optional[torch.Tensor] = field(init=False, default=None, repr=False)
    area_rate_range: Optional[Tuple[float, float]] = field(init=False, default=None)

    def __post_init__(self) -> None:
        ls = self.layers
        self.rate = min(c.rate for c in ls)  # the hierarchy's rate approaches the slowest layer's
        self.worst_skew = max(c.worst_skew for c in ls)
        self.max_alpha = min(c.max_alpha for c in ls)
        self.alpha = max(c.alpha for c in ls)
        self.kappa = max(c.kappa for c in ls)
        self.omega = max(c.omega for c in ls)
        self.feedback_step = ls[0].feedback_step
        self.area_rate_range = ls[0].area_rate_range

    def __str__(self) -> str:
        if self.reason:
            return f"StackCertificate(FAILS: {self.reason})"
        return (f"StackCertificate({len(self.layers)} layers, discrete {'holds' if self.discrete_holds else 'FAILS'}: "
                f"step factor {self.step_factor:.6g} in diag(w_l N_l), w = "
                f"[{', '.join(f'{w:.3g}' for w in self.metric_weights)}]; layers' factors "
                f"[{', '.join(f'{c.step_factor:.6g}' for c in self.layers)}], coupling gains "
                f"[{', '.join(f'{g:.4g}' for g in self.coupling_gains)}])")


def unit_metric(layer: ModularRNN) -> torch.Tensor:
    """N = M A^{-1} of a layer per live unit (float64): the metric its certificate holds in, up to
    a number when it has one alpha."""
    a = layer.area_alpha().detach().double().repeat_interleave(layer.area_size)[layer.unit_index]
    return layer.metric().detach().double() / a


def coupling_gain(upper: ModularRNN, lower: ModularRNN) -> float:
    """g = ||N_up^{1/2} diag(a s) U N_low^{-1/2}||_2: the gain of layer `upper`'s step from its
    input (layer `lower`'s state) in the layers' metrics (module docstring)."""
    with torch.no_grad():
        a = upper.area_alpha().detach().double().repeat_interleave(upper.area_size)[upper.unit_index]
        s = torch.sqrt((2 - a) / a) if upper.drive_scale == "rate" else torch.ones_like(a)
        U = upper._param("input_weight").detach().double()[upper.unit_index]
        G = (unit_metric(upper).sqrt() * a * s)[:, None] * U * unit_metric(lower).rsqrt()[None, :]
        return float(torch.linalg.matrix_norm(G, ord=2))


def stack_bound(rhos: Sequence[float], gains: Sequence[float], s: float) -> float:
    """|| [b_ij s^(i-j)] ||_2 for the stack's bound matrix (module docstring)."""
    L = len(rhos)
    Bm = torch.zeros(L, L, dtype=torch.float64)
    for i in range(L):
        for j in range(i + 1):
            b = rhos[j] * math.prod(gains[j:i])
            Bm[i, j] = b * s ** (i - j)
    return float(torch.linalg.matrix_norm(Bm, ord=2))


def stack_certificate(layers: Sequence[ModularRNN]) -> StackCertificate:
    """Each layer's certificate, the coupling gains and the stack's factor and metric weights."""
    certs = [layer.certify() for layer in layers]
    bad = [f"layer {i}: {c.reason}" for i, c in enumerate(certs) if c.reason]
    if bad:
        return StackCertificate(certs, [], [], math.inf, False, False, reason="; ".join(bad))
    gains = [coupling_gain(layers[l + 1], layers[l]) for l in range(len(layers) - 1)]
    rhos = [c.step_factor for c in certs]
    rho = max(rhos)
    holds = all(c.holds for c in certs)
    if not (rho < 1 and all(math.isfinite(g) for g in gains)):
        return StackCertificate(certs, gains, [1.0] * len(layers), math.inf if not rho < 1 else rho, holds, False)
    target = rho + (1 - rho) / 2
    lo, hi = -700.0, 0.0  # log s: the bound at s = e^-700 is max rho to rounding
    if stack_bound(rhos, gains, 1.0) <= target:
        lo = 0.0
    else:
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if stack_bound(rhos, gains, math.exp(mid)) <= target else (lo, mid)
    s = math.exp(lo)
    factor = stack_bound(rhos, gains, s)
    weights = [s ** (2 * l) for l in range(len(layers))]
    return StackCertificate(certs, gains, weights, factor, holds, bool(factor < 1 and all(c.discrete_holds for c in certs)))


class ModularRNNStack(nn.Module):
    """num_layers certified layers, used like torch.nn.RNN(num_layers=...): layer 0 reads x, layer
    l+1 reads layer l's states (through tanh when between_layers="tanh") with its own input
    projection. Every layer has the settings of `layer_kwargs` (ModularRNN's keywords); the input
    encoder and input-driven timescales apply to layer 0 only (the upper layers' input path is
    linear, which the coupling bound needs). `certify()` returns a StackCertificate.

    forward(x, h0=None) -> (output, h_n): output as ModularRNN's (the last layer's states),
    h_n [num_layers, B, hidden_size]; h0 [num_layers, B, hidden_size] or None.
    """

    def __init__(self, input_size: int, area_sizes: AreaSizes, num_layers: int = 2, between_layers: str = "none",
                 **layer_kwargs) -> None:
        super().__init__()
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if between_layers not in BETWEEN_LAYERS:
            raise ValueError(f"between_layers must be one of {BETWEEN_LAYERS}, got {between_layers!r}")
        first = ModularRNN(input_size, area_sizes, **layer_kwargs)
        upper = {k: v for k, v in layer_kwargs.items() if k not in ("input_timescales", "alpha_min", "input_encoder")}
        upper.update(input_timescales=False, input_encoder=0)
        layers = [first] + [ModularRNN(first.hidden_size, area_sizes, **upper) for _ in range(num_layers - 1)]
        self.layers = nn.ModuleList(layers)
        self.num_layers, self.between_layers = num_layers, between_layers
        self.input_size, self.hidden_size, self.batch_first = input_size, first.hidden_size, first.batch_first
        self.num_areas = num_layers * first.num_areas  # ablation numbers the areas layer after layer

    def _between(self, out: torch.Tensor) -> torch.Tensor:
        return torch.tanh(out) if self.between_layers == "tanh" else out

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if h0 is not None and (h0.dim() < 2 or h0.shape[0] != self.num_layers):
            raise ValueError(f"h0 must be [num_layers, B, hidden_size] = [{self.num_layers}, B, {self.hidden_size}], "
                             f"got {tuple(h0.shape)}")
        out, finals = x, []
        for l, layer in enumerate(self.layers):
            out, h_n = layer(self._between(out) if l else out, None if h0 is None else h0[l])
            finals.append(h_n)
        return out, torch.cat(finals)

    def step(self, x_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step of the stack for x_t [B, input_size] and h [num_layers, B, hidden_size]
        (the reference backend, differentiable by torch.func)."""
        new, inp = [], x_t
        for l, layer in enumerate(self.layers):
            h_l = layer.step(self._between(inp) if l else inp, h[l])
            new.append(h_l)
            inp = h_l
        return torch.stack(new)

    def certify(self) -> StackCertificate:
        """The layers' certificates and the whole stack's (module docstring)."""
        return stack_certificate(list(self.layers))

    def unit_metric(self) -> List[torch.Tensor]:
        """N_l = M_l A_l^{-1} per live unit of every layer (float64)."""
        return [unit_metric(layer) for layer in self.layers]

    @contextlib.contextmanager
    def ablate(self, areas: Union[int, Iterable[int]]) -> Iterator["ModularRNNStack"]:
        """Silence areas, numbered layer after layer (area a of layer l is l * areas_per_layer + a)."""
        areas = (areas,) if isinstance(areas, int) else tuple(areas)
        per = self.layers[0].num_areas
        for a in areas:
            if not isinstance(a, int) or not 0 <= a < self.num_areas:
                raise ValueError(f"areas to ablate must be indices in [0, {self.num_areas - 1}], got {a!r}")
        with contextlib.ExitStack() as stack:
            for l, layer in enumerate(self.layers):
                mine = [a - l * per for a in areas if a // per == l]
                if mine:
                    stack.enter_context(layer.ablate(mine))
            yield self

    def num_feedback_parameters(self) -> int:
        return sum(layer.num_feedback_parameters() for layer in self.layers)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, between_layers={self.between_layers!r}"
