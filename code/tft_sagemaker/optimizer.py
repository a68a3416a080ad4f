"""Fused Adam/AdamW without the per-parameter bookkeeping of each step, on CPUs.

`torch.optim.Adam(fused=True)` runs one kernel over all parameters, but around it every step
walks the ~400 parameters of the TFT in Python to collect gradients and states, then bumps ~400
step counters one by one (`_foreach_add_` has no CPU kernel): about as long as the update
itself. `LeanFusedAdam` calls the same `torch._fused_adam_` / `_fused_adamw_` kernel with lists
built once, and one step counter that all parameters share (they always step together here).
The update is bit for bit torch's; the state_dict is plain Adam's, so checkpoints load into
`torch.optim.Adam` and back.

The lean path needs what it was built from to hold: every parameter has a gradient, the same
tensor as when the lists were built (see gradients.py: views of one flat buffer), states from a
first regular step with equal step counts, float lr and betas, no amsgrad, no grad scaler, CPU
tensors of one dtype. Anything else runs `torch.optim.Adam.step` as is. Loading a state dict or
adding a parameter group rebuilds the lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LeanFusedAdam"]


@dataclass(frozen=True)
class _GroupLists:
    params: list[Tensor]
    grads: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    steps: list[Tensor]  # one shared tensor, repeated

    def current(self) -> bool:
        return all(p.grad is g for p, g in zip(self.params, self.grads, strict=True))


def _adam_step(optimizer: torch.optim.Adam, closure: Callable[[], float] | None) -> float | None:
    """torch.optim.Adam.step without the step hooks: LeanFusedAdam.step, which torch wraps
    the same way, has run them already (torch wraps Adam.step once a plain Adam exists)."""
    step = torch.optim.Adam.step
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    return step(optimizer, closure)


class LeanFusedAdam(torch.optim.Adam):
    """`torch.optim.Adam` (or AdamW, with decoupled_weight_decay) whose fused CPU update
    reuses its tensor lists and one shared step counter."""

    _lean: list[_GroupLists] | None = None
    _shared_steps = False

    def state_dict(self) -> dict:
        """Plain Adam's: each parameter's own step tensor (a shared one, loaded into torch's
        Adam, would be bumped once per parameter)."""
        state_dict = super().state_dict()
        state_dict["state"] = {
            key: {**value, "step": value["step"].clone()} if "step" in value else value
            for key, value in state_dict["state"].items()
        }
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        self._lean, self._shared_steps = None, False  # new state tensors, none shared
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict) -> None:
        self._lean = None
        self._unshare_steps()
        super().add_param_group(param_group)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if not self._lean_ready():
            self._unshare_steps()
            return _adam_step(self, closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lean = self._lean_lists()  # the closure's backward may have replaced gradients
        if lean is None:
            _adam_step(self, None)
            return loss
        with torch.no_grad():
            for group, lists in zip(self.param_groups, lean, strict=True):
                kernel = (
                    torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
                )
                lists.steps[0].add_(1)
                beta1, beta2 = group["betas"]
                kernel(
                    lists.params,
                    lists.grads,
                    lists.exp_avgs,
                    lists.exp_avg_sqs,
                    [],
                    lists.steps,
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=group["maximize"],
                    grad_scale=None,
                    found_inf=None,
                )
        return loss

    def _lean_ready(self) -> bool:
        """States exist (a regular step ran) and no grad scaler is attached."""
        return (
            getattr(self, "grad_scale", None) is None
            and getattr(self, "found_inf", None) is None
            and all(p in self.state for g in self.param_groups for p in g["params"])
        )

    def _lean_lists(self) -> list[_GroupLists] | None:
        if self._lean is None or not all(lists.current() for lists in self._lean):
            self._lean = self._build()
        return self._lean

    def _unshare_steps(self) -> None:
        """Each parameter its own step tensor again, for torch's per-parameter step (which
        would bump a shared one once per parameter)."""
        if self._shared_steps:
            for state in self.state.values():
                if "step" in state:
                    state["step"] = state["step"].clone()
            self._shared_steps = False

    def _build(self) -> list[_GroupLists] | None:
        """The lists for the lean path, or None (with unshared steps) when it does not apply."""
        self._unshare_steps()
        groups = []
        for group in self.param_groups:
            params = group["params"]
            if (
                not group["fused"]
                or group["amsgrad"]
                or group["capturable"]
                or group["differentiable"]
                or not isinstance(group["lr"], float | int)
                or not all(isinstance(b, float | int) for b in group["betas"])
                or not params
            ):
                return None
            grads = [p.grad for p in params]
            if any(g is None or g.is_sparse for g in grads):
                return None
            if {(p.device.type, p.dtype) for p in params} != {("cpu", params[0].dtype)}:
                return None
            states = [self.state[p] for p in params]
            if len({float(s["step"]) for s in states}) != 1:
                return None
            groups.append((params, grads, states))
        built = []
        for params, grads, states in groups:
            shared = states[0]["step"]
            for state in states:
                state["step"] = shared
            built.append(
                _GroupLists(
                    params=list(params),
                    grads=grads,
                    exp_avgs=[s["exp_avg"] for s in states],
                    exp_avg_sqs=[s["exp_avg_sq"] for s in states],
                    steps=[shared] * len(params),
                )
            )
        self._shared_steps = True
        return built
