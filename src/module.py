"""The LightningModule: a member MLP, its losses (src/heads.py) and metrics, trained as the
study trains.

One Lightning training step is one epoch: the module shuffles the train set for each member
with that member's own generator and steps through the minibatches itself (manual
optimization); Lightning's validation phase then scores the test set, in eval mode and without
gradients, as Keras' fit(validation_data=...) does. Per-step Lightning bookkeeping, metric work
and host syncs stay out of the inner loop: a step is a forward pass, the loss, gradients, the
per-member clip and the update (src/optim.py); train metrics are computed once per epoch from
the outputs the steps saw. Lightning still sees every update (``global_step``) and each epoch's
metrics through ``log_dict``: the members' medians, what callbacks such as EarlyStopping and
ModelCheckpoint monitor. Every member's own values stay in ``history`` (and MLflow).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from src.config import ConfigError, Targets, refused
from src.heads import Head
from src.losses import per_member
from src.model import MemberMLP
from src.optim import Clip, updater

Batch = tuple[torch.Tensor, torch.Tensor]


class Diverged(RuntimeError):
    """Every member's training loss became NaN or infinite."""


class LossModule(pl.LightningModule):
    def __init__(
        self,
        model: MemberMLP,
        heads: list[Head],
        targets: Targets,
        optimizer: dict[str, Any],
        batch_size: int,
        generators: list[torch.Generator],
        units: tuple[float, float] = (1.0, 0.0),
        scheduler: dict[str, Any] | None = None,
        clip: Clip | None = None,
        limit_batches: float = 1.0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        # One head per loss the job trains, each on its run of members (src/heads.py).
        self.heads = heads
        self.targets = targets  # how the data module encodes them: the first loss's way
        self.per_head = model.members // len(heads)
        # Members whose loss does not report a per-epoch metric: their value of it is NaN
        # here and left out of their runs (for_runs).
        members = range(model.members)
        named = dict.fromkeys(name for head in heads for name in head.metrics)
        absent = {
            name: {k for h in heads if name not in h.metrics for k in members[h.members]}
            for name in named
        }
        self.absent = {name: lacking for name, lacking in absent.items() if lacking}
        self.optimizer_cfg = optimizer
        self.batch_size = batch_size
        self.generators = generators
        self.scheduler_cfg = scheduler  # {"fn": partial config, "monitor": key or None}
        self.clip = clip
        self.limit_batches = limit_batches
        # Whether anything reads Lightning's callback_metrics (a monitoring callback, a progress
        # bar, a user's callback): self.log costs about 0.75 ms a key an epoch, 30-40% of a
        # study fit, so a job whose callbacks read nothing skips it (set by build_trainer).
        self.log_to_lightning = True
        # Metrics see outputs and targets in the target's own units (value * scale + offset):
        # a table's regression target is standardized for training only.
        self.units = None if units == (1.0, 0.0) else units
        # One dict per finished epoch: "train/loss", "test/accuracy", ... -> tensor (members,)
        self.history: list[dict[str, torch.Tensor]] = []
        # Epoch (1-based) at which each member's loss first went non-finite; 0 = never.
        self.diverged_at = torch.zeros(model.members, dtype=torch.long)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.optimizer_cfg, params=self.parameters())
        if self.scheduler_cfg is None:
            return optimizer
        # Under manual optimization Lightning does not step schedulers: on_validation_epoch_end
        # does, once per epoch, before this epoch's checkpoint is written.
        scheduler = instantiate(self.scheduler_cfg["fn"])(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """Eval mode (no dropout, batch norm's running statistics) and no gradients, restoring
        the mode after: probes and final scores must not move a member's random stream."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def head_index(self, member: int) -> int:
        """The index of the head that trains ``member``."""
        return member // self.per_head

    def encoded(self, target: torch.Tensor) -> list[torch.Tensor]:
        """Targets with the member axis, as each head's loss takes them: one tensor per head
        (the first head's loss is the one the data is encoded for)."""
        if len(self.heads) == 1:
            return [target]
        return [head.encode(target[head.members]) for head in self.heads]

    def _loss(self, logits: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """Each member's loss (members,), by its own head's loss function."""
        if len(self.heads) == 1:
            head = self.heads[0]
            return per_member(head.fn(head.loss_input(logits), targets[0]))
        # Each loss on its members' rows (split: views, one autograd node; a slice per head
        # made two and took longer), the values joined before one mean: a mean per loss and
        # a join of the means took 20% longer (K=30).
        chunks = logits.split(self.per_head)
        return per_member(
            torch.cat(
                [
                    head.fn(head.loss_input(chunk), target)
                    for head, chunk, target in zip(self.heads, chunks, targets)
                ]
            )
        )

    def check_loss(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Call each loss.fn on two rows before any run starts: a loss that refuses these
        targets, or reduces to one number (reduction: mean), fails here in one line, not in
        step one."""
        targets = self.encoded(y[:2].expand(self.model.members, *y[:2].shape))
        with self.scoring():
            logits = self.model(x[:2])
            for head, target in zip(self.heads, targets):
                output = head.loss_input(logits[head.members])
                try:
                    values = head.fn(output, target)
                except Exception as error:
                    raise refused(f"{head.where}.fn", error) from error
                if values.shape[:2] != output.shape[:2]:
                    raise ConfigError(
                        f"{head.where}.fn returned shape {tuple(values.shape)} for outputs of "
                        f"shape {tuple(output.shape)}; it must return one loss per sample (or "
                        "element), not reduce them: keep reduction: none"
                    )

    def in_units(
        self, pred: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and targets in the target's own units (a table's scaled regression target)."""
        if self.units is None:
            return pred, target
        scale, offset = self.units
        return pred * scale + offset, target * scale + offset

    def _scores(self, logits: torch.Tensor, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each head's per-epoch metrics on its members: {name: (members,)}, NaN for members
        whose loss does not report that metric."""
        if len(self.heads) == 1:
            head = self.heads[0]
            return head.scores(*self.in_units(head.activate(logits), targets[0]))
        values: dict[str, torch.Tensor] = {}
        for head, target in zip(self.heads, targets):
            pred = head.activate(logits[head.members])
            for name, value in head.scores(*self.in_units(pred, target)).items():
                if name not in values:
                    values[name] = value.new_full((self.model.members,), float("nan"))
                values[name][head.members] = value
        return values

    def for_runs(self, name: str, values: list[float]) -> list[float | None]:
        """Each member's value of per-epoch metric ``name`` for its run: None where the
        member's loss does not report it (the run trained alone would not have it)."""
        if name not in self.absent:
            return values
        return [None if k in self.absent[name] else v for k, v in enumerate(values)]

    @torch.no_grad()
    def outputs(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each head's members' activated outputs on a split and their targets as its loss
        takes them (member axis first), in the target's units: what the metric panel scores."""
        logits = self.model(x.to(self.model.weights[0].dtype))  # 64-true trains in float64
        targets = self.encoded(y.expand(self.model.members, *y.shape))
        return [
            self.in_units(head.activate(logits[head.members]), target)
            for head, target in zip(self.heads, targets)
        ]

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss and per-epoch metrics of every member on one whole split: {name: (members,)}."""
        logits = self.model(x.to(self.model.weights[0].dtype))
        targets = self.encoded(y.expand(self.model.members, *y.shape))
        return {"loss": self._loss(logits, targets), **self._scores(logits, targets)}

    def _steps(self, n: int) -> int:
        """Minibatches per epoch: all of them, or trainer.limit_train_batches of them."""
        total = -(-n // self.batch_size)
        limit = self.limit_batches
        if limit == 1:
            return total
        return max(1, min(total, int(limit if limit > 1 else total * limit)))

    def _count_steps(self, steps: int) -> None:
        """Advance ``trainer.global_step`` by the updates taken. Lightning counts a step when
        ``LightningOptimizer.step`` runs; the update here calls torch's functional SGD on the
        raw optimizer (src/optim.py) because the wrapper costs as much as a small model's
        update, so it advances the counter Lightning's manual loop advances."""
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        for _ in range(steps):
            progress.increment_ready()
            progress.increment_completed()

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        n = x.shape[0]
        optimizer = self.optimizers().optimizer  # the torch optimizer: no per-step wrapping
        step = updater(optimizer, self.clip)
        order = torch.stack([torch.randperm(n, generator=g) for g in self.generators]).to(x.device)
        xs = x[order]  # one gather per epoch; minibatches below are views
        ys = self.encoded(y[order])
        steps = self._steps(n)
        seen_rows = min(n, steps * self.batch_size)
        # The raw outputs each minibatch saw before its update: the epoch's train loss and
        # metrics are computed from them once, not per step (Keras' batch-weighted mean).
        seen = torch.empty(self.model.members, seen_rows, self.model.sizes[-1], device=x.device)
        for start in range(0, seen_rows, self.batch_size):
            end = start + self.batch_size
            logits = self.model(xs[:, start:end])
            batch = [target[:, start:end] for target in ys]
            step(self._loss(logits, batch).sum())  # members stay independent
            seen[:, start:end] = logits.detach()
        self._count_steps(steps)
        ys = [target[:, :seen_rows] for target in ys]
        with torch.no_grad():
            train = {"loss": self._loss(seen, ys), **self._scores(seen, ys)}
        record = {f"train/{name}": value for name, value in train.items()}
        if self.scheduler_cfg is not None:  # the rate this epoch trained with
            rate = float(optimizer.param_groups[0]["lr"])
            record["lr"] = torch.full((self.model.members,), rate, dtype=torch.float64)
        self.history.append(record)
        self._log_medians(record)
        bad = ~torch.isfinite(record["train/loss"].cpu()) & (self.diverged_at == 0)
        self.diverged_at[bad] = len(self.history)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """The test set, scored each epoch (Lightning has set eval mode and no_grad)."""
        record = {f"test/{k}": v for k, v in self.evaluate(*batch).items()}
        self.history[-1].update(record)
        self._log_medians(record)
        if bool((self.diverged_at > 0).all()):  # after the test score: the epoch is whole
            loss = self.history[-1]["train/loss"].tolist()
            raise Diverged(
                f"training loss is {loss} at epoch {len(self.history)}; lower optimizer.lr"
            )

    def on_validation_epoch_end(self) -> None:
        """Step the scheduler once per epoch, before callbacks checkpoint the epoch."""
        if self.scheduler_cfg is None or self.trainer.sanity_checking:
            return
        scheduler = self.lr_schedulers()
        monitor = self.scheduler_cfg["monitor"]
        with warnings.catch_warnings():
            # torch checks that optimizer.step() ran first; the fast update calls torch's
            # functional sgd instead (src/optim.py), after which this step does come.
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
            if monitor is None:
                scheduler.step()
            else:
                scheduler.step(float(self.history[-1][monitor].float().nanmedian()))

    def _log_medians(self, record: dict[str, torch.Tensor]) -> None:
        """The members' medians into Lightning's callback_metrics (what callbacks monitor);
        each member's value goes to MLflow from ``history``, so not to a Lightning logger."""
        if not self.log_to_lightning:
            return
        medians = {key: value.float().nanmedian() for key, value in record.items()}
        self.log_dict(medians, on_step=False, on_epoch=True, logger=False, batch_size=1)

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
