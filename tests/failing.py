"""Targets that fail on purpose, for the failure-isolation tests: one raises inside training
(after the job's MLflow run exists), one while making the data (before any run exists), and a
Lightning callback that makes the Trainer fail at its first step."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


def explode(output: Any, target: Any, **kwargs: Any) -> Any:
    """A loss that passes the start-up probe (called without gradients, before any run starts)
    and fails in the first training step."""
    if not torch.is_grad_enabled():
        return torch.zeros_like(output)
    raise RuntimeError("deliberate failure inside training (tests.failing.explode)")


def no_data(**kwargs: Any) -> Any:
    raise RuntimeError("deliberate failure before tracking (tests.failing.no_data)")


class FailAtFirstStep(pl.Callback):
    """The Trainer fails as its first training batch starts (the runs exist by then)."""

    def on_train_batch_start(self, *args: Any) -> None:
        raise RuntimeError("deliberate failure at the first step (tests.failing.FailAtFirstStep)")
