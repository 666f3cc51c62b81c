"""Stores are what they claim to be: a file that is not an MLflow database, a damaged or
locked one, a deleted experiment, a store that does not exist for a read-only command. Each
is one line before anything runs, and the file is left as it was."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_command, cli_env, hang, invoke, one_error_line, runs_of


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MLflow store whose 'losslab' experiment is deleted."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.delete_experiment(client.create_experiment("losslab"))
    return db


def broken_stores(folder: Path, mlflow_store: Path) -> dict[str, tuple[Path, str]]:
    """name -> (the store file, what the one line says)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "random.db").write_bytes(bytes(range(256)) * 40)
    other = sqlite3.connect(folder / "other.db")
    other.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    other.commit()
    other.close()
    truncated = folder / "truncated.db"
    truncated.write_bytes(mlflow_store.read_bytes()[:20_000])
    deleted = folder / "deleted.db"
    deleted.write_bytes(mlflow_store.read_bytes())
    return {
        "random": (folder / "random.db", "random.db is not an SQLite database"),
        "other": (folder / "other.db", "holds another application's tables (customers)"),
        "truncated": (truncated, "truncated.db is damaged (database disk image is malformed)"),
        "deleted": (deleted, "experiment 'losslab' is deleted in"),
    }


@pytest.mark.parametrize("kind", ["random", "other", "truncated", "deleted"])
def test_a_store_that_is_not_a_working_mlflow_store_is_refused_untouched(
    tmp_path: Path, mlflow_store: Path, kind: str
) -> None:
    db, message = broken_stores(tmp_path / "stores", mlflow_store)[kind]
    before = digest(db)
    work = tmp_path / "work"
    work.mkdir()
    for args in (("trainer.max_epochs=1",), ("-m", "loss=mse,bce", "trainer.max_epochs=1")):
        done = invoke(work, f"sqlite:///{db}", *args, timeout=120)
        assert done.returncode == 1
        line = one_error_line(done.stderr)
        assert line.startswith("losslab: error: ") and message in line, line
    assert digest(db) == before  # nothing written into it
    assert list(work.iterdir()) == []  # no output folder


def test_an_unwritable_artifact_folder_is_refused_before_training(
    tmp_path: Path, mlflow_store: Path
) -> None:
    """New experiment (artifacts beside a fresh store) and existing one (its recorded
    artifact location): both are checked at start-up, and nothing is created."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "mlartifacts").write_text("a file where the artifact folder should be")
    work = tmp_path / "work"
    work.mkdir()
    done = invoke(work, f"sqlite:///{fresh / 'mlflow.db'}", "trainer.max_epochs=1", timeout=120)
    line = one_error_line(done.stderr)
    assert done.returncode == 1
    assert line.startswith(f"losslab: error: cannot write run artifacts to {fresh}/mlartifacts")
    assert not (fresh / "mlflow.db").exists() and list(work.iterdir()) == []

    existing = tmp_path / "existing"
    existing.mkdir()
    db = existing / "mlflow.db"
    db.write_bytes(mlflow_store.read_bytes())
    with sqlite3.connect(db) as connection:  # the experiment's artifacts: under a file
        connection.execute(
            "UPDATE experiments SET artifact_location = ?, lifecycle_stage = 'active' "
            "WHERE name = 'losslab'",
            ((fresh / "mlartifacts" / "1").as_uri(),),
        )
    before = digest(db)
    done = invoke(work, f"sqlite:///{db}", "trainer.max_epochs=1", timeout=120)
    assert done.returncode == 1
    assert f"cannot write run artifacts to {fresh}/mlartifacts/1" in one_error_line(done.stderr)
    assert digest(db) == before and list(work.iterdir()) == []


def test_read_only_commands_never_create_a_store(tmp_path: Path) -> None:
    db = tmp_path / "nothing-here.db"
    for command in (["src.report", str(tmp_path)], ["src.predict", "run_id=abc", "split=test"]):
        done = subprocess.run(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            env=cli_env(f"sqlite:///{db}"),
            capture_output=True,
            text=True,
            timeout=hang(120),
        )
        assert done.returncode == 1
        line = one_error_line(done.stderr)
        assert line == f"losslab: error: no MLflow store at {db}; set MLFLOW_TRACKING_URI to " + (
            "the store the runs were logged to"
        )
    assert not db.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port 99999 is not a TCP port; use 1-65535 (0: any free one)"),
        (["--store", "sqlite:///{random}"], "random.db is not an SQLite database"),
    ],
)
def test_serve_refuses_in_one_line_before_printing_its_url(
    tmp_path: Path, mlflow_store: Path, args: list[str], message: str
) -> None:
    random_db = broken_stores(tmp_path, mlflow_store)["random"][0]
    args = [a.replace("{random}", str(random_db)) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "src.serve", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=hang(60),
    )
    assert done.returncode == 1 and done.stdout == ""
    assert message in one_error_line(done.stderr)


@pytest.mark.slow
def test_a_locked_store_is_waited_for_and_said(tmp_path: Path, client, store_uri: str) -> None:
    """The lock is held until the command says it waits, however long its start takes, and
    then let go: the command goes on to a finished run."""
    client.create_experiment("losslab")  # the store exists
    db = Path(store_uri.removeprefix("sqlite:///"))
    holder = sqlite3.connect(db, timeout=10)
    holder.execute("BEGIN EXCLUSIVE")
    process = subprocess.Popen(
        cli_command(tmp_path, "trainer.max_epochs=1", "logger.log_model=false"),
        cwd=ROOT,
        env=cli_env(store_uri, {"PYTHONUNBUFFERED": "1"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Read up to that line; a command that never says it ends at its own error, by EOF.
        said = next((line for line in process.stdout if "is locked" in line), "")
    finally:
        holder.rollback()
        holder.close()
    stdout, stderr = process.communicate(timeout=hang(300))
    assert process.returncode == 0, stderr
    assert said == f"losslab: the MLflow store {db} is locked; waiting up to 30 s\n", stdout
    (run,) = runs_of(client)
    assert run.info.status == "FINISHED"


def _schema(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return sorted(connection.execute("SELECT type, name, sql FROM sqlite_master"))


def test_a_new_store_is_a_copy_of_the_empty_store_mlflow_built_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first store builds the template in the cache; the next is its copy; both work as
    MLflow's own, with their own Default experiment; an existing file is never replaced."""
    import mlflow

    from src import store_template, tracking

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    tracking.get_client(f"sqlite:///{first}").search_experiments()
    template = tmp_path / "cache" / "losslab" / f"mlflow-{mlflow.__version__}-empty.db"
    with sqlite3.connect(template) as connection:
        assert connection.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
    second.parent.mkdir()
    assert store_template.seed(second)
    assert _schema(second) == _schema(template)
    client = tracking.get_client(f"sqlite:///{second}")
    default = client.get_experiment("0")
    assert (default.name, default.artifact_location) == ("Default", str(tmp_path / "mlruns/0"))
    run = client.create_run(tracking.ensure_experiment(client, "losslab")).info.run_id
    client.log_metric(run, "loss", 0.5)
    client.set_terminated(run)
    assert client.get_run(run).data.metrics == {"loss": 0.5}
    assert not store_template.seed(second)  # never over an existing store
    assert client.get_run(run).data.metrics == {"loss": 0.5}
    assert sorted(p.name for p in second.parent.iterdir()) == ["mlflow.db"]  # no leftovers


def test_without_a_usable_cache_mlflow_builds_the_store_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from src import store_template, tracking

    (tmp_path / "cache").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    assert not store_template.seed(db)
    assert not db.exists()
    client = tracking.get_client(f"sqlite:///{db}")
    assert client.get_experiment("0").name == "Default"


def test_a_copy_that_fails_midway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk during the copy: no store, no partial file; MLflow then builds the store."""
    import shutil

    from src import store_template

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()

    def full_disk(source: Path, target: Path) -> None:
        Path(target).write_bytes(b"half a store")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    assert not store_template.seed(db)
    assert list(db.parent.iterdir()) == []


_POINTS = "run_uuid, key, value, timestamp, step, is_nan"
WRITTEN = {  # the tables bulk_writes' params and values touch
    "metrics": f"SELECT {_POINTS} FROM metrics",
    "latest_metrics": f"SELECT {_POINTS} FROM latest_metrics",
    "params": "SELECT run_uuid, key, value FROM params",
    "logged_model_params": "SELECT model_id, param_key, param_value FROM logged_model_params",
    "logged_model_metrics": "SELECT model_id, metric_name, metric_timestamp_ms, metric_step, "
    "metric_value, experiment_id, run_id, dataset_uuid, dataset_name, dataset_digest "
    "FROM logged_model_metrics",
    "logged_models": "SELECT model_id, experiment_id, name, artifact_location, status, "
    "lifecycle_stage, model_type, source_run_id, status_message, "
    "creation_timestamp_ms = last_updated_timestamp_ms FROM logged_models",
    "logged_model_tags": "SELECT model_id, experiment_id, tag_key, tag_value "
    "FROM logged_model_tags",
}
CREATED = {  # the tables a new run touches (all but its start time)
    "runs": "SELECT run_uuid, name, source_type, source_name, entry_point_name, user_id, "
    "status, end_time, deleted_time, source_version, lifecycle_stage, experiment_id, "
    "artifact_uri FROM runs",
    "tags": "SELECT run_uuid, key, value FROM tags",
    "params": "SELECT run_uuid, key, value FROM params",
}


def _tables(
    db: Path, runs: Sequence[str], models: Sequence[str] = (), queries: dict[str, str] = WRITTEN
) -> dict[str, list[tuple]]:
    """The rows of ``queries``, with the store's own run and model ids as run0, model0...
    (inside paths too) and its folder as <store>."""
    names = {run: f"run{k}" for k, run in enumerate(runs)}
    names.update({model: f"model{k}" for k, model in enumerate(models)})

    def named(cell: object) -> object:
        if not isinstance(cell, str):
            return cell
        for own, name in names.items():
            cell = cell.replace(own, name)
        return cell.replace(str(db.parent), "<store>")

    with sqlite3.connect(db) as connection:
        return {
            table: sorted(tuple(named(cell) for cell in row) for row in rows)
            for table, rows in ((t, connection.execute(q).fetchall()) for t, q in queries.items())
        }


def test_bulk_writes_leave_the_rows_mlflow_own_log_batch_would(tmp_path: Path) -> None:
    """Params, metric histories (both runs' in one call) and models through bulk_writes and
    through MlflowClient.log_batch and create_logged_model, into two stores: the same rows in
    every table they touch, with NaN, infinities, a point repeated in a batch, ties, a later
    batch of older steps, points already stored, and final scores linked to the run's model."""
    import math

    from mlflow.entities import Metric, Param

    from src import bulk_writes, tracking

    inf = float("inf")
    batches = [
        [("loss", 0.5, 1000, 0), ("loss", 0.25, 1000, 1), ("acc", math.nan, 1000, 1)],
        [("tie", math.nan, 7, 3), ("tie", 0.0, 7, 3)],  # one batch: the first is latest
        [("loss", inf, 2000, 2), ("loss", -inf, 2000, 2), ("loss", 0.1, 2000, 2)],
        [("loss", 0.3, 2000, 2), ("acc", 0.9, 900, 1), ("acc", 0.9, 900, 1), ("new", 1.0, 5, 0)],
        [("loss", 0.7, 3000, 1), ("acc", 0.0, 1000, 1)],  # no newer step: latest stays
        [("loss", 0.5, 1000, 0), ("late", 2.0, 4000, 9)],  # a point already stored
    ]
    params = {f"group.key{i}": f"value {i}" for i in range(237)}
    finals = [("final_test_mse", 0.125, 5000, 0), ("final_test_r2", inf, 5000, 0)]  # linked
    tags = {"mlflow.source.name": "src.train", "mlflow.user": "alice"}
    tables, latest = [], []
    for way in ("bulk", "mlflow"):
        db = tmp_path / way / "mlflow.db"
        client = tracking.get_client(f"sqlite:///{db}")
        experiment = tracking.ensure_experiment(client, "losslab")
        runs = [client.create_run(experiment).info.run_id for _ in range(2)]
        models = []
        if way == "bulk":
            for batch in batches:
                bulk_writes.log_histories(client, [(run, batch, None) for run in runs])
            new = [("m", run, tags, params) for run in runs]
            models = bulk_writes.create_logged_models(client, experiment, new)
        for k, run in enumerate(runs):
            if way == "bulk":
                bulk_writes.log_params(client, run, params)
                bulk_writes.log_history(client, run, finals, models[k])
            else:
                items = [Param(key, value) for key, value in params.items()]
                for i in range(0, len(items), 100):
                    client.log_batch(run, params=items[i : i + 100])
                for batch in batches:
                    client.log_batch(run, metrics=[Metric(*point) for point in batch])
                created = client.create_logged_model(experiment, "m", run, tags, params)
                model = created.model_id
                client.log_batch(run, metrics=[Metric(*p, model_id=model) for p in finals])
                models.append(model)
        tables.append(_tables(db, runs, models))
        latest.append(client.get_run(runs[0]).data.metrics)
        for run in runs:
            client.set_terminated(run)
    assert tables[0] == tables[1]
    assert [
        len(tables[0][t])
        for t in ("params", "logged_model_params", "metrics", "logged_model_metrics")
    ] == [
        2 * 237,
        2 * 237,
        2 * 16,  # 16 points a run and 2 finals: one repeated within its batch, one stored before
        2 * 2,
    ]
    assert len(tables[0]["logged_models"]) == 2 and len(tables[0]["logged_model_tags"]) == 4
    for metrics in latest:  # MLflow's rules: the greatest (step, timestamp, value); ties keep
        assert math.isnan(metrics.pop("acc")) and math.isnan(metrics.pop("tie"))  # the first
        largest = 1.7976931348623157e308
        assert metrics == {
            "loss": largest,
            "new": 1.0,
            "late": 2.0,
            "final_test_mse": 0.125,
            "final_test_r2": largest,
        }


def test_runs_created_in_one_transaction_are_the_rows_mlflow_create_run_writes(
    tmp_path: Path,
) -> None:
    """A job's runs through bulk_writes.create_runs and through MlflowClient.create_run and
    log_batch: the same rows in runs, tags and params, but for the ids (the job's own, or the
    store's) and start times; on a deleted experiment both refuse, and bulk_writes creates
    nothing."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    from src import bulk_writes, tracking

    new = [
        (f"mse seed={k}", {"seed": str(k), "mlflow.user": "alice", "job": "0"}, {"lr": "0.01"})
        for k in range(3)
    ]
    new.append(("bce seed=0", {"job": "1"}, {}))  # no user tag, no params
    tables = []
    for way in ("bulk", "mlflow"):
        db = tmp_path / way / "mlflow.db"
        client = tracking.get_client(f"sqlite:///{db}")
        experiment = tracking.ensure_experiment(client, "losslab")
        if way == "bulk":  # the ids a job names its runs with
            named = [uuid.uuid4().hex for _ in new]
            created = list(bulk_writes.create_runs(client, experiment, new, named))
            assert [run for run, _ in created] == named
        else:
            infos = [client.create_run(experiment, run_name=n, tags=t).info for n, t, _ in new]
            created = [(info.run_id, info.artifact_uri) for info in infos]
        runs = [run for run, _ in created]
        assert [client.get_run(run).info.artifact_uri for run in runs] == [a for _, a in created]
        if way == "mlflow":
            for run, (_, _, params) in zip(runs, new):
                if params:
                    client.log_batch(run, params=[Param(k, v) for k, v in params.items()])
        tables.append(_tables(db, runs, queries=CREATED))
        assert created[0][1].endswith(f"/{runs[0]}/artifacts")
        for run in runs:
            client.set_terminated(run)
        client.delete_experiment(experiment)
        with pytest.raises(MlflowException, match="must be in the 'active' state"):
            list(bulk_writes.create_runs(client, experiment, new))
    assert tables[0] == tables[1]
    assert len(tables[0]["runs"]) == 4 and len(tables[0]["params"]) == 3
    assert ("run0", "mlflow.runName", "mse seed=0") in tables[0]["tags"]
    with sqlite3.connect(tmp_path / "bulk" / "mlflow.db") as connection:
        assert connection.execute("SELECT COUNT(*) FROM runs").fetchone() == (4,)


CLOSED = {  # the tables a run's dataset, model link and closing touch (all but the times)
    "runs": "SELECT run_uuid, name, status, end_time IS NOT NULL FROM runs",
    "tags": "SELECT run_uuid, key, value FROM tags",
    "datasets": "SELECT experiment_id, name, digest, dataset_source_type, dataset_source, "
    "dataset_schema, dataset_profile FROM datasets",
    "inputs": "SELECT coalesce(d.name, i.source_id), i.source_type, i.destination_type, "
    "i.destination_id, i.step FROM inputs i LEFT JOIN datasets d ON d.dataset_uuid = i.source_id",
    "input_tags": "SELECT d.name, i.destination_id, t.name, t.value FROM input_tags t "
    "JOIN inputs i ON i.input_uuid = t.input_uuid JOIN datasets d ON d.dataset_uuid = i.source_id",
}


def test_inputs_model_links_and_closings_are_the_rows_mlflow_writes(tmp_path: Path) -> None:
    """A job's dataset input (logged twice), a model linked to its run and the runs' closing
    with tags, through bulk_writes (one transaction each) and through MlflowClient's
    log_inputs, log_outputs, log_batch and set_terminated: the same rows. A closing that meets
    a deleted run refuses as MLflow does and closes none of the job's runs."""
    from mlflow.entities import LoggedModelOutput, RunTag
    from mlflow.exceptions import MlflowException

    from src import bulk_writes, tracking

    record = {
        "name": "circles",
        "digest": "0123abcd",
        "source_type": "code",
        "source": '{"generator": "make_circles"}',
        "schema": '{"mlflow_colspec": []}',
        "profile": '{"rows": 1000}',
    }
    given = tracking.dataset_input(record)
    closing = [
        ("FINISHED", {"outcome": "ok", "seed": "7", "mlflow.runName": "renamed"}),
        ("FAILED", {"outcome": "diverged", "error": "loss became non-finite at epoch 3"}),
        ("KILLED", {}),
    ]
    tables = []
    for way in ("bulk", "mlflow"):
        db = tmp_path / way / "mlflow.db"
        client = tracking.get_client(f"sqlite:///{db}")
        experiment = tracking.ensure_experiment(client, "losslab")
        runs = [
            client.create_run(experiment, run_name=f"r{k}", tags={"seed": str(k)}).info.run_id
            for k in range(3)
        ]
        model = client.create_logged_model(experiment, "m", runs[0]).model_id
        link = {"model": f"models:/{model}"}
        if way == "bulk":
            for _ in range(2):  # the second time: nothing new
                bulk_writes.log_dataset_input(client, runs, given)
            bulk_writes.link_models(client, [(runs[0], model, link)])
            bulk_writes.close_runs(
                client, [(run, status, t) for run, (status, t) in zip(runs, closing)]
            )
        else:
            for _ in range(2):
                for run in runs:
                    client.log_inputs(run, datasets=[given])
            client.log_outputs(runs[0], models=[LoggedModelOutput(model, step=0)])
            client.log_batch(runs[0], tags=[RunTag(k, v) for k, v in link.items()])
            for run, (status, t) in zip(runs, closing):
                if t:
                    client.log_batch(run, tags=[RunTag(k, v) for k, v in t.items()])
                client.set_terminated(run, status)
        tables.append(_tables(db, runs, [model], queries=CLOSED))
        assert client.get_run(runs[0]).info.run_name == "renamed"
    assert tables[0] == tables[1]
    assert tables[0]["runs"] == [
        ("run0", "renamed", "FINISHED", 1),
        ("run1", "r1", "FAILED", 1),
        ("run2", "r2", "KILLED", 1),
    ]
    assert len(tables[0]["datasets"]) == 1 and len(tables[0]["input_tags"]) == 3
    assert ("run0", "RUN_OUTPUT", "MODEL_OUTPUT", "model0", 0) in tables[0]["inputs"]

    db = tmp_path / "refused" / "mlflow.db"
    client = tracking.get_client(f"sqlite:///{db}")
    experiment = tracking.ensure_experiment(client, "losslab")
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]
    client.set_terminated(runs[1], "KILLED")
    client.delete_run(runs[1])
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        bulk_writes.close_runs(client, [(run, "FINISHED", {"outcome": "ok"}) for run in runs])
    kept = client.get_run(runs[0])
    assert kept.info.status == "RUNNING" and "outcome" not in kept.data.tags
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        bulk_writes.log_dataset_input(client, runs, given)
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT COUNT(*) FROM datasets").fetchone() == (0,)
    client.set_terminated(runs[0], "KILLED")


def test_a_jobs_values_dataset_and_closing_are_one_write_each_whatever_its_members(
    tmp_path: Path,
) -> None:
    """Every transaction that writes makes SQLite sync the file to disk, which beside busy
    processes costs the tracking process a wait for the disk and then for a core. A job of
    five members: its creation, its dataset input, a batch of values and its closing with
    tags are one write each (SQLite's file change counter, bytes 24-28 of the file)."""
    from src import tracking

    db = tmp_path / "mlflow.db"
    tracker = tracking.Tracker(f"sqlite:///{db}", models=False)
    tracking.ensure_experiment(tracker.client, "losslab")

    def writes(call: str, *args: object) -> int:
        before = int.from_bytes(db.read_bytes()[24:28], "big")
        getattr(tracker, call)(1, *args)
        return int.from_bytes(db.read_bytes()[24:28], "big") - before

    names = [f"mse seed={k}" for k in range(5)]
    record = {"name": "d", "digest": "0a", "source_type": "code", "source": "{}"}
    rows = [
        (step, 1000 + step, {"train/loss": [step + k / 10 for k in range(5)]}) for step in (1, 2)
    ]
    statuses = ["FINISHED"] * 4 + ["FAILED"]
    tags = [{"outcome": "ok"}] * 4 + [{"outcome": "diverged", "error": "non-finite"}]
    assert [
        writes(
            "start", "losslab", names, [{"seed": str(k)} for k in range(5)], [{"lr": "0.01"}] * 5
        ),
        writes("log_input", record),
        writes("log_metrics", rows),
        writes("end", statuses, tags),
    ] == [1, 1, 1, 1]
    runs = [tracker.client.get_run(run_id) for run_id in tracker.runs[1]]
    assert [run.info.status for run in runs] == statuses
    assert [run.data.tags["outcome"] for run in runs] == ["ok"] * 4 + ["diverged"]
    assert [run.data.metrics["train/loss"] for run in runs] == [2.0, 2.1, 2.2, 2.3, 2.4]
    assert all(len(run.inputs.dataset_inputs) == 1 for run in runs)
    assert not tracker.open


def test_a_jobs_models_are_created_and_linked_in_one_write_each_and_a_failure_says_which(
    tmp_path: Path,
) -> None:
    """Three members' models through the tracking process: created in one write, saved (one
    write each: MLflow marks it READY), linked in one. When the second cannot be saved, the
    first is still linked to its run, the second is FAILED (MLflow) and the third, never
    tried, FAILED too, not PENDING."""
    import numpy as np
    import torch

    from src import tracking

    db = tmp_path / "mlflow.db"
    tracker = tracking.Tracker(f"sqlite:///{db}")
    tracking.ensure_experiment(tracker.client, "losslab")
    names = [f"seed={k}" for k in range(3)]
    tracker.start(1, "losslab", names, [{"seed": str(k)} for k in range(3)], [{"lr": "0.1"}] * 3)
    example = np.zeros((2, 3), dtype=np.float32)

    def model(k: int, net: object) -> tracking.MemberModel:
        return (k, f"model_{k}", net, example, ["torch==2.13.0"], "pickle")

    before = int.from_bytes(db.read_bytes()[24:28], "big")
    tracker.log_models(1, [model(k, torch.nn.Linear(3, 1)) for k in range(3)])
    assert int.from_bytes(db.read_bytes()[24:28], "big") - before == 1 + 3 + 1
    runs = [tracker.client.get_run(run_id) for run_id in tracker.runs[1]]
    assert [run.data.tags["model"] for run in runs] == [
        f"models:/{tracker.models[run.info.run_id]}" for run in runs
    ]
    assert [[o.model_id for o in run.outputs.model_outputs] for run in runs] == [
        [tracker.models[run.info.run_id]] for run in runs
    ]

    tracker.start(2, "losslab", names, [{"seed": str(k)} for k in range(3)], [{"lr": "0.1"}] * 3)
    broken = [model(0, torch.nn.Linear(3, 1)), model(1, "not a module"), model(2, None)]
    with pytest.raises(TypeError):
        tracker.log_models(2, broken)
    runs = [tracker.client.get_run(run_id) for run_id in tracker.runs[2]]
    assert runs[0].data.tags["model"] == f"models:/{tracker.models[runs[0].info.run_id]}"
    assert ["model" in run.data.tags for run in runs] == [True, False, False]
    statuses = {
        m.name: str(m.status)
        for m in tracker.client.search_logged_models([runs[0].info.experiment_id])
        if m.source_run_id in tracker.runs[2]
    }
    assert statuses == {"model_0": "READY", "model_1": "FAILED", "model_2": "FAILED"}
    tracker.end(1, ["FINISHED"] * 3)
    tracker.end(2, ["FAILED"] * 3)


def test_bulk_params_refuse_a_changed_value_as_mlflow_does(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    from src import bulk_writes, tracking

    client = tracking.get_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(tracking.ensure_experiment(client, "losslab")).info.run_id
    bulk_writes.log_params(client, run, {"lr": "0.01", "seed": "0"})
    bulk_writes.log_params(client, run, {"lr": "0.01"})  # the same again: nothing changes
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        bulk_writes.log_params(client, run, {"lr": "0.1", "momentum": "0.9"})
    assert client.get_run(run).data.params == {"lr": "0.01", "seed": "0"}
    client.set_terminated(run)
    client.delete_run(run)
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        bulk_writes.log_history(client, run, [("loss", 1.0, 0, 0)])
