"""Metrics per member: each takes (prediction, target) with a leading member axis and returns
a tensor of shape (members,). ``prediction`` is the activated output (probabilities for sigmoid
and softmax, tanh values for signed labels)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from src.config import Targets, Task, primary_name

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mean(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1).float().mean(dim=1)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _mean((pred - target) ** 2)


def accuracy_for(targets: Targets) -> Metric:
    """Accuracy as each encoding's classifier decides: p > 0.5 for {0,1}, the sign for {-1,1}
    (what a hinge classifier predicts), the arg-max for classes."""

    def binary(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _mean((pred > 0.5) == (target > 0.5))

    def signed(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _mean((pred > 0) == (target > 0))

    def onehot(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _mean(pred.argmax(-1) == target.argmax(-1))

    def index(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _mean(pred.argmax(-1) == target.reshape(pred.shape[:-1]))

    return {
        Targets.binary: binary,
        Targets.signed: signed,
        Targets.onehot: onehot,
        Targets.index: index,
    }[targets]


def rounded_accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The study's (Keras 2.3) reading: correct only when round(pred) == label, so a tanh
    output must have the right sign *and* |pred| > 0.5 to count."""
    return _mean(torch.round(pred) == target)


# Metrics a loss may ask for by name (conf/loss/*.yaml `metrics:`); names listed in config.py.
EXTRA: dict[str, Metric] = {"rounded_accuracy": rounded_accuracy, "mse": mse}


def metrics_for(task: Task, targets: Targets, extra: list[str]) -> dict[str, Metric]:
    """The task's own metric first, then the loss's extra metrics, by name."""
    first = mse if task == Task.regression else accuracy_for(targets)
    return {primary_name(task): first, **{name: EXTRA[name] for name in extra}}
