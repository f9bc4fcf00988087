"""Area kinds: what the intra-area matrices W_i are, and what they guarantee.

An area kind is a small settings object. `build` creates its parameters and buffers on the
network (under the names in `tensor_names`, which are its state-dict keys, so checkpoints
keep their keys); `weights` and `metric` form W [p, n, n] and the diagonal metric [p, n]
from them; `bounds` gives the rate and the contraction number kappa that the Euler step's
feedback budget needs (the maths is in rnnofrnns.stability); `copy_part` and
`trainable_names` are what `combine` needs. A new area kind is one class here and its tests.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from .. import stability


class Areas(ABC):
    """The interface of an area kind (see the module docstring); a kind implements the abstract
    methods."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # a few words, for the CLI's help
    tensor_names: ClassVar[Tuple[str, ...]] = ()
    trainable_names: ClassVar[Tuple[str, ...]] = ()  # held by combine(freeze=True)
    equal_sizes_only: ClassVar[bool] = False

    def check_sizes(self, sizes: Sequence[int]) -> None:
        if self.equal_sizes_only and len(set(sizes)) != 1:
            raise ValueError(f"areas={self.name!r} needs areas of equal size, got area_sizes {list(sizes)}")

    @abstractmethod
    def build(self, net: nn.Module, sizes: Sequence[int], generator: Optional[torch.Generator],
              dtype: torch.dtype) -> None:
        """Create the kind's parameters and buffers on `net`, under `tensor_names`."""

    @abstractmethod
    def weights(self, net: nn.Module) -> torch.Tensor:
        """W [p, n, n] as the network runs it."""

    @abstractmethod
    def metric(self, net: nn.Module) -> torch.Tensor:
        """The diagonal of the contraction metric, [p, n]."""

    @abstractmethod
    def bounds(self, net: nn.Module) -> Tuple[float, float]:
        """(rate, kappa) of the areas as they are, for the Euler step's feedback budget."""

    def bounds_defined(self, net: nn.Module) -> bool:
        """Whether `bounds` can be computed (its inputs are finite)."""
        return True

    @abstractmethod
    def copy_part(self, whole: nn.Module, areas: slice, part: nn.Module) -> None:
        """Copy a part's areas into `areas` of the combined network, their metric rescaled by a
        number (stability.metric_on_common_scale)."""


@dataclass(frozen=True)
class SparseAreas(Areas):
    """Fixed sparse random areas (Sparse Combo Net): zero diagonal, entries U(-scale, scale) on
    a pattern of the given density, rescaled so that rho(|W_i|) = gamma < 1; the metric is the
    Perron-free closed form of stability.diagonal_metric. Nothing of them trains."""

    density: float = 0.2
    gamma: float = 0.9
    scale: float = 1.0

    name: ClassVar[str] = "sparse"
    summary: ClassVar[str] = "fixed sparse areas"
    tensor_names: ClassVar[Tuple[str, ...]] = ("W", "M")

    def build(self, net, sizes, generator, dtype):
        p, n = len(sizes), max(sizes)
        W = torch.zeros(p, n, n, dtype=torch.float64)
        metric = torch.ones(p, n, dtype=torch.float64)
        for i, s in enumerate(sizes):
            W[i, :s, :s] = stability.sparse_contracting_block(s, self.density, self.scale, self.gamma, generator,
                                                              torch.float64)
            metric[i, :s] = stability.diagonal_metric(W[i, :s, :s])[0]
        net.register_buffer("W", W.to(dtype))
        net.register_buffer("M", metric.to(dtype))

    def weights(self, net):
        return net.W

    def metric(self, net):
        return net.M

    def bounds(self, net):
        return stability.areas_rate_and_kappa(net.W, net.M)

    def bounds_defined(self, net):
        return bool(torch.isfinite(net.W).all() and torch.isfinite(net.M).all())

    def copy_part(self, whole, areas, part):
        whole.W[areas] = part.W
        whole.M[areas] = stability.metric_on_common_scale(part.M).to(whole.M.dtype)


@dataclass(frozen=True)
class SVDAreas(Areas):
    """Trainable areas of the SVD Combo Net (Kozachkov et al. 2022, Theorem 5):
    W_i = Phi_i^{-1} U_i Sigma_i V_i^T Phi_i with U_i, V_i orthogonal (Cayley transforms of
    skew parameters), Sigma_i = sigma_max * sigmoid(s_i) and Phi_i = diag(exp(phi_i)), so that
    ||Phi_i W_i D Phi_i^{-1}|| <= sigma_max for every D in [0, 1]; the metric M_i = Phi_i^2
    trains with them. Equal area sizes only."""

    sigma_max: float = 0.999

    name: ClassVar[str] = "svd"
    summary: ClassVar[str] = "trainable SVD Combo Net areas"
    tensor_names: ClassVar[Tuple[str, ...]] = ("area_rotation_u", "area_rotation_v", "area_singular_logit",
                                               "area_log_metric")
    trainable_names: ClassVar[Tuple[str, ...]] = tensor_names
    equal_sizes_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 < float(self.sigma_max) < 1.0:
            raise ValueError(f"sigma_max must be in (0, 1) for the areas to contract, got {self.sigma_max!r}")

    def build(self, net, sizes, generator, dtype):
        # random rotations U, V (the n (n-1) / 2 entries above the diagonal of a skew matrix
        # each: no parameter that the rotation ignores); singular values spread over
        # (0.5, 0.99) of sigma_max; M = I
        p, n = len(sizes), max(sizes)
        net.register_buffer("skew_index", torch.triu_indices(n, n, 1), persistent=False)

        def skew_init():
            x = torch.randn(p, n * (n - 1) // 2, generator=generator, dtype=torch.float64) * (2.0 / n) ** 0.5
            return nn.Parameter(x.to(dtype))

        net.area_rotation_u, net.area_rotation_v = skew_init(), skew_init()
        u = 0.5 + 0.49 * torch.rand(p, n, generator=generator, dtype=torch.float64)
        net.area_singular_logit = nn.Parameter(torch.logit(u).to(dtype))
        net.area_log_metric = nn.Parameter(torch.zeros(p, n, dtype=dtype))

    def weights(self, net):
        U, V = self._rotation(net, net._param("area_rotation_u")), self._rotation(net, net._param("area_rotation_v"))
        sigma = self.sigma_max * torch.sigmoid(net._param("area_singular_logit"))
        phi = torch.exp(net._param("area_log_metric"))
        return (U * sigma[:, None, :]) @ V.transpose(1, 2) * (phi[:, None, :] / phi[:, :, None])

    @staticmethod
    def _rotation(net, upper: torch.Tensor) -> torch.Tensor:
        """Orthogonal [p, n, n] matrices: the Cayley transform (I - S)^{-1} (I + S) of the skew S
        with the given entries above the diagonal (a batched solve: a fraction of the cost of
        a matrix exponential, forward and backward)."""
        p, n = upper.shape[0], net.area_size
        S = upper.new_zeros(p, n, n)
        S[:, net.skew_index[0], net.skew_index[1]] = upper
        S = S - S.transpose(1, 2)
        eye = torch.eye(n, dtype=S.dtype, device=S.device).expand(p, n, n)
        return torch.linalg.solve(eye - S, eye + S)

    def metric(self, net):
        return torch.exp(2 * net._param("area_log_metric"))

    def bounds(self, net):
        return stability.svd_areas_rate_and_kappa(self.sigma_max)

    def copy_part(self, whole, areas, part):
        for name in ("area_rotation_u", "area_rotation_v", "area_singular_logit"):
            getattr(whole, name)[areas] = part._param(name)
        # log Phi: W depends on ratios of Phi only; M = Phi^2 on the common scale
        lm = part._param("area_log_metric")
        whole.area_log_metric[areas] = lm - lm.mean()


AREA_KINDS: Dict[str, Type[Areas]] = {kind.name: kind for kind in (SparseAreas, SVDAreas)}


def area_kind(areas: Union[str, Areas], **settings: Optional[float]) -> Areas:
    """The area kind of a name ("sparse", "svd") and its settings given as keywords (None: the
    kind's default; settings of another kind are ignored), or an Areas object as it is (then no
    setting may be given as a keyword)."""
    if isinstance(areas, Areas):
        given = sorted(k for k, v in settings.items() if v is not None and k in getattr(areas, "__dataclass_fields__", {}))
        if given:
            raise ValueError(f"give {', '.join(given)} to {type(areas).__name__}(...), not as keywords beside it")
        return areas
    if areas not in AREA_KINDS:
        raise ValueError(f"areas must be one of {tuple(AREA_KINDS)}, got {areas!r} (or an Areas object)")
    sigma_max = settings.get("sigma_max")
    if sigma_max is not None and not 0.0 < float(sigma_max) < 1.0:  # (checked whatever the kind, as always)
        raise ValueError(f"sigma_max must be in (0, 1) for the areas to contract, got {sigma_max!r}")
    kind = AREA_KINDS[areas]
    own = {k: v for k, v in settings.items() if v is not None and k in kind.__dataclass_fields__}
    return kind(**own)
