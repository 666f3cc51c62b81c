"""Typed schemas for every config group, and the checks that run before anything is built.

Hydra merges the YAML files in ``conf/`` onto these dataclasses, so a wrong type or an unknown
key fails while composing. ``validate`` then runs the value checks (``__post_init__``) and the
loss/dataset pairing rule. This module imports only the standard library, OmegaConf and Hydra:
a mistake is reported before torch, Lightning or MLflow is imported.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException, InstantiationException
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(CompactHydraException):
    """A user mistake in the configuration: Hydra prints just the message and exits 1."""


class Task(Enum):
    regression = "regression"
    binary = "binary"
    multiclass = "multiclass"


class DataTask(Enum):
    """A dataset's task; ``auto`` (table data only) infers it from the target column."""

    auto = "auto"
    regression = "regression"
    binary = "binary"
    multiclass = "multiclass"


class TableFormat(Enum):
    """How a data file is read (pandas)."""

    csv = "csv"
    excel = "excel"  # a workbook's sheet: .xlsx, .xls or .ods
    parquet = "parquet"


class Separator(Enum):
    """The field separator of a CSV file; ``auto`` reads it from the file's first lines."""

    auto = "auto"
    comma = ","
    semicolon = ";"
    tab = "\t"
    pipe = "|"


class DecimalMark(Enum):
    """How a CSV file writes 1.5; ``auto``: ``1,5`` in a file not separated by commas."""

    auto = "auto"
    point = "."
    comma = ","


class Thousands(Enum):
    """How a CSV file groups a number's thousands (1,234.5 or 1.234,5); ``auto`` reads it
    from the file's first lines."""

    auto = "auto"
    none = ""
    comma = ","
    point = "."
    space = " "
    apostrophe = "'"  # 1'234.5, as Switzerland writes it
    nbsp = "\u00a0"  # a no-break space, as a French spreadsheet may write 1 234,5
    narrow_nbsp = "\u202f"  # a narrow no-break space, as newer French locales write it


class SplitKind(Enum):
    """How rows are divided into train and test."""

    auto = "auto"  # stratified for classification, shuffled for regression
    ordered = "ordered"  # the first rows train, the rest test (the study)
    shuffle = "shuffle"  # a random split (dataset.split_seed)
    stratified = "stratified"  # a random split keeping each class's share (classification)


class Missing(Enum):
    """What to do with missing values in a table."""

    impute = "impute"  # features: median / most frequent (fit on train rows); target: drop row
    error = "error"  # refuse the table, naming the columns and counts


class Output(Enum):
    """Activation applied to the network's last layer to produce predictions."""

    identity = "identity"
    sigmoid = "sigmoid"
    tanh = "tanh"
    softmax = "softmax"


class Activation(Enum):
    """Hidden-layer activation."""

    relu = "relu"
    tanh = "tanh"
    sigmoid = "sigmoid"
    gelu = "gelu"


class Norm(Enum):
    """Normalization after each hidden linear layer, per member."""

    none = "none"
    batch = "batch"  # over the minibatch (running statistics for scoring)
    layer = "layer"  # over each row's features


class Targets(Enum):
    """How the data module encodes labels for the loss."""

    real = "real"  # regression targets as floats
    binary = "binary"  # {0, 1}
    signed = "signed"  # {-1, 1}
    onehot = "onehot"  # one row of C floats per sample
    index = "index"  # one integer class per sample


class DateUse(Enum):
    """What to do with a table's date and time columns (src/date_features.py)."""

    encode = "encode"  # years since the first train date, and the year's, week's, day's cycles
    drop = "drop"  # leave them out of the features, said at start-up


class Scaling(Enum):
    standard = "standard"  # zero mean, unit variance (the study)
    minmax = "minmax"  # into [0, 1]
    none = "none"


class ModelFormat(Enum):
    """How MLflow stores a run's model (mlflow.pytorch serialization_format)."""

    pickle = "pickle"  # loads back as the torch.nn.Sequential that was logged; fast to save
    pt2 = "pt2"  # torch.export graph: no pickle on load, but loads as a GraphModule and the
    # first export in a process costs seconds


class ScalerFit(Enum):
    all = "all"  # fit on all rows before the split, as the study does
    train = "train"  # fit on the train rows only (no test information leaks)


# Which encodings and output activations each task admits: the pairing rule's table.
TASK_TARGETS: dict[Task, tuple[Targets, ...]] = {
    Task.regression: (Targets.real,),
    Task.binary: (Targets.binary, Targets.signed),
    Task.multiclass: (Targets.onehot, Targets.index),
}
TARGET_OUTPUTS: dict[Targets, tuple[Output, ...]] = {
    Targets.real: (Output.identity,),
    Targets.binary: (Output.sigmoid,),
    Targets.signed: (Output.tanh, Output.identity),
    Targets.onehot: (Output.softmax,),
    Targets.index: (Output.softmax,),
}


class Direction(Enum):
    """Which way a metric is better."""

    higher = "higher"
    lower = "lower"


class MetricInput(Enum):
    """What a metric function is given beside the true values (src/metrics.py makes it)."""

    value = "value"  # the prediction, in the target's own units (regression)
    label = "label"  # the predicted class; true labels as 0..C-1 (0/1 for binary)
    score = "score"  # binary: one decision score per row, higher means the positive class
    proba = "proba"  # class probabilities: probabilistic outputs only (sigmoid, softmax)
    raw = "raw"  # the activated output against the labels as the loss sees them


MAX_SEED = 2**32 - 1  # numpy's largest seed
# The key of an override that adds a loss as members: +loss@member_losses.<option>=<option>
MEMBER_LOSS_KEY = "loss@member_losses."
MAX_MEMBERS = 1000  # seeds in one job: each is an MLflow run, and the model holds them all
MEMORY_SHARE = 0.5  # generated data may take at most this share of the machine's memory

# instantiate() is only fed targets under these prefixes unless the user widens the list.
DEFAULT_TARGET_PREFIXES = (
    *("src.", "sklearn.datasets.", "sklearn.metrics.", "torch.nn.functional.", "torch.optim."),
)
# Lightning callbacks (conf/callbacks/) come only from here unless the user widens the list.
DEFAULT_CALLBACK_PREFIXES = ("pytorch_lightning.callbacks.", "src.")
# Lightning precisions a job can train with (Lightning refuses the ones a device lacks).
PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed", "16-mixed")


def _require_memory(n_samples: int, n_features: Any) -> None:
    """Generated data fits in memory: about four float64 copies (generated, scaled, split,
    float32 tensors) may take at most MEMORY_SHARE of the machine's memory. Said before the
    generator runs for minutes and the machine swaps."""
    if not _is_int(n_features):
        return
    need = n_samples * (n_features + 1) * 8 * 4
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    _require(
        need <= MEMORY_SHARE * have,
        f"dataset.generator.n_samples={n_samples} with {n_features} features needs about "
        f"{need / 1e9:.0f} GB, more than half of this machine's {have / 1e9:.0f} GB; use "
        f"fewer samples (at most about {int(MEMORY_SHARE * have / ((n_features + 1) * 32)):,})",
    )


def is_text_encoding(name: str) -> bool:
    """Whether ``name`` is a codec that reads text (a file's encoding), checked at start-up."""
    try:
        "".encode(name)  # LookupError for an unknown name and for bytes codecs (base64)
    except LookupError:
        return False
    return True


def is_date_format(text: str) -> bool:
    """Whether ``text`` is a ``strptime`` format that reads back the year of a date it writes
    (``%d/%m/%Y`` or ``%Y-%m``, not ``%Q``, ``%H:%M`` or ``Y-m-d``), checked at start-up."""
    moment = datetime.datetime(2001, 2, 3, 4, 5, 6)
    try:
        back = datetime.datetime.strptime(moment.strftime(text), text)
    except ValueError:
        return False
    return back.year == moment.year


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


@dataclass
class OutliersConfig:
    """Corrupt a fraction of regression targets (after scaling) by adding +-scale."""

    fraction: float = 0.0
    scale: float = 10.0
    in_test: bool = False  # False keeps the test set clean: we score the true function

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.fraction < 1.0,
            f"dataset.outliers.fraction={self.fraction} must be in [0, 1)",
        )
        _require(self.scale >= 0, f"dataset.outliers.scale={self.scale} must be >= 0")


@dataclass
class DatasetConfig:
    """Either the study's arrays (``generator`` returns X, y) or a table (``target`` names the
    column to predict, read from ``path`` or from a ``generator`` that returns a DataFrame);
    a table goes through scikit-learn's preprocessing (src/preprocess.py)."""

    name: str = MISSING
    task: DataTask = MISSING
    # A scikit-learn generator (or any function returning X, y or a DataFrame), instantiated.
    generator: dict[str, Any] = field(default_factory=dict)
    # Table data: a file (format csv, excel or parquet) or a generator's DataFrame, and its columns.
    format: TableFormat | None = None
    path: str | None = None
    sep: Separator = Separator.auto  # CSV only
    decimal: DecimalMark = DecimalMark.auto  # CSV only
    thousands: Thousands = Thousands.auto  # CSV only
    skip_lines: int | None = None  # CSV only: lines above the header; null: found in the file
    encoding: str = "utf-8"  # CSV only; any of Python's codecs (cp1252, latin-1, utf-16, ...)
    sheet: str | None = None  # Excel only; null: the workbook's first sheet
    target: str | None = None
    features: list[str] | None = None  # null: every column but the target and `drop`
    drop: list[str] = field(default_factory=list)
    missing: Missing = Missing.impute
    dates: DateUse = DateUse.encode
    # Text dates not in ISO 8601 (2024-01-31): a strptime format, e.g. "%d/%m/%Y"
    date_format: str | None = None
    split: SplitKind = SplitKind.auto
    split_seed: int = 0
    train_fraction: float = 0.5  # the share of rows that train (the study: the first half)
    # K-fold cross-validation: folds=K (>1) tests on fold `fold` and trains on the rest
    # (train_fraction unused). A -m sweep with dataset.folds=K runs one job per fold.
    folds: int = 1
    fold: int | None = None
    scale_x: Scaling = Scaling.none
    scale_y: Scaling = Scaling.none
    scaler_fit: ScalerFit = ScalerFit.train
    outliers: OutliersConfig = field(default_factory=OutliersConfig)
    batch_size: int = 32
    # The study's settings for this data, read by trainer.max_epochs and model.hidden_sizes.
    max_epochs: int = 100
    hidden_sizes: list[int] = field(default_factory=lambda: [25])

    def __post_init__(self) -> None:
        _require(
            0.0 < self.train_fraction < 1.0,
            f"dataset.train_fraction={self.train_fraction} must be strictly between 0 and 1",
        )
        _require(self.batch_size >= 1, f"dataset.batch_size={self.batch_size} must be >= 1")
        _require(self.split_seed >= 0, f"dataset.split_seed={self.split_seed} must be >= 0")
        _require(self.folds >= 1, f"dataset.folds={self.folds} must be >= 1 (1: no folds)")
        _require(
            self.fold is None or 0 <= self.fold < self.folds,
            f"dataset.fold={self.fold} must be in 0..{self.folds - 1} (dataset.folds={self.folds})",
        )
        if self.is_table:
            self._check_table()
            return
        _require(
            self.task != DataTask.auto,
            "dataset.task=auto needs table data (dataset.target names the column to infer from)",
        )
        _require(
            self.path is None,
            "dataset.path needs dataset.target=<column to predict> (and dataset=csv, excel or "
            "parquet)",
        )
        gen = self.generator
        _require("_target_" in gen, "dataset.generator needs a _target_ (a data function)")
        n = gen.get("n_samples")
        _require(
            n is None or _is_int(n),
            f"dataset.generator.n_samples={n!r} must be an integer",
        )
        if n is not None:
            n_train = self.train_size(n)
            smallest = math.ceil(1 / min(self.train_fraction, 1 - self.train_fraction))
            _require(
                n_train >= 1 and n - n_train >= 1,
                f"dataset.generator.n_samples={n} is too small to split with "
                f"train_fraction={self.train_fraction}; use at least {smallest}",
            )
            _require(
                self.batch_size <= n_train,
                f"dataset.batch_size={self.batch_size} is larger than the train split "
                f"({n_train} rows); use a value between 1 and {n_train}",
            )
            _require_memory(n, gen.get("n_features", 2))
        noise = gen.get("noise")
        _require(
            noise is None or (_is_number(noise) and noise >= 0),
            f"dataset.generator.noise={noise!r} must be a number >= 0",
        )
        _require(
            self.task == DataTask.regression or self.scale_y == Scaling.none,
            f"dataset.scale_y={self.scale_y.value} only applies to regression targets",
        )
        _require(
            self.task == DataTask.regression or self.outliers.fraction == 0.0,
            "dataset.outliers only applies to regression targets",
        )

    @property
    def is_table(self) -> bool:
        """A table with a target column (file or DataFrame), not the study's arrays."""
        return self.target is not None or self.format is not None

    @property
    def label(self) -> str:
        """What the data is called in run names, tags and figures: the file's name, if any."""
        return Path(self.path).name if self.path else self.name

    def train_size(self, rows: int) -> int:
        """How many of ``rows`` train (the fewest, with folds of unequal size)."""
        if self.folds > 1:
            return rows - math.ceil(rows / self.folds)
        return round(rows * self.train_fraction)

    def split_for(self, task: Task) -> SplitKind:
        """The split to use: ``auto`` is stratified for classes, shuffled for regression."""
        if self.split == SplitKind.auto:
            return SplitKind.shuffle if task == Task.regression else SplitKind.stratified
        if self.split == SplitKind.stratified and task == Task.regression:
            return SplitKind.shuffle  # no classes whose shares to keep
        return self.split

    def _check_table(self) -> None:
        where = f"dataset={self.name}"
        if self.format is not None:
            _require(
                bool(self.path) and bool(self.target),
                f"{where} needs dataset.path=<file> and dataset.target=<column to predict>",
            )
            _require(
                "_target_" not in self.generator,
                f"{where} reads dataset.path; drop dataset.generator",
            )
            _require(
                self.format == TableFormat.csv
                or (self.sep, self.decimal, self.thousands, self.encoding, self.skip_lines)
                == (Separator.auto, DecimalMark.auto, Thousands.auto, "utf-8", None),
                f"dataset.sep, decimal, thousands, encoding and skip_lines are for CSV files; "
                f"{where} is {self.format.value}: drop them",
            )
            _require(
                self.format == TableFormat.excel or self.sheet is None,
                f"dataset.sheet is for Excel workbooks; {where} is {self.format.value}: drop it",
            )
            _require(
                self.skip_lines is None or self.skip_lines >= 0,
                f"dataset.skip_lines={self.skip_lines} must be >= 0 (null: found in the file)",
            )
            _require(
                is_text_encoding(self.encoding),
                f"dataset.encoding={self.encoding!r} is not a text encoding Python knows "
                "(e.g. utf-8, cp1252, latin-1, utf-16)",
            )
            _require(
                self.thousands == Thousands.auto or self.thousands.value != self.decimal.value,
                f"dataset.thousands={self.thousands.name} is also dataset.decimal; a number's "
                "thousands and decimals need two different marks",
            )
            _require(
                (self.sep, self.decimal) != (Separator.comma, DecimalMark.comma),
                "dataset.decimal=comma needs another separator than commas "
                "(dataset.sep=semicolon, tab or pipe)",
            )
        else:
            _require(
                self.path is None,
                "dataset.path needs dataset.format (use dataset=csv, excel or parquet)",
            )
            _require(
                "_target_" in self.generator,
                f"{where} needs dataset.generator (a function returning a DataFrame)",
            )
        _require(bool(self.target), f"{where}: dataset.target must name a column")
        _require(
            self.date_format is None or is_date_format(self.date_format),
            f"dataset.date_format={self.date_format!r} is not a date format strptime reads "
            "back; write one like %d/%m/%Y or %m/%d/%Y %H:%M",
        )
        _require(
            self.scaler_fit == ScalerFit.train,
            "dataset.scaler_fit=all applies to the study's arrays; a table's preprocessing is "
            "always fit on its train rows",
        )
        _require(
            self.outliers.fraction == 0.0,
            "dataset.outliers applies to the study's arrays, not to a table",
        )


@dataclass
class ModelConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [25])
    activation: Activation = Activation.relu
    # After each hidden layer: linear -> norm -> activation -> dropout. Every member draws its
    # dropout masks from its own generator, so members=K still equals K separate runs.
    norm: Norm = Norm.none
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _require(
            all(h >= 1 for h in self.hidden_sizes),
            f"model.hidden_sizes={self.hidden_sizes}: every layer needs at least 1 unit",
        )
        _require(0.0 <= self.dropout < 1.0, f"model.dropout={self.dropout} must be in [0, 1)")


@dataclass
class MetricConfig:
    """One metric, one home (``conf/metrics/<name>.yaml``): the function that computes it,
    which way is better, and where it applies."""

    # Called as fn(y_true, y_pred) -> float per member (scikit-learn's convention).
    fn: dict[str, Any] = field(default_factory=dict)
    direction: Direction = MISSING
    tasks: list[Task] = field(default_factory=list)
    input: MetricInput = MetricInput.value
    outputs: list[Output] = field(default_factory=list)  # empty: every output of its tasks
    # The values the metric can take (null: unbounded); the report's intervals stay inside.
    low: float | None = None
    high: float | None = None
    # Only where every target is >= 0 in its own units (e.g. msle).
    nonnegative_targets: bool = False
    # A member-axis torch function (pred, target) -> (members,) for per-epoch curves; a
    # metric without one is computed once, after training.
    epoch: str | None = None
    primary: list[Task] = field(default_factory=list)  # the task(s) it is the default metric of

    def __post_init__(self) -> None:
        _require("_target_" in self.fn, "a metric's fn needs a _target_")
        _require(bool(self.tasks), "a metric needs tasks: [regression | binary | multiclass]")
        _require(
            all(task in self.tasks for task in self.primary),
            "a metric can only be primary for its own tasks",
        )

    def fits(self, task: Task, output: Output) -> bool:
        """For this task and output activation (probabilities need a probabilistic one)."""
        probabilistic = output in (Output.sigmoid, Output.softmax)
        return (
            task in self.tasks
            and (not self.outputs or output in self.outputs)
            and (self.input != MetricInput.proba or probabilistic)
        )


@dataclass
class ReportConfig:
    """How a sweep's report ranks the losses."""

    metric: str | None = None  # a metric name (conf/metrics/); null: each task's primary


@dataclass
class LossConfig:
    """A loss knows its task: data, output layer and metrics all follow from it."""

    name: str = MISSING
    task: Task = MISSING
    output: Output = MISSING
    targets: Targets = MISSING
    # Called as fn(output, target) and returns per-sample or per-element losses; losslab
    # averages them over everything but the member axis.
    fn: dict[str, Any] = field(default_factory=dict)
    from_logits: bool = False  # True: fn gets the raw last layer, not the activated output
    # Metrics (conf/metrics/) drawn per epoch and printed beside the task's primary one.
    metrics: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require("_target_" in self.fn, f"loss.fn for '{self.name}' needs a _target_")

    def shape(self) -> tuple[Task]:
        """What members trained with this loss share with the other members of their model:
        the data and the width of the last layer, so the task. Losses of one shape train as
        members of one model (``member_losses``), each with its own output activation,
        target encoding and metrics (src/heads.py)."""
        return (self.task,)


@dataclass
class OptimizerConfig:
    """What every optimizer takes. Each ``conf/optimizer/<name>.yaml`` starts from its own
    schema below (registered as ``optimizer_schema_<name>``), so a key that optimizer does not
    take fails while composing, not when torch builds it."""

    _target_: str = MISSING
    lr: float = 0.01
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _require(self.lr > 0 and math.isfinite(self.lr), f"optimizer.lr={self.lr} must be > 0")
        _require(
            self.weight_decay >= 0 and math.isfinite(self.weight_decay),
            f"optimizer.weight_decay={self.weight_decay} must be a finite number >= 0",
        )


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            0.0 <= self.momentum < 1.0,
            f"optimizer.momentum={self.momentum} must be in [0, 1)",
        )
        _require(
            not self.nesterov or self.momentum > 0,
            "optimizer.nesterov=true needs optimizer.momentum > 0",
        )


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"
    lr: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    amsgrad: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"optimizer.betas={self.betas} must be two values in [0, 1)",
        )
        _require(self.eps > 0, f"optimizer.eps={self.eps} must be > 0")


# conf/optimizer/<name>.yaml -> its schema (a new optimizer adds one line here and one YAML).
OPTIMIZER_SCHEMAS: dict[str, type[OptimizerConfig]] = {"sgd": SGDConfig, "adam": AdamConfig}


@dataclass
class TrainerConfig:
    """Arguments passed straight to Lightning's Trainer, plus the few losslab adds (marked).

    One Lightning batch is one epoch here (the module steps through the minibatches itself),
    so the per-batch knobs mean minibatches: ``limit_train_batches`` limits the minibatches
    an epoch trains on, and gradient clipping applies to each member on its own."""

    max_epochs: int = 100
    min_epochs: int | None = None
    max_time: str | None = None  # "DD:HH:MM:SS"
    accelerator: str = "cpu"
    devices: int = 1
    precision: str = "32-true"
    deterministic: bool = True
    benchmark: bool | None = None
    fast_dev_run: bool = False  # one epoch, no checkpoints: a smoke test of the config
    detect_anomaly: bool = False
    profiler: str | None = None  # simple | advanced: Lightning's profile after the fit
    limit_train_batches: float = 1.0  # a share (<= 1.0) or a count (> 1) of the minibatches
    gradient_clip_val: float | None = None  # per member
    gradient_clip_algorithm: str = "norm"  # norm | value
    accumulate_grad_batches: int = 1
    enable_progress_bar: bool = True
    # losslab: threads for this job, torch's intra-op and numpy's / scipy's BLAS. 1 by
    # measurement: study-sized models gain nothing from a second thread, and beside other
    # busy processes more threads cost 2x (README, "Speed"). 0: $OMP_NUM_THREADS when set,
    # else every core (for wide models).
    threads: int = 1

    # Keys losslab handles itself rather than handing them to Lightning's Trainer.
    OWN = (
        *("threads", "limit_train_batches", "gradient_clip_val", "gradient_clip_algorithm"),
        "enable_progress_bar",  # losslab's bar on a single run, none in a sweep
    )

    def __post_init__(self) -> None:
        _require(self.max_epochs >= 1, f"trainer.max_epochs={self.max_epochs} must be >= 1")
        _require(
            self.devices == 1,
            f"trainer.devices={self.devices}: losslab trains in one process on one device "
            "(seeds run side by side as members=K); use trainer.devices=1",
        )
        _require(
            self.accelerator in ("cpu", "gpu", "cuda", "mps", "auto"),
            f"trainer.accelerator={self.accelerator} is not one of cpu, gpu, cuda, mps, auto",
        )
        _require(
            self.precision in PRECISIONS,
            f"trainer.precision={self.precision} is not one of {', '.join(PRECISIONS)}",
        )
        _require(
            self.accumulate_grad_batches == 1,
            f"trainer.accumulate_grad_batches={self.accumulate_grad_batches}: each minibatch "
            "is one update here; for larger updates raise dataset.batch_size",
        )
        _require(
            0 < self.limit_train_batches <= 1 or float(self.limit_train_batches).is_integer(),
            f"trainer.limit_train_batches={self.limit_train_batches} must be a share in (0, 1] "
            "or a whole number of minibatches",
        )
        _require(
            self.gradient_clip_val is None
            or (self.gradient_clip_val > 0 and math.isfinite(self.gradient_clip_val)),
            f"trainer.gradient_clip_val={self.gradient_clip_val} must be a number > 0 (or null)",
        )
        _require(
            self.gradient_clip_algorithm in ("norm", "value"),
            f"trainer.gradient_clip_algorithm={self.gradient_clip_algorithm} is not norm or value",
        )
        _require(self.threads >= 0, f"trainer.threads={self.threads} must be >= 0")

    def lightning_args(self) -> dict[str, Any]:
        """What goes to ``pytorch_lightning.Trainer``."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in self.OWN
        }


@dataclass
class SchedulerConfig:
    """A learning-rate scheduler (conf/scheduler/), stepped once per epoch."""

    # torch.optim.lr_scheduler.<name> with _partial_: true; losslab passes the optimizer.
    fn: dict[str, Any] = field(default_factory=dict)
    # ReduceLROnPlateau's metric (train/<m> or test/<m>, the members' median); null otherwise.
    monitor: str | None = None

    def __post_init__(self) -> None:
        _require("_target_" in self.fn, "scheduler.fn needs a _target_ (a torch scheduler)")
        _require(
            self.fn.get("_partial_") is True,
            "scheduler.fn needs _partial_: true (losslab passes the optimizer)",
        )


@dataclass
class LoggerConfig:
    """Where runs are tracked. tracking_uri null: $MLFLOW_TRACKING_URI, else ./mlflow.db."""

    tracking_uri: str | None = None
    experiment: str = "losslab"
    log_model: bool = True
    model_format: ModelFormat = ModelFormat.pickle
    flush_every_n_epochs: int = 0  # 0: per-epoch metrics go in full batches, the rest at the end

    def __post_init__(self) -> None:
        _require(
            self.flush_every_n_epochs >= 0,
            f"logger.flush_every_n_epochs={self.flush_every_n_epochs} must be >= 0",
        )
        _require(
            bool(self.experiment.strip()),
            "logger.experiment must name an MLflow experiment (it is empty)",
        )


@dataclass
class LosslabConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    loss: LossConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    metrics: dict[str, MetricConfig] = field(default_factory=dict)
    report: ReportConfig = field(default_factory=ReportConfig)
    # Lightning callbacks by name (conf/callbacks/), each a node with a _target_.
    callbacks: dict[str, Any] = field(default_factory=dict)
    scheduler: SchedulerConfig | None = None
    seed: int = 0
    # Train seeds seed, seed+1, ..., seed+members-1 together as one batched model.
    members: int = 1
    # More losses trained in the same model, each with the same `members` seeds as its own
    # runs: `+loss@member_losses.msle=msle`. Each must have loss's task (LossConfig.shape);
    # output, encoding and metrics are each loss's own. A sweep's jobs that differ only in
    # such a loss are merged this way (hydra.sweeper.batch_losses).
    member_losses: dict[str, LossConfig] = field(default_factory=dict)
    # A run id or a checkpoint path to continue an interrupted run from.
    resume: str | None = None
    allowed_target_prefixes: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_PREFIXES)
    )
    allowed_callback_prefixes: list[str] = field(
        default_factory=lambda: list(DEFAULT_CALLBACK_PREFIXES)
    )

    def __post_init__(self) -> None:
        _require(self.seed >= 0, f"seed={self.seed} must be a non-negative integer")
        _require(self.members >= 1, f"members={self.members} must be >= 1")
        _require(
            self.members <= MAX_MEMBERS,
            f"members={self.members} is above {MAX_MEMBERS} (each member is an MLflow run); "
            f"split the seeds over jobs, e.g. -m seed=0,{MAX_MEMBERS} members={MAX_MEMBERS}",
        )
        self._check_member_losses()
        _require(
            self.seed + self.members - 1 <= MAX_SEED,
            f"seed={self.seed} (+ members - 1) is above {MAX_SEED}, the largest seed numpy takes",
        )
        if self.dataset.task != DataTask.auto:  # else after the table is read (validate)
            self.check_pairings()
        self._check_metrics()
        self._check_callbacks()
        for where, target in self.targets():
            _require(
                target.startswith(tuple(self.allowed_target_prefixes)),
                f"{where}._target_={target} is outside the allowed prefixes "
                f"{self.allowed_target_prefixes}; add it to allowed_target_prefixes "
                "if you trust it",
            )

    def job_losses(self) -> dict[str, LossConfig]:
        """The losses this job trains, by where each is configured, in member order: loss,
        then member_losses; each trains ``members`` seeds."""
        others = {f"member_losses.{key}": loss for key, loss in self.member_losses.items()}
        return {"loss": self.loss, **others}

    def loss_named(self, name: str) -> LossConfig:
        """The job's loss called ``name``: a run's own loss (its tag ``loss``), which in a
        job of several losses may be one of member_losses."""
        found = [loss for loss in self.job_losses().values() if loss.name == name]
        _require(bool(found), f"the config trains no loss named '{name}'")
        return found[0]

    def check_pairings(self) -> None:
        """Every loss the job trains fits the dataset, with a valid output and encoding."""
        for loss in self.job_losses().values():
            check_pairing(loss, self.dataset)

    def _check_member_losses(self) -> None:
        names = [loss.name for loss in self.job_losses().values()]
        _require(
            len(set(names)) == len(names),
            f"member_losses: loss names {names} repeat; each loss's runs need their own name",
        )
        for key, loss in self.member_losses.items():
            _require(
                loss.shape() == self.loss.shape(),
                f"member_losses.{key} ({loss.task.value}) cannot train beside loss "
                f"{self.loss.name} ({self.loss.task.value}): members share one model's "
                f"data and last layer; run {loss.name} as its own job",
            )
        total = self.members * len(names)
        _require(
            total <= MAX_MEMBERS,
            f"members={self.members} for each of {len(names)} losses is {total} members, "
            f"above {MAX_MEMBERS}; run fewer losses or seeds in one job",
        )

    def targets(self) -> list[tuple[str, str]]:
        """Every function or class the config names for instantiate (callbacks apart):
        (where, _target_). Checked here by spelling, and by what each resolves to when the
        job builds them (experiment.check_targets)."""
        nodes = [
            ("dataset.generator", self.dataset.generator),
            ("loss.fn", self.loss.fn),
            *((f"member_losses.{key}.fn", loss.fn) for key, loss in self.member_losses.items()),
            ("optimizer", {"_target_": self.optimizer._target_}),
            ("scheduler.fn", self.scheduler.fn if self.scheduler else {}),
            *((f"metrics.{name}.fn", spec.fn) for name, spec in self.metrics.items()),
            *(
                (f"metrics.{name}.epoch", {"_target_": spec.epoch})
                for name, spec in self.metrics.items()
                if spec.epoch
            ),
        ]
        # table data read from a file has no generator
        return [(where, node["_target_"]) for where, node in nodes if node.get("_target_")]

    def _check_callbacks(self) -> None:
        """Each callback names an allowed class; what a callback or the scheduler monitors is
        logged every epoch, and a ``mode`` agrees with the metric's direction."""
        keys = self.epoch_keys()
        monitored = []
        if self.scheduler:  # ReduceLROnPlateau's own mode sits in its fn
            mode = self.scheduler.fn.get("mode")
            monitored.append(("scheduler", {"monitor": self.scheduler.monitor, "mode": mode}))
        for name, node in self.callbacks.items():
            where = f"callbacks.{name}"
            _require(
                isinstance(node, dict) and isinstance(node.get("_target_"), str),
                f"{where} needs a _target_ (a Lightning callback class)",
            )
            _require(
                node["_target_"].startswith(tuple(self.allowed_callback_prefixes)),
                f"{where}._target_={node['_target_']} is outside the allowed callback prefixes "
                f"{self.allowed_callback_prefixes}; add it to allowed_callback_prefixes "
                "if you trust it",
            )
            monitored.append((where, node))
        for where, node in monitored:
            monitor = node.get("monitor")
            if monitor is None:
                continue
            _require(
                monitor in keys,
                f"{where}.monitor={monitor} is not logged each epoch; use one of: "
                f"{', '.join(keys)}",
            )
            mode = node.get("mode")
            metric = monitor.split("/", 1)[-1]
            lower = metric == "loss" or self.metrics[metric].direction == Direction.lower
            if mode is not None:
                _require(
                    mode == ("min" if lower else "max"),
                    f"{where}.mode={mode}, but {monitor} is better when "
                    f"{'lower' if lower else 'higher'}; use mode={'min' if lower else 'max'}",
                )

    def epoch_keys(self) -> list[str]:
        """What every epoch logs (the members' medians go to Lightning's callback_metrics):
        the loss and the per-epoch metrics on train and test."""
        names = ["loss", *dict.fromkeys([self.primary_metric(), *self.loss.metrics])]
        for loss in self.member_losses.values():  # reported by that loss's members only
            names += [name for name in loss.metrics if name not in names]
        return [f"{split}/{name}" for split in ("train", "test") for name in names]

    def couples_members(self) -> bool:
        """True when one member's metrics steer every member's training (early stopping or a
        plateau scheduler watch the members' median): such a job's members no longer equal
        separate runs, so seed sweeps are not batched into it."""
        stops = any("EarlyStopping" in node["_target_"] for node in self.callbacks.values())
        return stops or bool(self.scheduler and self.scheduler.monitor)

    def _check_metrics(self) -> None:
        """Every metric a loss or the report names exists and fits the loss; each task has
        one primary metric with a per-epoch function (the learning curves)."""
        names = sorted(self.metrics)
        losses = self.job_losses()
        named = [name for loss in losses.values() for name in loss.metrics]
        for name in [*named, *filter(None, [self.report.metric])]:
            _require(name in self.metrics, f"unknown metric '{name}'; choose one of: {names}")
        for where, loss in losses.items():
            for name in loss.metrics:
                spec = self.metrics[name]
                _require(
                    spec.fits(loss.task, loss.output) and spec.epoch is not None,
                    f"{where}.metrics: '{name}' does not apply to loss '{loss.name}' "
                    f"({loss.task.value}, output {loss.output.value}); it takes "
                    f"{'/'.join(t.value for t in spec.tasks)}"
                    + (f" with output {[o.value for o in spec.outputs]}" if spec.outputs else "")
                    + ("" if spec.epoch else " and is computed after training only"),
                )
        for task in Task:
            primary = [n for n, spec in self.metrics.items() if task in spec.primary]
            _require(
                len(primary) == 1 and self.metrics[primary[0]].epoch is not None,
                f"metrics: {task.value} needs exactly one primary metric with an epoch "
                f"function, found {primary}",
            )

    def primary_metric(self) -> str:
        """The loss's task's default metric: per-epoch curves, outcomes, the report's default."""
        task = self.loss.task
        return next(n for n, spec in self.metrics.items() if task in spec.primary)

    def judged_metric(self) -> str:
        """The metric a run's outcome is judged by, as the sweep's report ranks by it: the
        user's ``report.metric``, else the task's primary. A run no better by it than a model
        that ignores its input has collapsed (on a rare class, accuracy would call every run
        that trades accuracy for the rare class's recall collapsed)."""
        return self.report.metric or self.primary_metric()

    def panel(self, nonnegative: bool, loss: LossConfig | None = None) -> dict[str, MetricConfig]:
        """The metrics that apply to the runs of ``loss`` (by default the job's ``loss``;
        ``nonnegative``: every target is >= 0)."""
        loss = loss or self.loss
        return {
            name: spec
            for name, spec in self.metrics.items()
            if spec.fits(loss.task, loss.output) and (nonnegative or not spec.nonnegative_targets)
        }


def refused(where: str, error: BaseException) -> ConfigError:
    """What a function the config names (at ``where``) raised on its arguments, as one line."""
    reason = " ".join(str(error).split())
    return ConfigError(
        f"{where}: {type(error).__name__}: {reason} "
        f"(python -m src.train --cfg job shows the {where} arguments)"
    )


@contextmanager
def refused_by_target(where: str) -> Iterator[None]:
    """A function named by a config (``_target_``) that refuses its arguments is a config
    mistake: report it in one line before any run starts, so the store gets no FAILED run."""
    try:
        yield
    except InstantiationException as error:
        raise refused(where, error.__cause__ or error) from error


def check_pairing(loss: LossConfig, dataset: DatasetConfig) -> None:
    """The one place that decides whether a loss, its output layer and a dataset fit together."""
    _require(
        loss.targets in TASK_TARGETS[loss.task],
        f"loss '{loss.name}' ({loss.task.value}) cannot use targets={loss.targets.value}; "
        f"use one of {[t.value for t in TASK_TARGETS[loss.task]]}",
    )
    _require(
        loss.output in TARGET_OUTPUTS[loss.targets],
        f"loss '{loss.name}' with targets={loss.targets.value} needs an output in "
        f"{[o.value for o in TARGET_OUTPUTS[loss.targets]]}, not output={loss.output.value}",
    )
    if loss.task.value == dataset.task.value:
        return
    if dataset.is_table:  # the user's data decides: name the losses that fit it
        raise ConfigError(
            f"loss '{loss.name}' is a {loss.task.value} loss but dataset '{dataset.label}' is "
            f"{dataset.task.value}; use one of: loss={', '.join(options_for('loss', dataset.task))}"
        )
    raise ConfigError(
        f"loss '{loss.name}' is a {loss.task.value} loss but dataset '{dataset.name}' is "
        f"{dataset.task.value}; drop the dataset= override or pick one of: "
        f"{', '.join(options_for('dataset', loss.task)) or '(none)'}"
    )


def options_for(group: str, task: Task | DataTask) -> list[str]:
    """Names of the configs in conf/<group>/ (loss or dataset) that serve ``task``."""
    return [
        path.stem
        for path in sorted((CONF_DIR / group).glob("*.yaml"))
        if OmegaConf.load(path).get("task") == task.value
    ]


def without_hydra(cfg: DictConfig) -> DictConfig:
    """The job's own settings: a callback sees Hydra's node too, which the schema does not know."""
    if "hydra" not in cfg:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def validate(cfg: DictConfig) -> LosslabConfig:
    """Run every value check and the pairing rule; return the typed config."""
    cfg = without_hydra(cfg)
    _reject_added_keys(cfg)
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, LosslabConfig)
    if obj.dataset.is_table:  # read and check the table now, before any run or output dir
        from src import tables  # pandas: only for table data

        obj.dataset.task = DataTask(tables.inspect(obj.dataset).task.value)
        obj.check_pairings()
    return obj


def from_logged(logged: DictConfig) -> LosslabConfig:
    """A run's typed config from the resolved config.yaml it logged. That file names no
    optimizer option, so the schema is the one whose ``_target_`` it has."""
    target = logged.optimizer._target_
    by_target = {schema._target_: schema for schema in OPTIMIZER_SCHEMAS.values()}
    _require(target in by_target, f"optimizer._target_={target} has no schema in OPTIMIZER_SCHEMAS")
    schema = OmegaConf.structured(LosslabConfig)
    schema.optimizer = OmegaConf.structured(by_target[target])
    return validate(OmegaConf.merge(schema, logged))


def _reject_added_keys(node: DictConfig, path: str = "") -> None:
    """``+key=value`` slips a key past the schema, and to_object would silently drop it (or
    hand it to a constructor at run time): refuse keys a schema node does not declare."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return  # a free-form node (dataset.generator, loss.fn): its target decides
    known = [f.name for f in dataclasses.fields(schema)]
    for key in node:
        name = f"{path}{key}"
        _require(
            key in known,
            f"unknown key '{name}' (added with +{name}=...); "
            f"{path.rstrip('.') or 'the top level'} has: {', '.join(known)}",
        )
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing():
            _reject_added_keys(child, f"{name}.")


def register() -> None:
    """Store the root schema; conf/config.yaml lists it first so every group merges onto it."""
    store = ConfigStore.instance()
    store.store(name="losslab_schema", node=LosslabConfig)
    for name, schema in OPTIMIZER_SCHEMAS.items():  # outside any group: not an option
        store.store(name=f"optimizer_schema_{name}", node=schema)
