"""Hydra callbacks: validate before anything is created, and group a sweep under one parent
MLflow run that is created once, in the launching process, and always closed.

Creating the store, experiment and parent here (not in the jobs) is what keeps parallel jobs
from racing on a fresh sqlite database. Hydra skips ``on_multirun_end`` when a job raises or an
override is bad, so the entry point closes the parent through ``close_sweep`` as well.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from src import store
from src.config import validate


@dataclass
class SweepState:
    """The open sweep of this (launching) process, if any."""

    uri: str | None = None
    parent_run_id: str | None = None
    failures: int = 0


SWEEP = SweepState()


class Abort(BaseException):
    """Stops Hydra from a callback (Hydra turns a callback's Exception into a mere warning);
    the entry point reports the cause."""


def _abort_on_error(method: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(method)
    def wrapped(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception as error:
            raise Abort() from error

    return wrapped


def _sweep_configs(cfg: DictConfig) -> list[DictConfig]:
    """Every job config of a grid sweep, composed as the sweeper will launch them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    overrides = list(cfg.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(overrides)
    loader = GlobalHydra.instance().config_loader()
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    if cfg.hydra.sweeper.get("batch_seeds"):  # losslab's sweeper: seed runs share a job
        from hydra_plugins.losslab.sweeper import batch_seeds

        jobs = batch_seeds(jobs)
    return [
        loader.load_configuration(cfg.hydra.job.config_name, list(job), RunMode.MULTIRUN)
        for job in jobs
    ]


def _is_grid(sweeper_target: str) -> bool:
    """A BasicSweeper or a subclass (losslab's LosslabSweeper): the grid is known upfront."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.utils import get_class

    try:
        return issubclass(get_class(sweeper_target), BasicSweeper)
    except Exception:  # a sweeper that cannot be imported here is not a grid we can list
        return False


class LosslabCallback(Callback):
    @_abort_on_error
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        typed = validate(config)
        store.check(store.resolve_uri(typed.logger.tracking_uri))

    @_abort_on_error
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        grid = _is_grid(config.hydra.sweeper._target_)
        jobs = _sweep_configs(config) if grid else [config]
        checked = [validate(job) for job in jobs]  # every job, before anything is created
        typed = checked[0]
        uri = store.resolve_uri(typed.logger.tracking_uri)
        store.check(uri)

        from src import tracking  # MLflow: only once the sweep is known to be valid

        client = tracking.get_client(uri)  # creates and migrates a fresh store, once
        from src.experiment import EXPERIMENT_DESCRIPTION, PARENT_RUN_FILE, git_version

        experiment_id = tracking.ensure_experiment(
            client, typed.logger.experiment, EXPERIMENT_DESCRIPTION
        )
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = " ".join(config.hydra.overrides.task)
        parent = client.create_run(
            experiment_id,
            run_name=f"sweep {sweep_dir.name}: {overrides or 'defaults'}",
            tags={
                "losslab.sweep": "parent",
                "overrides": store.redact(overrides),
                "sweep_dir": str(sweep_dir),
                "mlflow.source.name": "src.train",
                "mlflow.source.git.commit": git_version(),
            },
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(parent.info.run_id)
        SWEEP.uri, SWEEP.parent_run_id = uri, parent.info.run_id
        print(
            f"losslab: sweep of {len(jobs)} job(s) -> {sweep_dir} "
            f"(MLflow parent run {parent.info.run_id})"
        )

    @_abort_on_error
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from src.report import summarize

        SWEEP.failures = summarize(SWEEP.uri, SWEEP.parent_run_id, Path(config.hydra.sweep.dir))
        close_sweep("FAILED" if SWEEP.failures else "FINISHED")


def close_sweep(status: str) -> None:
    """Close the open parent run (if any) with ``status``; safe to call more than once."""
    if SWEEP.parent_run_id is None:
        return
    from src import tracking

    tracking.get_client(SWEEP.uri).set_terminated(SWEEP.parent_run_id, status)
    SWEEP.parent_run_id = None
