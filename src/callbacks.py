"""Lightning callbacks: an epoch progress bar, and the bridge from per-epoch history to MLflow."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from tqdm.auto import tqdm

from src.module import LossModule
from src.tracking import RunSet


class EpochProgressBar(pl.Callback):
    """One bar for the whole run, advancing per epoch (a Lightning step here is an epoch)."""

    def __init__(self, description: str, metric: str) -> None:
        self.description = description
        self.metric = metric
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.bar = tqdm(
            total=trainer.max_epochs,
            initial=trainer.current_epoch,
            desc=self.description,
            unit="epoch",
            dynamic_ncols=True,
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: LossModule) -> None:
        last = pl_module.history[-1]
        shown = ("train/loss", "test/loss", f"train/{self.metric}", f"test/{self.metric}")
        self.bar.set_postfix({key: f"{last[key].median().item():.4f}" for key in shown})
        self.bar.update(1)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MlflowHistory(pl.Callback):
    """Buffers each epoch's metrics (step = epoch) and sends them in batches: every
    ``flush_every`` epochs if > 0, and always when training ends or stops on an error."""

    def __init__(self, runs: RunSet, flush_every: int) -> None:
        self.runs = runs
        self.flush_every = flush_every
        self.sent = 0  # epochs already buffered

    def _buffer(self, pl_module: LossModule) -> None:
        for epoch, record in enumerate(pl_module.history[self.sent :], start=self.sent + 1):
            self.runs.add_metrics(epoch, {key: value.tolist() for key, value in record.items()})
        self.sent = len(pl_module.history)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: LossModule) -> None:
        if self.flush_every and len(pl_module.history) % self.flush_every == 0:
            self._buffer(pl_module)
            self.runs.flush()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: LossModule) -> None:
        self.sent = len(pl_module.history)  # a resumed run has sent its earlier epochs

    def on_fit_end(self, trainer: pl.Trainer, pl_module: LossModule) -> None:
        self._buffer(pl_module)
        self.runs.flush()

    def on_exception(self, trainer: pl.Trainer, pl_module: LossModule, exception: Any) -> None:
        self._buffer(pl_module)
        self.runs.flush()
