"""Metrics: what each ``conf/metrics/<name>.yaml`` computes, given the inputs it asks for.

A run's outputs (activated, in the target's units) and its encoded targets become each
metric's ``(y_true, y_pred)`` here, once (``inputs``), for every kind of input a metric may
take (the value, the class label, a decision score, probabilities). Per epoch, the task's
primary metric and the loss's declared ones run as member-axis torch functions (below): a
scikit-learn call per member per epoch would cost more than the epoch itself. After training,
the whole panel runs through each metric's own function (scikit-learn's, mostly), per member.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from src.config import MetricConfig, MetricInput, Targets

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mean(values: torch.Tensor) -> torch.Tensor:
    """Per member, averaged in float64: an accuracy of 0.85 is logged as 0.85, not 0.8500000238."""
    return values.reshape(values.shape[0], -1).double().mean(dim=1)


# --- per epoch: (y_true, y_pred) with a leading member axis -> (members,)
def mse(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    return _mean((y_pred - y_true) ** 2)


def accuracy(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Share of right class labels (``inputs`` turned outputs into labels)."""
    return _mean(y_true == y_pred)


def rounded_accuracy(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """The study's (Keras 2.3) reading: correct only when round(pred) == label, so a tanh
    output must have the right sign *and* |pred| > 0.5 to count."""
    return _mean(torch.round(y_pred) == y_true)


# --- after training, per member, for metrics no library has
def msle_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean squared log error with negative predictions counted as 0: scikit-learn's
    ``mean_squared_log_error`` refuses a negative prediction, which a linear output makes."""
    return float(np.mean((np.log1p(np.clip(y_pred, 0, None)) - np.log1p(y_true)) ** 2))


def rounded_accuracy_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.round(y_pred) == y_true))


# --- the inputs each kind of metric takes
def class_labels(target: torch.Tensor, targets: Targets) -> torch.Tensor:
    """True classes 0..C-1 from any encoding ({0,1}, {-1,1}, one-hot or integer)."""
    if targets == Targets.onehot:
        return target.argmax(-1)
    if targets == Targets.index:
        return target
    return (target > (0.5 if targets == Targets.binary else 0.0)).long().squeeze(-1)


def inputs(
    kind: MetricInput, pred: torch.Tensor, target: torch.Tensor, targets: Targets
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_true, y_pred) as a metric of ``kind`` takes them, member axis first. ``pred`` is
    the activated output; for regression both are in the target's units."""
    if kind in (MetricInput.value, MetricInput.raw):
        return target, pred
    true = class_labels(target, targets)
    if kind == MetricInput.label:
        if pred.shape[-1] > 1:
            return true, pred.argmax(-1)
        threshold = 0.5 if targets == Targets.binary else 0.0  # a probability, or a sign
        return true, (pred > threshold).long().squeeze(-1)
    if pred.shape[-1] == 1:  # score, or the positive class's probability
        return true, pred.squeeze(-1)
    return true, pred  # class probabilities


@dataclass
class Panel:
    """The metrics a run reports after training, each its config's function, per member."""

    fns: dict[str, Callable[..., float]]
    kinds: dict[str, MetricInput]
    targets: Targets

    @classmethod
    def build(cls, specs: Mapping[str, MetricConfig], targets: Targets) -> Panel:
        from hydra.utils import instantiate

        from src.config import refused

        fns = {}
        for name, spec in specs.items():
            try:
                fns[name] = instantiate(spec.fn)
            except Exception as error:  # a config mistake: one line, before any run
                raise refused(f"metrics.{name}.fn", error.__cause__ or error) from error
        return cls(fns, {name: spec.input for name, spec in specs.items()}, targets)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, list[float]]:
        """{name: [value per member]}, float64 as each function computed it. ``pred``: the
        activated outputs (members, rows, outputs); ``target`` encoded, with the member axis;
        both in the target's units."""
        prepared: dict[MetricInput, tuple[np.ndarray, np.ndarray]] = {}
        values = {}
        for name, fn in self.fns.items():
            kind = self.kinds[name]
            if kind not in prepared:
                y_true, y_pred = inputs(kind, pred, target, self.targets)
                y_pred = y_pred.double()
                if kind == MetricInput.proba and y_pred.dim() == 3:  # float32 softmax rows
                    y_pred = y_pred / y_pred.sum(-1, keepdim=True)  # sum to 1 within 1e-7 only
                prepared[kind] = (y_true.numpy(), y_pred.numpy())
            y_true, y_pred = prepared[kind]
            values[name] = [float(fn(_rows(y_true[k]), _rows(y_pred[k]))) for k in range(len(pred))]
        return values


def _rows(values: np.ndarray) -> np.ndarray:
    """One value per row, as scikit-learn takes them; (rows, classes) probabilities stay."""
    return values if values.ndim == 2 and values.shape[1] > 1 else values.reshape(-1)


def plain(values: torch.Tensor) -> list[float]:
    """One value per member as MLflow should show it: a float32 (or lower) value as the
    shortest decimal that is that value (0.85, not its float64 expansion 0.8500000238418579,
    which the run list showed), a float64 value as it is."""
    if values.dtype == torch.float64:
        return values.tolist()
    return [float(str(v)) for v in values.detach().float().cpu().numpy()]
