"""Loss functions PyTorch lacks, in the study's (Keras) semantics.

Every loss in ``conf/loss/`` is called as ``fn(output, target)`` on tensors with a leading
member axis: output ``(members, batch, outputs)``; target the same shape, or ``(members,
batch)`` for integer classes. It returns per-element values, or per-sample values
``(members, batch)`` for losses that sum over classes; ``per_member`` averages them into one
loss per member. Adding a loss: one YAML file, plus one
small function here if PyTorch does not have it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


def squared_hinge(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """max(1 - y * f(x), 0) ** 2 with labels y in {-1, 1}: punishes large margin violations
    harder and is smooth at the margin."""
    return hinge(output, target) ** 2


class FocalLoss:
    """Binary focal loss (Lin et al., 2017) from logits, labels {0, 1}: the cross-entropy
    scaled by ``(1 - p_t) ** gamma`` (p_t: the probability given to the true class), so rows
    the model already gets right weigh less and hard or rare ones more; gamma=0 is BCE.
    ``alpha`` weighs the positive class (and 1 - alpha the negative); None weighs neither.
    A class, so a bad gamma or alpha is refused when the job builds it, before any epoch."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma={gamma} must be a finite number >= 0")
        if alpha is not None and not 0 <= alpha <= 1:
            raise ValueError(f"alpha={alpha} must be in [0, 1], or null for no class weight")
        self.gamma, self.alpha = gamma, alpha

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        # 1 - p_t kept off 0: for gamma < 1 the power's gradient there is infinite
        loss = (1.0 - torch.exp(-ce)).clamp(min=EPS) ** self.gamma * ce
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1.0 - self.alpha) * (1.0 - target))
        return loss


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Categorical cross-entropy per sample, (members, batch), from raw logits (members, batch,
    classes). One function serves both encodings: one-hot float rows (Keras'
    categorical_crossentropy) and integer classes (sparse_categorical_crossentropy); torch's
    cross_entropy wants the class axis second, hence the moves."""
    classes_second = logits.movedim(-1, 1)
    if target.is_floating_point():
        target = target.movedim(-1, 1)
    return F.cross_entropy(classes_second, target, reduction="none")


def kl_divergence(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Keras' KLDivergence per sample: sum(y * log(y / p)) over classes with both sides clipped
    to [eps, 1], so one-hot zeros count as eps and a probability below eps gets no gradient."""
    target = target.clamp(EPS, 1.0)
    output = output.clamp(EPS, 1.0)
    return (target * torch.log(target / output)).sum(dim=-1)


def log_cosh(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log(cosh(error)), computed as Keras does (x + softplus(-2x) - log 2) so large errors do
    not overflow: about x**2 / 2 for small errors and |x| - log 2 for large ones."""
    x = output - target
    return x + F.softplus(-2.0 * x) - math.log(2.0)
