"""One job: build data, model and trainer from a validated config, train, evaluate, track.

Imported only after the config is validated, because it pulls in torch and Lightning (MLflow
is imported by the tracking process, src/tracking.py).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import LightningEnvironment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar
from threadpoolctl import threadpool_limits

from src import cluster, store, tracking, unsent
from src.callbacks import EpochBar, MlflowHistory, RunSetLogger
from src.config import (
    MEMBER_LOSS_KEY,
    ConfigError,
    Direction,
    LosslabConfig,
    Targets,
    Task,
    refused,
    refused_by_target,
)
from src.data import Split, StudyDataModule, labels
from src.heads import Head, build_heads
from src.metrics import Panel, class_labels, plain
from src.model import MemberMLP
from src.module import Diverged, LossModule
from src.optim import member_clipper

log = logging.getLogger("losslab")
# Lightning sets its own log level on import; keep its start-up chatter (accelerator
# lines, tips) out of the console.
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")


@dataclass
class JobContext:
    """What Hydra knows about this job, passed in so this module does not read globals."""

    overrides: list[str]
    output_dir: Path
    sweep_dir: Path | None  # None for a single run
    job_num: int | None


def default_threads() -> int:
    """torch's own default: $OMP_NUM_THREADS when set, else the cores this process may use."""
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))


def use_threads(threads: int) -> None:
    """Compute with ``threads`` threads: torch's, and numpy's and scipy's BLAS (the data's
    preprocessing), which every losslab command loads with one (src/__init__.py)."""
    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")


def trivial_score(module: LossModule, head: Head, panel: Panel, split: Split, metric: str) -> float:
    """What a model that ignores its input scores on the test set with ``metric`` (computed
    as the run's own final value is, by its panel), read as ``head``'s loss reads outputs:
    the train mean (regression), or the train rows' class shares as that loss's output (so
    the majority class for labels, and the prior for probabilities). A run no better has
    collapsed."""
    y_train, y_test = torch.from_numpy(split.y_train), torch.from_numpy(split.y_test)
    targets = head.loss.targets
    if targets == Targets.real:
        constant = y_train.mean(dim=0)
    else:
        classes = class_labels(y_train, module.targets)
        shares = classes.bincount(minlength=max(split.n_outputs, 2)).double() / len(classes)
        if targets == Targets.binary:  # the positive class's probability
            constant = shares[1:2]
        elif targets == Targets.signed:  # a score whose sign says the majority
            constant = (shares[1] - shares[0]).reshape(1)
        else:  # a row of probabilities (integer targets too: their output is one)
            constant = shares
    constant = constant.to(torch.float32)
    pred = constant.expand(1, len(y_test), *constant.shape)
    target = head.encode(y_test.expand(1, *y_test.shape))
    return panel(*module.in_units(pred, target))[metric][0]


# Overrides already in the name, or that say how a run is recorded rather than what it is.
NOT_IN_NAME = (
    *("loss", "seed", "members", "resume", "hparams_search", "trainer.enable_progress_bar"),
    "callbacks.model_checkpoint.every_n_epochs",  # how often it is saved, not what it is
    *("dataset.path", "dataset.target", "dataset.format"),  # the file's name stands for them
    *("dataset.folds", "dataset.fold", "report.metric"),  # fold=k/K stands for the first two
)
NOT_IN_NAME_PREFIXES = ("logger.", "hydra.", MEMBER_LOSS_KEY, "member_losses.")


def run_name(
    loss: str, overrides: list[str], seed: int, data_file: str | None = None, fold: str = ""
) -> str:
    """What the run is, as the UI lists it: 'bce seed=2', 'mse optimizer.lr=0.1 seed=0',
    'bce cancer.csv seed=0' (a file's name instead of dataset=csv and its path), 'mae
    dataset=diabetes fold=2/5 seed=0'."""
    keys = [o.split("=")[0].lstrip("+~") for o in overrides]
    extra = [
        data_file if key == "dataset" and data_file else o
        for o, key in zip(overrides, keys)
        if key not in NOT_IN_NAME and not key.startswith(NOT_IN_NAME_PREFIXES)
    ]
    return " ".join([loss, *extra, *([fold] if fold else []), f"seed={seed}"])


def _job_title(names: list[str], seed: int) -> str:
    """The job's runs as one title: 'mse seed=0' for one member, 'mse seeds=0-9' for ten."""
    if len(names) == 1:
        return names[0]
    return f"{names[0].rsplit(' seed=', 1)[0]} seeds={seed}-{seed + len(names) - 1}"


def model_name(run: str) -> str:
    """The run's model as the Models page lists it: 'mse seed=0' -> 'mse-seed0',
    'mse optimizer.lr=0.1 seed=0' -> 'mse-optimizer_lr0_1-seed0' (MLflow refuses / : . % and
    quotes in a model's name)."""
    return re.sub(r"[^\w\-]+", "_", "-".join(run.replace("=", "").split())).strip("_")


def run(cfg: DictConfig, typed: LosslabConfig, job: JobContext) -> float:
    """Train every member, log everything, and return the median final test metric."""
    started = time.perf_counter()
    # Set on every job, default included: loky reuses worker processes, so a value set by an
    # earlier job would otherwise leak into the next.
    use_threads(typed.trainer.threads or default_threads())
    seeds = [typed.seed + k for k in range(typed.members)]
    losses = [loss.name for loss in typed.job_losses().values()]
    members = [(loss, seed) for loss in losses for seed in seeds]  # the model's order
    data, module, panels = build(cfg, typed, [seed for _, seed in members])
    split = data.split
    metric = typed.primary_metric()

    # Tracking: one run per member, children of the sweep's parent run when there is one.
    uri = store.resolve_uri(typed.logger.tracking_uri)
    data_file = typed.dataset.label if typed.dataset.path else None
    folds = typed.dataset.folds
    fold = f"fold={typed.dataset.fold}/{folds}" if folds > 1 else ""
    names = [run_name(loss, job.overrides, seed, data_file, fold) for loss, seed in members]
    checkpoint_dir = job.output_dir / "checkpoints"
    # The bar's label stays short on an 80-column terminal: the run name holds every override.
    shown = f"seed={seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    bar = f"{'+'.join(losses)} {shown}"
    single = job.sweep_dir is None and typed.trainer.enable_progress_bar
    trainer, runs_logger = build_trainer(cfg, typed, job.output_dir, bar if single else None)
    logged = 0
    ckpt_path = None
    # a job SLURM requeued (preemption, time-out) continues its runs from its checkpoint
    resume_from = typed.resume or cluster.requeued_checkpoint(job.output_dir)
    if resume_from:
        from src import resume  # reads the store here; only a resume needs it

        found = resume.locate(str(resume_from), uri, cfg)
        ckpt_path, logged = found.checkpoint, found.logged
        resumed = {
            "resumed_from": f"epoch {found.epoch}: {found.checkpoint}",
            **tracking.owner_tags(),  # this process writes them now
            **cluster.tags(),
        }
        runs = tracking.RunSet.reopen(uri, found.run_ids, resumed, job.output_dir / unsent.FOLDER)
        log.info(f"resuming {len(found.run_ids)} run(s) from epoch {found.epoch}")
    else:
        runs = _start_runs(cfg, typed, job, uri, names, members, split)

    runs_logger.runs = runs
    module.log_to_lightning = _reads_metrics(trainer, typed)
    trainer.callbacks.insert(0, MlflowHistory(runs, typed.logger.flush_every_n_epochs, logged))
    try:
        with _sigint_kept():
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        finals = _finish(runs, module, data, panels, typed, names, checkpoint_dir, trainer, started)
    except BaseException as error:
        _close_stopped(runs, error, checkpoint_dir)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            if (checkpoint_dir / "last.ckpt").exists():
                kept = [o for o in job.overrides if not o.startswith("resume=")]
                again = " ".join([*kept, f"resume={runs.run_ids[0]}"])
                hint = store.redact(f"python -m src.train {again}")
                print(f"losslab: continue it with: {hint}", file=sys.stderr)
            raise tracking.RunsKilled from error
        raise
    elapsed = time.perf_counter() - started
    prefix = f"#{job.job_num} " if job.job_num is not None else ""
    for k, (name, final) in enumerate(zip(names, finals)):
        line = _study_line(final, metric, module.heads[module.head_index(k)].loss.metrics)
        log.info(f"{prefix}{name}: {line} [{final['outcome']}, {elapsed:.1f}s]")
    return float(np.median([f[f"final_test_{metric}"] for f in finals]))


def build(
    cfg: DictConfig, typed: LosslabConfig, seeds: list[int]
) -> tuple[StudyDataModule, LossModule, list[Panel]]:
    """Data, model, module and each head's metric panel, each function a config names called
    once (each loss and every metric on a few rows, the optimizer built and thrown away)
    before any run starts: a value one of them refuses is a config mistake, reported in one
    line, with nothing in MLflow. ``seeds``: each member's, in member order."""
    pl.seed_everything(typed.seed, workers=True, verbose=False)
    _check_accelerator(typed.trainer.accelerator)
    check_targets(typed)
    with refused_by_target("dataset.generator"):
        data = StudyDataModule(typed.dataset, typed.loss.targets)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    sizes = [data.split.n_inputs, *typed.model.hidden_sizes, data.split.n_outputs]
    model = MemberMLP(
        sizes,
        typed.model.activation,
        generators,
        norm=typed.model.norm,
        dropout=typed.model.dropout,
    )
    heads = build_heads(
        typed.job_losses(),
        typed.members,
        typed.primary_metric(),
        typed.metrics,
        typed.loss.targets,
        data.split.n_classes,
    )
    module = LossModule(
        model=model,
        heads=heads,
        targets=typed.loss.targets,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        batch_size=typed.dataset.batch_size,
        generators=generators,
        units=data.split.units,
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) if typed.scheduler else None,
        clip=member_clipper(typed.trainer.gradient_clip_val, typed.trainer.gradient_clip_algorithm),
        limit_batches=typed.trainer.limit_train_batches,
    )
    module.check_loss(*data.train)
    with refused_by_target("optimizer" if typed.scheduler is None else "optimizer/scheduler"):
        module.configure_optimizers()  # thrown away: Lightning builds the one it trains with
    return data, module, _panels(typed, module, data)


def build_trainer(
    cfg: DictConfig, typed: LosslabConfig, output_dir: Path, bar: str | None
) -> tuple[pl.Trainer, RunSetLogger]:
    """The Trainer with the config's arguments and callbacks, built before any run starts: an
    argument or callback Lightning refuses is one line, with nothing in MLflow. ``bar``: the
    progress bar's label (a single run), or None for none."""
    prefixes = tuple(typed.allowed_callback_prefixes)
    callbacks = [
        _callback(name, node, prefixes) for name, node in (cfg.get("callbacks") or {}).items()
    ]
    has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    if bar is None:  # a sweep's job: its one line is the progress
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    elif not has_bar:
        callbacks.append(EpochBar(bar, typed.primary_metric()))
    logger = RunSetLogger(output_dir)
    try:
        trainer = pl.Trainer(
            **typed.trainer.lightning_args(),
            # One process, never launched by srun for Lightning: its own environment, not the
            # SLURM one it would pick inside a cluster job (the srun hint, which Lightning
            # still prints on such machines, goes to the job's log file: src/train.py).
            plugins=[LightningEnvironment()],
            logger=logger,
            log_every_n_steps=1,  # a step is an epoch
            enable_progress_bar=bar is not None,
            enable_model_summary=False,
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            num_sanity_val_steps=0,
            default_root_dir=output_dir,
            callbacks=callbacks,
        )
    except Exception as error:
        raise refused("trainer", error) from error
    logger.epoch = lambda: trainer.current_epoch + 1
    return trainer, logger


def _reads_metrics(trainer: pl.Trainer, typed: LosslabConfig) -> bool:
    """Whether anything may read ``trainer.callback_metrics``: any callback but a
    ModelCheckpoint without a monitor, Lightning's Timer and losslab's bar, or a plateau
    scheduler."""
    from pytorch_lightning.callbacks import Timer

    def reads(callback: pl.Callback) -> bool:
        unmonitored = isinstance(callback, ModelCheckpoint) and callback.monitor is None
        return not (unmonitored or isinstance(callback, (Timer, EpochBar)))

    monitored = typed.scheduler is not None and typed.scheduler.monitor is not None
    return monitored or any(reads(callback) for callback in trainer.callbacks)


def resolve_target(where: str, spelled: str, prefixes: tuple[str, ...]) -> object:
    """What ``_target_`` names, checked by what it is, not how it is spelled: a function or a
    class defined in a module under an allowed prefix. ``src.tracking.Path.write_text``
    passes the spelling (``src.``) and is refused here: it is pathlib's. torch's C functions
    (``torch.nn.functional.softplus`` lives in ``torch._C._nn``) count as where they are
    spelled."""
    from hydra.utils import get_object

    try:
        target = get_object(spelled)
    except Exception as error:
        raise refused(where, error) from error
    module = getattr(target, "__module__", None) or ""
    builtin_of_torch = inspect.isbuiltin(target) and module.startswith("torch._C")
    kind_ok = inspect.isfunction(target) or inspect.isclass(target) or builtin_of_torch
    inside = f"{module}.".startswith(prefixes)  # torch.nn.functional. holds torch.nn.functional
    if not kind_ok or not (inside or builtin_of_torch):
        raise ConfigError(
            f"{where}._target_={spelled} is {getattr(target, '__qualname__', type(target))} "
            f"from {module or 'nowhere'}, not a function or class under {list(prefixes)}"
        )
    return target


def check_targets(typed: LosslabConfig) -> None:
    """Every function and class the config names, by what it resolves to (before any of
    them is called)."""
    for where, spelled in typed.targets():
        resolve_target(where, spelled, tuple(typed.allowed_target_prefixes))


def _callback(name: str, node: DictConfig, prefixes: tuple[str, ...]) -> pl.Callback:
    """``callbacks.<name>``: a Lightning Callback class, checked by what it resolves to."""
    where = f"callbacks.{name}"
    target = resolve_target(where, node._target_, prefixes)
    if not (isinstance(target, type) and issubclass(target, pl.Callback)):
        raise ConfigError(f"{where}._target_={node._target_} is not a Lightning Callback class")
    with refused_by_target(where):
        return instantiate(node)


def _panels(typed: LosslabConfig, module: LossModule, data: StudyDataModule) -> list[Panel]:
    """Each head's metric panel (its runs'), each function tried on a few train rows (two of
    each class): a metric that refuses this task's outputs is one line, before any run
    starts."""
    x, y = data.train
    if typed.loss.task == Task.regression:
        rows = torch.arange(min(2, len(x)))
    else:
        labels_ = class_labels(y, module.targets)
        rows = torch.cat([torch.nonzero(labels_ == c)[:2, 0] for c in labels_.unique()])
    with module.scoring():
        outputs = module.outputs(x[rows], y[rows])
    panels = []
    for head, (pred, target) in zip(module.heads, outputs):
        panel = Panel.build(typed.panel(data.split.nonnegative, head.loss), head.loss.targets)
        for name, fn in panel.fns.items():  # one at a time, to name the one that refuses
            try:  # one member: whether a function takes this task's outputs is alike for all
                Panel({name: fn}, panel.kinds, panel.targets)(pred[:1], target[:1])
            except Exception as error:
                raise refused(f"metrics.{name}", error) from error
        panels.append(panel)
    return panels


@contextmanager
def _sigint_kept() -> Iterator[None]:
    """Ctrl-C keeps working after training: on a KeyboardInterrupt, Lightning sets SIGINT to
    SIG_IGN for good (pytorch_lightning/trainer/call.py), so a second Ctrl-C while the runs
    are closed did nothing, and every process started afterwards (a sweep's next job, a
    test's next CLI) inherited the ignored signal."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


def _check_accelerator(accelerator: str) -> None:
    """An accelerator that is not there is one line before any run starts (Lightning says so
    only after the run exists)."""
    missing = {
        "gpu": not torch.cuda.is_available(),
        "cuda": not torch.cuda.is_available(),
        "mps": not torch.backends.mps.is_available(),
    }
    if missing.get(accelerator):
        raise ConfigError(
            f"trainer.accelerator={accelerator}, but this machine has no such device visible to "
            "torch; use trainer.accelerator=cpu"
        )


def _outcome(test_value: float, trivial: float, direction: Direction, diverged: bool) -> str:
    """ok, diverged (non-finite loss), or collapsed: no better than ignoring the input."""
    if diverged:
        return "diverged"
    lower = direction == Direction.lower
    no_better = test_value >= trivial if lower else test_value <= trivial
    return "collapsed" if no_better else "ok"


def _finish(
    runs: tracking.RunSet,
    module: LossModule,
    data: StudyDataModule,
    panels: list[Panel],
    typed: LosslabConfig,
    names: list[str],
    checkpoint_dir: Path,
    trainer: pl.Trainer,
    started: float,
) -> list[dict]:
    """Each member's figure and model, then its final evaluation (the loss and its head's
    whole metric panel), outcome and true status. Returns each member's final metrics (with
    its outcome). The figures and models go first: the tracking process saves them while
    this one scores the members (0.1-0.3 s), and a sweep's last job ends that much sooner."""
    metric = typed.primary_metric()
    # For the curves' picture only: MlflowHistory already sent these values (as plain()).
    history = [{key: value.tolist() for key, value in row.items()} for row in module.history]
    for head in module.heads:  # a figure per loss: its seeds
        part = head.members
        curves = [{key: values[part] for key, values in row.items()} for row in history]
        runs.log_learning_curves(
            curves, head.loss.name, metric, _job_title(names[part], typed.seed), part
        )
    checkpoint = _log_checkpoint(runs, checkpoint_dir)
    diverged = module.diverged_at.tolist()  # per member: the epoch it diverged at, or 0
    if typed.logger.log_model:  # none for a diverged member
        requirements = [f"torch=={torch.__version__.split('+')[0]}"]
        outputs = [module.heads[module.head_index(k)].loss.output for k in range(len(names))]
        runs.log_models(
            [
                (
                    k,
                    model_name(name),
                    module.model.export(k, outputs[k], data.split.units),
                    data.split.x_test[:5],
                    requirements,
                    typed.logger.model_format.value,
                )
                for k, name in enumerate(names)
                if not diverged[k]
            ]
        )
    members = len(names)
    # {key: one value per member}, None where the member's loss's panel lacks the metric
    final_all: dict[str, list[float | None]] = {}
    # Scored as predictions are made: eval mode (no dropout, batch norm's running statistics).
    with module.scoring(), trainer.precision_plugin.forward_context():
        for split, (x, y) in (("train", data.train), ("test", data.test)):
            final_all[f"final_{split}_loss"] = plain(module.evaluate(x, y)["loss"])
            for head, panel, outputs in zip(module.heads, panels, module.outputs(x, y)):
                for name, values in panel(*outputs).items():
                    final_all.setdefault(f"final_{split}_{name}", [None] * members)
                    final_all[f"final_{split}_{name}"][head.members] = values
    # The job's wall time in each member's run: MLflow's duration of a member's run is its
    # whole job's, so five seeds of one job would read as five runs of that length.
    seconds = {"job_seconds": [round(time.perf_counter() - started, 3)] * members}
    # Step 0 and no "/" in their names: MLflow's run page draws a step-0 metric as a bar (its
    # value), not a one-dot line chart, and files unprefixed keys in its last section, so a
    # run's charts open on the learning curves (sections test/ and train/). Sent after the
    # models: the final ones carry their model's id (linked).
    runs.add_metrics(0, {**final_all, **seconds})
    # Judged by the sweep's metric where a loss's panel has it (log_loss: not for hinge's
    # tanh outputs), else by the task's primary.
    wanted = typed.judged_metric()
    judged = [wanted if wanted in panel.fns else metric for panel in panels]
    trivial = [
        trivial_score(module, head, panel, data.split, name)
        for head, panel, name in zip(module.heads, panels, judged)
    ]
    stop = _stop_tags(trainer, len(history))
    statuses, closing_tags, finals = [], [], []
    for k in range(members):
        h = module.head_index(k)
        final: dict = {key: values[k] for key, values in final_all.items() if values[k] is not None}
        test_value = final[f"final_test_{judged[h]}"]
        direction = typed.metrics[judged[h]].direction
        final["outcome"] = _outcome(test_value, trivial[h], direction, diverged[k] > 0)
        tags = {
            "outcome": final["outcome"],
            "outcome_metric": judged[h],
            "trivial_test_score": f"{trivial[h]:.6g}",
            **stop,
        }
        tags.update(checkpoint)
        if diverged[k]:
            tags["error"] = f"loss became non-finite at epoch {diverged[k]}"
        closing_tags.append(tags)
        statuses.append("FAILED" if diverged[k] else "FINISHED")
        finals.append(final)
    runs.flush()
    runs.end(statuses, closing_tags)
    runs.wait()
    return finals


def _stop_tags(trainer: pl.Trainer, epochs: int) -> dict[str, str]:
    """What ended training early (EarlyStopping: ``stopped_epoch``, 1-based like MLflow's
    steps) and the best checkpoint a monitoring ModelCheckpoint kept."""
    tags = {}
    if epochs < trainer.max_epochs and trainer.should_stop:
        tags["stopped_epoch"] = str(epochs)
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if best and getattr(trainer.checkpoint_callback, "monitor", None):
        tags["checkpoint.best"] = best
    return tags


def _start_runs(
    cfg: DictConfig,
    typed: LosslabConfig,
    job: JobContext,
    uri: str,
    names: list[str],
    members: list[tuple[str, int]],
    split: Split,
) -> tracking.RunSet:
    """New runs, one per member (its loss's name and seed), with their tags, params, config
    files and data figure. A member's params are its own loss's: those of the run it would
    be on its own."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    # Each loss's params once, shared by its members' runs (only the seed differs): the same
    # objects pickle once, so 30 members' 238 params each go to the tracking process as 68 KB,
    # not 203 KB, which overflowed its socket's buffer and held the job until it was read.
    own_params = {
        loss["name"]: tracking.flatten({**resolved, "loss": loss})
        for loss in [resolved["loss"], *resolved.pop("member_losses").values()]
    }
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    parent_file = job.sweep_dir / tracking.PARENT_RUN_FILE if job.sweep_dir else None
    source = tracking.source_tags(job.overrides, job.sweep_dir)
    if parent_file is not None and parent_file.exists():
        source["mlflow.parentRunId"] = parent_file.read_text().strip()
    tags = []
    params = []
    for k, (loss, seed) in enumerate(members):
        run_tags = {
            "loss": loss,
            "task": typed.loss.task.value,
            "dataset": typed.dataset.label,
            **split.facts,
            "seed": str(seed),
            "members": str(len(members)),
            "member": str(k),
            "metric": typed.primary_metric(),
            **({"fold": str(typed.dataset.fold)} if typed.dataset.folds > 1 else {}),
            **({"job": str(job.job_num)} if job.job_num is not None else {}),
            "output_dir": str(job.output_dir),
            **cluster.tags(),
            **source,
            **tracking.owner_tags(),
        }
        tags.append(run_tags)
        params.append({**own_params[loss], "seed": seed})
    spool = job.output_dir / unsent.FOLDER
    runs = tracking.RunSet.start(uri, typed.logger.experiment, names, tags, params, spool)
    runs.log_text(None, config_yaml, "config/config.yaml")  # the job's, in every member's run
    runs.log_text(None, "\n".join(job.overrides) + "\n", "config/overrides.txt")
    runs.log_input(split.record)
    if split.preprocessing is not None:  # raw rows in, the target's units out (src.predict)
        folder = split.preprocessing.save(job.output_dir / "preprocessing")
        for file in sorted(folder.iterdir()):
            runs.log_file(None, file, "preprocessing")
    thin = split.thinned()
    arrays = (thin.x_train, labels(thin.y_train), thin.x_test, labels(thin.y_test))
    key = repr((typed.dataset, typed.loss.targets))
    classes = typed.loss.task != Task.regression
    runs.log_dataset(key, arrays, f"{typed.dataset.label} data", classes)
    return runs


def _close_stopped(runs: tracking.RunSet, error: BaseException, folder: Path | None) -> None:
    """Close runs that stopped early with the truth: KILLED (Ctrl-C, SIGTERM) or FAILED with
    the reason as a tag, keeping the metrics buffered so far and the last checkpoint. The
    tracking process attempts each write on its own, so a failing artifact store cannot
    leave a run RUNNING."""
    if runs.ended:  # closed with their true statuses; the store failed, and that is recorded
        return  # with the runs, or their data kept on disk (tracking.Tracker._keep)
    interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
    status = "KILLED" if interrupted else "FAILED"
    reason = "interrupted" if interrupted else f"{type(error).__name__}: {error}"
    tags = {"outcome": "diverged" if isinstance(error, Diverged) else status.lower()}
    tags["error"] = reason[:5000]
    try:
        runs.flush()
        tags.update(_log_checkpoint(runs, folder))
        if not interrupted:  # the job's traceback, in every member's run
            runs.log_text(None, traceback.format_exc(), "error.txt")
        runs.end([status] * runs.members, [tags] * runs.members)
        runs.wait()
    except tracking.TrackingError as failed:  # the store may be what failed
        log.warning(f"losslab: could not record the stop in MLflow: {failed}")


def _study_line(final: dict[str, float], metric: str, extra: list[str]) -> str:
    """The study's printout with the metric named, to 4 significant digits (3 decimals hid
    MSE's 0.0007): 'accuracy Train: 0.836, Test: 0.852', 'mse Train: 0.00071, Test: 0.005'."""
    return "; ".join(
        f"{name} Train: {final[f'final_train_{name}']:.4g}, Test: {final[f'final_test_{name}']:.4g}"
        for name in dict.fromkeys([metric, *extra])
    )


def _log_checkpoint(runs: tracking.RunSet, folder: Path | None) -> dict[str, str]:
    """The job's checkpoint (every member's state) once, in the first member's run; returns
    the tags by which every member's run points to it (none without a checkpoint). A copy in
    each of K runs made the store grow with K squared."""
    last = folder / "last.ckpt" if folder is not None else None
    if last is None or not last.exists():
        return {}
    runs.log_file(0, last, "checkpoints")
    where = f"runs:/{runs.run_ids[0]}/checkpoints/last.ckpt"
    return {"checkpoint": where, "checkpoint.members": str(runs.members)}
