"""What the tracking process writes to MLflow's SQL store, in few statements and fewer
transactions than MlflowClient's calls take.

Why not ``MlflowClient.log_batch``: MLflow's SqlAlchemyStore makes one ORM object per value
and flushes them one by one. Measured on this project's machine (sqlite, MLflow 3.17):
0.10-0.13 ms per metric value, 43-49 ms for a run's 237 params (a logged model's: 17 ms). A
50-run sweep logs 32,675 values and 100 x 237 params, about 7.5 s of the tracking process,
which then made the jobs wait for their run ids and the command wait at its end.
SQLAlchemy's bulk INSERT through MLflow's own session and table models writes the same rows
in 0.03-0.04 ms per value, and the 237 params in 6-9 ms. A job's K runs are created in one
transaction too: ``create_run`` is a transaction per run that reads the new run back (its
inputs, tags and params), 0.12-0.14 s for ten runs with their params against 0.03 s, and a
job waits for its runs' ids at its first checkpoint.

Why few transactions: each one that writes syncs the database file to disk (MLflow leaves
SQLite's rollback journal and ``synchronous=FULL``). On a quiet machine that is cheap; beside
busy processes the tracking process waits for the disk and then queues again for a core,
and in a 50-run sweep it fell seconds behind the jobs. MlflowClient's calls wrote 571
transactions in that sweep; with a job's members' values, dataset input, models' creation
(with their params and tags), models' links to their runs and closing (tags and status) in
one transaction each, it writes 92 (counted with a SQLAlchemy commit listener; MLflow's
saving of each model is one of them). Beside two busy processes the sweep took 19.7 s instead
of 28.2 s with all but the models' (4 pairs), and those then 17.9 s instead of 19.0 s (8
pairs; 2026-12-04, README's Speed).

The rows are exactly what MLflow would write: values validated and sanitized by MLflow's
functions (NaN stored as 0 with ``is_nan``, infinities as the largest floats), the runs
checked active, ``latest_metrics`` kept by MLflow's own code for it. Any other store (a
tracking server) takes MlflowClient's calls, and so does a batch that meets rows already
stored (a resend after a lost reply): MLflow then drops the duplicates, or refuses a changed
param, as it always does. tests/test_stores.py compares the two paths table by table.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

METRICS_PER_CALL = 1000  # MLflow's limits per log_batch call
PARAMS_PER_CALL = 100

# (key, value, timestamp in ms, step): one point of a metric's history
Point = tuple[str, float, int, int]
# (name, tags, params): a run to create
NewRun = tuple[str, Mapping[str, str], Mapping[str, str]]
# (run id, points, id of the model they describe or None): a run's values to log
History = tuple[str, Sequence[Point], str | None]
# (run id, status, tags): a run to end
Closing = tuple[str, str, Mapping[str, str]]
# (name, run id, tags, params): a LoggedModel to create
NewModel = tuple[str, str, Mapping[str, str], Mapping[str, str]]
# (run id, model id, tags): a model to record as its run's output, and the run's tags
Link = tuple[str, str, Mapping[str, str]]


def sql_store(client: Any) -> Any | None:
    """The client's SqlAlchemyStore, or None for any other kind of store."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    found = client._tracking_client.store
    return found if isinstance(found, SqlAlchemyStore) else None


def create_runs(
    client: Any, experiment_id: str, runs: Sequence[NewRun], named: Sequence[str] | None = None
) -> Iterator[tuple[str, str]]:
    """Create the runs, RUNNING, with their tags and params; yield each one's id and artifact
    URI, in order. On a SQL store all of them in one transaction (none exists if it fails),
    as MLflow's ``create_run`` and ``log_batch`` would write them, with the ids ``named``
    (else new ones, as MLflow's). Elsewhere one by one, each yielded as soon as it exists,
    so the caller knows it before its params can fail; the server names them."""
    store = sql_store(client)
    if store is None:
        for name, tags, params in runs:
            info = client.create_run(experiment_id, run_name=name, tags=dict(tags)).info
            yield info.run_id, info.artifact_uri
            log_params(client, info.run_id, params)
        return
    yield from _insert_runs(store, experiment_id, runs, named or [uuid.uuid4().hex for _ in runs])


def _insert_runs(
    store: Any, experiment_id: str, runs: Sequence[NewRun], run_ids: Sequence[str]
) -> list[tuple[str, str]]:
    from mlflow.entities import LifecycleStage, RunStatus, SourceType
    from mlflow.store.tracking.dbmodels.models import SqlParam, SqlRun, SqlTag
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
    from mlflow.utils.time import get_current_time_millis
    from mlflow.utils.uri import append_to_uri_path
    from mlflow.utils.validation import _validate_param

    experiment = store.get_experiment(experiment_id)
    store._check_experiment_is_active(experiment)
    now = get_current_time_millis()
    run_rows, tag_rows, param_rows = [], [], []
    for (name, tags, params), run_id in zip(runs, run_ids, strict=True):
        where = append_to_uri_path(
            experiment.artifact_location, run_id, store.ARTIFACTS_FOLDER_NAME
        )
        run_rows.append(
            {
                "run_uuid": run_id,
                "name": name,
                "artifact_uri": where,
                "experiment_id": int(experiment_id),
                "source_type": SourceType.to_string(SourceType.UNKNOWN),
                "source_name": "",
                "entry_point_name": "",
                "user_id": tags.get(MLFLOW_USER, "unknown"),
                "status": RunStatus.to_string(RunStatus.RUNNING),
                "start_time": now,
                "end_time": None,
                "deleted_time": None,
                "source_version": "",
                "lifecycle_stage": LifecycleStage.ACTIVE,
            }
        )
        named = {**tags, MLFLOW_RUN_NAME: name}
        tag_rows += [{"run_uuid": run_id, "key": k, "value": v} for k, v in named.items()]
        checked = (_validate_param(key, value) for key, value in params.items())
        param_rows += [{"run_uuid": run_id, "key": p.key, "value": p.value} for p in checked]
    _insert_all(store, {SqlRun: run_rows, SqlTag: tag_rows, SqlParam: param_rows})
    return [(row["run_uuid"], row["artifact_uri"]) for row in run_rows]


def log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    """A new run's params (values already cut to MLflow's limit)."""
    from mlflow.entities import Param
    from mlflow.store.tracking.dbmodels.models import SqlParam
    from mlflow.utils.validation import _validate_param

    store = sql_store(client)
    if store is not None and params:
        checked = [_validate_param(key, value) for key, value in params.items()]
        rows = [{"key": param.key, "value": param.value} for param in checked]
        if _insert(store, run_id, SqlParam, rows):
            return
    items = [Param(key, value) for key, value in params.items()]
    for i in range(0, len(items), PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[i : i + PARAMS_PER_CALL])


def log_history(
    client: Any, run_id: str, points: Sequence[Point], model_id: str | None = None
) -> None:
    """Points of the run's metric histories; with ``model_id``, linked to that LoggedModel
    too (MLflow's Models page lists and ranks models by them)."""
    log_histories(client, [(run_id, points, model_id)])


def log_histories(client: Any, batches: Sequence[History]) -> None:
    """Points of several runs' histories (a job's members; with a model id, linked to that
    model), in one transaction on a SQL store."""
    from mlflow.entities import Metric

    store = sql_store(client)
    batches = [batch for batch in batches if batch[1]]
    if store is not None and batches:
        rows = [(run_id, _metric_rows(store, points), model) for run_id, points, model in batches]
        if _insert_points(store, rows):
            return
    for run_id, points, model_id in batches:
        metrics = [Metric(*point, model_id=model_id) for point in points]
        for i in range(0, len(metrics), METRICS_PER_CALL):
            client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_CALL])


def _metric_rows(store: Any, points: Sequence[Point]) -> list[dict[str, Any]]:
    """The ``metrics`` rows of ``points``, validated and sanitized as MLflow does."""
    from mlflow.utils.validation import _validate_metric

    rows: dict[tuple, dict[str, Any]] = {}  # by MLflow's primary key: a repeat is one row
    for key, value, timestamp, step in points:
        _validate_metric(key, value, timestamp, step)
        is_nan, stored = store.sanitize_metric_value(value)
        row = {"key": key, "value": stored, "timestamp": timestamp, "step": step}
        rows.setdefault((key, timestamp, step, stored, is_nan), {**row, "is_nan": is_nan})
    return list(rows.values())


def close_runs(client: Any, closings: Sequence[Closing]) -> None:
    """End runs with their status and closing tags (set or overwritten); on a SQL store in
    one transaction (none is closed if one fails), as ``log_batch(tags=...)`` and
    ``set_terminated`` write them; elsewhere one run after the other."""
    store = sql_store(client)
    if store is None:
        for run_id, status, tags in closings:
            log_tags(client, run_id, tags)
            client.set_terminated(run_id, status)
        return
    _close_in_sql(store, closings)


def _close_in_sql(store: Any, closings: Sequence[Closing]) -> None:
    from mlflow.entities import RunStatus
    from mlflow.utils.time import get_current_time_millis

    end_time = get_current_time_millis()
    with store.ManagedSessionMaker(read_only=False) as session:
        for run_id, status, tags in closings:
            run = _active_run(store, session, run_id)
            _merge_tags(session, run, tags)
            run.status = RunStatus.to_string(RunStatus.from_string(status))
            run.end_time = end_time


def create_logged_models(client: Any, experiment_id: str, models: Sequence[NewModel]) -> list[str]:
    """LoggedModels of runs (PENDING, as MLflow creates them), with their tags and params;
    returns their ids. On a SQL store in one transaction: MLflow's ``create_logged_model`` is
    one per model and writes each param as an ORM object (17 ms for 237)."""
    store = sql_store(client)
    if store is None:
        return [
            client.create_logged_model(
                experiment_id, name=name, source_run_id=run_id, tags=dict(tags), params=dict(params)
            ).model_id
            for name, run_id, tags, params in models
        ]
    return _insert_logged_models(store, experiment_id, models)


def _insert_logged_models(store: Any, experiment_id: str, models: Sequence[NewModel]) -> list[str]:
    from mlflow.entities import LifecycleStage
    from mlflow.entities.logged_model_status import LoggedModelStatus
    from mlflow.store.tracking.dbmodels.models import (
        SqlLoggedModel,
        SqlLoggedModelParam,
        SqlLoggedModelTag,
    )
    from mlflow.utils.time import get_current_time_millis
    from mlflow.utils.uri import append_to_uri_path
    from mlflow.utils.validation import _validate_logged_model_name

    experiment = store.get_experiment(experiment_id)
    store._check_experiment_is_active(experiment)
    now = get_current_time_millis()
    rows: dict[type, list[dict[str, Any]]] = {
        SqlLoggedModel: [],
        SqlLoggedModelParam: [],
        SqlLoggedModelTag: [],
    }
    for name, run_id, tags, params in models:
        _validate_logged_model_name(name)
        model_id = f"m-{uuid.uuid4().hex}"
        where = (store.MODELS_FOLDER_NAME, model_id, store.ARTIFACTS_FOLDER_NAME)
        rows[SqlLoggedModel].append(
            {
                "model_id": model_id,
                "experiment_id": int(experiment_id),
                "name": name,
                "artifact_location": append_to_uri_path(experiment.artifact_location, *where),
                "creation_timestamp_ms": now,
                "last_updated_timestamp_ms": now,
                "model_type": None,
                "status": LoggedModelStatus.PENDING.to_int(),
                "lifecycle_stage": LifecycleStage.ACTIVE,
                "source_run_id": run_id,
            }
        )
        owned = {"model_id": model_id, "experiment_id": int(experiment_id)}
        rows[SqlLoggedModelParam] += [
            {**owned, "param_key": k, "param_value": v} for k, v in params.items()
        ]
        rows[SqlLoggedModelTag] += [
            {**owned, "tag_key": k, "tag_value": v} for k, v in tags.items()
        ]
    _insert_all(store, rows)
    return [row["model_id"] for row in rows[SqlLoggedModel]]


def link_models(client: Any, links: Sequence[Link]) -> None:
    """Record each model as its run's output (``log_outputs``, step 0) and set the run's
    tags; on a SQL store in one transaction."""
    from mlflow.entities import LoggedModelOutput

    store = sql_store(client)
    if store is None:
        for run_id, model_id, tags in links:
            client.log_outputs(run_id, models=[LoggedModelOutput(model_id, step=0)])
            log_tags(client, run_id, tags)
        return
    import uuid

    from mlflow.store.tracking.dbmodels.models import SqlInput

    with store.ManagedSessionMaker(read_only=False) as session:
        for run_id, model_id, tags in links:
            run = _active_run(store, session, run_id)
            output = SqlInput(
                input_uuid=uuid.uuid4().hex,
                source_type="RUN_OUTPUT",
                source_id=run_id,
                destination_type="MODEL_OUTPUT",
                destination_id=model_id,
                step=0,
            )
            session.add(output)
            _merge_tags(session, run, tags)


def log_tags(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
    """Set (or overwrite) the run's tags in one ``log_batch`` call: any store."""
    from mlflow.entities import RunTag

    if tags:
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def _active_run(store: Any, session: Any, run_id: str) -> Any:
    """The run's row, refused as MLflow refuses writes to a deleted run."""
    run = store._get_run(run_uuid=run_id, session=session)
    store._check_run_is_active(run)
    return run


def _merge_tags(session: Any, run: Any, tags: Mapping[str, str]) -> None:
    """Set (or overwrite) the run's tags as MLflow's ``set_tag`` does: validated, values cut
    to its limit, ``mlflow.runName`` renaming the run."""
    from mlflow.store.tracking.dbmodels.models import SqlTag
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
    from mlflow.utils.validation import _validate_tag

    for tag in [_validate_tag(key, value) for key, value in tags.items()]:
        if tag.key == MLFLOW_RUN_NAME:
            run.name = tag.value
        session.merge(SqlTag(run_uuid=run.run_uuid, key=tag.key, value=tag.value))


def log_dataset_input(client: Any, run_ids: Sequence[str], given: Any) -> None:
    """The dataset (a ``DatasetInput``) as the input of every run, as ``log_inputs`` records
    it: one dataset row per experiment, name and digest, one input edge per run, with its
    tags; on a SQL store in one transaction (MLflow's is one per run)."""
    store = sql_store(client)
    if store is None:
        for run_id in run_ids:
            client.log_inputs(run_id, datasets=[given])
        return
    import uuid

    from mlflow.store.tracking.dbmodels.models import SqlDataset, SqlInput, SqlInputTag
    from mlflow.utils.validation import _validate_dataset_inputs

    _validate_dataset_inputs([given])
    data = given.dataset
    with store.ManagedSessionMaker(read_only=False) as session:
        datasets: dict[int, str] = {}  # experiment id -> the dataset's id there
        for run_id in run_ids:
            run = _active_run(store, session, run_id)
            if run.experiment_id not in datasets:
                held = (
                    session.query(SqlDataset)
                    .filter_by(experiment_id=run.experiment_id, name=data.name, digest=data.digest)
                    .first()
                )
                if held is None:
                    held = SqlDataset(
                        dataset_uuid=uuid.uuid4().hex,
                        experiment_id=run.experiment_id,
                        name=data.name,
                        digest=data.digest,
                        dataset_source_type=data.source_type,
                        dataset_source=data.source,
                        dataset_schema=data.schema,
                        dataset_profile=data.profile,
                    )
                    session.add(held)
                datasets[run.experiment_id] = held.dataset_uuid
            edge = {
                "source_type": "DATASET",
                "source_id": datasets[run.experiment_id],
                "destination_type": "RUN",
                "destination_id": run_id,
            }
            if session.query(SqlInput).filter_by(**edge).first() is None:
                input_uuid = uuid.uuid4().hex
                session.add(SqlInput(input_uuid=input_uuid, **edge))
                session.add_all(
                    SqlInputTag(input_uuid=input_uuid, name=tag.key, value=tag.value)
                    for tag in given.tags
                )


def _insert_all(store: Any, rows: Mapping[type, list[dict[str, Any]]]) -> None:
    """Each table's rows in one INSERT, all in one transaction (tables in dependency order)."""
    from sqlalchemy import insert

    with store.ManagedSessionMaker(read_only=False) as session:
        for table, table_rows in rows.items():
            if table_rows:
                session.execute(insert(table), table_rows)


def _insert(store: Any, run_id: str, table: type, rows: list[dict]) -> bool:
    """Insert ``rows`` (params) for an active run in one transaction; False (nothing
    written) when a row is already there."""
    import sqlalchemy.exc
    from sqlalchemy import insert

    with store.ManagedSessionMaker(read_only=False) as session:
        _active_run(store, session, run_id)
        try:
            session.execute(insert(table), [{**row, "run_uuid": run_id} for row in rows])
        except sqlalchemy.exc.IntegrityError:
            session.rollback()
            return False
    return True


def _insert_points(store: Any, batches: list[tuple[str, list[dict], str | None]]) -> bool:
    """Insert metric rows for active runs in one transaction, each run's latest values
    following them, and with a model id, linked to that model too; False (nothing written)
    when a row is already there."""
    import sqlalchemy.exc
    from mlflow.store.tracking.dbmodels.models import SqlLoggedModelMetric, SqlMetric
    from sqlalchemy import insert

    with store.ManagedSessionMaker(read_only=False) as session:
        for run_id, rows, model_id in batches:
            run = _active_run(store, session, run_id)
            linked = [
                {
                    "model_id": model_id,
                    "metric_name": row["key"],
                    "metric_timestamp_ms": row["timestamp"],
                    "metric_step": row["step"],
                    "metric_value": row["value"],
                    "experiment_id": run.experiment_id,
                    "run_id": run_id,
                }
                for row in (rows if model_id else [])
            ]
            try:
                session.execute(insert(SqlMetric), [{**row, "run_uuid": run_id} for row in rows])
                if linked:
                    session.execute(insert(SqlLoggedModelMetric), linked)
            except sqlalchemy.exc.IntegrityError:
                session.rollback()
                return False
            newest = [SqlMetric(run_uuid=run_id, **row) for row in _newest(rows)]
            store._update_latest_metrics_if_necessary(newest, session)
    return True


def _newest(rows: list[dict]) -> list[dict]:
    """Per key, the row MLflow would leave in ``latest_metrics`` after this batch: the first
    with the greatest (step, timestamp, value)."""
    best: dict[str, dict] = {}
    for row in rows:
        held = best.get(row["key"])
        order = (row["step"], row["timestamp"], row["value"])
        if held is None or order > (held["step"], held["timestamp"], held["value"]):
            best[row["key"]] = row
    return list(best.values())
