"""A job's losses as heads: each loss on its own members of one model.

Members of one model share its data and its last layer's width, which the task decides
(``LossConfig.shape``); how a member's output is read is its loss's own: bce reads the last
layer through a sigmoid against labels {0, 1} and reports per-epoch accuracy, hinge reads it
through a tanh against {-1, 1} and also reports the study's rounded accuracy. A head holds
those facts for one loss and the run of members it trains, so each member computes what the
run trained with its loss alone computes. The data module encodes targets for the job's
first loss; a head whose loss wants another encoding re-encodes them (``encode``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from hydra.utils import get_method, instantiate

from src.config import LossConfig, MetricConfig, MetricInput, Targets, refused_by_target
from src.data import encode
from src.metrics import Metric, class_labels, inputs
from src.model import ACTIVATED


@dataclass
class Head:
    """One loss of a job and the run of members it trains."""

    where: str  # where its loss is configured: "loss" or "member_losses.<key>"
    loss: LossConfig
    fn: Callable[..., torch.Tensor]  # loss.fn, built: fn(output, target), not reduced
    metrics: dict[str, tuple[MetricInput, Metric]]  # per epoch: name -> (input, function)
    members: slice  # its members in the model
    encode: Callable[[torch.Tensor], torch.Tensor]  # the data's targets as this loss's

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """The activated output (what metrics and users see) from the raw last layer."""
        return ACTIVATED[self.loss.output](logits)

    def loss_input(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.loss.from_logits else self.activate(logits)

    def scores(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-epoch metrics of activated outputs against this loss's targets, both in the
        target's units: {name: (members,)}."""
        prepared: dict[MetricInput, tuple[torch.Tensor, torch.Tensor]] = {}
        values = {}
        for name, (kind, metric) in self.metrics.items():
            if kind not in prepared:
                prepared[kind] = inputs(kind, pred, target, self.loss.targets)
            values[name] = metric(*prepared[kind])
        return values


def build_heads(
    losses: Mapping[str, LossConfig],
    per_loss: int,
    primary: str,
    specs: Mapping[str, MetricConfig],
    data_targets: Targets,
    n_classes: int,
) -> list[Head]:
    """One head per loss (where -> config, in member order), ``per_loss`` members each,
    reporting the task's ``primary`` metric and its loss's own each epoch. A loss function
    that cannot be built is a config mistake, named."""
    heads = []
    for i, (where, loss) in enumerate(losses.items()):
        with refused_by_target(f"{where}.fn"):
            fn = _plain(instantiate(loss.fn))
        metrics = {
            name: (specs[name].input, get_method(specs[name].epoch))
            for name in dict.fromkeys([primary, *loss.metrics])
        }
        members = slice(i * per_loss, (i + 1) * per_loss)
        encode = _encoder(data_targets, loss.targets, n_classes)
        heads.append(Head(where, loss, fn, metrics, members, encode))
    return heads


def _plain(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Hydra's ``_partial_`` result re-checks its target policy on every call (about 0.1 ms,
    a third of a plain training step); once instantiated and so authorised, call the bare
    ``functools.partial``."""
    if isinstance(fn, functools.partial):
        return functools.partial(fn.func, *fn.args, **fn.keywords)
    return fn


def _same(target: torch.Tensor) -> torch.Tensor:
    return target


def _encoder(
    source: Targets, wanted: Targets, n_classes: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Targets encoded as ``source`` (the data's), re-encoded as ``wanted``: the classes
    stay, only their spelling changes ({0, 1} and {-1, 1}; one-hot rows and indices)."""
    if source == wanted:
        return _same

    def recode(target: torch.Tensor) -> torch.Tensor:
        return encode(class_labels(target, source), wanted, n_classes)

    return recode
