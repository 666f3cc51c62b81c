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

Jobs that then differ only in their loss, among losses of the same shape (their task:
``LossConfig.shape``), train as one model too: ``loss=mse,msle,mae`` is launched as
``loss=mse +loss@member_losses.msle=msle +loss@member_losses.mae=mae``, and ``loss=bce,hinge``
as ``loss=bce +loss@member_losses.hinge=hinge``, each loss's members its own MLflow runs with
its own output, encoding and metrics (``member_losses`` in conf/config.yaml). It is merged only
where composing the merged job gives each loss's job exactly (``losses_mergeable``);
``hydra.sweeper.batch_losses=false`` keeps a job per loss.

Hydra only instantiates plugins from the ``hydra_plugins`` namespace package, hence this home;
conf/hydra/sweeper/losslab.yaml selects it and conf/config.yaml makes it the default.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig

SEED_KEYS = ("seed", "+seed", "++seed")
LOSS_KEY = "loss"
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


def _loss(override: str) -> str | None:
    key, _, value = override.partition("=")
    return value if key == LOSS_KEY else None


def member_loss(option: str) -> str:
    """The override that adds loss ``option`` to a job as members beside its own loss."""
    from src.config import MEMBER_LOSS_KEY

    return f"+{MEMBER_LOSS_KEY}{option}={option}"


def _composer(loader: Any, config: DictConfig) -> Callable[[Sequence[str]], DictConfig]:
    """Each job composed once while the sweep is planned: the loss checks below ask for the
    same job twice, and outside a sweep run in this process (``_compose_once`` in
    src/hydra_callbacks.py) nothing else keeps a composition (0.17 s each)."""
    composed: dict[tuple[str, ...], DictConfig] = {}

    def compose(job: Sequence[str]) -> DictConfig:
        if tuple(job) not in composed:
            composed[tuple(job)] = loader.load_sweep_config(config, list(job))
        return composed[tuple(job)]

    return compose


def losses_mergeable(
    compose: Callable[[Sequence[str]], DictConfig],
) -> Callable[[list[list[str]]], bool]:
    """A check whether jobs that differ only in ``loss=`` may train as one merged job (the
    first job's, with the others' losses as ``member_losses``): composing that merged job
    must give each job's own config, loss for loss and in everything else, and its members
    must not steer each other. Jobs Hydra or the config checks refuse are never merged: they
    fail on their own, with their own error."""
    from omegaconf import OmegaConf

    from src.config import validate

    def plain(node: DictConfig, *drop: str) -> dict:
        """As composed, interpolations unresolved: equal here is equal once resolved."""
        tree = OmegaConf.to_container(node, resolve=False)
        return {key: value for key, value in tree.items() if key not in ("hydra", *drop)}

    def mergeable(jobs: list[list[str]]) -> bool:
        try:
            composed = [compose(job) for job in jobs]
            if any(job.member_losses for job in composed):
                return False  # already merged by hand
            own = [plain(job, "member_losses") for job in composed]
            merged = compose([*jobs[0], *(member_loss(_option(job)) for job in jobs[1:])])
            if validate(merged).couples_members():
                return False
        except Exception:
            return False
        tree = plain(merged)
        losses = [tree.pop("loss"), *(tree.pop("member_losses").values())]
        return [o.pop("loss") for o in own] == losses and all(o == tree for o in own)

    return mergeable


def _option(job: Sequence[str]) -> str:
    return next(value for value in map(_loss, job) if value is not None)


def _rest(job: Sequence[str]) -> tuple[str, ...] | None:
    """A job's overrides but its loss; None for a job without exactly one ``loss=``."""
    if sum(_loss(o) is not None for o in job) != 1:
        return None
    return tuple(o for o in job if _loss(o) is None)


def batch_losses(
    jobs: Sequence[Sequence[str]], shape: Callable[[Sequence[str]], Any], mergeable: Callable
) -> list[list[str]]:
    """Merge jobs whose overrides differ only in ``loss=<option>`` and whose losses have the
    same ``shape(job)`` into one job, the first one's with the others' losses added as
    ``member_losses``, where ``mergeable(jobs)`` allows it; keep the first job's position.
    Only jobs that share their other overrides with another job are asked for their shape."""
    rests = [_rest(job) for job in jobs]
    shared = Counter(rest for rest in rests if rest is not None)
    groups: dict[tuple, list[list[str]]] = {}
    order: list[tuple | int] = []
    for index, (job, rest) in enumerate(zip(jobs, rests)):
        if rest is None or shared[rest] == 1:
            order.append(index)
            continue
        key = (rest, shape(job))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(list(job))
    merged: list[list[str]] = []
    for item in order:
        if isinstance(item, int):
            merged.append(list(jobs[item]))
        elif len(groups[item]) > 1 and mergeable(groups[item]):
            first, *others = groups[item]
            merged.append([*first, *(member_loss(_option(job)) for job in others)])
        else:
            merged += groups[item]
    return merged


def loss_shape(compose: Callable[[Sequence[str]], DictConfig]) -> Callable[[Sequence[str]], Any]:
    """A job's loss shape (``LossConfig.shape``), from its composed config; None for a job
    that does not compose or validate (it is then never merged)."""
    from src.config import validate

    def shape(job: Sequence[str]) -> Any:
        try:
            return validate(compose(job)).loss.shape()
        except Exception:
            return None

    return shape


# Plans made so far: (id of the master config, the grid's jobs one per fold, seeds, losses) ->
# (the master, kept so that its id is not reused; the jobs as launched). The sweep's up-front check
# (src/hydra_callbacks.py) plans in a forked copy of this process and sends its plans back,
# so the sweeper takes the plan instead of making it again (0.18 s of a 50-run sweep's start,
# measured: each job's loss checked and merged jobs validated, on the path to the first job).
PLANS: dict[tuple, tuple[DictConfig, list[list[str]]]] = {}


def plan_jobs(
    jobs: Sequence[Sequence[str]], loader: Any, config: DictConfig, seeds: bool, losses: bool
) -> list[list[str]]:
    """A grid's jobs as launched: one per fold, seeds as members (``seeds``), then losses of
    one shape (task) as members (``losses``). The sweeper and the sweep's up-front check
    (src/hydra_callbacks.py) both plan with it, so they see the same jobs."""
    planned = expand_folds(jobs)  # the key: a grid expanded before or here plans alike
    key = (id(config), tuple(map(tuple, planned)), seeds, losses)
    if key not in PLANS:
        if seeds:
            planned = batch_seeds(planned, members_independent(loader, config))
        if losses:
            compose = _composer(loader, config)
            planned = batch_losses(planned, loss_shape(compose), losses_mergeable(compose))
        PLANS[key] = (config, planned)
    return [list(job) for job in PLANS[key][1]]


class LosslabSweeper(BasicSweeper):
    """BasicSweeper whose grid launches each seed sweep as one members=K job."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        batch_seeds: bool = True,
        batch_losses: bool = True,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.batch_seeds = batch_seeds
        self.batch_losses = batch_losses

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Skipped: losslab's callback (on_multirun_start) has already composed and validated
        every job of the sweep before anything was created; composing each again costs about
        0.3 s per job."""

    def split_arguments(  # an instance method here: it needs batch_seeds
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        batches = BasicSweeper.split_arguments(overrides, None)
        runs = expand_folds([job for batch in batches for job in batch])
        loader = self.hydra_context.config_loader
        jobs = plan_jobs(runs, loader, self.config, self.batch_seeds, self.batch_losses)
        if len(jobs) < len(runs):
            from src.config import MEMBER_LOSS_KEY

            losses = any(MEMBER_LOSS_KEY in o for job in jobs for o in job)
            members = "seeds and losses" if losses else "seeds"
            print(f"losslab: {len(runs)} runs launched as {len(jobs)} jobs ({members} as members)")
        return [
            list(chunk) for chunk in BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size)
        ]
