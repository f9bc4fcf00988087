"""Recursive assembly: one certified ModularRNN from several certified ones (RNNs of RNNs).

Why the whole contracts: each part k contracts in its diagonal metric M_k (its areas, and its
own feedback L_k, skew in M_k). Scaling a metric by a number c_k > 0 changes neither: an
area's contraction rate in c M is its rate in M, and c M L + L^T c M = c (M L + L^T M) = 0.
So the whole, with M = blockdiag(c_1 M_1, ..., c_K M_K, M_new), has every area contracting
and the parts' feedback skew in M; the new inter-part feedback is built skew in M,
L = B - M^{-1} B^T M, like any feedback of a ModularRNN. The whole is then contracting for
any new B (continuous time), and the Cayley step certifies the discrete map for any B.
c_k = 1 / (geometric mean of M_k) puts the parts' metrics on one scale
(rnnofrnns.stability.metric_on_common_scale; each area kind applies it in copy_part).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Type, Union

import torch
from torch import nn

from .. import topology as topo

# The class comes in as an argument (ModularRNN.combine passes itself): this module does not
# import models/modular.py, which imports it.

# Settings every part must share (the whole runs one kernel call).
SHARED = ("area_size", "area_kind", "feedback_step", "form", "nonlinearity", "sigma_max", "alpha_max", "drive_scale")


def _unwrap(cls: Type["ModularRNN"], net: nn.Module) -> "ModularRNN":
    rnn = net.rnn if isinstance(getattr(net, "rnn", None), cls) else net
    if not isinstance(rnn, cls):
        raise ValueError(f"combine: every part must be a ModularRNN (or a model with one as .rnn), got "
                         f"{type(net).__name__}")
    return rnn


def combine(cls: Type["ModularRNN"], nets: Sequence[nn.Module], topology: Union[str, topo.Topology] = "workspace",
            *, freeze: bool = True, shared_input: bool = False,
            generator: Optional[torch.Generator] = None) -> "ModularRNN":
    """Join the areas of `nets` into one ModularRNN, keeping each part's areas, metric (rescaled
    by a number, see the module docstring), timescales, own feedback and input projection,
    and adding new trainable feedback between parts.

    topology: "workspace" (a new area, linked to every area of every part) or pairs (i, j) of
    areas of the whole (areas numbered part after part), each joining two different parts.
    freeze: the parts' parameters are held at their values (the new feedback, the new area and
    its input row train). shared_input: every part reads the same input (equal input sizes);
    otherwise the whole's input is the parts' inputs side by side, each part reading only its
    own (the other entries of its projection stay at zero). Returns the whole; a readout (e.g.
    nn.Linear of its last state) is the caller's."""
    parts: List["ModularRNN"] = [_unwrap(cls, n) for n in nets]
    if len(parts) < 2:
        raise ValueError(f"combine: needs at least two networks, got {len(parts)}")
    first = parts[0]
    for k, part in enumerate(parts[1:], 1):
        for name in SHARED:
            if getattr(part, name) != getattr(first, name):
                raise ValueError(f"combine: every part must have the same {name}: part 0 has "
                                 f"{getattr(first, name)!r}, part {k} has {getattr(part, name)!r}")
        if part.B.dtype != first.B.dtype or part.B.device != first.B.device:
            raise ValueError(f"combine: part {k} is {part.B.dtype} on {part.B.device}, part 0 is "
                             f"{first.B.dtype} on {first.B.device}")
    if len({bool(p.input_encoder) for p in parts}) != 1:
        raise ValueError(f"combine: either every part has an input encoder or none has, got widths "
                         f"{[p.input_encoder for p in parts]}")
    for k, part in enumerate(parts):
        if not part.skew_feedback:
            raise ValueError(f"combine: part {k} has skew_feedback=False (a control without a certificate); combine "
                             "joins certified parts only")
        if part.hidden_size != part.num_areas * part.area_size:
            raise ValueError(f"combine: part {k} has areas of unequal size {part.area_sizes}; combine needs equal sizes")
    if shared_input and len({p.input_size for p in parts}) != 1:
        raise ValueError(f"combine: shared_input=True needs equal input sizes, got {[p.input_size for p in parts]}")
    n = first.area_size
    offsets = [sum(p.num_areas for p in parts[:k]) for k in range(len(parts))]
    p_parts = offsets[-1] + parts[-1].num_areas
    part_of = [k for k, p in enumerate(parts) for _ in range(p.num_areas)]

    if isinstance(topology, str):
        if topology != "workspace":
            raise ValueError(f"combine: topology must be 'workspace' or pairs of areas, got {topology!r}")
        new_areas = 1
        new_pairs = torch.tensor([(p_parts, j) for j in range(p_parts)], dtype=torch.int64)
    else:
        new_areas = 0
        new_pairs = topo.resolve(topology, p_parts)
        for i, j in new_pairs.tolist():
            if part_of[i] == part_of[j]:
                raise ValueError(f"combine: pair ({i}, {j}) joins two areas of part {part_of[i]}: a part keeps its "
                                 "own feedback; new pairs must join different parts")
    P = p_parts + new_areas
    inner = [p.pairs + off for p, off in zip(parts, offsets)]
    pairs = torch.cat(inner + [new_pairs.to(first.pairs.device)])
    rows_inner = sum(len(x) for x in inner)

    alphas = torch.cat([p.area_alpha().detach().double().cpu() for p in parts])
    alphas = torch.cat([alphas, alphas.mean().repeat(new_areas)])
    per_area = any(p.per_area_alpha for p in parts) or bool((alphas != alphas[0]).any())
    input_size = parts[0].input_size if shared_input else sum(p.input_size for p in parts)
    # With input encoders the whole's encoder holds the parts' side by side (each reading its own
    # input) and each part's projection and gate read its own features; without, the features
    # are the inputs themselves.
    encoder = sum(p.input_encoder for p in parts)
    features = encoder or input_size
    gated = [p for p in parts if p.input_timescales]
    if gated and len({p.alpha_min for p in gated}) != 1:
        raise ValueError(f"combine: the parts with input-driven timescales must share alpha_min, got "
                         f"{sorted({p.alpha_min for p in gated})}")
    alpha_min = gated[0].alpha_min if gated else 0.02
    if gated and not bool(((alphas > alpha_min) & (alphas < first.alpha_max)).all()):
        raise ValueError(f"combine: with input-driven timescales every area's rate must lie in (alpha_min, alpha_max) = "
                         f"({alpha_min}, {first.alpha_max}) (the constant ones become gates that do not move), got "
                         f"{alphas.tolist()}")
    whole = cls(
        input_size, (P, n), topology=pairs.cpu(), form=first.form, nonlinearity=first.nonlinearity,
        alpha=alphas if per_area else float(alphas[0]), bias=first.input_bias is not None,
        guarantee=all(p.guarantee for p in parts), feedback_step=first.feedback_step, areas=first.area_kind,
        sigma_max=first.sigma_max, learn_timescales=any(p.learn_timescales for p in parts),
        alpha_max=first.alpha_max, input_timescales=bool(gated), alpha_min=alpha_min, drive_scale=first.drive_scale,
        input_encoder=encoder, cayley_form=first.cayley_form,
        generator=generator, backend=first.backend, dtype=first.B.dtype,
        batch_first=first.batch_first,
    ).to(first.B.device)

    area_rows = torch.zeros(P, dtype=torch.bool)  # areas that come from a part
    area_rows[:p_parts] = True
    with torch.no_grad():
        for part, off in zip(parts, offsets):
            sl = slice(off, off + part.num_areas)
            whole.areas.copy_part(whole, sl, part)
            if whole.learn_timescales:
                if part.learn_timescales:
                    whole.timescale_logit[sl] = part._param("timescale_logit")
                else:  # a part with fixed rates: the same rates, as logits (frozen below with freeze=True)
                    whole.timescale_logit[sl] = torch.logit(part.area_alpha() / whole.alpha_max)
        r = 0
        for part in parts:
            whole.B[r:r + len(part.pairs)] = part._param("B")
            whole.feedback_mask[r:r + len(part.pairs)] = part.feedback_mask
            r += len(part.pairs)
        weight = whole.input_weight
        held_zero = torch.zeros_like(weight, dtype=torch.bool)  # a part's rows outside its own features
        gate_held = torch.zeros(P, features, dtype=torch.bool, device=weight.device)  # the same for the rate gate
        enc_held = torch.zeros(encoder, input_size, dtype=torch.bool, device=weight.device)  # an encoder's other inputs
        col = fcol = 0
        for part, off in zip(parts, offsets):
            rows = slice(off * n, (off + part.num_areas) * n)
            inputs = slice(0, input_size) if shared_input else slice(col, col + part.input_size)
            cols = slice(fcol, fcol + part.input_encoder) if encoder else inputs
            if encoder:
                whole.encoder_weight[cols] = 0
                whole.encoder_weight[cols, inputs] = part._param("encoder_weight")
                whole.encoder_bias[cols] = part._param("encoder_bias")
                enc_held[cols] = True
                enc_held[cols, inputs] = False
            weight[rows] = 0
            weight[rows, cols] = part._param("input_weight")
            held_zero[rows] = True
            held_zero[rows, cols] = False
            if whole.input_bias is not None:
                whole.input_bias[rows] = part._param("input_bias")
            if whole.input_timescales:  # each part's gate reads its own input; a part without one keeps its rates
                sl = slice(off, off + part.num_areas)
                whole.rate_gate_weight[sl] = 0
                if part.input_timescales:
                    whole.rate_gate_weight[sl, cols] = part._param("rate_gate_weight")
                    whole.rate_gate_bias[sl] = part._param("rate_gate_bias")
                    gate_held[sl] = True
                    gate_held[sl, cols] = False
                else:
                    gate_held[sl] = True
            col += 0 if shared_input else part.input_size
            fcol += part.input_encoder
        whole.feedback_budget.copy_(whole._budget())

    part_units = area_rows.repeat_interleave(n).to(weight.device)
    if held_zero.any():
        whole.freeze_entries("input_weight", held_zero)
    if enc_held.any():
        whole.freeze_entries("encoder_weight", enc_held)
    if gate_held.any():
        whole.freeze_entries("rate_gate_weight", gate_held)
        fixed_rates = torch.tensor([not parts[part_of[i]].input_timescales for i in range(p_parts)] + [False] * new_areas)
        if fixed_rates.any():  # a part without input-driven rates keeps its constant ones
            whole.freeze_entries("rate_gate_bias", fixed_rates.to(whole.B.device))
    if freeze:
        whole.freeze_entries("input_weight", part_units[:, None].expand_as(weight))
        if encoder:  # the parts' encoders are theirs: held with them
            whole.freeze_entries("encoder_weight", torch.ones_like(whole.encoder_weight, dtype=torch.bool))
            whole.freeze_entries("encoder_bias", torch.ones_like(whole.encoder_bias, dtype=torch.bool))
        if whole.input_bias is not None:
            whole.freeze_entries("input_bias", part_units)
        B_rows = torch.zeros(len(pairs), dtype=torch.bool, device=whole.B.device)
        B_rows[:rows_inner] = True
        whole.freeze_entries("B", B_rows[:, None, None].expand_as(whole.B))
        area_mask = area_rows.to(whole.B.device)
        for name in whole.areas.trainable_names:
            t = getattr(whole, name)
            whole.freeze_entries(name, area_mask[:, None].expand_as(t))
        if whole.learn_timescales:
            whole.freeze_entries("timescale_logit", area_mask)
        if whole.input_timescales:
            whole.freeze_entries("rate_gate_weight", area_mask[:, None].expand_as(whole.rate_gate_weight))
            whole.freeze_entries("rate_gate_bias", area_mask)
    else:
        # a part with fixed rates keeps them fixed in the whole
        fixed = torch.tensor([not parts[part_of[i]].learn_timescales for i in range(p_parts)] + [False] * new_areas)
        if whole.learn_timescales and fixed.any():
            whole.freeze_entries("timescale_logit", fixed.to(whole.B.device))
    return whole
