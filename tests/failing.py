"""Targets that fail on purpose, for the failure-isolation test: one raises inside training
(after the job's MLflow run exists), one while making the data (before any run exists)."""

from __future__ import annotations

from typing import Any

import torch


def explode(output: Any, target: Any, **kwargs: Any) -> Any:
    """A loss that passes the start-up probe (called without gradients, before any run starts)
    and fails in the first training step."""
    if not torch.is_grad_enabled():
        return torch.zeros_like(output)
    raise RuntimeError("deliberate failure inside training (tests.failing.explode)")


def no_data(**kwargs: Any) -> Any:
    raise RuntimeError("deliberate failure before tracking (tests.failing.no_data)")
