"""Hydra callbacks: validate before anything is created, and group a sweep under one parent
MLflow run that is created once, in the launching process, and always closed.

Creating the store, experiment and parent here (not in the jobs) is what keeps parallel jobs
from racing on a fresh sqlite database. Hydra skips ``on_multirun_end`` when a job raises or an
override is bad, so the entry point closes the parent through ``close_sweep`` as well.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src import overlap, override_policy, store, tracking
from src.config import ConfigError, validate
from src.frozen_imports import frozen_imports
from src.writer import WriterError

# Hydra's default launcher: jobs run one after another in the launching process.
IN_PROCESS_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@dataclass
class SweepState:
    """The open sweep of this (launching) process, if any."""

    uri: str | None = None
    parent_run_id: str | None = None
    sweep_dir: Path | None = None
    reported: bool = False
    local: bool = True  # jobs die with the launching process (not so on a cluster)
    failures: int = 0
    summary: str = ""  # one line for the end of the command
    metric: str | None = None  # report.metric: what the report ranks by


SWEEP = SweepState()


class Abort(BaseException):
    """Stops Hydra from a callback or a single run's task (Hydra turns a callback's Exception
    into a mere warning, and prints a failed task's overrides first); the entry point reports
    the cause in one line."""


def _abort_on_error(method: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(method)
    def wrapped(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception as error:
            raise Abort() from error

    return wrapped


def _sweep_configs(cfg: DictConfig) -> list[DictConfig]:
    """Every job config of a grid sweep, composed as the sweeper will compose them: the
    config's ``hydra.sweeper.params`` (an experiment preset's sweep) first, then the command
    line's overrides, which win on the same key."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = dict(cfg.hydra.sweeper.get("params") or {})
    overrides = [f"{key}={value}" for key, value in params.items()]
    overrides += list(cfg.hydra.overrides.task)
    loader = GlobalHydra.instance().config_loader()
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)  # glob()
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    if "batch_seeds" in cfg.hydra.sweeper:  # losslab's sweeper: folds, seeds and losses
        from hydra_plugins.losslab.sweeper import plan_jobs

        sweeper = cfg.hydra.sweeper
        jobs = plan_jobs(jobs, loader, cfg, sweeper.batch_seeds, sweeper.get("batch_losses", True))
    configs = []
    for job in jobs:
        composed = loader.load_sweep_config(cfg, list(job))  # as the launcher does
        own = dict(composed.hydra.sweeper.get("params") or {})
        if own != params:  # e.g. experiment=glob(*): the sweeper reads params only once
            raise ConfigError(
                f"job '{' '.join(job)}' brings its own sweep (hydra.sweeper.params={own}), "
                "which a running sweep cannot expand; run one experiment per sweep "
                "(-m experiment=<name>) or `make study` for all of them"
            )
        configs.append(composed)
    return configs


# A master config's id and a job's overrides -> (the master, kept alive so that its id is not
# reused; the job's composed config)
Composed = dict[tuple[int, tuple[str, ...]], tuple[DictConfig, DictConfig]]


def _compose_once(loader: Any) -> Composed:
    """In a sweep whose jobs run in this process, each job's config was composed up to three
    times: here for validation, by the seed-batching sweeper, and by the launcher (0.17 s a
    time, measured). Compose it once per master config and overrides, and hand out copies
    (0.01 s). Other launchers compose in their own processes and are left alone. Returns the
    compositions so far, which a forked copy of this process sends back (``_checked_jobs``)."""
    compose = loader.load_sweep_config
    if hasattr(compose, "composed"):
        return compose.composed
    composed: Composed = {}

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key not in composed:  # the master is kept with it, so its id is not reused
            composed[key] = (master_config, compose(master_config, list(sweep_overrides)))
        return copy.deepcopy(composed[key][1])

    load_sweep_config.composed = composed  # type: ignore[attr-defined]
    loader.load_sweep_config = load_sweep_config
    return composed


def _checked(config: DictConfig, grid: bool) -> list[Any]:
    """Every job of the sweep (a grid's, else the config itself), validated before anything
    is created."""
    return [validate(job) for job in (_sweep_configs(config) if grid else [config])]


def _checked_jobs(
    config: DictConfig, composed: Composed
) -> tuple[list[Any], list[tuple], list[tuple]]:
    """Every job of a grid sweep, composed and validated (``_checked``); the compositions
    made from ``config``, for a launcher in this process to reuse, as ``(key, job config)``;
    and the sweeper's plans for it, as ``(key, plan)`` (``PLANS``): so they can come back from
    a forked copy of this process."""
    from hydra_plugins.losslab.sweeper import PLANS

    checked = _checked(config, grid=True)
    made = [(key, job) for key, (master, job) in composed.items() if master is config]
    plans = [(key, plan) for key, (master, plan) in PLANS.items() if master is config]
    return checked, made, plans


def _import_experiment() -> None:
    with frozen_imports():
        import src.experiment  # noqa: F401


def compose_primary_once() -> None:
    """A sweep's primary config was composed twice: by Hydra's ``get_mode`` (to read
    ``hydra.mode``, without checking the sweep's overrides) and again to start the sweep
    (0.17-0.21 s each, measured). Hand the first, which ``get_mode`` only reads, to the
    second, checking the overrides as Hydra's own second composition would. Only a call that
    skipped that check is kept, and only for one later call with the same arguments, so job
    compositions and single runs (composed in RUN mode) are untouched."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    load = ConfigLoaderImpl.load_configuration
    if getattr(load, "hands_over", False):
        return
    kept: dict[tuple, DictConfig] = {}

    def load_configuration(
        self: ConfigLoaderImpl,
        config_name: str | None,
        overrides: list[str],
        run_mode: Any,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        key = (id(self), config_name, tuple(overrides), run_mode, from_shell)
        if not validate_sweep_overrides:
            kept[key] = load(self, config_name, overrides, run_mode, from_shell, False)
            return kept[key]
        if key not in kept:
            return load(self, config_name, overrides, run_mode, from_shell, True)
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        self.validate_sweep_overrides_legal(parsed, run_mode=run_mode, from_shell=from_shell)
        return kept.pop(key)

    load_configuration.hands_over = True  # type: ignore[attr-defined]
    ConfigLoaderImpl.load_configuration = load_configuration  # type: ignore[method-assign]


def _is_grid(sweeper_target: str) -> bool:
    """A BasicSweeper or a subclass (losslab's LosslabSweeper): the grid is known upfront."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.utils import get_class

    try:
        return issubclass(get_class(sweeper_target), BasicSweeper)
    except Exception:  # a sweeper that cannot be imported here is not a grid we can list
        return False


def _check_writable(folder: Path, key: str) -> None:
    """An output folder that cannot be made is one line before anything is created (Hydra
    would fail making it with a traceback, after the store was set up). Tried with a
    temporary file in its nearest existing parent, which is removed again: the folder's
    own name may hold a time stamp Hydra has yet to resolve."""
    parent = store.nearest_existing(folder.absolute())
    try:
        store.writable_folder(parent)
    except OSError as error:
        reason = error.strerror or str(error)
        example = "multirun" if "sweep" in key else "outputs"
        raise ConfigError(
            f"{key}={folder}: cannot create a folder under {parent} ({reason}); "
            f"choose a writable place, e.g. {key}={example}/<name>"
        ) from None


def _check_job_logging(config: DictConfig) -> None:
    node = OmegaConf.to_container(config.hydra.job_logging, resolve=False)
    override_policy.check_logging_references("hydra.job_logging", node)


class LosslabCallback(Callback):
    @_abort_on_error
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        typed = validate(config)
        if typed.dataset.folds > 1 and typed.dataset.fold is None:
            raise ConfigError(
                f"dataset.folds={typed.dataset.folds} runs one job per fold: run it as a sweep "
                "(python -m src.train -m ...), or pick one fold with dataset.fold=<k>"
            )
        uri = store.resolve_uri(typed.logger.tracking_uri)
        store.check(uri, typed.logger.experiment)
        if typed.resume:  # the run and checkpoint must exist before an output dir is made
            from src import resume

            resume.locate(typed.resume, uri, config)
        _check_writable(Path(config.hydra.run.dir), "hydra.run.dir")
        _check_job_logging(config)
        # starts importing MLflow while the job imports torch; then closes runs that processes
        # now gone left RUNNING (in the tracking process: the job does not wait for it)
        tracking.writer(uri, models=typed.logger.log_model).send("reap", typed.logger.experiment)

    @_abort_on_error
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        grid = _is_grid(config.hydra.sweeper._target_)
        in_process = config.hydra.launcher._target_ == IN_PROCESS_LAUNCHER
        imports = None
        if in_process:
            composed = _compose_once(GlobalHydra.instance().config_loader())
        if grid and in_process:
            # The jobs are composed in a forked copy of this process while this one imports
            # torch and Lightning (src/overlap.py); a mistake is still reported before
            # anything is created, without waiting for the imports.
            jobs = overlap.Forked(lambda: _checked_jobs(config, composed))
            imports = overlap.Threaded(_import_experiment)
            from hydra_plugins.losslab.sweeper import PLANS

            checked, made, plans = jobs.result()
            composed.update({key: (config, job) for key, job in made})
            PLANS.update({key: (config, plan) for key, plan in plans})
        else:
            checked = _checked(config, grid)
        typed = checked[0]
        if any(job.resume for job in checked):
            raise ConfigError("resume= continues one run; resume each sweep job on its own")
        uri = store.resolve_uri(typed.logger.tracking_uri)
        store.check(uri, typed.logger.experiment)
        _check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")
        _check_job_logging(config)

        # The tracking process creates (and migrates) the store, the experiment and the parent
        # once, here: parallel jobs never race on a fresh sqlite database.
        writer = tracking.writer(uri, models=any(job.logger.log_model for job in checked))
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = list(config.hydra.overrides.task)
        name = f"sweep {sweep_dir.name}: {' '.join(overrides) or 'defaults'}"
        tags = {
            "losslab.sweep": "parent",
            **tracking.source_tags(overrides, sweep_dir),
            **tracking.owner_tags(),
        }
        call = writer.send("start_parent", typed.logger.experiment, name, tags, reply=True)
        writer.send("reap", typed.logger.experiment)  # runs left RUNNING by processes now gone
        if in_process:
            # The jobs run in this process: they leave their MLflow work to the tracking
            # process and the sweep waits for it once, at its end; and torch and Lightning are
            # imported now, while the tracking process sets up the store.
            tracking.hold(uri)
            print("losslab: preparing the sweep: loading torch and Lightning", flush=True)
            if imports is None:
                _import_experiment()
            else:
                imports.result()
        try:
            parent = writer.result(call)
        except WriterError as error:
            raise ConfigError(f"MLflow could not start the sweep's parent run: {error}") from None
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / tracking.PARENT_RUN_FILE).write_text(parent)
        SWEEP.uri, SWEEP.parent_run_id, SWEEP.sweep_dir = uri, parent, sweep_dir
        SWEEP.reported = False
        SWEEP.metric = typed.report.metric
        SWEEP.local = not config.hydra.launcher._target_.endswith("SlurmLauncher")
        sweeper = config.hydra.sweeper._target_.rsplit(".", 1)[-1]
        size = f"{len(checked)} job(s)" if grid else f"jobs chosen by {sweeper}"
        print(f"losslab: sweep of {size} -> {sweep_dir} (MLflow parent run {parent})")

    @_abort_on_error
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        report()
        close_sweep("FAILED" if SWEEP.failures else "FINISHED")


def report() -> None:
    """Wait for the jobs' MLflow work, then write the comparison report of the open sweep,
    log it to the parent, tag an Optuna search's best trial, and count the failures. Runs at
    most once per sweep."""
    if SWEEP.parent_run_id is None or SWEEP.reported:
        return
    SWEEP.reported = True
    for failure in tracking.settle(SWEEP.uri):  # those runs are marked FAILED; counted below
        print(f"losslab: MLflow could not record: {failure}", file=sys.stderr)
    writer = tracking.writer(SWEEP.uri)
    built = writer.call("report", SWEEP.parent_run_id, SWEEP.sweep_dir, SWEEP.metric)
    print(built["console"], end="", flush=True)
    SWEEP.failures = built["failures"]
    SWEEP.summary = (
        f"{built['failures']} of {built['runs']} run(s) failed"
        if built["failures"]
        else f"all {built['runs']} run(s) finished"
    ) + f"; report in {SWEEP.sweep_dir}/report.md"
    if built["best"]:
        SWEEP.summary += f"; best trial tagged best_trial=true ({built['best']} run(s))"


def close_sweep(status: str) -> bool:
    """Close the open parent run (if any) with ``status``; safe to call more than once. True
    when there was one.

    A sweep that ends on an error or Ctrl-C (Hydra then skips ``on_multirun_end``) first closes
    child runs its dead local workers left RUNNING, then writes the report, so every run ends
    with a true status.
    """
    if SWEEP.parent_run_id is None:
        return False
    writer = tracking.writer(SWEEP.uri)
    try:
        if status != "FINISHED" and SWEEP.local:
            writer.call("close_orphans", SWEEP.parent_run_id, status)
        if status == "FAILED":
            report()
    except Exception as error:  # the parent must be closed even if this cannot be done
        print(f"losslab: no report ({type(error).__name__}: {error})", file=sys.stderr)
    try:
        writer.call("end_parent", SWEEP.parent_run_id, status)
    except WriterError as error:
        print(f"losslab: could not close the sweep's MLflow run: {error}", file=sys.stderr)
    SWEEP.parent_run_id = None
    return True
