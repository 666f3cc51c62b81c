"""User tables: a CSV or Parquet file (or a generator's DataFrame) read once, checked at
start-up and its task inferred, so a table that cannot be used is one line before any run.

Only pandas is imported here (validation runs before torch); the scikit-learn preprocessing
that turns the table into model inputs is src/preprocess.py's.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import difflib
import functools
import gzip
import hashlib
import io
import json
import lzma
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.api import types

from src.config import (
    ConfigError,
    DatasetConfig,
    DataTask,
    DecimalMark,
    Missing,
    Separator,
    SplitKind,
    TableFormat,
    Task,
)

MAX_CLASSES = 20  # task=auto: integer targets with at most this many values are classes
# A categorical feature with more distinct values than this share of the rows (and more than
# MAX_CLASSES) is most likely an id, a date or free text: one-hot, each value is a feature
# that only its own few rows have, which the split's test rows mostly lack.
ID_LIKE_SHARE = 0.5
SHOWN_COLUMNS = 20  # an error lists at most this many column names
SNIFF_CHARS = 1 << 16  # a CSV file's separator and decimal mark are read from its first lines
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # compressed CSV files
_POINT_NUMBER = re.compile(r"[+-]?\d*\.\d+([eE][+-]?\d+)?")
_COMMA_NUMBER = re.compile(r"[+-]?\d*,\d+([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Table:
    """A table as losslab uses it: the rows that have a target, and what is known of them."""

    frame: pd.DataFrame  # features and target; rows without a target already dropped
    features: list[str]
    numeric: list[str]  # imputed (median) and scaled
    categorical: list[str]  # imputed (most frequent) and one-hot encoded
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


@dataclass(frozen=True)
class Dialect:
    """How a CSV file writes its fields and numbers. pandas reads commas and decimal points
    unless told; a semicolon file (a spreadsheet's export in much of Europe) would otherwise
    be one text column, and its ``1,5`` text."""

    sep: Separator = Separator.comma
    decimal: DecimalMark = DecimalMark.point
    encoding: str = "utf-8"

    @property
    def options(self) -> dict[str, str]:
        """pandas' ``read_csv`` and ``to_csv`` keywords for this dialect."""
        return {"sep": self.sep.value, "decimal": self.decimal.value, "encoding": self.encoding}

    def __str__(self) -> str:
        """Words for the start-up line, when it is not the plain comma-and-point CSV."""
        words = {Separator.semicolon: "semicolons", Separator.tab: "tabs", Separator.pipe: "pipes"}
        said = [f"fields separated by {words[self.sep]}"] if self.sep in words else []
        return ", ".join([*said, "decimal commas"] if self.decimal == DecimalMark.comma else said)


def dialect(
    file: Path,
    sep: Separator = Separator.auto,
    decimal: DecimalMark = DecimalMark.auto,
    encoding: str = "utf-8",
) -> Dialect:
    """The file's separator and decimal mark: as asked, or read from its first lines. A
    separator is the one that splits every sampled row into the same number (> 1) of fields,
    the most fields winning and comma first among equals; the decimal mark is a comma when
    numbers are written ``1,5`` and never ``1.5``, which only a non-comma file can do. Our
    own reading, not ``pandas.read_csv(sep=None)``: that one parses the whole file with the
    Python engine, many times slower than the C engine on large files."""
    if sep != Separator.auto and decimal != DecimalMark.auto:
        return Dialect(sep, decimal, encoding)
    suffixes = [suffix.lower() for suffix in file.suffixes]
    opener = _OPENERS.get(suffixes[-1] if suffixes else "", open)  # pandas infers the same
    try:
        with opener(file, "rt", encoding=encoding, errors="replace", newline="") as handle:
            sample = handle.read(SNIFF_CHARS)
        if len(sample) == SNIFF_CHARS:  # the last line may be cut: leave it out
            sample = sample[: sample.rfind("\n") + 1] or sample
        if sep == Separator.auto:
            sep = _sniff_separator(sample, tab_first=bool({".tsv", ".tab"} & set(suffixes)))
        if decimal == DecimalMark.auto:
            fields = [] if sep == Separator.comma else _rows(sample, sep)[1:]  # not the header
            cells = [cell.strip() for row in fields for cell in row]
            comma = any(_COMMA_NUMBER.fullmatch(c) for c in cells)
            point = any(_POINT_NUMBER.fullmatch(c) for c in cells)
            decimal = DecimalMark.comma if comma and not point else DecimalMark.point
    except (csv.Error, OSError, EOFError, lzma.LZMAError):  # NUL bytes, a damaged archive:
        # pandas then says what is wrong with the file
        sep = Separator.comma if sep == Separator.auto else sep
        decimal = DecimalMark.point if decimal == DecimalMark.auto else decimal
    return Dialect(sep, decimal, encoding)


def _rows(sample: str, sep: Separator) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(sample), delimiter=sep.value) if row]


def _sniff_separator(sample: str, tab_first: bool) -> Separator:
    candidates = [s for s in Separator if s != Separator.auto]
    if tab_first:  # a .tsv file: tabs win a tie
        candidates.sort(key=lambda s: s != Separator.tab)
    best, most = Separator.comma, 1
    for candidate in candidates:
        widths = {len(row) for row in _rows(sample, candidate)}
        if len(widths) == 1 and (width := widths.pop()) > most:
            best, most = candidate, width
    return best


@functools.lru_cache(maxsize=4)
def _read_file(
    path: str, how: Dialect | None, size: int, mtime_ns: int
) -> tuple[pd.DataFrame, str]:
    """The file's rows and sha256, read once per process while the file is unchanged (the
    start-up check and the job share them). ``how`` is a CSV file's dialect; None: Parquet."""
    file = Path(path)
    try:
        frame = pd.read_csv(file, **how.options) if how else pd.read_parquet(file)
    except pd.errors.EmptyDataError:
        _fail(f"dataset.path={path} is empty; it needs a header row and data rows")
    except UnicodeDecodeError as error:
        _fail(
            f"dataset.path={path} is not {how.encoding} text ({error.reason}); set "
            "dataset.encoding to the file's (e.g. cp1252, latin-1)"
        )
    except pd.errors.ParserError as error:
        reason = " ".join(str(error).split())
        _fail(
            f"dataset.path={path} is not a readable CSV file ({reason}); read with "
            f"dataset.sep={how.sep.name if how else 'comma'}: if its fields are separated "
            "otherwise, set dataset.sep=comma, semicolon, tab or pipe"
        )
    except PermissionError:
        _fail(f"dataset.path={path} cannot be read (permission denied)")
    except Exception as error:  # pyarrow's errors for a file that is not Parquet, among others
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        _fail(
            f"dataset.path={path} is not a readable {'csv' if how else 'parquet'} file ({reason})"
        )
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
        _fail(f"dataset.path={cfg.path} is a directory; give a {cfg.format.value} file")
    if not os.access(file, os.R_OK):
        _fail(f"dataset.path={cfg.path} cannot be read (permission denied)")
    stat = file.stat()
    absolute = str(file.resolve())
    _check_kind(file, cfg)
    csv_file = cfg.format == TableFormat.csv
    how = dialect(file, cfg.sep, cfg.decimal, cfg.encoding) if csv_file else None
    frame, sha256 = _read_file(absolute, how, stat.st_size, stat.st_mtime_ns)
    if how and str(how):
        _say((absolute, "dialect"), f"{file.name}: {how}")
    if frame.shape[1] == 0 or len(frame) == 0:
        _fail(f"dataset.path={cfg.path} has a header but no data rows")
    return frame, sha256, absolute


def _check_kind(file: Path, cfg: DatasetConfig) -> None:
    """A file of another kind than dataset.format is one line naming what it is and the way
    on; read as the wrong kind, pandas would say only that some byte does not decode."""
    with file.open("rb") as handle:
        head = handle.read(SNIFF_CHARS)
    parquet = head.startswith(b"PAR1")
    if cfg.format == TableFormat.parquet:
        if not parquet and b"\0" not in head and file.suffix.lower() in (".csv", ".tsv", ".txt"):
            _fail(f"dataset.path={cfg.path} looks like a CSV file; use dataset=csv")
        return
    if parquet:
        _fail(f"dataset.path={cfg.path} is a Parquet file; use dataset=parquet")
    suffix = file.suffix.lower()
    if head.startswith(b"PK\x03\x04") and suffix != ".zip":  # pandas reads a .zip of one CSV
        _fail(
            f"dataset.path={cfg.path} is a zip archive (an Excel workbook is one), not CSV "
            "text; save the sheet as CSV"
        )
    wide = codecs.lookup(cfg.encoding).name.startswith(("utf-16", "utf-32"))  # NULs are text
    if b"\0" in head and not wide and suffix not in (*_OPENERS, ".zip"):
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            _fail(
                f"dataset.path={cfg.path} is UTF-16 text (it starts with UTF-16's byte order "
                "mark, as a spreadsheet's 'Unicode text' export does); set dataset.encoding=utf-16"
            )
        _fail(f"dataset.path={cfg.path} holds binary data, not CSV text; give a CSV file")


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


def _kinds(frame: pd.DataFrame, features: list[str], where: str) -> tuple[list[str], list[str]]:
    """Numeric and categorical feature columns; anything else (dates, ...) is refused."""
    numeric, categorical, other = [], [], []
    for name in features:
        dtype = frame[name].dtype
        if types.is_bool_dtype(dtype) or not types.is_numeric_dtype(dtype):
            if types.is_datetime64_any_dtype(dtype) or types.is_timedelta64_dtype(dtype):
                other.append(name)
            else:
                categorical.append(name)
        else:
            numeric.append(name)
    if other:
        _fail(
            f"column(s) {other} of {where} hold dates or times, which losslab does not encode; "
            f"drop them (dataset.drop={other}) or turn them into numbers first"
        )
    return numeric, categorical


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
    numeric, categorical = _kinds(frame, features, where)
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
    _say(
        (*key, "task"),
        f"{where}: {task.value} on target '{cfg.target}' ({why}); {len(kept)} rows, "
        f"{len(numeric)} numeric and {len(categorical)} categorical feature(s)",
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
    id_like = _id_like(kept, categorical)
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
        return "string"

    specs = [{"type": kind(frame[c].dtype), "name": str(c), "required": True} for c in frame]
    return json.dumps({"mlflow_colspec": specs})
