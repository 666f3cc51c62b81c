"""Lightning callbacks: an epoch progress bar, the bridge from per-epoch history to MLflow,
and the periodic checkpoint that `resume=` continues from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from tqdm.auto import tqdm

from src.module import LossModule
from src.tracking import RunSet

# In every checkpoint: the runs it belongs to and the epochs it has trained.
TRACKING_KEY = "losslab_tracking"


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

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, error: Any) -> None:
        self._close()  # before the error line is printed (teardown is not called then)


class MlflowHistory(pl.Callback):
    """Hands each epoch's metrics (step = epoch) to the runs, which send them in full
    batches; the rest goes every ``flush_every`` epochs if > 0, and when training stops on an
    error. When training ends it stays buffered: the job sends it after its models.

    ``logged`` epochs are already in the runs (a resumed run): they are not sent again. A run
    resumed from epoch C after being killed at epoch E > C recomputes epochs C+1..E; the store
    keeps the values sent before the kill (the same numbers: training is deterministic)."""

    def __init__(self, runs: RunSet, flush_every: int, logged: int = 0) -> None:
        self.runs = runs
        self.flush_every = flush_every
        self.buffered = logged  # epochs already buffered or in the store

    def _buffer(self, pl_module: LossModule) -> None:
        """Buffer the epochs not yet buffered."""
        for epoch, record in enumerate(pl_module.history[self.buffered :], self.buffered + 1):
            self.runs.add_metrics(epoch, {key: value.tolist() for key, value in record.items()})
        self.buffered = max(self.buffered, len(pl_module.history))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: LossModule) -> None:
        self._buffer(pl_module)
        if self.flush_every and len(pl_module.history) % self.flush_every == 0:
            self.runs.flush()

    def on_exception(self, trainer: pl.Trainer, pl_module: LossModule, exception: Any) -> None:
        self._buffer(pl_module)
        self.runs.flush()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # `resume=<checkpoint>` continues these runs.
        checkpoint[TRACKING_KEY] = {
            "run_ids": list(self.runs.run_ids),
            "epochs": len(pl_module.history),
        }


class EpochCheckpoint(pl.Callback):
    """Writes ``last.ckpt`` every ``every`` epochs and when training ends. Lightning's
    ModelCheckpoint counts optimizer steps, which never advance here (the module steps its
    torch optimizer itself), so it would only save at the very end. The file is replaced
    atomically: a kill while writing leaves the previous checkpoint whole."""

    def __init__(self, folder: Path, every: int) -> None:
        self.path = folder / "last.ckpt"
        self.every = every

    def _save(self, trainer: pl.Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".part")
        trainer.save_checkpoint(partial)
        os.replace(partial, self.path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)
