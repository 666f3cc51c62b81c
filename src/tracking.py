"""The one home of MLflow: experiments, runs (children under a sweep's parent), per-epoch
metrics sent in batches, figures, models, the sweep's report, and every run's true status.

Two halves. ``Tracker`` owns the MlflowClient and makes every MLflow call; it lives in a
helper process (``src/writer.py``), so training never waits on the store: the helper imports
MLflow and matplotlib while the job imports torch, and it logs one job's figures and model
while the next one trains. ``RunSet`` is what a job holds: it buffers each epoch's metrics
and sends the work over. Importing this module imports neither MLflow nor matplotlib.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import itertools
import logging
import os
import posixpath
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from src import bulk_writes, store, store_template
from src.frozen_imports import frozen_imports
from src.render import Saving
from src.writer import Writer, WriterError

EXPERIMENT_DESCRIPTION = (
    "losslab: which loss function fits the problem? Runs of the loss-function study and "
    "beyond (regression, binary and multi-class losses; conf/loss/), one run per seed; a "
    "sweep is a parent run with its comparison report under report/."
)
PARENT_RUN_FILE = "mlflow_parent_run_id"  # in a sweep's folder: its jobs' parent run
# metric values a run buffers in a job before they are sent: a full batch of one log_batch call
BATCH_LIMIT = bulk_writes.METRICS_PER_CALL
# A job's calls kept on disk when the store fails (unsent.py), then sent when its runs end.
KEPT = (
    "log_metrics",
    "log_text",
    "log_file",
    "log_dataset",
    "log_input",
    "log_learning_curves",
    "log_models",
)
PARAM_VALUE_MAX = 6000
MODELS_PER_CALL = 5  # a job's models go in calls of this many (RunSet.log_models)
# (member, name, model, input example, pip requirements, serialization format): a job's model
MemberModel = tuple[int, str, Any, Any, list[str], str]
RESEND_SECONDS = 10.0  # between tries to send kept data while the runs train


class TrackingError(RuntimeError):
    """MLflow could not record something; the runs concerned are marked FAILED."""


class RunsKilled(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a job whose runs are now marked KILLED. A plain
    KeyboardInterrupt came when no run was open (before the first, or after the last ended),
    and the command says only that it was interrupted."""


@functools.cache
def git_version() -> str:
    """The code version: commit hash, with +dirty when the work tree has changes. Read once
    a process: its code was loaded then, and a sweep's later jobs run that code."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=store.PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def source_tags(overrides: list[str], sweep_dir: Path | None) -> dict[str, str]:
    """What every run (a job's or a sweep's parent) records about where it came from."""
    tags = {
        "overrides": " ".join(overrides),
        "mlflow.source.name": "src.train",
        "mlflow.source.git.commit": git_version(),
    }
    if sweep_dir is not None:
        tags["sweep_dir"] = str(sweep_dir)
    return tags


def owner_tags() -> dict[str, str]:
    """Which process writes a run: its host, pid and the pid's start time (a reused pid has
    another). ``reap`` closes RUNNING runs whose process is gone."""
    pid = os.getpid()
    return {"losslab.host": socket.gethostname(), "losslab.pid": str(pid), **_started(pid)}


def _started(pid: int) -> dict[str, str]:
    """The process's start time in clock ticks since boot (Linux's /proc), or nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return {}
    return {"losslab.pid_started": stat.rsplit(")", 1)[1].split()[19]}


def process_gone(tags: Mapping[str, str]) -> bool:
    """True when the run's writer process is certainly gone: it ran on this host, and its pid
    is free or now belongs to a process started at another time."""
    if tags.get("losslab.host") != socket.gethostname() or not tags.get("losslab.pid"):
        return False  # another machine's (or an older losslab's) run: no way to tell here
    pid = int(tags["losslab.pid"])
    if "losslab.pid_started" in tags:
        return _started(pid).get("losslab.pid_started") != tags["losslab.pid_started"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def reap(client: Any, experiment_ids: list[str], keep: set[str] = frozenset()) -> list[str]:
    """Close the RUNNING runs in these experiments whose process is gone (a SIGKILL of both a
    job and its tracking process, a machine that rebooted, a disk that filled): KILLED, with
    the reason. Returns their ids; ``keep``: runs this process still has open."""
    host = socket.gethostname().replace("'", "")
    query = f"attributes.status = 'RUNNING' and tags.`losslab.host` = '{host}'"
    closed, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token)
        for run in page:
            if run.info.run_id in keep or not process_gone(run.data.tags):
                continue
            pid = run.data.tags["losslab.pid"]
            reason = (
                f"its process (pid {pid} on {host}) ended without closing it; closed by "
                f"losslab on {time.strftime('%Y-%m-%d %H:%M:%S')}"
            )
            tags = {"outcome": "killed", "error": reason}
            bulk_writes.close_runs(client, [(run.info.run_id, "KILLED", tags)])
            closed.append(run.info.run_id)
        token = page.token
        if not token:
            break
    return closed


def log_tags(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
    """Tags in one call, redacted (a tracking URI's password never reaches the store)."""
    bulk_writes.log_tags(client, run_id, {key: store.redact(value) for key, value in tags.items()})


def reap_store(uri: str) -> None:
    """``reap`` over every experiment of a store (``make ui``), saying what it closed."""
    try:
        import mlflow  # noqa: F401  (quiet_mlflow sets its loggers after this import)

        quiet_mlflow()
        client = get_client(uri)
        closed = reap(client, [e.experiment_id for e in client.search_experiments()])
    except Exception as error:  # the UI starts anyway; say why nothing was closed
        print(f"losslab: could not check for runs left RUNNING: {type(error).__name__}: {error}")
        return
    if closed:
        print(f"losslab: closed {len(closed)} run(s) left RUNNING by processes that are gone")


# ------------------------------------------------------------------- the job's side
_WRITERS: dict[str, Writer] = {}
_HELD: set[str] = set()  # URIs whose waits a sweep in this process takes at its end
_HANDLES = itertools.count(1)


def prestart() -> None:
    """Start the next tracking process now, before the store is known: it imports MLflow
    (1.5 s) while Hydra composes and checks the config, instead of after. The command's
    first ``writer`` takes it; a command that stops at a config mistake kills it unused."""
    Writer.prestart(Tracker)


def writer(uri: str, models: bool = True) -> Writer:
    """This process's tracking process for ``uri``, started on first use (start it early: it
    imports MLflow while this process imports torch). ``models=False`` (no job will log a
    model) spares it warming up torch and mlflow.pytorch, about 2 s of CPU."""
    found = _WRITERS.get(uri)
    if found is None or not found.alive:
        found = _WRITERS[uri] = Writer(Tracker, uri, models)
    return found


def hold(uri: str) -> None:
    """Jobs in this process stop waiting for their runs to be written: the sweep that runs
    them waits once, at its end (``settle``), so one job's figures and model are logged
    while the next one trains."""
    _HELD.add(uri)


def settle(uri: str) -> list[str]:
    """Wait until everything sent to ``uri`` is written; the failures since the last call."""
    _HELD.discard(uri)
    return writer(uri).call("take_failures")


class RunSet:
    """The MLflow runs of one job, one per member (a plain run has one), as the job sees them:
    calls return at once and are carried out in order by the tracking process."""

    def __init__(
        self, uri: str, handle: int, ready: int, members: int, named: list[str] | None
    ) -> None:
        self.uri = uri
        self.members = members
        self.writer = writer(uri)
        self.handle = handle
        self._ready = ready  # the call whose answer confirms the runs
        self._named = named  # their ids, if known before that answer
        self._run_ids: list[str] | None = None  # confirmed
        self._failure: str | None = None  # why they could not be started
        self._pending: list[tuple[int, int, dict[str, list[float]]]] = []
        self._buffered = 0  # values per run in _pending
        self.ended = False  # end() sent: the runs' true statuses are the tracking process's

    @classmethod
    def start(
        cls,
        uri: str,
        experiment: str,
        names: list[str],
        tags: list[dict[str, str]],
        params: list[dict[str, Any]],
        spool: Path | None = None,
    ) -> RunSet:
        """New runs; what the store cannot take mid-run is kept in ``spool`` (unsent.py).
        On a SQL store this process names them (the tracking process inserts the rows
        itself, bulk_writes), so a checkpoint can hold their ids without waiting for the
        tracking process to get to them (0.1-0.25 s a job in a sweep, while it finished the
        last job's models or its start-up imports)."""
        handle = next(_HANDLES)
        named = [uuid.uuid4().hex for _ in names] if store.is_sql(uri) else None
        args = (handle, experiment, names, tags, params, spool, named)
        return cls(uri, handle, writer(uri).send("start", *args, reply=True), len(names), named)

    @classmethod
    def reopen(
        cls, uri: str, run_ids: list[str], tags: dict[str, str], spool: Path | None = None
    ) -> RunSet:
        """Continue existing runs (a resume): RUNNING again, the old error tag dropped."""
        handle = next(_HANDLES)
        ready = writer(uri).send("reopen", handle, run_ids, tags, spool, reply=True)
        return cls(uri, handle, ready, len(run_ids), list(run_ids))

    @property
    def run_ids(self) -> list[str]:
        """The runs' ids: at once when they were named here, else once the tracking
        process has started the runs (raises TrackingError if it could not)."""
        if self._named is not None and self._run_ids is None and self._failure is None:
            return self._named
        return self._confirmed()

    def check(self) -> None:
        """Raise TrackingError if the runs could not be started, once the tracking process
        has said so; never waits (called every epoch)."""
        if self._run_ids is None and self._failure is None:
            try:
                if not self.writer.answered(self._ready):
                    return
            except WriterError as error:
                self._failure = str(error)
        self._confirmed()

    def _confirmed(self) -> list[str]:
        """The answer to the runs' start, waited for once; its failure is kept (the answer
        is read only once)."""
        if self._run_ids is None and self._failure is None:
            try:
                ids = self.writer.result(self._ready)
            except WriterError as error:
                self._failure = str(error)
            else:
                if self._named is None or ids == self._named:
                    self._run_ids = ids
                else:
                    self._failure = f"the store named the runs {ids}, not {self._named}"
        if self._failure is not None:
            raise TrackingError(self._failure)
        return self._run_ids

    def _send(self, method: str, *args: Any) -> None:
        try:
            self.writer.send(method, self.handle, *args)
        except WriterError as error:
            raise TrackingError(str(error)) from None

    def add_metrics(self, step: int, values: Mapping[str, Iterable[float | None]]) -> None:
        """Buffer one step's values ({key: one value per member}, None for a member whose run
        does not report that key: its loss lacks the metric). A full batch (BATCH_LIMIT
        values a run, MLflow's most per log_batch call) leaves at once: it costs the tracking
        process about the same now as later (bulk_writes: a transaction per run and call,
        plus a little per value), and now it is done while training goes on."""
        row = {
            key: [None if v is None else float(v) for v in per_member]
            for key, per_member in values.items()
        }
        self._pending.append((step, int(time.time() * 1000), row))
        self._buffered += len(row)
        if self._buffered >= BATCH_LIMIT:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._send("log_metrics", self._pending)
            self._pending, self._buffered = [], 0

    def log_text(self, member: int | None, text: str, path: str) -> None:
        """A text file in one member's run, or in every member's run when ``member`` is None
        (sent once: a 10-member job's config files were 58 KB sent ten times over)."""
        self._send("log_text", member, text, path)

    def log_file(self, member: int | None, local: Path, folder: str | None = None) -> None:
        """A file (read when the tracking process gets to it) in one member's run, or in
        every member's run when ``member`` is None."""
        self._send("log_file", member, str(local), folder)

    def log_dataset(self, key: str, arrays: tuple, title: str, classes: bool) -> None:
        """dataset.png in every member's run, drawn once per tracking process and ``key``
        from (x_train, labels_train, x_test, labels_test); ``classes``: labels are classes."""
        self._send("log_dataset", key, arrays, title, classes)

    def log_learning_curves(
        self,
        history: list[dict[str, list[float]]],
        loss: str,
        metric: str,
        title: str,
        members: slice | None = None,
    ) -> None:
        """learning_curves.png: one figure of the ``members``' curves (all by default;
        ``history[epoch][key]`` holds their values), drawn once and logged in each one's run."""
        self._send("log_learning_curves", history, loss, metric, title, members)

    def log_input(self, record: Mapping[str, str]) -> None:
        """The run's dataset, the MLflow way (``log_inputs``): name, digest, source, schema
        and profile, as ``data.Split.record`` describes it; in every member's run."""
        self._send("log_input", dict(record))

    def log_models(self, models: Sequence[MemberModel]) -> None:
        """Members' models, each (member, name, model, input example, requirements, format),
        in calls of MODELS_PER_CALL: the tracking process writes each call's in few
        transactions, and a next job's new runs (an urgent call) wait for one call's models
        (0.1 s), not a whole job's. Final metrics added before the next flush are linked to
        them."""
        for start in range(0, len(models), MODELS_PER_CALL):
            self._send("log_models", list(models[start : start + MODELS_PER_CALL]))

    def end(self, statuses: list[str], tags: Sequence[Mapping[str, Any]] = ()) -> None:
        """Close every run with its true status (FINISHED, FAILED or KILLED) and its tags
        (one mapping a member: outcome, error...), written together."""
        told = [{key: str(value) for key, value in member.items()} for member in tags]
        self._send("end", statuses, told)
        self.ended = True

    def wait(self) -> None:
        """Until everything is written, unless a sweep in this process waits at its end;
        raises TrackingError on what could not be (those runs are already marked FAILED)."""
        if self.uri in _HELD:
            return
        try:
            failures = self.writer.call("take_failures")
        except WriterError as error:
            raise TrackingError(str(error)) from None
        if failures:
            raise TrackingError("; ".join(dict.fromkeys(failures)))


# ------------------------------------------------------------------- the tracking process
def get_client(uri: str) -> Any:
    """An MlflowClient on ``uri``. MLflow creates and migrates a fresh sqlite store when the
    client is made; processes starting together on a new database race on those migrations
    ("table already exists"), so for sqlite the client is made under an exclusive lock on
    the database's folder: one migrates, the rest wait. A new store is first seeded with a
    copy of an empty one MLflow migrated before (store_template.py)."""
    with frozen_imports():  # the first MLflow import of a report or predict command
        from mlflow.tracking import MlflowClient

    quiet_mlflow()
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = store.sqlite_path(uri).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        store_template.seed(db)
        return MlflowClient(tracking_uri=uri)
    finally:
        os.close(handle)  # releases the lock


def ensure_experiment(client: Any, name: str) -> str:
    """Get or create the experiment, with losslab's saved view of it for the UI (ui_view.py);
    tolerate another process creating it at the same time."""
    from mlflow.exceptions import MlflowException

    from src import ui_view

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            experiment_id = client.create_experiment(
                name,
                artifact_location=store.artifact_root(client.tracking_uri),
                tags={"mlflow.note.content": EXPERIMENT_DESCRIPTION, ui_view.TAG: ui_view.state()},
            )
            return experiment_id
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.tags.get(ui_view.TAG) != ui_view.state():  # older, or made before views existed
        client.set_experiment_tag(found.experiment_id, ui_view.TAG, ui_view.state())
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


@functools.cache  # once per process
def quiet_mlflow() -> None:
    """MLflow's migration lines, artifact progress bars, run links and pickle-format warning
    are not news here (the pickle format is a choice made in conf/logger). Call it after
    importing MLflow, which sets its own log levels."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # a locked or failing database: MLflow logs each error with a 60-line traceback before it
    # raises; the Tracker reports it in one line (and keeps the data: src/unsent.py)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow prints "View run ... at: <tracking URI>" when a run on a server ends: the URI
    # as given, password included, and losslab prints its own links.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Deadlines for a tracking server: MLflow's defaults retry a dead one for minutes per
    # call (7 retries, backoff up to 2 minutes, 120 s timeout), which kept a finished job
    # waiting on its tracking process for half an hour. Each call now gives up in about
    # 3 s on a refused connection and 3 x 10 s on one that hangs; Tracker.refuse then fails
    # the rest at once.
    for name, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
    ):
        os.environ.setdefault(name, value)
    logging.getLogger("mlflow.pytorch").addFilter(
        lambda record: "Pickle or CloudPickle" not in record.getMessage()
    )


class Tracker:
    """Every MLflow call of a process's jobs, made in the tracking process. A job's runs are
    known by the job's handle. A call that fails marks the job's runs: they end FAILED with
    the reason, whatever status the job asks for, and the job hears of it when it waits."""

    urgent = frozenset({"start", "reopen"})  # new handles: nothing sent before concerns them

    @staticmethod
    def prepare() -> None:
        """Import MLflow: what every store needs, done before the store is known when the
        process was started early (``prestart``)."""
        # The helper never autologs Lightning: spare it Lightning's import (seconds), which
        # mlflow.pytorch attempts for its checkpoint callback and tolerates failing.
        sys.modules.setdefault("mlflow.pytorch._lightning_autolog", None)
        with frozen_imports():
            import mlflow  # noqa: F401

    def __init__(self, uri: str, models: bool = True) -> None:
        self.prepare()  # done already in a process started early
        with frozen_imports():
            import mlflow

            mlflow.set_tracking_uri(uri)
            self.client = get_client(uri)
        self.uri = uri
        self.runs: dict[int, list[str]] = {}
        self.experiments: dict[int, str] = {}  # handle -> its runs' experiment id
        self.errors: dict[str, str] = {}  # run id -> why it cannot finish
        self.open: set[str] = set()  # started or reopened, not yet ended
        self.failures: list[str] = []
        self.told: set[int] = set()  # handles whose unsent data the user was told about
        self.kept: set[int] = set()  # handles with calls kept on disk, not yet sent
        self._resend_at = 0.0  # monotonic time of the next try to send them (idle)
        self.broken: set[int] = set()  # handles whose runs could not be started
        self.down: str | None = None  # why the tracking server is taken for gone
        self.spools: dict[int, Path] = {}  # handle -> where its unsent data is kept (unsent.py)
        self._rendered = tempfile.TemporaryDirectory(prefix="losslab-figures-")
        self._datasets: dict[str, Path] = {}
        self.models: dict[str, str] = {}  # run id -> its LoggedModel's id (final_* link to it)
        self.curves: dict[str, dict[str, list[float]]] = {}  # run id -> key -> value per epoch
        # handle -> its learning curves being drawn: (log_learning_curves' arguments, Saving)
        self.figures: dict[int, list[tuple[tuple, Saving]]] = {}
        self.params: dict[str, dict[str, str]] = {}  # run id -> its params, as logged
        self.artifact_uris: dict[str, str] = {}  # run id -> where its files go
        self._repositories: dict[str, Any] = {}  # run id -> its artifact repository
        self.owners: dict[str, str | None] = {}  # run id -> the pid of the job writing it
        # Done while the job trains, so its figures and model do not wait for them: imports,
        # and the map of installed packages MLflow builds on a process's first model (0.5 s).
        self._warm_up = ["src.plots"]
        if models:  # else torch is never needed here: it comes with the pickled models
            self._warm_up += ["torch", "mlflow.pytorch", "mlflow.utils.requirements_utils"]

    def idle(self) -> bool:
        """One step of work while no call waits: send what jobs kept on disk after a passing
        fault (a locked store), at most every RESEND_SECONDS, so their runs' curves go on
        growing in the UI; else the next warm-up import."""
        if self.kept and self.down is None and time.monotonic() >= self._resend_at:
            self._resend_at = time.monotonic() + RESEND_SECONDS
            for handle in sorted(self.kept):
                try:
                    self._send_kept(handle)
                except Exception:  # still failing: kept, tried again later or at the end
                    break
            return True
        if not self._warm_up:
            return False
        with frozen_imports():
            module = importlib.import_module(self._warm_up.pop(0))
            getattr(module, "_init_packages_to_modules_map", lambda: None)()
        return True

    # -- bookkeeping
    def refuse(self, method: str, args: tuple) -> str | None:
        """Why a call is not even tried: the server stopped answering (see ``failed``), and
        each further call would wait out its own deadline; or earlier calls of its job wait
        on disk, and it must not overtake them (a newer tag or file overwritten by an older)."""
        if method in ("take_failures", "idle"):
            return None
        if method in KEPT and args and args[0] in self.kept:
            return self.down or "earlier data of this job is kept on disk"
        return self.down

    def failed(self, method: str, args: tuple, error: str) -> None:
        server = self.uri.startswith(("http://", "https://"))
        unanswered = "failed with exception" in error or "Max retries exceeded" in error
        if self.down is None and server and unanswered:
            self.down = (
                f"the MLflow server at {store.redact(self.uri)} stopped answering "
                f"({error.split(' failed with exception', 1)[0][:200]})"
            )
            error = self.down
        if args and args[0] in self.broken:
            return  # its start failed and said why; what follows cannot work
        if args and args[0] in self.spools and (method in KEPT or method == "end"):
            try:
                self._keep(method, args, error)
            except Exception as disk:  # e.g. the disk is full too: the runs end FAILED
                self._lost(args, f"{error}; not kept on disk either: {disk}")
            return
        self._lost(args, error)

    def _lost(self, args: tuple, error: str) -> None:
        """A call that cannot be made up for: its job's runs end FAILED with the reason."""
        self.failures.append(error)
        for run_id in self.runs.get(args[0], []) if args else []:
            self.errors.setdefault(run_id, error)

    def _keep(self, method: str, args: tuple, error: str) -> None:
        """Keep on disk what the store could not take (src/unsent.py); say so once per job."""
        from src import unsent

        handle, folder = args[0], self.spools[args[0]]
        run_ids = self.runs.get(handle, [])
        if method == "end":  # the runs cannot be closed now; a run that lost data is FAILED
            statuses, tags = args[1], args[2] if len(args) > 2 else ()
            for run_id, status, told in zip(run_ids, statuses, _each(tags, len(statuses))):
                lost = self.errors.pop(run_id, None)
                if lost and status == "FINISHED":
                    status = "FAILED"
                    told = {**told, "outcome": "failed", "error": f"not recorded: {lost}"[:5000]}
                if told:
                    unsent.keep(folder, run_id, {"tags": told})
                unsent.keep(folder, run_id, {"status": status, "owner": self.owners.get(run_id)})
                self.open.discard(run_id)  # closed from the file; abandoned() cannot either
            self.failures.append(
                f"{self.down or error}; the runs' data and status are kept in {folder}: "
                f"send them with `python -m src.unsent {folder}` once the store answers"
            )
        else:
            if not self.kept:  # the first try to send it: a while after the failure
                self._resend_at = time.monotonic() + RESEND_SECONDS
            self.kept.add(handle)
            self._keep_call(folder, run_ids, method, *args[1:])
        self._tell(handle, error)

    def _keep_call(self, folder: Path, run_ids: list[str], method: str, *args: Any) -> None:
        """One of the job's calls (``KEPT``), as entries of its runs' files."""
        from src import unsent

        if method == "log_metrics":
            for k, run_id in enumerate(run_ids):
                rows = [list(point) for point in _points(args[0], k)]
                unsent.keep(folder, run_id, {"metrics": rows})
        elif method == "log_text":
            for run_id in _chosen(run_ids, args[0]):
                unsent.keep_text(folder, run_id, store.redact(args[1]), args[2])
        elif method == "log_input":
            for run_id in run_ids:
                unsent.keep(folder, run_id, {"input": args[0]})
        elif method == "log_models":
            for member, name, model, example, requirements, serialization in args[0]:
                unsent.keep_model(
                    folder,
                    run_ids[member],
                    name,
                    model,
                    example,
                    requirements=requirements,
                    serialization=serialization,
                )
        elif method == "log_learning_curves":
            chosen = _chosen(run_ids, args[4])
            unsent.keep_file(folder, chosen, self._curves_png(chosen, *args[:4]).wait(), None)
        else:  # log_file, log_dataset: in one member's run (log_file's member) or every one
            member, local, artifact_folder = (
                (args[0], Path(args[1]), args[2])
                if method == "log_file"
                else (None, self._dataset_png(*args), None)
            )
            unsent.keep_file(folder, _chosen(run_ids, member), local, artifact_folder)

    def _tell(self, handle: int, error: str) -> None:
        """One line per job, from this process at once: what failed and where data is kept."""
        if handle in self.told:
            return
        self.told.add(handle)
        folder = self.spools[handle]
        reason = store.redact(" ".join(re.split(r"\s*\[SQL:", error)[0].split()))[:160]
        print(
            f"losslab: MLflow could not take the run's data ({reason}); training goes on, and "
            f"what is not sent is kept in {folder} and sent once the store answers, or by "
            f"`python -m src.unsent {folder}`",
            file=sys.stderr,
            flush=True,
        )

    def _send_kept(self, handle: int) -> None:
        """Send what was kept on disk for a job's runs, in order, and take its later calls
        straight to the store again; raises if the store still fails (at a job's end, the
        closing is then kept on disk too)."""
        from src import unsent

        if handle not in self.kept:
            return
        folder = self.spools[handle]
        for run_id in self.runs.get(handle, []):
            if (folder / f"{run_id}.jsonl").exists():
                unsent.send(self.client, folder / f"{run_id}.jsonl")
        self.kept.discard(handle)

    def take_failures(self) -> list[str]:
        """What could not be recorded since the last call, as the job prints it: redacted
        (MLflow's own messages may quote a tracking URI with its password)."""
        failures, self.failures = self.failures, []
        return [store.redact(failure) for failure in failures]

    def abandoned(self) -> None:
        """The job (or sweep) process died without closing its runs (SIGKILL): record that,
        with the figures already drawn."""
        for handle in list(self.figures):
            with contextlib.suppress(Exception):
                self._log_figures(handle)
        for run_id in list(self.open):
            try:
                tags = {"outcome": "killed", "error": "the job process died"}
                self._close(run_id, "KILLED", tags)
            except Exception:
                continue

    def _close(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        self._close_all([(run_id, status, tags or {})])

    def _close_all(self, closings: list[bulk_writes.Closing]) -> None:
        """End runs with their tags (redacted), in one write where the store allows."""
        redacted = [
            (run_id, status, {key: store.redact(value) for key, value in tags.items()})
            for run_id, status, tags in closings
        ]
        bulk_writes.close_runs(self.client, redacted)
        self.open.difference_update(run_id for run_id, _, _ in closings)

    def _tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        log_tags(self.client, run_id, tags)

    def _members(self, handle: int, member: int | slice | None) -> list[str]:
        return _chosen(self.runs[handle], member)

    # -- a job's runs
    def start(
        self,
        handle: int,
        experiment: str,
        names: list[str],
        tags: list[dict[str, str]],
        params: list[dict[str, Any]],
        spool: Path | None = None,
        named: list[str] | None = None,
    ) -> list[str]:
        """The job's runs, RUNNING; ``named``: their ids, chosen by the job (a SQL store)."""
        run_ids = self.runs[handle] = []
        if spool:
            self.spools[handle] = spool
        new = [
            (
                store.redact(name),
                {key: store.redact(value) for key, value in run_tags.items()},
                {
                    key: store.redact(str(value))[:PARAM_VALUE_MAX]
                    for key, value in run_params.items()
                },
            )
            for name, run_tags, run_params in zip(names, tags, params)
        ]
        try:
            self.experiments[handle] = ensure_experiment(self.client, experiment)
            created = bulk_writes.create_runs(self.client, self.experiments[handle], new, named)
            for k, (run_id, artifact_uri) in enumerate(created):  # to its end: params follow
                _, run_tags, run_params = new[k]
                self.artifact_uris[run_id] = artifact_uri
                self.open.add(run_id)  # before anything else can fail: closed at the end
                self.owners[run_id] = run_tags.get("losslab.pid")
                self.params[run_id] = run_params
                run_ids.append(run_id)
        except Exception as error:  # what follows for this job cannot work: say why once
            self.broken.add(handle)
            self.failures.append(f"{type(error).__name__}: {error}")
            raise
        return run_ids

    def reopen(
        self, handle: int, run_ids: list[str], tags: dict[str, str], spool: Path | None = None
    ) -> list[str]:
        self.runs[handle] = list(run_ids)
        if spool:
            self.spools[handle] = spool
        for run_id in run_ids:
            run = self.client.get_run(run_id)
            self.experiments[handle] = run.info.experiment_id
            self.client.update_run(run_id, status="RUNNING")
            self.open.add(run_id)
            self.owners[run_id] = tags.get("losslab.pid")
            if "error" in run.data.tags:
                self.client.delete_tag(run_id, "error")
            self._tags(run_id, tags)
        return run_ids

    def log_metrics(self, handle: int, rows: list[tuple[int, int, dict[str, list[float]]]]):
        batches: list[bulk_writes.History] = []
        for k, run_id in enumerate(self.runs[handle]):
            model_id = self.models.get(run_id)
            points = _points(rows, k)
            if model_id:  # a final score is its model's (the Models page ranks by them)
                batches.append((run_id, [point for point in points if _final(point)], model_id))
                points = [point for point in points if not _final(point)]
            batches.append((run_id, points, None))
        bulk_writes.log_histories(self.client, batches)

    def log_text(self, handle: int, member: int | None, text: str, path: str) -> None:
        folder, name = posixpath.split(posixpath.normpath(path))
        with tempfile.TemporaryDirectory(dir=self._rendered.name) as scratch:
            (Path(scratch) / name).write_text(store.redact(text))
            for run_id in self._members(handle, member):
                self._artifacts(run_id).log_artifact(str(Path(scratch) / name), folder or None)

    def log_file(
        self, handle: int, member: int | slice | None, local: str, folder: str | None
    ) -> None:
        for run_id in self._members(handle, member):
            self._artifacts(run_id).log_artifact(local, folder)

    def _artifacts(self, run_id: str) -> Any:
        """The run's artifact repository. Its URI is known from the run's creation; MLflow's
        ``log_artifact`` would read the whole run back (its 237 params too) to find it, 10 ms
        for each run's first file."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        if run_id not in self._repositories:
            uri = self.artifact_uris.get(run_id) or self.client.get_run(run_id).info.artifact_uri
            self._repositories[run_id] = get_artifact_repository(uri, tracking_uri=self.uri)
        return self._repositories[run_id]

    def log_dataset(self, handle: int, key: str, arrays: tuple, title: str, classes: bool) -> None:
        self.log_file(handle, None, str(self._dataset_png(key, arrays, title, classes)), None)

    def _dataset_png(self, key: str, arrays: tuple, title: str, classes: bool) -> Path:
        """Drawn once per key: every member and job on the same data shares it."""
        from src import plots

        if key not in self._datasets:
            path = Path(self._rendered.name) / str(len(self._datasets)) / "dataset.png"
            path.parent.mkdir()
            plots.dataset(*arrays, title, classes).savefig(path)
            self._datasets[key] = path
        return self._datasets[key]

    def log_input(self, handle: int, record: dict[str, str]) -> None:
        bulk_writes.log_dataset_input(self.client, self.runs[handle], dataset_input(record))

    def log_learning_curves(
        self,
        handle: int,
        history: list[dict],
        loss: str,
        metric: str,
        title: str,
        members: slice | None = None,
    ) -> None:
        """Drawn by a child process (src/render.py) while this one goes on with the job's
        models; logged when the job's runs end (``_log_figures``)."""
        args = (history, loss, metric, title, members)
        saving = self._curves_png(self._members(handle, members), history, loss, metric, title)
        self.figures.setdefault(handle, []).append((args, saving))

    def _log_figures(self, handle: int) -> None:
        """Log the job's learning curves drawn meanwhile, each as its own call would have
        been: kept on disk when the store cannot take it, the runs FAILED when it cannot be
        drawn."""
        for args, saving in self.figures.pop(handle, []):
            call = (handle, *args)
            if reason := self.refuse("log_learning_curves", call):
                self.failed("log_learning_curves", call, reason)
                continue
            try:
                self.log_file(handle, args[-1], str(saving.wait()), None)
            except Exception as error:
                self.failed("log_learning_curves", call, f"{type(error).__name__}: {error}")

    def _curves_png(
        self, run_ids: list[str], history: list[dict], loss: str, metric: str, title: str
    ) -> Saving:
        """The job's figure, being saved; its runs' curves of ``metric`` are kept for the
        sweep's report, which would otherwise read every run's history back from the store
        (0.9 s of a 50-run report, profiled)."""
        from src import plots

        keys = [f"{split}/{metric}" for split in plots.SPLITS]
        drawn = [key for key in keys if all(key in row for row in history)]
        for k, run_id in enumerate(run_ids):
            self.curves[run_id] = {key: [row[key][k] for row in history] for key in drawn}
        path = Path(self._rendered.name) / run_ids[0] / "learning_curves.png"
        path.parent.mkdir(exist_ok=True)
        return Saving(plots.learning_curves(history, loss, metric, title), path)

    def log_models(self, handle: int, models: list[MemberModel]) -> None:
        run_ids = self.runs[handle]
        entries = [
            ModelToLog(
                run_ids[member],
                self.params.get(run_ids[member])
                or self.client.get_run(run_ids[member]).data.params,
                *model,
            )
            for member, *model in models
        ]
        log_models(self.client, self.experiments[handle], entries, self.models)

    def end(self, handle: int, statuses: list[str], tags: Sequence[Mapping[str, str]] = ()) -> None:
        """Close the job's runs with their tags, after what was kept for them is sent. If the
        store answers but refuses that (not a passing fault), a FINISHED run ends FAILED,
        tagged ``unsent`` with the folder, and its file gets its true status, which ``python
        -m src.unsent`` gives it once all is in. A store that does not answer fails the
        closing too, which is then kept on disk (``_keep``), with the tags."""
        from src import unsent

        self._log_figures(handle)
        folder, refused = self.spools.get(handle), None
        try:
            self._send_kept(handle)
        except Exception as error:
            refused = (
                f"kept data not sent ({type(error).__name__}: {error}); it stays in {folder}: "
                f"send it with `python -m src.unsent {folder}`"
            )
            self.failures.append(refused)
        run_ids = self.runs.get(handle, [])
        closings: list[bulk_writes.Closing] = []
        for run_id, status, told in zip(run_ids, statuses, _each(tags, len(statuses))):
            lost = self.errors.get(run_id)
            if lost and status == "FINISHED":
                told = {**told, "outcome": "failed", "error": lost[:5000]}
                closings.append((run_id, "FAILED", told))
            elif refused and (folder / f"{run_id}.jsonl").exists():
                finished = status == "FINISHED"
                untag = ["unsent", "error"] if finished else ["unsent"]
                owner = self.owners.get(run_id)
                unsent.keep(folder, run_id, {"untag": untag, "status": status, "owner": owner})
                told = {**told, "unsent": str(folder)}
                if finished:
                    told["error"] = refused[:5000]
                closings.append((run_id, "FAILED" if finished else status, told))
            else:
                closings.append((run_id, status, told))
        self._close_all(closings)
        for run_id in run_ids:  # recorded with the runs now (_keep reads them if that failed)
            self.errors.pop(run_id, None)

    def reap(self, experiment: str) -> None:
        """Close the experiment's runs left RUNNING by processes that are gone (``reap``)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            reap(self.client, [found.experiment_id], keep=self.open)

    # -- a sweep's parent run
    def start_parent(self, experiment: str, name: str, tags: dict[str, str]) -> str:
        experiment_id = ensure_experiment(self.client, experiment)
        redacted = {key: store.redact(value) for key, value in tags.items()}
        run_id = self.client.create_run(
            experiment_id, run_name=store.redact(name), tags=redacted
        ).info.run_id
        self.open.add(run_id)  # closed KILLED by abandoned() if the sweep's process dies
        self._warm_up.append("src.report")  # its import (scipy.stats, 0.6 s) not at the end
        return run_id

    def report(self, parent_run_id: str, sweep_dir: Path, metric: str | None) -> dict[str, Any]:
        """The sweep's comparison report (src/report.py), ranked by ``metric`` (None: each
        task's primary), logged to the parent."""
        from src import report

        best = report.tag_best_trial(self.uri, parent_run_id, sweep_dir)
        built = report.build(self.uri, parent_run_id, sweep_dir, metric, self.curves)
        return {
            "console": built.console,
            "failures": built.failures,
            "runs": len(built.results) + len(built.lost_jobs),
            "best": len(best),
        }

    def close_orphans(self, parent_run_id: str, status: str, reason: str | None = None) -> None:
        """Close child runs left RUNNING by jobs that are gone: dead local workers (loky
        workers ignore SIGINT and are terminated by joblib), or a launcher's job that ended
        without closing them."""
        from src.report import child_runs

        reason = reason or f"the sweep ended ({status}) while this run was running"
        for run in child_runs(self.uri, parent_run_id):
            if run.info.status == "RUNNING":
                self._close(run.info.run_id, status, {"outcome": status.lower(), "error": reason})

    def close_job(
        self, parent_run_id: str, job_num: int, status: str, reason: str, tags: dict[str, str]
    ) -> int:
        """Record why a launcher's job ended without a result (SLURM: cancelled, timed out)
        on its runs (tag ``job``): those still RUNNING end with ``status``, those the job
        closed itself keep their status and get the reason. Returns how many runs it had."""
        from src.report import child_runs

        runs = [
            r for r in child_runs(self.uri, parent_run_id) if r.data.tags.get("job") == str(job_num)
        ]
        for run in runs:
            told = {**tags, "error": reason}
            if run.info.status == "RUNNING":
                self._close(run.info.run_id, status, {**told, "outcome": status.lower()})
            else:
                self._tags(run.info.run_id, told)
        return len(runs)

    def end_parent(self, parent_run_id: str, status: str) -> None:
        self._close(parent_run_id, status)


def _each(tags: Sequence[Mapping[str, str]], runs: int) -> list[Mapping[str, str]]:
    """An ``end`` call's tags, one mapping a run (empty when it gave none)."""
    return list(tags) or [{} for _ in range(runs)]


def dataset_input(record: Mapping[str, str]) -> Any:
    """The run's dataset as MLflow's ``log_inputs`` takes it (``data.Split.record``)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    context = InputTag(key="mlflow.data.context", value="train")
    return DatasetInput(Dataset(**record), tags=[context])


def _points(
    rows: list[tuple[int, int, dict[str, list[float | None]]]], member: int
) -> list[tuple[str, float, int, int]]:
    """One member's (key, value, timestamp, step) of buffered rows, without the keys its run
    does not report (None)."""
    return [
        (key, values[member], timestamp, step)
        for step, timestamp, row in rows
        for key, values in row.items()
        if values[member] is not None
    ]


def _chosen(run_ids: list[str], member: int | slice | None) -> list[str]:
    """One member's run, a slice of them, or every member's when ``member`` is None."""
    if member is None:
        return run_ids
    return run_ids[member] if isinstance(member, slice) else [run_ids[member]]


class ModelToLog(NamedTuple):
    """A run's model, as ``log_models`` logs it."""

    run_id: str
    params: Mapping[str, str]  # the run's, the model's too
    name: str
    model: Any
    input_example: Any
    requirements: list[str]
    serialization: str


def log_models(
    client: Any, experiment_id: str, models: Sequence[ModelToLog], logged: dict[str, str]
) -> None:
    """Each model as MLflow's pytorch flavor with signature and input example, named for its
    run, with the run's params. Its ``models:/`` URI is the run's tag ``model``, and the run's
    final metrics are logged linked to it (the Models page ranks by them). ``logged`` gets
    run id -> model id of each one logged: those are linked to their runs even if a later one
    fails, and one never tried is marked FAILED, not left PENDING.

    The LoggedModels are created here, all in one transaction (bulk_writes), then saved one
    by one (``mlflow.pytorch.log_model(model_id=...)``, which marks each READY), then linked
    in one transaction: a job's ten models take 12 writes to the store, not 30.
    ``mlflow.pytorch.log_model(run_id=...)`` would re-read the run's params and every
    metric's whole history for each model: 0.077 s a model against 0.046 s (measured on a
    run of 150 params and 1,200 values). Explicit requirements spare MLflow from inferring
    them in a subprocess (seconds)."""
    import mlflow.pytorch
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking.context import registry

    # This process runs as `python -c`, which MLflow would record as the model's source.
    tags = registry.resolve_tags({"mlflow.source.name": "src.train"})
    new = [(m.name, m.run_id, tags, m.params) for m in models]
    model_ids = bulk_writes.create_logged_models(client, experiment_id, new)
    done: dict[str, str] = {}
    try:
        for m, model_id in zip(models, model_ids):
            mlflow.pytorch.log_model(
                m.model,
                name=m.name,
                model_id=model_id,
                input_example=m.input_example,
                pip_requirements=m.requirements,
                serialization_format=m.serialization,
            )
            done[m.run_id] = model_id
    except Exception:
        for model_id in model_ids[len(done) + 1 :]:  # the failed one is marked by MLflow
            with contextlib.suppress(Exception):
                client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
        raise
    finally:
        if done:
            links = [(run, model, {"model": f"models:/{model}"}) for run, model in done.items()]
            bulk_writes.link_models(client, links)
            logged.update(done)


def _final(point: bulk_writes.Point) -> bool:
    """A run's final scores describe its model."""
    return point[0].startswith("final_")


# ------------------------------------------------------------------- other readers
def run_metrics(run: Any) -> dict[str, float]:
    """A run's latest metrics, final values under their current names: runs logged before
    2026-12-03 named them final/<split>/<metric> (now final_<split>_<metric>)."""
    return {
        re.sub(r"^final/(train|test)/", r"final_\1_", key): value
        for key, value in run.data.metrics.items()
    }


def logged_epochs(client: Any, run_id: str) -> int:
    """How many epochs of per-epoch metrics the run holds (its last train/loss step)."""
    return max((m.step for m in client.get_metric_history(run_id, "train/loss")), default=0)


def download_checkpoint(client: Any, run_id: str, folder: Path) -> Path | None:
    """The run's checkpoint artifact (checkpoints/last.ckpt) copied into ``folder``, if any."""
    from mlflow.exceptions import MlflowException

    try:
        return Path(client.download_artifacts(run_id, "checkpoints/last.ckpt", str(folder)))
    except (MlflowException, OSError):
        return None
