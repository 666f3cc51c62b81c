"""Loss functions PyTorch lacks, in the study's (Keras) semantics.

Every loss in ``conf/loss/`` is called as ``fn(output, target)`` on tensors with a leading
member axis, ``(members, batch, outputs)``, and returns per-sample or per-element values;
``per_member`` averages them into one loss per member. Adding a loss: one YAML file, plus one
small function here if PyTorch does not have it.
"""

from __future__ import annotations

import torch

EPS = 1e-7  # Keras' backend epsilon, which the study's numbers depend on


def per_member(values: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the leading member axis: shape (members,)."""
    return values.reshape(values.shape[0], -1).mean(dim=1)


def msle(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Keras' MSLE: both sides clipped at eps before log1p, so negative targets count as 0
    and a prediction at or below eps gets no gradient (which is how MSLE runs can collapse)."""
    return (torch.log1p(output.clamp(min=EPS)) - torch.log1p(target.clamp(min=EPS))) ** 2


def hinge(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """max(1 - y * f(x), 0) with labels y in {-1, 1}."""
    return (1.0 - target * output).clamp(min=0.0)
