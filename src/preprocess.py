"""A table's rows as model inputs, the scikit-learn way: split first, then a ``Pipeline`` with
a ``ColumnTransformer`` (numbers imputed and scaled, categories imputed and one-hot encoded,
unknown categories ignored, dates turned into numbers by src/date_features.py) and the
target's scaler or label encoding, all fit on the train rows only. The fitted pieces travel
with the logged model (``Preprocessing``), so predictions start from raw rows and end in the
target's own units and class names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

from src.config import ConfigError, DatasetConfig, Scaling, SplitKind, Task
from src.date_features import DateFeatures, parse
from src.tables import Table

FEATURES_FILE = "features.joblib"  # the fitted feature Pipeline (scikit-learn, joblib)
TARGET_FILE = "target.json"  # the target's column, task, classes and units


def scaler(how: Scaling) -> Any:
    """A fresh scikit-learn scaler for ``how`` ("passthrough" for none)."""
    return {
        Scaling.standard: StandardScaler,
        Scaling.minmax: MinMaxScaler,
        Scaling.none: lambda: "passthrough",
    }[how]()


def split_rows(
    cfg: DatasetConfig, n: int, kind: SplitKind, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the train and test parts: the first rows (ordered, as the study), a
    seeded shuffle, or a seeded shuffle that keeps each class's share (stratified); with
    ``dataset.folds=K``, fold ``dataset.fold`` of a K-fold split made the same way."""
    rows = np.arange(n)
    stratify = labels if kind == SplitKind.stratified else None
    if cfg.folds > 1:
        shuffle = kind != SplitKind.ordered
        seed = cfg.split_seed if shuffle else None
        kfold = StratifiedKFold if stratify is not None else KFold
        splitter = kfold(n_splits=cfg.folds, shuffle=shuffle, random_state=seed)
        return list(splitter.split(rows, stratify))[cfg.fold or 0]
    n_train = cfg.train_size(n)
    if kind == SplitKind.ordered:
        return rows[:n_train], rows[n_train:]
    train, test = train_test_split(
        rows, train_size=n_train, random_state=cfg.split_seed, shuffle=True, stratify=stratify
    )
    return train, test


def feature_pipeline(table: Table, cfg: DatasetConfig) -> Pipeline:
    """The table's columns as model inputs: numbers, categories and dates each their way."""
    numbers = make_pipeline(SimpleImputer(strategy="median"), scaler(cfg.scale_x))
    categories = make_pipeline(
        SimpleImputer(strategy="most_frequent"),
        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
    )
    dates = make_pipeline(
        DateFeatures(cfg.date_format), SimpleImputer(strategy="median"), scaler(cfg.scale_x)
    )
    columns = ColumnTransformer(
        [
            ("numeric", numbers, table.numeric),
            ("categorical", categories, table.categorical),
            ("dates", dates, table.dates),
        ],
        remainder="drop",  # extra columns at predict time are ignored
    )
    return Pipeline([("columns", columns)])


@dataclass
class Preprocessing:
    """What turns raw rows into model inputs and model outputs back into the target's units:
    the fitted feature pipeline, and the target's column, task, classes and affine unit map
    (``value = output * scale + offset``; 1 and 0 when the target was not scaled)."""

    pipeline: Pipeline
    target: str
    task: Task
    features: list[str]
    classes: list[Any]
    scale: float = 1.0
    offset: float = 0.0

    def save(self, folder: Path) -> Path:
        """``features.joblib`` and ``target.json`` in ``folder`` (logged as ``preprocessing/``)."""
        import joblib

        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.pipeline, folder / FEATURES_FILE)
        facts = {
            "target": self.target,
            "task": self.task.value,
            "features": self.features,
            "classes": [_plain(c) for c in self.classes],
            "scale": self.scale,
            "offset": self.offset,
        }
        (folder / TARGET_FILE).write_text(json.dumps(facts, indent=2) + "\n")
        return folder

    def check(self, frame: Any, where: str) -> None:
        """Values the fitted pipeline would not read as training did, named in one line before
        any prediction: text in a numeric column (scikit-learn fails on it), a date that does
        not read as the training's dates did (it would be imputed without a word)."""
        import pandas as pd

        columns = {
            kind: names for kind, _, names in self.pipeline.named_steps["columns"].transformers_
        }
        for name in columns.get("numeric", []):
            values = frame[name]
            if pd.api.types.is_numeric_dtype(values.dtype):
                continue
            bad = values[values.notna() & pd.to_numeric(values, errors="coerce").isna()]
            if len(bad):
                raise ConfigError(
                    f"{where}: column '{name}' holds {len(bad)} value(s) that are not numbers "
                    f"({_first(bad)}); the run trained on numbers"
                )
        if "dates" not in columns:
            return
        dates = self.pipeline.named_steps["columns"].named_transformers_["dates"][0]
        for name in columns["dates"]:
            values = frame[name]
            bad = values[values.notna() & parse(values, dates.date_format).isna()]
            if len(bad):
                how = (
                    f"dataset.date_format={dates.date_format}" if dates.date_format else "ISO 8601"
                )
                raise ConfigError(
                    f"{where}: column '{name}' holds {len(bad)} value(s) that are not dates as "
                    f"the run read them ({how}; {_first(bad)})"
                )

    @classmethod
    def load(cls, folder: Path) -> Preprocessing:
        import joblib

        facts = json.loads((folder / TARGET_FILE).read_text())
        return cls(
            pipeline=joblib.load(folder / FEATURES_FILE),
            target=facts["target"],
            task=Task(facts["task"]),
            features=facts["features"],
            classes=facts["classes"],
            scale=facts["scale"],
            offset=facts["offset"],
        )


def _first(bad: Any) -> str:
    """The first of a column's unreadable values, and where it is."""
    return f"first: {bad.iloc[0]!r}, in data row {bad.index[0] + 1}"


def _plain(value: Any) -> Any:
    """numpy scalars as JSON values."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class Prepared:
    """A table split and transformed: float32 inputs, targets as scaled values (regression)
    or class indices, and the fitted preprocessing."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    preprocessing: Preprocessing


def prepare(cfg: DatasetConfig, table: Table) -> Prepared:
    """Split the table's rows, then fit the preprocessing on the train rows only."""
    frame = table.frame
    target = frame[cfg.target].to_numpy()
    kind = cfg.split_for(table.task)
    if table.task == Task.regression:
        values = target.astype(np.float64)
        train, test = split_rows(cfg, len(frame), kind)
        target_scaler = scaler(cfg.scale_y)
        if target_scaler == "passthrough":
            scale, offset = 1.0, 0.0
            y = values
        else:
            target_scaler.fit(values[train].reshape(-1, 1))
            y = target_scaler.transform(values.reshape(-1, 1)).ravel()
            offset = float(target_scaler.inverse_transform([[0.0]])[0, 0])
            scale = float(target_scaler.inverse_transform([[1.0]])[0, 0]) - offset
    else:
        index = {label: i for i, label in enumerate(table.classes)}
        y = np.array([index[label] for label in target], dtype=np.int64)
        train, test = split_rows(cfg, len(frame), kind, y)
        scale, offset = 1.0, 0.0
    pipeline = feature_pipeline(table, cfg)
    x_train = pipeline.fit_transform(frame.iloc[train])
    x_test = pipeline.transform(frame.iloc[test])
    preprocessing = Preprocessing(
        pipeline=pipeline,
        target=cfg.target,
        task=table.task,
        features=table.features,
        classes=table.classes,
        scale=scale,
        offset=offset,
    )
    return Prepared(x_train, y[train], x_test, y[test], preprocessing)
