"""The data as the model sees it: the study's generated arrays (scaled as the study scales
them) or a user's table (src/tables.py, src/preprocess.py), split and encoded for the loss."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from src.config import DatasetConfig, ScalerFit, Scaling, Targets, Task
from src.preprocess import Preprocessing, scaler, split_rows


@dataclass
class Split:
    """Arrays as the model sees them: float32 inputs, targets encoded for the loss."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int  # 0 for regression
    # Table data: the fitted preprocessing (None for the study's arrays). Its scale and offset
    # turn regression outputs back into the target's own units for every reported metric.
    preprocessing: Preprocessing | None = None
    facts: dict[str, str] = field(default_factory=dict)  # for the run's tags
    record: dict[str, str] = field(default_factory=dict)  # MLflow's dataset entity fields

    @property
    def units(self) -> tuple[float, float]:
        """(scale, offset): a model output times scale plus offset is in the target's units."""
        if self.preprocessing is None:
            return 1.0, 0.0
        return self.preprocessing.scale, self.preprocessing.offset

    @property
    def n_inputs(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_outputs(self) -> int:
        """Width of the last layer, from the encoding: one column per class for one-hot and
        integer classes (even with two classes), one otherwise."""
        if self.y_train.ndim == 1:  # integer classes
            return self.n_classes
        return self.y_train.shape[1]

    def in_units(self, y: np.ndarray) -> np.ndarray:
        """Encoded targets in the target's own units (unchanged but for a scaled table target)."""
        scale, offset = self.units
        return y if (scale, offset) == (1.0, 0.0) else y * scale + offset

    @property
    def nonnegative(self) -> bool:
        """Every target is >= 0 in its own units (where msle applies)."""
        if self.n_classes:
            return False
        return bool(min(self.in_units(self.y_train).min(), self.in_units(self.y_test).min()) >= 0)

    def thinned(self, most: int = 5000) -> Split:
        """Every n-th row, at most ``most`` per side: a picture of a million rows costs seconds
        and copies of the data, and shows no more than one of five thousand."""
        step_train = max(1, len(self.x_train) // most)
        step_test = max(1, len(self.x_test) // most)
        return dataclasses.replace(
            self,
            x_train=self.x_train[::step_train],
            y_train=self.y_train[::step_train],
            x_test=self.x_test[::step_test],
            y_test=self.y_test[::step_test],
        )


def labels(y: np.ndarray) -> np.ndarray:
    """Targets as one value per row: class index for one-hot, the value otherwise."""
    return y.argmax(axis=1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1)


def _scale(values: np.ndarray, how: Scaling, fit_rows: np.ndarray | slice) -> np.ndarray:
    if how == Scaling.none:
        return values
    return scaler(how).fit(values[fit_rows]).transform(values)


def encode(labels: torch.Tensor, targets: Targets, n_classes: int) -> torch.Tensor:
    """Targets as a loss takes them, from class indices (or regression values): a column of
    floats (the values, {0, 1} or {-1, 1}), one-hot rows, or integer classes. Leading axes
    stay: the data module encodes a split, a head of a merged job re-encodes its members'."""
    if targets == Targets.index:
        return labels.long()
    if targets == Targets.onehot:
        return torch.nn.functional.one_hot(labels.long(), n_classes).float()
    values = 2 * labels - 1 if targets == Targets.signed else labels
    return values.float().unsqueeze(-1)


def _add_outliers(y: np.ndarray, cfg: DatasetConfig, train: np.ndarray) -> np.ndarray:
    """Push a fraction of targets (train rows only, unless in_test) by +-scale, at fixed rows."""
    fraction = cfg.outliers.fraction
    if fraction == 0.0:
        return y
    rng = np.random.default_rng(cfg.generator.get("random_state", 0))
    rows = np.arange(len(y)) if cfg.outliers.in_test else train
    hit = rng.choice(rows, size=round(fraction * len(rows)), replace=False)
    y = y.copy()
    y[hit] += cfg.outliers.scale * rng.choice([-1.0, 1.0], size=len(hit))
    return y


def make_split(cfg: DatasetConfig, targets: Targets) -> Split:
    """The data as the model sees it, targets encoded for the loss."""
    if cfg.is_table:
        return _table_split(cfg, targets)
    return _study_split(cfg, targets)


def _study_split(cfg: DatasetConfig, targets: Targets) -> Split:
    """Generate, scale (on all rows as the study does, or train rows only), split (the first
    rows train, as the study does, unless dataset.split says otherwise) and encode."""
    generator = OmegaConf.to_container(OmegaConf.create(cfg.generator))
    x, y = instantiate(generator)
    real = targets == Targets.real
    kind = cfg.split_for(Task(cfg.task.value))
    train, test = split_rows(cfg, len(x), kind, y)
    fit_rows = slice(None) if cfg.scaler_fit == ScalerFit.all else train
    x = _scale(x, cfg.scale_x, fit_rows)
    n_classes = 0
    if real:
        y = _scale(y.reshape(-1, 1), cfg.scale_y, fit_rows).ravel()
        y = _add_outliers(y, cfg, train)
    else:
        n_classes = int(y.max()) + 1
    split = _encoded(x[train], y[train], x[test], y[test], targets, n_classes)
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes())
    columns = [*(f"x{i}" for i in range(x.shape[1])), "target"]
    colspec = [{"type": "double", "name": name, "required": True} for name in columns]
    arguments = {key: value for key, value in cfg.generator.items() if key != "_target_"}
    source = {"tags": {"mlflow.source.name": f"{cfg.generator['_target_']}({arguments})"}}
    split.record = _record(cfg, digest.hexdigest(), "code", source, colspec, len(x))
    return split


def _table_split(cfg: DatasetConfig, targets: Targets) -> Split:
    from src import preprocess, tables

    table = tables.inspect(cfg)
    prepared = preprocess.prepare(cfg, table)
    split = _encoded(
        prepared.x_train,
        prepared.y_train,
        prepared.x_test,
        prepared.y_test,
        targets,
        len(table.classes),
    )
    split.preprocessing = prepared.preprocessing
    split.facts = {
        "dataset.source": table.source,
        "dataset.rows": str(len(table.frame)),
        "dataset.rows_dropped": str(table.dropped),
        "dataset.missing_imputed": str(sum(table.missing.values())),
        "dataset.split": cfg.split_for(table.task).value,
        **({"dataset.sha256": table.sha256} if table.sha256 else {}),
    }
    frame = table.frame
    if table.sha256:
        digest, kind, source = table.sha256, "local", {"uri": table.source}
    else:
        digest, kind = pd_hash(frame), "code"
        made_by = f"{table.source}({cfg.generator.get('name', '')})"
        source = {"tags": {"mlflow.source.name": made_by}}
    colspec = json.loads(tables.schema(frame))["mlflow_colspec"]
    split.record = _record(cfg, digest, kind, source, colspec, len(frame))
    return split


def pd_hash(frame: Any) -> str:
    """A digest of a DataFrame's values (pandas' row hashes), for data that has no file."""
    import pandas as pd

    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(rows.tobytes()).hexdigest()


def _record(
    cfg: DatasetConfig, digest: str, kind: str, source: dict, colspec: list[dict], rows: int
) -> dict[str, str]:
    """The fields of MLflow's Dataset entity: the UI's Dataset column shows name and digest."""
    return {
        "name": cfg.label,
        "digest": digest[:8],
        "source_type": kind,
        "source": json.dumps(source),
        "schema": json.dumps({"mlflow_colspec": colspec}),
        "profile": json.dumps({"num_rows": rows, "num_elements": rows * len(colspec)}),
    }


def _encoded(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    targets: Targets,
    n_classes: int,
) -> Split:
    return Split(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=encode(torch.tensor(np.asarray(y_train)), targets, n_classes).numpy(),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=encode(torch.tensor(np.asarray(y_test)), targets, n_classes).numpy(),
        n_classes=n_classes,
    )


class StudyDataModule(pl.LightningDataModule):
    """Holds the whole split as tensors. One training "batch" is the whole train set: the
    module shuffles it per member and steps through minibatches itself (see module.py), which
    keeps Lightning's per-step bookkeeping out of the inner loop; one validation batch is the
    whole test set."""

    def __init__(self, cfg: DatasetConfig, targets: Targets) -> None:
        super().__init__()
        self.cfg = cfg
        self.split = make_split(cfg, targets)
        as_tensor = torch.from_numpy
        self.train = (as_tensor(self.split.x_train), as_tensor(self.split.y_train))
        self.test = (as_tensor(self.split.x_test), as_tensor(self.split.y_test))

    def train_dataloader(self) -> WholeSplit:
        return WholeSplit(self.train)

    def val_dataloader(self) -> WholeSplit:
        """The test set, scored after each epoch in Lightning's validation phase (the study
        reports it per epoch, as Keras' validation_data)."""
        return WholeSplit(self.test)


class WholeSplit:
    """A loader that yields one batch, the whole split: one Lightning step per epoch."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.batch = batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield self.batch

    def __len__(self) -> int:
        return 1
