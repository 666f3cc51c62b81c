"""User tables: a CSV, Excel or Parquet file (or a generator's DataFrame) read once, checked
at start-up and its task inferred, so a table that cannot be used is one line before any run.

Only pandas is imported here (validation runs before torch). Reading a file in its own format
is src/table_files.py's; the scikit-learn preprocessing that turns the table into model inputs
is src/preprocess.py's.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.api import types

from src import date_features, table_files
from src.config import ConfigError, DatasetConfig, DataTask, DateUse, Missing, SplitKind, Task
from src.table_files import Reader

MAX_CLASSES = 20  # task=auto: integer targets with at most this many values are classes
# A categorical feature with more distinct values than this share of the rows (and more than
# MAX_CLASSES) is most likely an id, a date or free text: one-hot, each value is a feature
# that only its own few rows have, which the split's test rows mostly lack.
ID_LIKE_SHARE = 0.5
SHOWN_COLUMNS = 20  # an error lists at most this many column names


@dataclass(frozen=True)
class Table:
    """A table as losslab uses it: the rows that have a target, and what is known of them."""

    frame: pd.DataFrame  # features and target; rows without a target already dropped
    features: list[str]
    numeric: list[str]  # imputed (median) and scaled
    categorical: list[str]  # imputed (most frequent) and one-hot encoded
    dates: list[str]  # turned into numbers (src/date_features.py), imputed and scaled
    task: Task
    why: str  # how the task was decided, for the start-up line
    classes: list[Any]  # sorted class labels (classification); [] for regression
    dropped: int  # rows without a target
    missing: dict[str, int] = field(default_factory=dict)  # missing cells per feature column
    sha256: str | None = None  # of the file, when there is one
    source: str = ""  # the file's absolute path, or the function that made the frame


def _fail(message: str) -> None:
    raise ConfigError(message)


def _columns(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_COLUMNS])
    return shown + (f", ... ({len(names)} in all)" if len(names) > SHOWN_COLUMNS else "")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _read_file(path: str, how: Reader, size: int, mtime_ns: int) -> tuple[pd.DataFrame, str]:
    """The file's rows and sha256, read once per process while the file is unchanged (the
    start-up check and the job share them)."""
    file = Path(path)
    try:
        frame = how.read(file)
    except pd.errors.EmptyDataError:
        _fail(f"dataset.path={path} is empty; it needs a header row and data rows")
    except UnicodeDecodeError as error:  # a CSV file (Dialect)
        _fail(
            f"dataset.path={path} is not {how.encoding} text ({error.reason}); set "
            "dataset.encoding to the file's (e.g. cp1252, latin-1)"
        )
    except pd.errors.ParserError as error:  # a CSV file (Dialect)
        reason = " ".join(str(error).split())
        _fail(
            f"dataset.path={path} is not a readable CSV file ({reason}); read with "
            f"dataset.sep={how.sep.name}: if its fields are separated otherwise, set "
            "dataset.sep=comma, semicolon, tab or pipe; if lines above the header hold a "
            "title, set dataset.skip_lines to their count"
        )
    except PermissionError:
        _fail(f"dataset.path={path} cannot be read (permission denied)")
    except Exception as error:  # pyarrow's errors for a damaged Parquet file, among others
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        _fail(f"dataset.path={path} is not a readable {how.label} file ({reason})")
    return frame, _sha256(file)


@functools.lru_cache(maxsize=4)
def _generated(generator: str) -> pd.DataFrame:
    from hydra.utils import instantiate

    from src.config import refused

    try:
        frame = instantiate(json.loads(generator))
    except Exception as error:
        raise refused("dataset.generator", error.__cause__ or error) from error
    if not isinstance(frame, pd.DataFrame):
        _fail("dataset.generator must return a DataFrame for table data (dataset.target is set)")
    return frame


def read(cfg: DatasetConfig) -> tuple[pd.DataFrame, str | None, str]:
    """(rows, sha256 or None, source) of the table, or one line saying why it cannot be read."""
    if cfg.path is None:
        generator = json.dumps(cfg.generator, sort_keys=True)
        return _generated(generator), None, cfg.generator["_target_"]
    file = Path(cfg.path).expanduser()
    if not file.exists():
        _fail(f"dataset.path={cfg.path}: no such file (the path is relative to {Path.cwd()})")
    if file.is_dir():
        _fail(f"dataset.path={cfg.path} is a directory; name a file in it")
    if not os.access(file, os.R_OK):
        _fail(f"dataset.path={cfg.path} cannot be read (permission denied)")
    stat = file.stat()
    absolute = str(file.resolve())
    how = table_files.reader(file, cfg)
    frame, sha256 = _read_file(absolute, how, stat.st_size, stat.st_mtime_ns)
    if str(how):
        _say((absolute, "reading"), f"{file.name}: {how}")
    if isinstance(how, table_files.Sheet) and len(how.sheets) > 1 and cfg.target not in frame:
        columns = _columns([str(c) for c in frame.columns])
        _fail(
            f"dataset.target='{cfg.target}' is not a column of {how} of {file.name} (columns: "
            f"{columns}); its sheets: {', '.join(how.sheets)}; name one with dataset.sheet="
        )
    if frame.shape[1] == 0 or len(frame) == 0:
        _fail(f"dataset.path={cfg.path} has a header but no data rows")
    return frame, sha256, absolute


def _nearest(name: str, columns: list[str]) -> str:
    close = difflib.get_close_matches(name, columns, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _choose_features(cfg: DatasetConfig, columns: list[str], where: str) -> list[str]:
    if cfg.target not in columns:
        _fail(
            f"dataset.target='{cfg.target}' is not a column of {where}; "
            f"{_nearest(cfg.target, columns)}columns: {_columns(columns)}"
        )
    named = [*(cfg.features or []), *cfg.drop]
    unknown = [name for name in named if name not in columns]
    if unknown:
        hint = _nearest(unknown[0], columns)
        _fail(
            f"dataset.features/drop name unknown column(s) {unknown} of {where}; "
            f"{hint}columns: {_columns(columns)}"
        )
    if cfg.features is not None and cfg.target in cfg.features:
        _fail(f"dataset.features includes the target '{cfg.target}'; leave it out")
    chosen = cfg.features if cfg.features is not None else columns
    features = [c for c in chosen if c != cfg.target and c not in cfg.drop]
    if not features:
        _fail(f"no feature columns left in {where} (dataset.features / dataset.drop)")
    return features


def _kinds(
    cfg: DatasetConfig, frame: pd.DataFrame, features: list[str], where: str
) -> tuple[list[str], list[str], list[str]]:
    """Numeric, categorical and date feature columns (a text column counts as dates when every
    value is one: src/date_features.py); durations are refused."""
    numeric, categorical, dates, durations = [], [], [], []
    for name in features:
        dtype = frame[name].dtype
        if types.is_timedelta64_dtype(dtype):
            durations.append(name)
        elif date_features.holds_dates(frame[name], cfg.date_format):
            dates.append(name)
        elif types.is_bool_dtype(dtype) or not types.is_numeric_dtype(dtype):
            categorical.append(name)
        else:
            numeric.append(name)
    if durations:
        _fail(
            f"column(s) {durations} of {where} hold durations, which losslab does not encode; "
            f"drop them (dataset.drop=[{','.join(durations)}]) or turn them into numbers first"
        )
    return numeric, categorical, dates


def _id_like(frame: pd.DataFrame, categorical: list[str]) -> dict[str, int]:
    """The categorical columns with a value for (nearly) every row, and their counts."""
    floor = max(MAX_CLASSES, ID_LIKE_SHARE * len(frame))
    counts = {name: int(frame[name].nunique()) for name in categorical}
    return {name: n for name, n in counts.items() if n > floor}


def _infer(values: pd.Series) -> tuple[Task, str]:
    """The task a target column asks for, and why, in words for the start-up line."""
    distinct = values.nunique()
    if distinct == 2:
        return Task.binary, "two distinct values"
    if types.is_bool_dtype(values.dtype):
        return Task.binary, "true/false values"
    if not types.is_numeric_dtype(values.dtype):
        return Task.multiclass, f"{distinct} distinct text labels"
    integral = bool((values == values.round()).all())
    if not integral:
        return Task.regression, f"non-integer numbers, {distinct} distinct"
    if distinct <= MAX_CLASSES:
        return Task.multiclass, f"{distinct} distinct integers (at most {MAX_CLASSES}: classes)"
    return Task.regression, f"{distinct} distinct integers (more than {MAX_CLASSES}: a quantity)"


def _check_task(values: pd.Series, asked: DataTask, target: str, where: str) -> tuple[Task, str]:
    distinct = values.nunique()
    sample = ", ".join(repr(v) for v in sorted(values.unique().tolist(), key=str)[:3])
    if distinct < 2:
        _fail(f"target '{target}' of {where} has one value ({sample}); a model needs two or more")
    if asked == DataTask.auto:
        return _infer(values)
    task = Task(asked.value)
    text = types.is_bool_dtype(values.dtype) or not types.is_numeric_dtype(values.dtype)
    if task == Task.regression and text:
        _fail(
            f"target '{target}' of {where} holds labels ({sample}, ...), which regression cannot "
            "fit; use dataset.task=auto, binary or multiclass"
        )
    if task == Task.binary and distinct != 2:
        _fail(
            f"target '{target}' of {where} has {distinct} distinct values; binary needs exactly "
            "2 (use dataset.task=multiclass or regression, or auto)"
        )
    if task == Task.multiclass and not text and not bool((values == values.round()).all()):
        _fail(
            f"target '{target}' of {where} holds non-integer numbers ({sample}, ...), which "
            "are not class labels; use dataset.task=regression or auto"
        )
    return task, f"dataset.task={task.value}"


def _check_size(cfg: DatasetConfig, rows: int, labels: pd.Series | None, where: str) -> None:
    n_train = cfg.train_size(rows)
    how = f"dataset.folds={cfg.folds}" if cfg.folds > 1 else f"train_fraction={cfg.train_fraction}"
    if n_train < 1 or rows - n_train < 1:
        _fail(f"{where} has {rows} usable row(s), too few to split with dataset.{how}; add rows")
    if cfg.batch_size > n_train:
        _fail(
            f"dataset.batch_size={cfg.batch_size} is larger than the train split of {where} "
            f"({n_train} of {rows} rows); use a value between 1 and {n_train}"
        )
    if labels is not None:  # stratified: every class in both parts (in every fold)
        counts = labels.value_counts()
        if cfg.folds > 1 and int(counts.min()) < cfg.folds:
            _fail(
                f"class {counts.idxmin()!r} of {where} has {int(counts.min())} row(s), fewer "
                f"than dataset.folds={cfg.folds}; use fewer folds or dataset.split=shuffle"
            )
        if int(counts.min()) < 2:
            rare = counts.idxmin()
            _fail(
                f"class {rare!r} of {where} has {int(counts.min())} row; a stratified split "
                "needs at least 2 per class: add rows or use dataset.split=shuffle"
            )
        if min(n_train, rows - n_train) < len(counts):
            _fail(
                f"{where} has {len(counts)} classes, more than a side of its split holds "
                f"({min(n_train, rows - n_train)} rows); change dataset.train_fraction "
                "or use dataset.split=shuffle"
            )


_SAID: set[tuple[str, ...]] = set()


def _say(key: tuple[str, ...], line: str) -> None:
    """A start-up fact, printed once per process and table (the start-up check and the job
    both inspect it; the job sees the task already resolved)."""
    if key not in _SAID:
        _SAID.add(key)
        print(f"losslab: {line}", flush=True)


def inspect(cfg: DatasetConfig) -> Table:
    """Read the table and check everything that can be checked before training: the columns,
    the target against the task, missing values, the split and the batch size."""
    frame, sha256, source = read(cfg)
    where = cfg.label
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    features = _choose_features(cfg, columns, where)
    numeric, categorical, dates = _kinds(cfg, frame, features, where)
    if dates and cfg.dates == DateUse.drop:
        features = [name for name in features if name not in dates]
        line = f"{where}: date column(s) {dates} left out (dataset.dates=drop)"
        _say((source, cfg.target, "dates"), line)
        dates = []
        if not features:
            _fail(f"no feature columns left in {where} but dates (dataset.dates=drop)")
    empty = [name for name in features if frame[name].isna().all()]
    if empty:
        _fail(
            f"feature column(s) {empty} of {where} have no values; drop them (dataset.drop={empty})"
        )
    no_target = int(frame[cfg.target].isna().sum())
    if no_target and cfg.missing == Missing.error:
        _fail(
            f"target '{cfg.target}' of {where} is missing in {no_target} of {len(frame)} rows; "
            "fill them, or set dataset.missing=impute to drop those rows"
        )
    kept = frame.loc[frame[cfg.target].notna(), [*features, cfg.target]]
    missing = {name: int(n) for name, n in kept[features].isna().sum().items() if n}
    if missing and cfg.missing == Missing.error:
        counts = ", ".join(f"{name} ({n})" for name, n in missing.items())
        _fail(
            f"{where} has missing values in {counts}; fill them, or set dataset.missing=impute "
            "(median for numbers, most frequent value for categories, fit on the train rows)"
        )
    task, why = _check_task(kept[cfg.target], cfg.task, cfg.target, where)
    stratified = task != Task.regression and cfg.split_for(task) == SplitKind.stratified
    if cfg.split == SplitKind.stratified and task == Task.regression:
        _fail("dataset.split=stratified needs class labels; use shuffle for regression targets")
    _check_size(cfg, len(kept), kept[cfg.target] if stratified else None, where)
    classes = [] if task == Task.regression else sorted(kept[cfg.target].unique().tolist())
    key = (source, cfg.target)
    kinds = f"{len(numeric)} numeric and {len(categorical)} categorical"
    if dates:
        kinds = f"{len(numeric)} numeric, {len(categorical)} categorical and {len(dates)} date"
    line = f"{where}: {task.value} on target '{cfg.target}' ({why}); {len(kept)} rows, {kinds}"
    _say((*key, "task"), line + " feature(s)")
    if dates:
        _say(
            (*key, "dates"),
            f"{where}: date column(s) {dates} become years since the first train date and the "
            "year's and week's cycles (the day's where times differ); dataset.dates=drop "
            "leaves them out",
        )
    if no_target:
        line = f"{where}: dropped {no_target} row(s) with no target (dataset.missing=impute)"
        _say((*key, "dropped"), line)
    if missing:
        total = sum(missing.values())
        _say(
            (*key, "missing"),
            f"{where}: {total} missing value(s) in {len(missing)} column(s) will be imputed "
            "(dataset.missing=error refuses them)",
        )
    other_dates = {
        n: e for n in categorical if (e := date_features.example_of_other_dates(kept[n]))
    }
    if other_dates:
        examples = ", ".join(f"'{name}' ({value})" for name, value in other_dates.items())
        if cfg.date_format is None:
            why_not = "not ISO 8601 (2024-01-31)"
            fix = "name their order, e.g. dataset.date_format=%d/%m/%Y"
        else:
            why_not = f"not all of them read as dataset.date_format={cfg.date_format}"
            fix = "correct the format or the values"
        _say(
            (*key, "other_dates"),
            f"{where}: column(s) {examples} look like dates but {why_not}, so they are "
            f"categories; to use them as dates {fix}",
        )
    id_like = _id_like(kept, [name for name in categorical if name not in other_dates])
    if id_like:
        counts = ", ".join(f"'{name}' ({n} distinct)" for name, n in id_like.items())
        _say(
            (*key, "id_like"),
            f"{where}: categorical column(s) {counts} in {len(kept)} rows look like ids, dates "
            "or free text: one-hot, each value is a feature of its own few rows; leave them "
            f"out with dataset.drop=[{','.join(id_like)}]",
        )
    return Table(
        frame=kept,
        features=features,
        numeric=numeric,
        categorical=categorical,
        dates=dates,
        task=task,
        why=why,
        classes=classes,
        dropped=no_target,
        missing=missing,
        sha256=sha256,
        source=source,
    )


def bundled(name: str) -> pd.DataFrame:
    """One of scikit-learn's bundled datasets (no download) as a table whose ``target``
    column holds the class names where the dataset has them."""
    import sklearn.datasets

    loaders = {"diabetes", "breast_cancer", "wine", "digits", "iris"}
    if name not in loaders:
        _fail(f"no bundled dataset '{name}'; choose one of: {', '.join(sorted(loaders))}")
    loaded = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
    frame = loaded.frame.copy()
    names = getattr(loaded, "target_names", None)
    if name != "diabetes" and names is not None:
        frame["target"] = pd.Series(names[frame["target"].to_numpy()], dtype="str")
    return frame


def schema(frame: pd.DataFrame) -> str:
    """The table's columns in MLflow's dataset schema format (what the UI shows)."""

    def kind(dtype: Any) -> str:
        if types.is_bool_dtype(dtype):
            return "boolean"
        if types.is_integer_dtype(dtype):
            return "long"
        if types.is_float_dtype(dtype):
            return "double"
        if types.is_datetime64_any_dtype(dtype):
            return "datetime"
        return "string"

    specs = [{"type": kind(frame[c].dtype), "name": str(c), "required": True} for c in frame]
    return json.dumps({"mlflow_colspec": specs})
