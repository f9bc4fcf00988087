"""Stable RNNs of RNNs: ModularRNN, SparseComboNet and GlobalWorkspaceNet."""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import stability, topology as topo
from . import assembly
from ._dtype import input_in_model_dtype, without_autocast
from .areas import Areas, area_kind
from .feedback import FeedbackStep, feedback_step_of
from ..ops import CAYLEY_FORMS, FeedbackPlan, feedback_plan, modular_rnn
from ..ops._common import FORMS, NONLINEARITIES
from ..ops.modular_rnn.reference import cayley_product, dense_feedback

AreaSizes = Union[Sequence[int], Tuple[int, int]]
DRIVE_SCALES = ("none", "rate")
DEFAULT_INPUT_ENCODER = 16  # the width of the default's input encoder (the study in docs/training.md)
Rates = Union[float, Sequence[float], torch.Tensor]


def _area_sizes(area_sizes: AreaSizes) -> List[int]:
    """A tuple (num_areas, area_size) or a list of sizes (one per area)."""
    if isinstance(area_sizes, tuple) and len(area_sizes) == 2 and all(isinstance(v, int) for v in area_sizes):
        p, n = area_sizes
        if p < 1 or n < 1:
            raise ValueError(f"area_sizes (num_areas, area_size) must be positive, got {area_sizes}")
        return [n] * p
    sizes = list(area_sizes)
    if not sizes or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
        raise ValueError(f"area_sizes must be a list of positive sizes or a tuple (num_areas, area_size), "
                         f"got {area_sizes!r}")
    return sizes


def _rates(alpha: Rates, p: int) -> torch.Tensor:
    """alpha as p float64 values in (0, 1]; a number is broadcast."""
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        a = torch.full((p,), float(alpha), dtype=torch.float64)
    else:
        try:
            a = torch.as_tensor(alpha, dtype=torch.float64).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"alpha must be a number or {p} per-area values in (0, 1], got {alpha!r}") from None
        if a.numel() != p:
            raise ValueError(f"alpha must be a number or p = {p} per-area values, got {a.numel()} values")
    if not bool(((a > 0) & (a <= 1)).all()):
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    return a


class ModularRNN(nn.Module):
    """An RNN of RNNs with a contraction certificate, used like torch.nn.RNN.

    p areas (sizes `area_sizes`), each contracting in a diagonal metric M_i, and trainable
    inter-area feedback L = B - M^{-1} B^T M on the pairs of `topology` (one parameter block B
    per connected pair), so that the continuous-time network contracts in M whatever B is.

    Without options it is the best certified configuration of the study in docs/training.md:
    SVDAreas(sigma_max=0.999), the Cayley step, alpha 0.3, learned (learn_timescales) and
    input-driven (input_timescales) timescales and an input encoder of 16 features. The earlier
    network is one argument away: feedback="euler" (or an Euler-only setting, guarantee /
    guarantee_margin) makes the unset settings the earlier defaults too: sparse areas, alpha
    0.5, constant timescales, no encoder; and a sparse-area setting (density, gamma, scale)
    without areas= means sparse areas.

    areas: the area kind (rnnofrnns.models.areas): SparseAreas(density, gamma, scale), fixed
    sparse areas ("sparse"), or SVDAreas(sigma_max), trainable areas that contract by
    construction ("svd"). feedback: the discrete step (rnnofrnns.models.feedback):
    EulerStep(guarantee, margin) ("euler"), whose feedback is rescaled when needed so that the
    map contracts, or CayleyStep() ("cayley"), which contracts for any feedback strength. The
    names, with the settings as keywords (density, gamma, scale, sigma_max, guarantee,
    guarantee_margin; feedback_step= for the step's name), build the same parts.
    `certify()` reports `discrete_holds=True` at every point of training in both cases; the
    bounds are in rnnofrnns.stability.

    alpha: dt/tau, a number or p per-area values; learn_timescales=True makes
    alpha_i = alpha_max * sigmoid(theta_i) trainable (initialised at `alpha`). Per-area rates
    with guarantee=True need the cayley step.

    input_timescales=True (cayley step): every area's rate follows the input, as a GRU's update
    gate does, a_{i,t} = alpha_min + (alpha_max - alpha_min) sigmoid(g_i . x_t + c_i) (read from
    x_t only, never from the state; starting at alpha: g = 0), while the Cayley map keeps the
    constant per-area rates alpha_i above. Certified: C is orthogonal in N = M A^{-1} and the
    areas' update is block diagonal, so ||G_t||_N <= max_i 1 - a_{i,t} (1 - kappa_i) <=
    max_i 1 - alpha_min (1 - kappa_i) < 1 at every step (`certify()` states it).

    The input path (outside the recurrence: the certificate does not depend on it):
    input_encoder=E > 0 passes x_t through a tanh layer of E features before the projection,
    u_t = U tanh(V x_t + v) + b, so that a one-feature input drives the areas along more than one
    direction (the rate gate then reads these features too); drive_scale="rate" multiplies each
    area's drive by sqrt((2 - a) / a) for its rate a, so that a_i u enters with LRU's gain
    sqrt(1 - (1 - a)^2) and a slow area is not starved of input; alpha_log_spread=(lo, hi)
    starts the areas' rates spread geometrically from lo (area 0) to hi (the last area) instead
    of at one alpha.

    skew_feedback=False (a control, not a certified network): the two blocks of every pair are
    trained freely (parameters B and B_back, the latter starting at the tie's value
    -M^{-1} B^T M, so that the free net starts where the tied one does). Nothing makes the
    feedback skew then, so certify() computes the certificates from the weights and they fail
    once training moves off the tie; the Euler step's guarantee, which assumes the tie, must be
    off (guarantee=False).

    cayley_form (the Cayley step on a topology other than a star): "auto" runs the cheaper of the
    dense Cayley map (p*p block products per step) and a product of exact Cayley maps of stars
    that cover the topology (k + m products for k blocks in m stars: one star is the Cayley map
    itself, several are a splitting of it that is orthogonal in the same metric, so the
    certificate is unchanged); "exact" never splits (dense unless the topology is a star;
    networks trained before 2026-12-03 ran this); "stars" or "dense" force one form
    (rnnofrnns.ops.feedback_plan). `feedback_map()` gives the map that runs.

    forward(x, h0=None) -> (output, h_n): x [B, T, input_size] (batch_first) or [T, B, input_size];
    output [B, T, hidden_size] (or [T, B, hidden_size]); h_n [1, B, hidden_size]. hidden_size is
    sum(area_sizes); areas of unequal size are padded internally to the largest, and the
    padded units stay exactly zero.
    """

    def __init__(
        self,
        input_size: int,
        area_sizes: AreaSizes,
        topology: topo.Topology = "all",
        form: str = "hopfield",
        nonlinearity: str = "relu",
        alpha: Optional[Rates] = None,
        batch_first: bool = True,
        bias: bool = True,
        density: Optional[float] = None,
        gamma: Optional[float] = None,
        scale: Optional[float] = None,
        feedback_sparsity: float = 0.0,
        feedback_init: float = 0.1,
        guarantee: Optional[bool] = None,
        guarantee_margin: Optional[float] = None,
        feedback_step: Optional[str] = None,
        areas: Union[str, Areas, None] = None,
        sigma_max: Optional[float] = None,
        learn_timescales: Optional[bool] = None,
        alpha_max: float = 1.0,
        generator: Optional[torch.Generator] = None,
        backend: Optional[str] = None,
        dtype: Optional[torch.dtype] = None,
        feedback: Union[str, FeedbackStep, None] = None,
        input_timescales: Optional[bool] = None,
        alpha_min: float = 0.02,
        input_encoder: Optional[int] = None,
        drive_scale: str = "none",
        alpha_log_spread: Optional[Tuple[float, float]] = None,
        skew_feedback: bool = True,
        cayley_form: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(input_size, int) or input_size < 1:
            raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
        if form not in FORMS:
            raise ValueError(f"form must be 'rate' or 'hopfield', got {form!r}")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be 'relu', 'tanh' or 'identity', got {nonlinearity!r}")
        if feedback is not None and feedback_step is not None:
            raise ValueError(f"give the feedback step once: feedback={feedback!r} or feedback_step={feedback_step!r}")
        step = feedback if feedback is not None else feedback_step
        if step is None:  # the default: the study's cayley step, or the earlier euler step when its settings are given
            step = "euler" if (guarantee is not None or guarantee_margin is not None) else "cayley"
        self.feedback = feedback_step_of(step, guarantee, guarantee_margin)
        earlier = self.feedback.op_name == "euler"  # unset settings take the earlier network's defaults
        default_areas = areas is None and not earlier and all(v is None for v in (density, gamma, scale))
        if areas is None:
            areas = "sparse" if earlier or any(v is not None for v in (density, gamma, scale)) else "svd"
        self.areas = area_kind(areas, density=density, gamma=gamma, scale=scale, sigma_max=sigma_max)
        if alpha is None:
            alpha = 0.5 if earlier else 0.3
        if learn_timescales is None:
            learn_timescales = not earlier
        if input_timescales is None:
            input_timescales = not earlier
        if input_encoder is None:
            input_encoder = 0 if earlier else DEFAULT_INPUT_ENCODER
        if not 0.0 < float(alpha_max) <= 1.0:
            raise ValueError(f"alpha_max must be in (0, 1], got {alpha_max!r}")
        dtype = dtype or torch.get_default_dtype()
        sizes = _area_sizes(area_sizes)
        p, n = len(sizes), max(sizes)
        if default_areas and len(set(sizes)) > 1:
            raise ValueError(f"areas of unequal size {sizes} need areas='sparse' (the default svd areas need equal sizes)")
        self.areas.check_sizes(sizes)
        if not isinstance(input_encoder, int) or isinstance(input_encoder, bool) or input_encoder < 0:
            raise ValueError(f"input_encoder must be a width >= 0 (0: none), got {input_encoder!r}")
        if drive_scale not in DRIVE_SCALES:
            raise ValueError(f"drive_scale must be one of {DRIVE_SCALES}, got {drive_scale!r}")
        if alpha_log_spread is not None:
            try:
                lo, hi = (float(v) for v in alpha_log_spread)
            except (TypeError, ValueError):
                raise ValueError(f"alpha_log_spread must be (lo, hi), got {alpha_log_spread!r}") from None
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"alpha_log_spread must be (lo, hi) with 0 < lo <= hi <= 1, got {alpha_log_spread!r}")
            alpha = [lo * (hi / lo) ** (i / max(p - 1, 1)) for i in range(p)]
        alphas = _rates(alpha, p)
        per_area = learn_timescales or input_timescales or not isinstance(alpha, (int, float))
        if learn_timescales and not bool((alphas < float(alpha_max)).all()):
            raise ValueError(f"learn_timescales=True needs alpha below alpha_max = {alpha_max}, got {alphas.tolist()}")
        if input_timescales:
            if self.feedback.op_name != "cayley":
                raise ValueError("input_timescales=True needs the cayley feedback step (its map keeps constant rates "
                                 f"while the areas' rates follow the input), got feedback={self.feedback!r}")
            if not (isinstance(alpha_min, (int, float)) and 0.0 < float(alpha_min) < float(alpha_max)):
                raise ValueError(f"alpha_min must be in (0, alpha_max = {alpha_max}), got {alpha_min!r}")
            if not bool(((alphas > float(alpha_min)) & (alphas < float(alpha_max))).all()):
                raise ValueError(f"input_timescales=True starts every area's rate at alpha, which must lie in "
                                 f"(alpha_min, alpha_max) = ({alpha_min}, {alpha_max}), got {alphas.tolist()}")
        self.feedback.check_rates(per_area)
        if not isinstance(skew_feedback, bool):
            raise ValueError(f"skew_feedback must be True or False, got {skew_feedback!r}")
        if not skew_feedback and self.feedback.guarantee and self.feedback.op_name == "euler":
            raise ValueError("skew_feedback=False needs guarantee=False: the euler step's guarantee rescales the "
                             "feedback to a budget that assumes the skew tie")
        self.skew_feedback = skew_feedback
        if cayley_form not in CAYLEY_FORMS:
            raise ValueError(f"cayley_form must be one of {CAYLEY_FORMS}, got {cayley_form!r}")
        self.cayley_form = cayley_form
        self.input_size, self.area_sizes = input_size, sizes
        self.num_areas, self.area_size = p, n
        self.hidden_size = sum(sizes)
        self.form, self.nonlinearity = form, nonlinearity
        self.alpha: Union[float, Tuple[float, ...]] = tuple(alphas.tolist()) if per_area else float(alpha)
        self.per_area_alpha, self.learn_timescales, self.alpha_max = per_area, learn_timescales, float(alpha_max)
        self.input_timescales, self.alpha_min = bool(input_timescales), float(alpha_min)
        self.input_encoder, self.drive_scale = input_encoder, drive_scale
        self.alpha_log_spread = None if alpha_log_spread is None else (lo, hi)
        self.batch_first, self.backend = batch_first, backend
        self.feedback_sparsity = float(feedback_sparsity)

        live = torch.zeros(p, n, dtype=torch.bool)
        for i, s in enumerate(sizes):
            live[i, :s] = True
        self.areas.build(self, sizes, generator, dtype)
        pairs = topo.resolve(topology, p, generator)
        m = len(pairs)
        live_f = live.to(torch.float64)
        mask = live_f[pairs[:, 0]][:, :, None] * live_f[pairs[:, 1]][:, None, :]
        if feedback_sparsity > 0:
            mask = mask * topo.block_mask(m, n, feedback_sparsity, generator, torch.float64)
        if learn_timescales:
            self.timescale_logit = nn.Parameter(torch.logit(alphas / float(alpha_max)).to(dtype))
        elif per_area:
            self.register_buffer("alpha_areas", alphas.to(dtype))
        self.register_buffer("pairs", pairs)
        self.register_buffer("L_index", topo.feedback_index(pairs))
        # read from the index here, not in forward, so that torch.compile(fullgraph=True) traces it
        self._feedback_plan: FeedbackPlan = feedback_plan(self.L_index, p, self.feedback_step, cayley_form)
        self.register_buffer("feedback_mask", mask.to(dtype))
        self.register_buffer("live", live)
        self.register_buffer("unit_index", live.reshape(-1).nonzero().squeeze(1))

        # from the stored (possibly float32) W and M, so that a state_dict load recomputes it exactly
        self.register_buffer("feedback_budget", self._budget().to(dtype))

        std = feedback_init / math.sqrt(n * max(1.0, 2.0 * m / p))
        self.B = nn.Parameter((torch.randn(m, n, n, generator=generator, dtype=torch.float64) * std * mask).to(dtype))
        if input_encoder:  # as nn.Linear initialises itself
            bound = 1.0 / math.sqrt(input_size)
            v = (2 * torch.rand(input_encoder, input_size + 1, generator=generator, dtype=torch.float64) - 1) * bound
            self.encoder_weight = nn.Parameter(v[:, :-1].contiguous().to(dtype))
            self.encoder_bias = nn.Parameter(v[:, -1].contiguous().to(dtype))
        features = input_encoder or input_size
        bound = 1.0 / math.sqrt(features)
        u = (2 * torch.rand(p * n, features, generator=generator, dtype=torch.float64) - 1) * bound
        self.input_weight = nn.Parameter((u * live_f.reshape(-1, 1)).to(dtype))
        if bias:
            b = (2 * torch.rand(p * n, generator=generator, dtype=torch.float64) - 1) * bound
            self.input_bias = nn.Parameter((b * live_f.reshape(-1)).to(dtype))
        else:
            self.register_parameter("input_bias", None)
        if input_timescales:  # the rate gate: a_t = alpha at first (g = 0)
            self.rate_gate_weight = nn.Parameter(torch.zeros(p, features, dtype=dtype))
            start = (alphas - self.alpha_min) / (self.alpha_max - self.alpha_min)
            self.rate_gate_bias = nn.Parameter(torch.logit(start).to(dtype))
        self._silenced: Tuple[int, ...] = ()
        # Parameters with entries held at stored values (combine(freeze=True)): name -> buffers
        # frozen_mask_<name>, frozen_value_<name>; see _param.
        self._frozen: Tuple[str, ...] = ()
        if not skew_feedback:  # the blocks at (source, target), free, starting at the tie's value
            with torch.no_grad():
                tied = stability.negative_feedback(self.B.double() * self.feedback_mask.double(), pairs,
                                                   self.area_metric().double())
            self.B_back = nn.Parameter(tied[m:].to(dtype))
        # The budget follows from W, M and this model's own alpha, and the feedback plan from
        # L_index: a state_dict from another model must not carry either over.
        self.register_load_state_dict_post_hook(ModularRNN._derive_after_load)

    # -- the parts, as the op and the certificate name them ---------------------------------
    @property
    def feedback_step(self) -> str:
        """The fused op's name of the feedback step that runs ("euler" or "cayley")."""
        return self.feedback.op_name

    @property
    def area_kind(self) -> str:
        """The name of the area kind ("sparse" or "svd")."""
        return self.areas.name

    @property
    def guarantee(self) -> bool:
        """Whether the discrete map that runs is certified by construction."""
        return self.feedback.guarantee

    @property
    def sigma_max(self) -> Optional[float]:
        """The SVD areas' bound on their weighted norms (None for other area kinds)."""
        return getattr(self.areas, "sigma_max", None)

    def _budget(self) -> torch.Tensor:
        """The feedback step's budget of the feedback's M-weighted norm (inf: none needed)."""
        return self.feedback.budget(self)

    @staticmethod
    def _derive_after_load(module: "ModularRNN", incompatible_keys) -> None:
        module._feedback_plan = feedback_plan(module.L_index, module.num_areas, module.feedback_step,
                                              module.cayley_form)
        if not module.areas.bounds_defined(module):
            return  # forward and certify() report non-finite weights themselves
        with torch.no_grad():
            module.feedback_budget.copy_(module._budget())

    def _check_finite(self) -> None:
        """A clear error instead of NaN outputs when a parameter or buffer is not finite (one check
        per call; the same check as certify's)."""
        if torch.compiler.is_compiling():
            return
        bad = stability.non_finite_tensors(self)
        if not bad:
            return
        raise ValueError(f"{type(self).__name__}: the weights {', '.join(bad)} hold NaN or inf values; "
                         "the network cannot run (reload a checkpoint or lower the learning rate)")

    # -- the weights the network runs with ------------------------------------------------
    def _param(self, name: str) -> Optional[torch.Tensor]:
        """A parameter as the network uses it: where entries are frozen (combine()), their stored
        values. The frozen entries get no gradient and the optimizer's changes to them (weight
        decay) never reach the network."""
        value = getattr(self, name)
        if name not in self._frozen:
            return value
        return torch.where(getattr(self, f"frozen_mask_{name}"), getattr(self, f"frozen_value_{name}"), value)

    def freeze_entries(self, name: str, mask: torch.Tensor) -> None:
        """Hold the entries of parameter `name` where `mask` is True at their current values."""
        param = getattr(self, name)
        if not isinstance(param, nn.Parameter) or mask.shape != param.shape:
            raise ValueError(f"freeze_entries: {name!r} must be a parameter of the shape of mask {tuple(mask.shape)}")
        if name in self._frozen:
            mask = mask | getattr(self, f"frozen_mask_{name}")
        current = self._param(name).detach().clone()
        self.register_buffer(f"frozen_mask_{name}", mask.to(torch.bool).clone())
        self.register_buffer(f"frozen_value_{name}", current)
        self._frozen = tuple(sorted(set(self._frozen) | {name}))

    def num_frozen_parameters(self) -> int:
        """Entries of trainable parameters held at stored values (combine(freeze=True))."""
        return sum(int(getattr(self, f"frozen_mask_{name}").sum()) for name in self._frozen)

    @classmethod
    def combine(cls, nets: Sequence[Union["ModularRNN", nn.Module]], topology: Union[str, topo.Topology] = "workspace",
                *, freeze: bool = True, shared_input: bool = False,
                generator: Optional[torch.Generator] = None) -> "ModularRNN":
        """One certified network from several (see rnnofrnns.models.assembly.combine)."""
        return assembly.combine(cls, nets, topology, freeze=freeze, shared_input=shared_input, generator=generator)

    def area_weights(self) -> torch.Tensor:
        """The intra-area blocks W [p, n, n] (svd areas: formed from their parameters)."""
        return self.areas.weights(self)

    def area_metric(self) -> torch.Tensor:
        """The diagonal of the contraction metric M per area, [p, n] (svd areas: Phi^2)."""
        return self.areas.metric(self)

    def area_alpha(self) -> torch.Tensor:
        """The step alpha_i = dt / tau_i of every area, [p] (differentiable when learned)."""
        if self.learn_timescales:
            return self.alpha_max * torch.sigmoid(self._param("timescale_logit"))
        if self.per_area_alpha:
            return self.alpha_areas
        return torch.full((self.num_areas,), self.alpha, dtype=self.B.dtype, device=self.B.device)

    def _op_alpha(self) -> Union[float, torch.Tensor]:
        return self.area_alpha() if self.per_area_alpha else self.alpha

    def input_features(self, x_tbf: torch.Tensor) -> torch.Tensor:
        """What the projection and the rate gate read: x_t, or tanh(V x_t + v) with an input encoder."""
        if not self.input_encoder:
            return x_tbf
        return torch.tanh(F.linear(x_tbf, self._param("encoder_weight"), self._param("encoder_bias")))

    def input_rates(self, x_tbf: torch.Tensor) -> torch.Tensor:
        """The areas' rates of input_timescales=True for every step, [T, B, p]:
        a_t = alpha_min + (alpha_max - alpha_min) sigmoid(G f(x_t) + c), from the input only
        (f: input_features)."""
        return self._input_rates(self.input_features(x_tbf))

    def _input_rates(self, features: torch.Tensor) -> torch.Tensor:
        if not self.input_timescales:
            raise ValueError("input_rates: this network has constant rates (input_timescales=False)")
        gate = torch.sigmoid(F.linear(features, self._param("rate_gate_weight"), self._param("rate_gate_bias")))
        # within [alpha_min, alpha_max] after rounding as well; a NaN input gives its row a NaN drive
        # (its states are NaN, the other rows untouched), so its rate may be any valid one
        rates = (self.alpha_min + (self.alpha_max - self.alpha_min) * gate).clamp(self.alpha_min, self.alpha_max)
        return torch.nan_to_num(rates, nan=self.alpha_min)

    def _inputs_of_the_op(self, x_tbf: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """The drive [T, B, p*n] and the op's alpha (and feedback_alpha) for x_tbf [T, B, input_size]."""
        features = self.input_features(x_tbf)
        if self.input_timescales:
            rates = dict(alpha=self._input_rates(features), feedback_alpha=self.area_alpha())
        else:
            rates = dict(alpha=self._op_alpha())
        return self._drive_of(features, rates["alpha"]), rates

    def _drive_of(self, features: torch.Tensor, alpha: Union[float, torch.Tensor]) -> torch.Tensor:
        u = F.linear(features, self._param("input_weight"), self._param("input_bias"))
        if self.drive_scale == "rate":  # a u then enters with gain sqrt(1 - (1 - a)^2) (LRU's normalisation)
            a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(alpha, dtype=u.dtype, device=u.device)
            gain = torch.sqrt((2 - a) / a)
            u = u * (gain.repeat_interleave(self.area_size, dim=-1) if gain.dim() else gain)
        gate = self._area_gate()
        if gate is not None:
            u = u * gate.repeat_interleave(self.area_size)
        return u

    def raw_feedback_blocks(self, metric: Optional[torch.Tensor] = None) -> torch.Tensor:
        """L = B - M^{-1} B^T M on the connected pairs, before the guarantee's rescaling (with
        skew_feedback=False: the blocks B and B_back as they are)."""
        if not self.skew_feedback:
            return torch.cat([self._param("B") * self.feedback_mask,
                              self._param("B_back") * self.feedback_mask.transpose(1, 2)])
        M = self.area_metric() if metric is None else metric
        return stability.negative_feedback(self._param("B") * self.feedback_mask, self.pairs, M)

    def feedback_norm_bound(self) -> torch.Tensor:
        """Upper bound of ||M^{1/2} L M^{-1/2}||_2 before rescaling (stability.feedback_norm_bound;
        with skew_feedback=False the norm itself, from the dense L)."""
        if not self.skew_feedback:
            m = self.area_metric().reshape(-1)
            L = dense_feedback(self.raw_feedback_blocks(), self.L_index, self.num_areas)
            return torch.linalg.matrix_norm(m.sqrt()[:, None] * L * m.rsqrt()[None, :], ord=2)
        return stability.feedback_norm_bound(self._param("B") * self.feedback_mask, self.pairs, self.area_metric(),
                                             self.num_areas)

    def feedback_blocks(self) -> torch.Tensor:
        """The inter-area blocks [2m, n, n] the network uses (for L_index): the skew feedback as
        the feedback step runs it (the Euler guarantee's rescaling; the cayley step needs none)."""
        return self.feedback.in_use(self, self.raw_feedback_blocks())

    # -- running ---------------------------------------------------------------------------
    def _pad(self, h: torch.Tensor) -> torch.Tensor:
        if self.hidden_size == self.num_areas * self.area_size:
            return h
        out = h.new_zeros(*h.shape[:-1], self.num_areas * self.area_size)
        return out.index_copy(-1, self.unit_index, h)

    def _unpad(self, h: torch.Tensor) -> torch.Tensor:
        if self.hidden_size == self.num_areas * self.area_size:
            return h
        return h.index_select(-1, self.unit_index)

    def _area_gate(self) -> Optional[torch.Tensor]:
        if not self._silenced:
            return None
        gate = torch.ones(self.num_areas, dtype=self.B.dtype, device=self.B.device)
        gate[list(self._silenced)] = 0
        return gate

    def drive(self, x_tbf: torch.Tensor) -> torch.Tensor:
        """The projected input u_t = U x_t + b (through the input encoder and the drive scale,
        when set) for every step: [T, B, p*n] (padded layout)."""
        return self._inputs_of_the_op(x_tbf)[0]

    def _feedback_in_use(self) -> torch.Tensor:
        L = self.feedback_blocks()
        gate = self._area_gate()
        if gate is not None and L.shape[0]:
            L = L * (gate[self.L_index[:, 0]] * gate[self.L_index[:, 1]])[:, None, None]
        return L

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        layout = "[B, T, input_size]" if self.batch_first else "[T, B, input_size]"
        if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or x.shape[-1] != self.input_size:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be {layout} with input_size={self.input_size} (or unbatched [T, input_size]), "
                             f"got {shape}")
        if x.dim() == 2:  # unbatched, as torch.nn.RNN: output [T, hidden_size], h_n [1, hidden_size]
            if h0 is not None and h0.dim() not in (1, 2):
                raise ValueError(f"h0 of an unbatched input must be [1, hidden_size] or [hidden_size] = "
                                 f"[{self.hidden_size}], got {tuple(h0.shape)}")
            h0 = None if h0 is None else h0.reshape(1, 1, -1)
            output, h_n = self.forward(x.unsqueeze(0 if self.batch_first else 1), h0)
            return output.squeeze(0 if self.batch_first else 1), h_n[:, 0]
        self._check_finite()
        x = input_in_model_dtype(x, self.B.dtype, type(self).__name__)
        x_t = x.transpose(0, 1) if self.batch_first else x
        T, B = x_t.shape[:2]
        if T < 1:
            raise ValueError(f"x must hold at least one step, got shape {tuple(x.shape)} for {layout}")
        if h0 is not None:
            if tuple(h0.shape) not in ((1, B, self.hidden_size), (B, self.hidden_size)):
                raise ValueError(f"h0 must be [1, B, hidden_size] or [B, hidden_size] = [{B}, {self.hidden_size}], "
                                 f"got {tuple(h0.shape)}")
            h0 = h0.reshape(B, self.hidden_size)
            if h0.dtype != x.dtype:
                raise ValueError(f"h0 must have the model's dtype {x.dtype}, got {h0.dtype}")
        if h0 is not None:
            h0 = self._pad(h0)
            gate = self._area_gate()
            if gate is not None:
                h0 = h0 * gate.repeat_interleave(self.area_size)
        # Under autocast the recurrence runs in the model's dtype, as torch.nn.RNN's does on the
        # CPU: the certificate speaks of the weights in that dtype, and the fused kernels take
        # float32 and float64 only.
        with without_autocast(x):
            drive, rates = self._inputs_of_the_op(x_t)
            states = modular_rnn(drive.contiguous(), self.area_weights(), self._feedback_in_use(),
                                 self.L_index, h0, **rates, nonlinearity=self.nonlinearity,
                                 form=self.form, feedback_step=self.feedback_step,
                                 feedback_plan=self._feedback_plan, backend=self.backend)
        states = self._unpad(states)
        h_n = states[-1].unsqueeze(0)
        output = states.transpose(0, 1) if self.batch_first else states
        return output, h_n

    def step(self, x_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step h_t = F(h_{t-1}, x_t) of the map that runs (euler or cayley) for x_t
        [B, input_size], h [B, hidden_size] (the reference backend: differentiable by
        torch.func, e.g. for Jacobians)."""
        u, rates = self._inputs_of_the_op(x_t.unsqueeze(0))
        out = modular_rnn(u, self.area_weights(), self._feedback_in_use(), self.L_index, self._pad(h),
                          **rates, nonlinearity=self.nonlinearity, form=self.form,
                          feedback_step=self.feedback_step, feedback_plan=self._feedback_plan, backend="reference")
        return self._unpad(out[0])

    # -- inspection ------------------------------------------------------------------------
    def feedback_map(self) -> torch.Tensor:
        """The Cayley step's feedback map h_t = C z_t that runs [hidden_size, hidden_size], dense:
        the Cayley map of A L/2 or the product of its stars' maps (cayley_form), with A the
        per-area rates it uses. The Euler step has none (an error)."""
        if self.feedback_step != "cayley":
            raise ValueError(f"feedback_map: the {self.feedback_step} step has no feedback map (h_t = z_t + a L h_{{t-1}})")
        rates = self._inputs_of_the_op(torch.zeros(1, 1, self.input_size, dtype=self.B.dtype,
                                                   device=self.B.device))[1]
        fa = rates.get("feedback_alpha", rates["alpha"])
        a = fa.repeat_interleave(self.area_size) if isinstance(fa, torch.Tensor) else float(fa)
        C = cayley_product(self._feedback_in_use(), self.L_index, self.num_areas, a, self._feedback_plan)
        return C.index_select(0, self.unit_index).index_select(1, self.unit_index)

    def intra_matrix(self) -> torch.Tensor:
        """Dense block-diagonal intra-area matrix [hidden_size, hidden_size]."""
        Wd = torch.block_diag(*self.area_weights())
        return Wd.index_select(0, self.unit_index).index_select(1, self.unit_index)

    def feedback_matrix(self) -> torch.Tensor:
        """Dense inter-area matrix L [hidden_size, hidden_size] (as used, guarantee applied)."""
        Ld = dense_feedback(self._feedback_in_use(), self.L_index, self.num_areas)
        return Ld.index_select(0, self.unit_index).index_select(1, self.unit_index)

    def metric(self) -> torch.Tensor:
        """Diagonal of the contraction metric M [hidden_size]."""
        return self.area_metric().reshape(-1).index_select(0, self.unit_index)

    def num_feedback_parameters(self) -> int:
        """Trainable inter-area weights: one block per connected pair (two with
        skew_feedback=False), live and unmasked entries."""
        return int(self.feedback_mask.sum().item()) * (1 if self.skew_feedback else 2)

    def certify_inputs(self) -> dict:
        with torch.no_grad():
            W, M, a = self.area_weights(), self.area_metric(), self.area_alpha()
            budget_ok = not self.feedback.uses_budget(self.per_area_alpha) or bool(self.feedback_budget.isfinite())
            free = () if self.skew_feedback else (self.B_back,)
            finite = budget_ok and all(bool(t.detach().isfinite().all()) for t in (self.B, M, a) + free)
            # with a non-finite B, M or budget the feedback in use is not defined (its norm bound has
            # no SVD): it is reported as NaN, and certify() fails saying so
            L = self._feedback_in_use() if finite else torch.full_like(self.raw_feedback_blocks(M), math.nan)
        alpha = a if self.per_area_alpha else self.alpha
        inputs = dict(W=W, L_blocks=L, L_index=self.L_index, metric=M, alpha=alpha, feedback_step=self.feedback_step)
        if self.input_timescales:  # the areas' rates move within this range; alpha is the map's
            inputs["area_rate_range"] = (self.alpha_min, self.alpha_max)
        return inputs

    def certify(self) -> stability.Certificate:
        """Contraction certificate of the network as it runs now (see rnnofrnns.stability)."""
        return stability.certify(self)

    @contextlib.contextmanager
    def ablate(self, areas: Union[int, Iterable[int]]) -> Iterator["ModularRNN"]:
        """Silence areas (their input, initial state and incoming feedback are zero, so their
        state stays exactly zero) inside the `with` block."""
        areas = (areas,) if isinstance(areas, int) else tuple(areas)
        for a in areas:
            if not isinstance(a, int) or not 0 <= a < self.num_areas:
                raise ValueError(f"areas to ablate must be indices in [0, {self.num_areas - 1}], got {a!r}")
        saved = self._silenced
        self._silenced = tuple(sorted(set(saved) | set(areas)))
        try:
            yield self
        finally:
            self._silenced = saved

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, area_sizes={self.area_sizes}, pairs={len(self.pairs)}, "
                f"form={self.form!r}, nonlinearity={self.nonlinearity!r}, alpha={self.alpha}, "
                f"areas={self.areas!r}, feedback={self.feedback!r}"
                + (", learn_timescales=True" if self.learn_timescales else "")
                + (f", input_timescales=True, alpha_min={self.alpha_min}" if self.input_timescales else "")
                + (f", input_encoder={self.input_encoder}" if self.input_encoder else "")
                + (f", drive_scale={self.drive_scale!r}" if self.drive_scale != "none" else "")
                + (", skew_feedback=False" if not self.skew_feedback else "")
                + (f", cayley_form={self.cayley_form!r}" if self.cayley_form != "auto" else ""))
