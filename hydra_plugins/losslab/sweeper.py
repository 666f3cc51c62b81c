"""The default sweeper: Hydra's grid sweep, with seed sweeps trained as one batched model.

``python -m src.train -m loss=mse,bce seed=0,1,2,3,4`` would launch ten jobs; the jobs that
differ only in their seed are instead launched as one job with ``seed=0 members=5`` (see
``members`` in conf/config.yaml), which trains the five seeds together and still logs one
MLflow child run per seed. Only consecutive seeds can share a job (members are seed,
seed+1, ...): ``seed=0,1,2,7`` becomes ``seed=0 members=3`` and ``seed=7``. Jobs that already
set ``members`` are left alone, and so are jobs whose members would steer each other (early
stopping or a plateau scheduler watch the members' median: see
``LosslabConfig.couples_members``), so that a batched job always equals its separate runs.
``hydra.sweeper.batch_seeds=false`` launches one job per seed.

Hydra only instantiates plugins from the ``hydra_plugins`` namespace package, hence this home;
conf/hydra/sweeper/losslab.yaml selects it and conf/config.yaml makes it the default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig

SEED_KEYS = ("seed", "+seed", "++seed")
FOLDS_KEY, FOLD_KEY = "dataset.folds", "dataset.fold"


def expand_folds(jobs: Sequence[Sequence[str]]) -> list[list[str]]:
    """A job with ``dataset.folds=K`` (K > 1) and no ``dataset.fold`` becomes K jobs, one per
    fold (``dataset.fold=0..K-1``), in place: cross-validation is one MLflow run per fold and
    seed, and seeds still batch within a fold."""
    expanded: list[list[str]] = []
    for job in jobs:
        settings = dict(o.partition("=")[::2] for o in job)
        try:
            folds = int(settings.get(FOLDS_KEY, "1"))
        except ValueError:
            folds = 1  # the config check says what is wrong with it
        if folds > 1 and FOLD_KEY not in settings:
            expanded += [[*job, f"{FOLD_KEY}={k}"] for k in range(folds)]
        else:
            expanded.append(list(job))
    return expanded


def _seed(override: str) -> int | None:
    key, _, value = override.partition("=")
    if key not in SEED_KEYS:
        return None
    try:
        return int(value)
    except ValueError:
        return None


# Overrides that can change whether members steer each other (callbacks, the scheduler, or a
# preset that sets them); the rest of a job cannot.
COUPLING_KEYS = ("callbacks", "scheduler", "experiment", "hparams_search")


def members_independent(loader: Any, config: DictConfig) -> Callable[[Sequence[str]], bool]:
    """A check whether a batched job's seeds may train as its members. It composes the job
    (about 0.2 s), once per distinct setting of COUPLING_KEYS, usually once per sweep; the
    batched job itself, so that a launcher in this process reuses that composition."""
    from src.config import validate

    seen: dict[tuple[str, ...], bool] = {}

    def independent(job: Sequence[str]) -> bool:
        key = tuple(o for o in job if o.lstrip("+~").startswith(COUPLING_KEYS))
        if key not in seen:
            composed = loader.load_sweep_config(config, list(job))
            seen[key] = not validate(composed).couples_members()
        return seen[key]

    return independent


def batch_seeds(
    jobs: Sequence[Sequence[str]], independent: Callable[[Sequence[str]], bool] = lambda job: True
) -> list[list[str]]:
    """Merge jobs whose overrides differ only in a run of consecutive integer seeds into one
    job ``[..., seed=<first>, members=<count>]``, where ``independent(that job)`` allows it;
    keep the first job's position and order."""
    groups: dict[tuple[str, ...], list[tuple[int, list[str]]]] = {}
    order: list[tuple[str, ...] | int] = []
    for index, job in enumerate(jobs):
        seeds = [s for s in map(_seed, job) if s is not None]
        explicit_members = any(o.partition("=")[0].lstrip("+") == "members" for o in job)
        if len(seeds) != 1 or explicit_members:
            order.append(index)  # nothing to batch: launched as it is
            continue
        rest = tuple(o for o in job if _seed(o) is None)
        if rest not in groups:
            groups[rest] = []
            order.append(rest)
        groups[rest].append((seeds[0], list(job)))
    merged: list[list[str]] = []
    for item in order:
        if isinstance(item, int):
            merged.append(list(jobs[item]))
            continue
        runs: list[list[tuple[int, list[str]]]] = []
        for seed, job in groups[item]:
            if runs and seed == runs[-1][-1][0] + 1:
                runs[-1].append((seed, job))
            else:
                runs.append([(seed, job)])
        for run in runs:
            if len(run) == 1:
                merged.append(run[0][1])
                continue
            batched = [*run[0][1], f"members={len(run)}"]
            merged += [batched] if independent(batched) else [job for _, job in run]
    return merged


class LosslabSweeper(BasicSweeper):
    """BasicSweeper whose grid launches each seed sweep as one members=K job."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        batch_seeds: bool = True,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.batch_seeds = batch_seeds

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Skipped: losslab's callback (on_multirun_start) has already composed and validated
        every job of the sweep before anything was created; composing each again costs about
        0.3 s per job."""

    def split_arguments(  # an instance method here: it needs batch_seeds
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        batches = BasicSweeper.split_arguments(overrides, None)
        jobs = expand_folds([job for batch in batches for job in batch])
        if self.batch_seeds:
            loader = self.hydra_context.config_loader
            merged = batch_seeds(jobs, members_independent(loader, self.config))
            if len(merged) < len(jobs):
                print(
                    f"losslab: {len(jobs)} runs launched as {len(merged)} jobs (seeds as members)"
                )
            jobs = merged
        return [
            list(chunk) for chunk in BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size)
        ]
