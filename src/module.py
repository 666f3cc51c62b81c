"""The LightningModule: a member MLP, its loss and metrics, trained as the study trains.

One Lightning training step is one epoch: the module shuffles the train set for each member
with that member's own generator and steps SGD through minibatches itself (manual
optimization), then scores the test set, as Keras' fit(validation_data=...) does. Per-step
Lightning bookkeeping and host syncs stay out of the inner loop; metrics accumulate on the
device and are read once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from src.config import LossConfig
from src.losses import per_member
from src.metrics import Metric
from src.model import MemberMLP

Batch = tuple[torch.Tensor, torch.Tensor]


class Diverged(RuntimeError):
    """Every member's training loss became NaN or infinite."""


class LossModule(pl.LightningModule):
    def __init__(
        self,
        model: MemberMLP,
        loss: LossConfig,
        metrics: dict[str, Metric],
        optimizer: dict[str, Any],
        batch_size: int,
        generators: list[torch.Generator],
        test: Batch,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = instantiate(loss.fn)
        self.from_logits = loss.from_logits
        self.metrics = metrics
        self.optimizer_cfg = optimizer
        self.batch_size = batch_size
        self.generators = generators
        self.test = test
        # One dict per finished epoch: "train/loss", "test/accuracy", ... -> tensor (members,)
        self.history: list[dict[str, torch.Tensor]] = []
        # Epoch (1-based) at which each member's loss first went non-finite; 0 = never.
        self.diverged_at = torch.zeros(model.members, dtype=torch.long)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return instantiate(self.optimizer_cfg, params=self.parameters())

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = logits if self.from_logits else self.model.predict_from(logits)
        return per_member(self.loss_fn(output, target))

    def _scores(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = self.model.predict_from(logits)
        return {name: metric(pred, target) for name, metric in self.metrics.items()}

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss and metrics of every member on one whole split: {name: (members,)}."""
        logits = self.model(x)
        target = y.expand(self.model.members, *y.shape)
        return {"loss": self._loss(logits, target), **self._scores(logits, target)}

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        n = x.shape[0]
        optimizer = self.optimizers().optimizer  # the torch optimizer: no per-step wrapping
        order = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
        sums: dict[str, torch.Tensor] = {}
        for start in range(0, n, self.batch_size):
            rows = order[:, start : start + self.batch_size]
            xb, yb = x[rows], y[rows]
            logits = self.model(xb)
            losses = self._loss(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # members are independent: the sum keeps their gradients apart
            optimizer.step()
            # Like Keras' history: batch-size-weighted mean over the epoch, before each update.
            with torch.no_grad():
                scores = {"loss": losses.detach(), **self._scores(logits.detach(), yb)}
                for name, value in scores.items():
                    sums[name] = sums.get(name, 0.0) + value * rows.shape[1]
        record = {f"train/{name}": total / n for name, total in sums.items()}
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
        # Generator states make a resumed run shuffle exactly as the uninterrupted one.
        checkpoint["losslab"] = {
            "generators": [g.get_state() for g in self.generators],
            "history": self.history,
            "diverged_at": self.diverged_at,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["losslab"]
        for generator, saved in zip(self.generators, state["generators"]):
            generator.set_state(saved)
        self.history = state["history"]
        self.diverged_at = state["diverged_at"]
