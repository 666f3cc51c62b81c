"""The one home of MLflow: experiments, runs (children under a sweep's parent), buffered
per-epoch metrics sent in batches, artifacts, models, and the true final status."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from src import store

# MLflow sets its own log level on import; its database-migration lines are not news.
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# Nor are its artifact progress bars (they would break the one line per job; set it to
# true to see them).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# The pickle model format is a choice made in conf/logger (model_format), not news per model.
logging.getLogger("mlflow.pytorch").addFilter(
    lambda record: "Pickle or CloudPickle" not in record.getMessage()
)

BATCH_LIMIT = 1000  # metrics per log_batch call
PARAM_CHUNK = 100  # params per log_batch call
PARAM_VALUE_MAX = 6000


def get_client(uri: str) -> MlflowClient:
    """A client on ``uri``. MLflow creates and migrates a fresh sqlite store when the client is
    made; processes starting together on a new database race on those migrations ("table
    already exists", "Online migration expected to match one row"), so for sqlite the client
    is made under an exclusive lock on the database's folder: one migrates, the rest wait."""
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    folder = store.sqlite_path(uri).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return MlflowClient(tracking_uri=uri)
    finally:
        os.close(handle)  # releases the lock


def ensure_experiment(client: MlflowClient, name: str, description: str | None = None) -> str:
    """Get or create the experiment; tolerate another process creating it at the same time."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    tags = {"mlflow.note.content": description} if description else None
    try:
        return client.create_experiment(
            name, artifact_location=store.artifact_root(client.tracking_uri), tags=tags
        )
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole (logged as their text)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class RunSet:
    """The MLflow runs of one job: one per member (a plain run has one)."""

    def __init__(self, client: MlflowClient, run_ids: list[str]) -> None:
        self.client = client
        self.run_ids = run_ids
        self._pending: list[list[Metric]] = [[] for _ in run_ids]

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        experiment_id: str,
        names: list[str],
        tags: list[dict[str, str]],
        params: list[dict[str, Any]],
    ) -> RunSet:
        run_ids = []
        for name, run_tags, run_params in zip(names, tags, params):
            run = client.create_run(experiment_id, run_name=name, tags=run_tags)
            run_ids.append(run.info.run_id)
            items = [
                Param(key, store.redact(str(value))[:PARAM_VALUE_MAX])
                for key, value in run_params.items()
            ]
            for i in range(0, len(items), PARAM_CHUNK):
                client.log_batch(run.info.run_id, params=items[i : i + PARAM_CHUNK])
        return cls(client, run_ids)

    @classmethod
    def reopen(cls, client: MlflowClient, run_ids: list[str], tags: dict[str, str]) -> RunSet:
        """Continue existing runs (a resume): RUNNING again, the old error tag dropped."""
        for run_id in run_ids:
            client.update_run(run_id, status="RUNNING")
            if "error" in client.get_run(run_id).data.tags:
                client.delete_tag(run_id, "error")
        runs = cls(client, run_ids)
        for member in range(len(run_ids)):
            runs.set_tags(member, tags)
        return runs

    def add_metrics(self, step: int, values: Mapping[str, Iterable[float]]) -> None:
        """Buffer one step's values ({key: one value per member}); nothing is sent yet."""
        now = int(time.time() * 1000)
        for key, per_member in values.items():
            for pending, value in zip(self._pending, per_member):
                pending.append(Metric(key, float(value), now, step))

    def flush(self) -> None:
        for run_id, pending in zip(self.run_ids, self._pending):
            for i in range(0, len(pending), BATCH_LIMIT):
                self.client.log_batch(run_id, metrics=pending[i : i + BATCH_LIMIT])
            pending.clear()

    def set_tags(self, member: int, tags: Mapping[str, Any]) -> None:
        items = [RunTag(key, store.redact(str(value))) for key, value in tags.items()]
        self.client.log_batch(self.run_ids[member], tags=items)

    def log_text(self, member: int, text: str, path: str) -> None:
        self.client.log_text(self.run_ids[member], store.redact(text), path)

    def log_file(self, member: int, local: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_ids[member], str(local), folder)

    def log_figure(self, member: int, figure: Any, path: str) -> None:
        self.client.log_figure(self.run_ids[member], figure, path)

    def log_file_all(self, local: Path, folder: str | None = None) -> None:
        """The same file in every member's run (rendered or written once)."""
        for run_id in self.run_ids:
            self.client.log_artifact(run_id, str(local), folder)

    def log_model(
        self,
        member: int,
        model: Any,
        input_example: Any,
        requirements: list[str],
        serialization: str = "pickle",
    ) -> None:
        """MLflow pytorch flavor with signature and input example; explicit requirements spare
        MLflow from inferring them in a subprocess (seconds per model)."""
        import mlflow.pytorch

        mlflow.set_tracking_uri(self.client.tracking_uri)
        with mlflow.start_run(run_id=self.run_ids[member]):
            mlflow.pytorch.log_model(
                model,
                name="model",
                input_example=input_example,
                pip_requirements=requirements,
                serialization_format=serialization,
            )

    def end(self, statuses: list[str]) -> None:
        """Close every run with its true status: FINISHED, FAILED or KILLED."""
        for run_id, status in zip(self.run_ids, statuses):
            self.client.set_terminated(run_id, status)


def logged_epochs(client: MlflowClient, run_id: str) -> int:
    """How many epochs of per-epoch metrics the run holds (its last train/loss step)."""
    return max((m.step for m in client.get_metric_history(run_id, "train/loss")), default=0)


def download_checkpoint(client: MlflowClient, run_id: str, folder: Path) -> Path | None:
    """The run's checkpoint artifact (checkpoints/last.ckpt) copied into ``folder``, if any."""
    try:
        return Path(client.download_artifacts(run_id, "checkpoints/last.ckpt", str(folder)))
    except (MlflowException, OSError):
        return None
