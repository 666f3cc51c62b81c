"""Lightning plumbing between a job and its MLflow runs: the one-line epoch progress bar,
the bridge from per-epoch history to the runs, and a Lightning logger so that what callbacks
log (lr_monitor, a user's own) reaches every member's run."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only
from tqdm.auto import tqdm

from src.metrics import plain
from src.module import Diverged, LossModule
from src.tracking import RunSet

# In every checkpoint: the runs it belongs to and the epochs it has trained.
TRACKING_KEY = "losslab_tracking"
BAR_WIDTH = 80  # at most: a progress bar that fits an 80-column terminal


class EpochBar(ProgressBar):
    """Lightning's progress bar for a run that is one Lightning batch per epoch: one line for
    the whole run, advancing per epoch, showing the primary test metric (the members' median
    from ``callback_metrics``). Lightning's TQDMProgressBar would show a bar per epoch with
    one batch in it, and a second one for each validation."""

    def __init__(self, name: str, metric: str) -> None:
        """``metric``: the primary one; its median is read from the module's history, so the
        bar costs no ``self.log`` (see LossModule.log_to_lightning)."""
        super().__init__()
        self.name = name if len(name) <= 24 else name[:23] + "…"
        self.key = f"test/{metric}"
        self.bar: tqdm | None = None
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        columns = min(shutil.get_terminal_size((BAR_WIDTH, 24)).columns, BAR_WIDTH)
        self.bar = tqdm(
            total=trainer.max_epochs,
            initial=trainer.current_epoch,
            desc=self.name,
            unit="epoch",
            ncols=columns,
            disable=not self._enabled,
            bar_format=self._format(""),
        )

    @staticmethod
    def _format(shown: str) -> str:
        return "{desc} {n_fmt}/{total_fmt} |{bar}| " + shown + " [{elapsed}<{remaining}]"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: LossModule) -> None:
        value = pl_module.history[-1].get(self.key)
        if value is not None:
            shown = f"{self.key}={float(value.float().nanmedian()):.4g}"
            self.bar.bar_format = self._format(shown)
        self.bar.update(1)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, error: Any) -> None:
        self._close()  # before the error line is printed (teardown is not called then)


class RunSetLogger(Logger):
    """Lightning's logger interface onto the job's runs. losslab's own per-member metrics go
    from the module's history (MlflowHistory); this carries what callbacks log through
    ``trainer.logger`` (e.g. LearningRateMonitor), the same value into every member's run at
    the current epoch (MLflow step = epoch, 1-based). Its ``save_dir`` makes a
    ModelCheckpoint without a ``dirpath`` write to ``<output dir>/checkpoints``."""

    def __init__(self, output_dir: Path) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.runs: RunSet | None = None  # attached once the runs exist
        self.epoch: Callable[[], int] = lambda: 0

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.output_dir)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.runs is not None:
            each = {key: [float(value)] * self.runs.members for key, value in metrics.items()}
            self.runs.add_metrics(self.epoch(), each)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: every run already holds the whole resolved config as params."""


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

    def _buffer(self, pl_module: LossModule, stopped: bool = False) -> None:
        """Buffer the epochs not yet buffered. A run ``stopped`` between an epoch's training
        and its test scores leaves that epoch out: a resume recomputes it whole, and would
        otherwise skip its test scores (the store's last train/loss step says what it holds)."""
        history = pl_module.history
        if stopped and len(history) > 1 and set(history[-1]) < set(history[0]):
            history = history[:-1]
        for epoch, record in enumerate(history[self.buffered :], self.buffered + 1):
            values = {
                key: pl_module.for_runs(key.split("/")[-1], plain(value))
                for key, value in record.items()
            }
            self.runs.add_metrics(epoch, values)
        self.buffered = max(self.buffered, len(history))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: LossModule) -> None:
        self.runs.check()  # runs that could not be started stop the job now
        self._buffer(pl_module)
        if self.flush_every and len(pl_module.history) % self.flush_every == 0:
            self.runs.flush()

    def on_exception(self, trainer: pl.Trainer, pl_module: LossModule, exception: Any) -> None:
        # a diverged epoch keeps its non-finite train loss: it is the reason the run failed
        self._buffer(pl_module, stopped=not isinstance(exception, Diverged))
        self.runs.flush()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # `resume=<checkpoint>` continues these runs.
        checkpoint[TRACKING_KEY] = {
            "run_ids": list(self.runs.run_ids),
            "epochs": len(pl_module.history),
        }
