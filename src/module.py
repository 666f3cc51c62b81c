"""The LightningModule: a member MLP, its loss and metrics, trained as the study trains.

One Lightning training step is one epoch: the module shuffles the train set for each member
with that member's own generator and steps SGD through minibatches itself (manual
optimization), then scores the test set, as Keras' fit(validation_data=...) does. Per-step
Lightning bookkeeping, metric work and host syncs stay out of the inner loop: a step is a
forward pass, the loss, gradients and the SGD update (src/optim.py); train metrics are computed
once per epoch from the outputs the steps saw.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from src.config import ConfigError, LossConfig, MetricInput, refused
from src.losses import per_member
from src.metrics import Metric, inputs
from src.model import MemberMLP
from src.optim import updater

Batch = tuple[torch.Tensor, torch.Tensor]


def _plain(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Hydra's ``_partial_`` result re-checks its target policy on every call (about 0.1 ms,
    a third of a plain training step); once instantiated and so authorised, call the bare
    ``functools.partial``."""
    if isinstance(fn, functools.partial):
        return functools.partial(fn.func, *fn.args, **fn.keywords)
    return fn


class Diverged(RuntimeError):
    """Every member's training loss became NaN or infinite."""


class LossModule(pl.LightningModule):
    def __init__(
        self,
        model: MemberMLP,
        loss: LossConfig,
        metrics: dict[str, tuple[MetricInput, Metric]],
        optimizer: dict[str, Any],
        batch_size: int,
        generators: list[torch.Generator],
        test: Batch,
        units: tuple[float, float] = (1.0, 0.0),
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.loss_fn = _plain(instantiate(loss.fn))
        self.from_logits = loss.from_logits
        self.targets = loss.targets
        self.metrics = metrics  # per epoch: name -> (what it takes, member-axis function)
        self.optimizer_cfg = optimizer
        self.batch_size = batch_size
        self.generators = generators
        self.test = test
        # Metrics see outputs and targets in the target's own units (value * scale + offset):
        # a table's regression target is standardized for training only.
        self.units = None if units == (1.0, 0.0) else units
        # One dict per finished epoch: "train/loss", "test/accuracy", ... -> tensor (members,)
        self.history: list[dict[str, torch.Tensor]] = []
        # Epoch (1-based) at which each member's loss first went non-finite; 0 = never.
        self.diverged_at = torch.zeros(model.members, dtype=torch.long)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return instantiate(self.optimizer_cfg, params=self.parameters())

    def _loss_input(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.from_logits else self.model.predict_from(logits)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return per_member(self.loss_fn(self._loss_input(logits), target))

    @torch.no_grad()
    def check_loss(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Call loss.fn on two rows before any run starts: a loss that refuses these targets,
        or reduces to one number (reduction: mean), fails here in one line, not in step one."""
        output = self._loss_input(self.model(x[:2]))
        target = y[:2].expand(self.model.members, *y[:2].shape)
        try:
            values = self.loss_fn(output, target)
        except Exception as error:
            raise refused("loss.fn", error) from error
        if values.shape[:2] != output.shape[:2]:
            raise ConfigError(
                f"loss.fn returned shape {tuple(values.shape)} for outputs of shape "
                f"{tuple(output.shape)}; it must return one loss per sample (or element), "
                "not reduce them: keep reduction: none"
            )

    def in_units(
        self, pred: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and targets in the target's own units (a table's scaled regression target)."""
        if self.units is None:
            return pred, target
        scale, offset = self.units
        return pred * scale + offset, target * scale + offset

    def scores(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-epoch metrics of activated outputs, in the target's units: {name: (members,)}."""
        prepared: dict[MetricInput, tuple[torch.Tensor, torch.Tensor]] = {}
        values = {}
        for name, (kind, metric) in self.metrics.items():
            if kind not in prepared:
                prepared[kind] = inputs(kind, pred, target, self.targets)
            values[name] = metric(*prepared[kind])
        return values

    def _scores(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.scores(*self.in_units(self.model.predict_from(logits), target))

    @torch.no_grad()
    def outputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's activated outputs on a split and the targets (member axis first),
        in the target's units: what the metric panel scores."""
        return self.in_units(
            self.model.predict_from(self.model(x)), y.expand(self.model.members, *y.shape)
        )

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss and per-epoch metrics of every member on one whole split: {name: (members,)}."""
        logits = self.model(x)
        target = y.expand(self.model.members, *y.shape)
        return {"loss": self._loss(logits, target), **self._scores(logits, target)}

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        n = x.shape[0]
        step = updater(self.optimizers().optimizer)  # the torch optimizer: no per-step wrapping
        order = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
        xs, ys = x[order], y[order]  # one gather per epoch; minibatches below are views
        # The raw outputs each minibatch saw before its update: the epoch's train loss and
        # metrics are computed from them once, not per step (Keras' batch-weighted mean).
        seen = torch.empty(self.model.members, n, self.model.sizes[-1])
        for start in range(0, n, self.batch_size):
            end = start + self.batch_size
            logits = self.model(xs[:, start:end])
            step(self._loss(logits, ys[:, start:end]).sum())  # members stay independent
            seen[:, start:end] = logits.detach()
        with torch.no_grad():
            train = {"loss": self._loss(seen, ys), **self._scores(seen, ys)}
        record = {f"train/{name}": value for name, value in train.items()}
        record.update({f"test/{k}": v for k, v in self.evaluate(*self.test).items()})
        self.history.append(record)
        bad = ~torch.isfinite(record["train/loss"]) & (self.diverged_at == 0)
        self.diverged_at[bad] = len(self.history)
        if bool((self.diverged_at > 0).all()):
            raise Diverged(
                f"training loss is {record['train/loss'].tolist()} at epoch {len(self.history)}; "
                "lower optimizer.lr"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Generator states make a resumed run shuffle exactly as the uninterrupted one. The
        # history goes in as one (epochs, members) tensor per key: pickling hundreds of
        # one-value tensors made each checkpoint cost more than ten epochs of training.
        checkpoint["losslab"] = {
            "generators": [g.get_state() for g in self.generators],
            "history": {
                key: torch.stack([row[key] for row in self.history])
                for key in (self.history[0] if self.history else {})
            },
            "diverged_at": self.diverged_at,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["losslab"]
        for generator, saved in zip(self.generators, state["generators"]):
            generator.set_state(saved)
        columns = state["history"]
        epochs = len(next(iter(columns.values()))) if columns else 0
        self.history = [{key: values[i] for key, values in columns.items()} for i in range(epochs)]
        self.diverged_at = state["diverged_at"]
