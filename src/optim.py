"""One optimizer update per minibatch, without the per-call overhead torch.optim adds.

``optimizer.step()`` wraps every call in hooks, a profiler record and ``_init_group``; with a
tiny model that wrapper costs as much as the update itself. For a plain ``torch.optim.SGD``
(any lr, momentum, dampening, nesterov, weight decay, maximize) ``updater`` returns a step that
calls torch's own functional ``sgd`` on gradients from ``torch.autograd.grad``: the same
arithmetic on the same tensors, with the momentum buffers kept in ``optimizer.state`` so
checkpoints and resumes see exactly what ``optimizer.step()`` would leave there. Any other
optimizer (``optimizer._target_`` may name any ``torch.optim`` class) takes the ordinary path:
``zero_grad``, ``backward``, ``step``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import optimizer as torch_optimizer
from torch.optim.sgd import sgd

Step = Callable[[torch.Tensor], None]
Clip = Callable[[list[torch.Tensor]], None]


def member_clipper(value: float | None, algorithm: str) -> Clip | None:
    """Gradient clipping for each member on its own (every parameter's first axis is the
    member): one joint clip, as Lightning's ``gradient_clip_val`` does over all parameters,
    would let one member's large gradient shrink every other member's update. With one
    member it is Lightning's (and torch's ``clip_grad_norm_``) arithmetic."""
    if value is None:
        return None
    if algorithm == "value":

        def by_value(grads: list[torch.Tensor]) -> None:
            for grad in grads:
                grad.clamp_(-value, value)

        return by_value

    def by_norm(grads: list[torch.Tensor]) -> None:
        norms = torch.stack([g.flatten(1).pow(2).sum(dim=1) for g in grads]).sum(dim=0).sqrt()
        scale = (value / (norms + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(scale.view(-1, *[1] * (grad.dim() - 1)))

    return by_norm


def _plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """True for an SGD whose step is exactly the functional ``sgd``: no hooks, one group,
    no fused or differentiable mode, no gradient scaling."""
    hooks = (
        optimizer._optimizer_step_pre_hooks,
        optimizer._optimizer_step_post_hooks,
        torch_optimizer._global_optimizer_pre_hooks,
        torch_optimizer._global_optimizer_post_hooks,
    )
    group = optimizer.param_groups[0]
    return (
        type(optimizer) is torch.optim.SGD
        and len(optimizer.param_groups) == 1
        and not any(hooks)
        and not group["fused"]
        and not group["differentiable"]
        and getattr(optimizer, "grad_scale", None) is None
        and all(not p.is_sparse for p in group["params"])
    )


def updater(optimizer: torch.optim.Optimizer, clip: Clip | None = None) -> Step:
    """A function that takes the summed loss and updates the parameters, as ``backward``
    followed by ``optimizer.step()`` would (``clip`` first rescales the gradients)."""
    if not _plain_sgd(optimizer):

        def generic(loss: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                groups = optimizer.param_groups
                clip([p.grad for g in groups for p in g["params"] if p.grad is not None])
            optimizer.step()

        return generic

    def fast(loss: torch.Tensor) -> None:
        # Read the group and state at each call: load_state_dict replaces both objects.
        group = optimizer.param_groups[0]
        params = group["params"]
        state = optimizer.state
        grads = list(torch.autograd.grad(loss, params))
        if clip is not None:
            clip(grads)
        buffers = [state[p].get("momentum_buffer") for p in params]
        with torch.no_grad():
            sgd(
                params,
                grads,
                buffers,
                foreach=True if group["foreach"] is None else group["foreach"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
            )
        if group["momentum"] != 0 and buffers[0] is not state[params[0]].get("momentum_buffer"):
            for p, buffer in zip(params, buffers):  # first step: sgd created the buffers
                state[p]["momentum_buffer"] = buffer

    return fast
