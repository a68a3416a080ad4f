"""Batched variable selection for pytorch-forecasting's Temporal Fusion Transformer.

A `VariableSelectionNetwork` runs, for every input variable, its own prescaler `Linear(1, k)`
and its own `GatedResidualNetwork` (or `ResampleNorm` for an embedded categorical): the same
handful of small ops V times over, forward and backward (on a GPU, a kernel launch each).

`fuse_variable_selection(model)` makes each VSN run those per-variable modules as a few batched
ops over groups of same-shaped variables. The per-variable parameters are stacked with
`torch.stack` inside `forward` on every call: no parameter is copied, created or re-registered,
so `state_dict()`, checkpoints, optimizers, DDP and `TemporalFusionTransformer.load_from_checkpoint`
see exactly the parameters they saw before, and each one gets its gradient through the stack.

For a group of V variables (laid out as (V, N, features), N = batch x time):

    prescaler   x * w + b: one addcmul into (N, V, k), whose slices also feed flattened_grn
    fc1, fc2    baddbmm with the stacked (V, in, out) weights; ELU in between
    GLU         dropout on the batched tensor, then baddbmm + F.glu (on CPU the two halves are
                two baddbmm, and value * sigmoid(gate) + residual one addcmul: F.glu on CPU
                is several times slower)
    residual    F.interpolate(mode="linear", align_corners=True) from k to H as a fixed (k, H)
                matrix, made by interpolating the identity (so its weights are the kernel's
                own) and scaled by the trainable gate; LayerNorm without affine + stacked
                gamma/beta, scaled by the add-norm's gate (folding the gates into the small
                factors saves two passes over the (V, N, H) activations)
    add + norm  LayerNorm without affine + stacked gamma/beta

Embedded categoricals of one size are batched the same way (ResampleNorm: interpolation, gate,
LayerNorm). The variable weights (`flattened_grn`, softmax) run as in the original, and
`(outputs, sparse_weights)` are what `VariableSelectionNetwork.forward` returns. A variable is
batched only when its modules match the standard pattern exactly (module types, sizes, biases,
affine LayerNorms, no hooks or parametrizations) and another variable of the same VSN has the
same shapes; any other variable (different sizes, a custom module, a network shared with another
VSN) runs its own modules as before. With one or no inputs, inputs of more than 3 dimensions, or
global module hooks registered (read from torch's own registry, which `guard` checks is there),
the original forward runs.

Dropout is drawn once for the batched tensor: the same distribution as per-variable dropout, not
the same random draws for a given seed. Everything else (eval mode, or training with dropout 0)
equals the original within float32 rounding.

Fusion is decided once, from the modules present when `fuse_variable_selection` is called: call
it again after replacing submodules or registering hooks on them. A fused VSN is an instance of
`FusedVariableSelectionNetwork` (a subclass, swapped in through `__class__`), so the model still
deep-copies and pickles (unpickling a whole pickled model needs this module importable; state
dicts and Lightning checkpoints do not). `unfuse_variable_selection` swaps the class back.

`variable_selection_guard` (speedups/guards.py) checks the versions this was tested with and
fuses a library-built VSN of every kind of variable in float64: its outputs must equal the
library's to 1e-9.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    AddNorm,
    GateAddNorm,
    GatedLinearUnit,
    GatedResidualNetwork,
    ResampleNorm,
    TimeDistributedInterpolation,
    VariableSelectionNetwork,
)
from torch import nn
from torch.nn.modules import module as _module_hooks
from torch.nn.utils import parametrize

from .dropout import FastDropout
from .guards import guard

__all__ = [
    "FusedVariableSelectionNetwork",
    "fuse_variable_selection",
    "fusion_summary",
    "unfuse_variable_selection",
    "variable_selection_guard",
]


# --------------------------------------------------------------------------------------------
# The plan: which variables of a VSN run batched, decided once from its modules
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Group:
    """Variables run together; `key` holds every size and setting their modules share."""

    names: tuple[str, ...]
    positions: tuple[int, ...]  # indices in input_sizes order
    kind: str  # "grn" (GatedResidualNetwork) or "norm" (ResampleNorm)
    prescaled: bool  # reals: x -> Linear(1, k)
    in_size: int  # k: the size the transform sees
    out_size: int  # H
    resample: bool  # residual interpolated from k to H
    gated: bool  # ResampleNorm's trainable_add gate on the resampled residual
    norm_eps: float  # ResampleNorm's (or, for kind "norm", the only) LayerNorm eps
    hidden: int = 0  # GRN: fc1/fc2 width
    elu_alpha: float = 1.0
    dropout: float | None = None  # GLU input dropout, None when the GLU has none
    add_gated: bool = False  # AddNorm's trainable_add gate on the skip
    add_eps: float = 1e-5


@dataclass(frozen=True)
class _Single:
    """A variable that runs its own prescaler and network, as in the original forward."""

    name: str
    position: int
    reason: str


@dataclass(frozen=True)
class _Plan:
    units: tuple[_Group | _Single, ...]
    order: tuple[int, ...]  # positions in the order the units produce their outputs
    flat: tuple[tuple[int, int, int], ...]  # (unit, first member, end) runs in input order


def _plain(module: nn.Module) -> bool:
    """No hooks and no parametrizations: calling it runs its forward and nothing else."""
    return not (
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or parametrize.is_parametrized(module)
    )


def _is_linear(module: object, in_features: int, out_features: int) -> bool:
    return (
        type(module) is nn.Linear
        and module.in_features == in_features
        and module.out_features == out_features
        and module.bias is not None
        and _plain(module)
    )


def _is_layer_norm(module: object, size: int) -> bool:
    return (
        type(module) is nn.LayerNorm
        and tuple(module.normalized_shape) == (size,)
        and module.weight is not None
        and module.bias is not None
        and _plain(module)
    )


def _is_gate(module: nn.Module, size: int) -> bool:
    """`trainable_add`: a (size,) mask parameter through nn.Sigmoid."""
    mask = getattr(module, "mask", None)
    return (
        isinstance(mask, nn.Parameter)
        and tuple(mask.shape) == (size,)
        and type(getattr(module, "gate", None)) is nn.Sigmoid
        and _plain(module.gate)
    )


def _resample_norm_key(module: object, in_size: int, out_size: int) -> tuple | None:
    """(resample, gated, eps) of a standard ResampleNorm(in_size, out_size), else None."""
    if not (
        type(module) is ResampleNorm
        and _plain(module)
        and module.input_size == in_size
        and module.output_size == out_size
        and _is_layer_norm(module.norm, out_size)
    ):
        return None
    resample = in_size != out_size
    if resample:
        interp = getattr(module, "resample", None)
        if not (
            type(interp) is TimeDistributedInterpolation
            and _plain(interp)
            and interp.output_size == out_size
            and not interp.trainable
        ):
            return None
    if module.trainable_add and not _is_gate(module, out_size):
        return None
    return (resample, bool(module.trainable_add), float(module.norm.eps))


def _grn_key(grn: object, in_size: int) -> tuple | None:
    """Sizes and settings of a standard single-variable GatedResidualNetwork, else None."""
    if not (type(grn) is GatedResidualNetwork and _plain(grn) and grn.input_size == in_size):
        return None
    hidden, out = grn.hidden_size, grn.output_size
    if grn.context_size is not None:  # the VSN never passes a context to these
        return None
    resample = in_size != out and not grn.residual
    if resample:
        rn = _resample_norm_key(getattr(grn, "resample_norm", None), in_size, out)
        if rn is None:
            return None
    elif in_size != out:  # residual=True with a size change: the original fails, let it
        return None
    else:
        rn = (False, False, 0.0)
    if not (
        _is_linear(grn.fc1, in_size, hidden)
        and type(grn.elu) is nn.ELU
        and _plain(grn.elu)
        and _is_linear(grn.fc2, hidden, hidden)
    ):
        return None
    gate_norm = grn.gate_norm
    if not (type(gate_norm) is GateAddNorm and _plain(gate_norm)):
        return None
    glu, add_norm = gate_norm.glu, gate_norm.add_norm
    if not (
        type(glu) is GatedLinearUnit
        and _plain(glu)
        and glu.hidden_size == out
        and _is_linear(glu.fc, hidden, 2 * out)
        and (
            glu.dropout is None
            or (type(glu.dropout) in (nn.Dropout, FastDropout) and _plain(glu.dropout))
        )
    ):
        return None
    if not (
        type(add_norm) is AddNorm
        and _plain(add_norm)
        and add_norm.input_size == out
        and add_norm.skip_size == out
        and _is_layer_norm(add_norm.norm, out)
        and (not add_norm.trainable_add or _is_gate(add_norm, out))
    ):
        return None
    dropout = None if glu.dropout is None else float(glu.dropout.p)
    return (
        *rn,
        hidden,
        out,
        float(grn.elu.alpha),
        dropout,
        bool(add_norm.trainable_add),
        float(add_norm.norm.eps),
    )


def _plan(vsn: VariableSelectionNetwork, shared: set[int]) -> _Plan | None:
    """Group the VSN's variables by the shapes of their modules; None when nothing fuses."""
    if vsn.num_inputs <= 1:
        return None
    if not (_plain(vsn) and _plain(vsn.single_variable_grns) and _plain(vsn.prescalers)):
        return None
    buckets: dict[tuple, list[tuple[str, int]]] = {}
    singles: dict[str, _Single] = {}
    for position, (name, size) in enumerate(vsn.input_sizes.items()):
        network = vsn.single_variable_grns[name]
        prescaled = name in vsn.prescalers
        reason = ""
        if prescaled and not _is_linear(vsn.prescalers[name], 1, size):
            reason = "custom prescaler"
        elif id(network) in shared:
            reason = "shared network"
        elif type(network) is GatedResidualNetwork:
            grn = _grn_key(network, size)
            if grn is None:
                reason = "non-standard GatedResidualNetwork"
            else:
                hidden, out, alpha, dropout, add_gated, add_eps = grn[3:]
                key = ("grn", prescaled, size, out, *grn[:3], hidden, alpha, dropout)
                key += (add_gated, add_eps)
        elif type(network) is ResampleNorm:
            rn = _resample_norm_key(network, size, network.output_size)
            if rn is None:
                reason = "non-standard ResampleNorm"
            else:
                key = ("norm", prescaled, size, network.output_size, *rn)
        else:
            reason = f"custom module {type(network).__name__}"
        if reason:
            singles[name] = _Single(name, position, reason)
        else:
            buckets.setdefault(key, []).append((name, position))

    units: list[_Group | _Single] = []
    first_position: list[int] = []
    for key, members in buckets.items():
        if len(members) == 1:  # nothing to batch with: the original modules are cheaper
            name, position = members[0]
            singles[name] = _Single(name, position, "no variable of the same shape")
            continue
        names = tuple(n for n, _ in members)
        positions = tuple(p for _, p in members)
        kind, prescaled, size, out, resample, gated, norm_eps = key[:7]
        extra = {}
        if kind == "grn":
            hidden, alpha, dropout, add_gated, add_eps = key[7:]
            extra = {
                "hidden": hidden,
                "elu_alpha": alpha,
                "dropout": dropout,
                "add_gated": add_gated,
                "add_eps": add_eps,
            }
        units.append(
            _Group(names, positions, kind, prescaled, size, out, resample, gated, norm_eps, **extra)
        )
        first_position.append(positions[0])
    if not units:
        return None
    for single in singles.values():
        units.append(single)
        first_position.append(single.position)
    units = [u for _, u in sorted(zip(first_position, units, strict=True), key=lambda t: t[0])]

    order: list[int] = []
    owner: dict[int, tuple[int, int]] = {}  # position -> (unit, index within the unit)
    for u, unit in enumerate(units):
        positions = unit.positions if isinstance(unit, _Group) else (unit.position,)
        order.extend(positions)
        for i, position in enumerate(positions):
            owner[position] = (u, i)
    flat: list[tuple[int, int, int]] = []  # merge consecutive members of a unit
    for position in range(vsn.num_inputs):
        u, i = owner[position]
        if flat and flat[-1][0] == u and flat[-1][2] == i:
            flat[-1] = (u, flat[-1][1], i + 1)
        else:
            flat.append((u, i, i + 1))
    return _Plan(tuple(units), tuple(order), tuple(flat))


# --------------------------------------------------------------------------------------------
# Batched computation
# --------------------------------------------------------------------------------------------
_INTERPOLATION: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}


def _interpolation_matrix(n: int, m: int, like: torch.Tensor) -> torch.Tensor:
    """M (n, m) with x @ M == F.interpolate(x, m, mode="linear", align_corners=True).

    Interpolating the rows of the identity yields the kernel's own weights: output j is
    x[i0] * (1 - t) + x[i0 + 1] * t at source position j * (n - 1) / (m - 1).
    """
    key = (n, m, like.dtype, like.device)
    matrix = _INTERPOLATION.get(key)
    if matrix is None:
        # a plain tensor even when first built under inference_mode (Lightning's validation):
        # an inference tensor could not be saved for backward by later training steps
        with torch.inference_mode(False), torch.no_grad():
            eye = torch.eye(n, dtype=like.dtype, device=like.device).unsqueeze(1)
            matrix = F.interpolate(eye, m, mode="linear", align_corners=True).squeeze(1)
        _INTERPOLATION[key] = matrix
    return matrix


def _layer_norm(
    x: torch.Tensor, norms: list[nn.LayerNorm], eps: float, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-variable LayerNorm over the last dim of x (V, N, H), times `scale` (V, 1, H) if
    given: folded into the affine weights, a pass over x fewer."""
    weight = torch.stack([n.weight for n in norms]).unsqueeze(1)
    bias = torch.stack([n.bias for n in norms]).unsqueeze(1)
    if scale is not None:
        weight, bias = weight * scale, bias * scale
    return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:], eps=eps), weight)


def _gate(modules: list[nn.Module]) -> torch.Tensor:
    """sigmoid(mask) * 2 of each `trainable_add` module, as (V, 1, H)."""
    return (torch.sigmoid(torch.stack([m.mask for m in modules])) * 2.0).unsqueeze(1)


def _linear(x: torch.Tensor, layers: list[nn.Linear]) -> torch.Tensor:
    """x (V, N, in) through V Linear layers -> (V, N, out)."""
    weight = torch.stack([layer.weight for layer in layers])
    bias = torch.stack([layer.bias for layer in layers]).unsqueeze(1)
    return torch.baddbmm(bias, x, weight.transpose(1, 2))


def _split_glu(x: torch.Tensor) -> bool:
    """Whether the GLU's halves run as separate ops (CPUs; see _glu_add)."""
    return x.device.type == "cpu"


def _glu_add(
    x: torch.Tensor, layers: list[nn.Linear], size: int, residual: torch.Tensor
) -> torch.Tensor:
    """F.glu(linear(x), dim=-1) + residual for x (V, N, in), residual (V, N, size).

    glu(y) = y[..., :size] * sigmoid(y[..., size:]). On CPU, F.glu and its backward work on
    the two strided halves of y and take several times longer than sigmoid and mul on two
    contiguous tensors, so there the halves are computed separately and the product is added
    to the residual in the same op; on accelerators the one fused glu kernel is cheaper than
    the extra launches.
    """
    weight = torch.stack([layer.weight for layer in layers]).transpose(1, 2)  # (V, in, 2H)
    bias = torch.stack([layer.bias for layer in layers]).unsqueeze(1)
    if not _split_glu(x):
        return F.glu(torch.baddbmm(bias, x, weight), dim=-1) + residual
    value = torch.baddbmm(bias[..., :size], x, weight[..., :size])
    gate = torch.baddbmm(bias[..., size:], x, weight[..., size:])
    return torch.addcmul(residual, value, torch.sigmoid(gate))


def _resample_norm(
    x: torch.Tensor,
    modules: list[ResampleNorm],
    group: _Group,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """ResampleNorm of x (V, N, k) -> (V, N, H), times `scale` (V, 1, H) if given.

    The trainable gate multiplies the interpolation matrix (per variable) instead of its
    output, and `scale` the LayerNorm's affine weights: two passes over (V, N, H) fewer.
    """
    gate = _gate(modules) if group.gated else None
    if group.resample:
        matrix = _interpolation_matrix(group.in_size, group.out_size, x)
        x = torch.matmul(x, matrix) if gate is None else torch.bmm(x, matrix * gate)
    elif gate is not None:
        x = x * gate
    return _layer_norm(x, [m.norm for m in modules], group.norm_eps, scale)


def _grn(x: torch.Tensor, grns: list[GatedResidualNetwork], group: _Group) -> torch.Tensor:
    """GatedResidualNetwork of x (V, N, k) without context -> (V, N, H)."""
    add_norms = [g.gate_norm.add_norm for g in grns]
    add_gate = _gate(add_norms) if group.add_gated else None
    if group.resample:
        residual = _resample_norm(x, [g.resample_norm for g in grns], group, add_gate)
    else:
        residual = x if add_gate is None else x * add_gate
    hidden = _linear(x, [g.fc1 for g in grns])
    hidden = F.elu(hidden, group.elu_alpha)
    hidden = _linear(hidden, [g.fc2 for g in grns])
    glus = [g.gate_norm.glu for g in grns]
    if group.dropout is not None:  # p as set now (equal in all members when fused)
        hidden = glus[0].dropout(hidden)  # the module: nn.Dropout or dropout.FastDropout
    gated = _glu_add(hidden, [glu.fc for glu in glus], group.out_size, residual)
    return _layer_norm(gated, [a.norm for a in add_norms], group.add_eps)


# torch's registry of `register_module_forward_hook` & co. (private; `guard` checks it exists)
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _global_hooks() -> bool:
    return any(getattr(_module_hooks, name) for name in _GLOBAL_HOOKS)


class FusedVariableSelectionNetwork(VariableSelectionNetwork):
    """A VariableSelectionNetwork whose per-variable networks run batched by shape.

    Not constructed directly: `fuse_variable_selection` assigns this class to existing VSNs
    and stores their `_fused_plan`. Same parameters, same state_dict keys, same outputs.
    """

    _fused_plan: _Plan | None = None

    def forward(self, x: dict[str, torch.Tensor], context: torch.Tensor | None = None):
        plan = self._fused_plan
        if plan is None or self.num_inputs <= 1 or _global_hooks():
            return super().forward(x, context)
        first = x[next(iter(self.input_sizes))]
        lead = first.shape[:-1]
        if not 1 <= len(lead) <= 2:
            return super().forward(x, context)
        n_rows = math.prod(lead)

        outputs: list[torch.Tensor] = []  # (v, N, H) per unit, in plan.order
        flat_sources: list[torch.Tensor | list[torch.Tensor]] = []  # per unit, see flat below
        for unit in plan.units:
            if isinstance(unit, _Single):
                embedding = x[unit.name]
                if unit.name in self.prescalers:
                    embedding = self.prescalers[unit.name](embedding)
                output = self.single_variable_grns[unit.name](embedding)
                outputs.append(output.reshape(1, n_rows, -1))
                flat_sources.append([embedding.reshape(n_rows, -1)])
                continue
            if unit.prescaled:
                # (N, V) scalars -> (N, V, k); flat slices of it are views
                scalars = torch.cat([x[name] for name in unit.names], dim=-1)
                prescalers = [self.prescalers[name] for name in unit.names]
                weight = torch.stack([p.weight for p in prescalers]).squeeze(-1)
                bias = torch.stack([p.bias for p in prescalers])
                scaled = torch.addcmul(bias, scalars.reshape(n_rows, -1, 1), weight)
                flat_sources.append(scaled)
                inputs = scaled.transpose(0, 1)
            else:
                raw = [x[name].reshape(n_rows, -1) for name in unit.names]
                flat_sources.append(raw)
                inputs = torch.stack(raw)
            networks = [self.single_variable_grns[name] for name in unit.names]
            if unit.kind == "grn":
                outputs.append(_grn(inputs, networks, unit))
            else:
                outputs.append(_resample_norm(inputs, networks, unit))

        # variable weights from the embeddings in input order, as the original computes them
        pieces = []
        for u, start, end in plan.flat:
            source = flat_sources[u]
            if isinstance(source, list):
                pieces.extend(source[start:end])
            else:
                pieces.append(source[:, start:end].reshape(n_rows, -1))
        flat_embedding = torch.cat(pieces, dim=-1).reshape(*lead, -1)
        sparse_weights = self.flattened_grn(flat_embedding, context)
        sparse_weights = self.softmax(sparse_weights).unsqueeze(-2)

        var_outputs = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        weights = sparse_weights.reshape(n_rows, -1)
        if plan.order != tuple(range(self.num_inputs)):
            index = torch.tensor(plan.order, device=weights.device)
            weights = weights.index_select(1, index)
        # (V, N, 1) contiguous: a transposed (strided) factor makes the mul and its backward slow
        combined = (var_outputs * weights.t().contiguous().unsqueeze(-1)).sum(0)
        return combined.reshape(*lead, -1), sparse_weights


# --------------------------------------------------------------------------------------------
# Public interface
# --------------------------------------------------------------------------------------------
def _shared_networks(model: nn.Module) -> set[int]:
    """ids of modules registered more than once in the model (shared single-variable GRNs)."""
    seen: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        seen[id(module)] = seen.get(id(module), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def fuse_variable_selection(model: nn.Module, fuse_shared: bool = False) -> int:
    """Make every VariableSelectionNetwork in `model` run its variables batched by shape.

    Works in place on a built model (fresh, trained or loaded); parameters are untouched.
    Networks shared between VSNs (`share_single_variable_networks=True`) keep their own
    per-variable path unless `fuse_shared` (equal results either way: a shared network's
    parameters are stacked in each VSN that uses them). Calling it again re-plans. Returns how
    many VSNs run fused.
    """
    shared = set() if fuse_shared else _shared_networks(model)
    fused = 0
    for module in model.modules():
        if type(module) is FusedVariableSelectionNetwork:
            module.__class__ = VariableSelectionNetwork
            module.__dict__.pop("_fused_plan", None)
        if type(module) is not VariableSelectionNetwork:
            continue  # subclasses may compute something else: leave them alone
        plan = _plan(module, shared)
        if plan is not None:
            module.__class__ = FusedVariableSelectionNetwork
            module._fused_plan = plan
            fused += 1
    return fused


def unfuse_variable_selection(model: nn.Module) -> None:
    """Undo `fuse_variable_selection`: the VSNs are plain VariableSelectionNetworks again."""
    for module in model.modules():
        if type(module) is FusedVariableSelectionNetwork:
            module.__class__ = VariableSelectionNetwork
            module.__dict__.pop("_fused_plan", None)


def fusion_summary(model: nn.Module) -> dict[str, dict[str, list[str]]]:
    """Per VSN (by module name): which variables run batched and which run alone, and why.

    E.g. {"encoder_variable_selection": {"fused": ["grn 8->16: time_idx, price, ..."],
    "single": ["month: no variable of the same shape"]}}.
    """
    summary: dict[str, dict[str, list[str]]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, VariableSelectionNetwork):
            continue
        plan = module._fused_plan if type(module) is FusedVariableSelectionNetwork else None
        if plan is None:
            summary[name] = {"fused": [], "single": [f"{n}: not fused" for n in module.input_sizes]}
            continue
        summary[name] = {
            "fused": [
                f"{u.kind} {u.in_size}->{u.out_size}: {', '.join(u.names)}"
                for u in plan.units
                if isinstance(u, _Group)
            ],
            "single": [f"{u.name}: {u.reason}" for u in plan.units if isinstance(u, _Single)],
        }
    return summary


# --------------------------------------------------------------------------------------------
# Guard
# --------------------------------------------------------------------------------------------
def _probe() -> str | None:
    """A VSN built by the library with every kind of variable the plan batches (prescaled
    reals resampled and not, embedded categoricals resampled and not, a variable alone, a
    context), random parameters, float64: fused and original outputs equal to 1e-9."""
    missing = [
        name for name in _GLOBAL_HOOKS if not isinstance(getattr(_module_hooks, name, None), dict)
    ]
    if missing:
        return f"torch.nn.modules.module has no {missing[0]} (global hooks would be skipped)"
    generator = torch.Generator().manual_seed(0)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    reals = {"r1": 4, "r2": 4, "r3": 8, "r4": 8, "r5": 2}
    categoricals = {"c1": 3, "c2": 3, "c3": 8, "c4": 8}
    original = VariableSelectionNetwork(
        input_sizes=reals | categoricals,
        hidden_size=8,
        input_embedding_flags=dict.fromkeys(categoricals, True),
        dropout=0.1,
        context_size=8,
        prescalers={name: nn.Linear(1, size) for name, size in reals.items()},
    ).double()
    with torch.no_grad():
        for parameter in original.parameters():
            parameter.copy_(draw(*parameter.shape))
    fused = copy.deepcopy(original)
    if fuse_variable_selection(fused) != 1:
        return "the library's VariableSelectionNetwork no longer matches the fused plan"
    original.eval()
    fused.eval()
    for lead, context in (((5, 3), (5, 3, 8)), ((5,), None)):  # over time with context; static
        x = {name: draw(*lead, 1) for name in reals}  # scalars, before the prescalers
        x |= {name: draw(*lead, size) for name, size in categoricals.items()}
        c = None if context is None else draw(*context)
        with torch.no_grad():
            expected, actual = VariableSelectionNetwork.forward(original, x, c), fused(x, c)
        for name, a, e in zip(("outputs", "weights"), actual, expected, strict=True):
            if a.shape != e.shape or not torch.allclose(a, e, rtol=1e-9, atol=1e-12):
                return f"fused {name} differ from the library's VariableSelectionNetwork"
    return None


@functools.cache
def variable_selection_guard() -> str | None:
    return guard("torch", "pytorch-forecasting", check=_probe)
