"""Where runs are tracked, checked without importing MLflow (so mistakes surface instantly).

``MLFLOW_TRACKING_URI`` wins when set; otherwise runs go to an embedded sqlite store at the
project root (``mlflow.db``, artifacts in ``mlartifacts/`` beside it). MLflow >= 3.13 refuses
the old ``./mlruns`` file store, so file URIs are rejected here with a pointer to sqlite.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import sqlite3
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from src.config import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
SERVER_TIMEOUT_S = 3.0


def resolve_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def redact(text: str) -> str:
    """Hide credentials embedded in URIs (scheme://user:secret@host) anywhere in ``text``,
    also as Hydra writes a sweep job's override (``http\\://user\\:secret@host``)."""
    return re.sub(r"(\w+\\?:\\?/\\?/)[^/@\s:\\]+(\\?:[^/@\s]*)?@", r"\1***@", text)


# URI schemes MLflow opens as its SqlAlchemyStore (mlflow.store.db.db_types), driver aside:
# postgresql+psycopg2://...
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def is_sql(uri: str) -> bool:
    """A SQL store, whose rows losslab writes itself (bulk_writes), new runs' ids included."""
    return urlsplit(uri).scheme.lower().split("+")[0] in SQL_SCHEMES


def sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def artifact_root(uri: str) -> str | None:
    """Artifact root for experiments created on a sqlite store: ``mlartifacts`` beside the
    database. Servers and other stores decide for themselves (None)."""
    if uri.startswith("sqlite:///"):
        return (sqlite_path(uri).parent / "mlartifacts").resolve().as_uri()
    return None


def check(uri: str, experiment: str | None = None, read_only: bool = False) -> None:
    """Fail in seconds, with one line, on a store that cannot work: a malformed or file URI,
    an unwritable sqlite location, a file that is not an MLflow database, a locked or deleted
    ``experiment``, or a tracking server that does not answer. ``read_only`` (predict,
    report): a sqlite store must already exist; nothing is created."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    shown = redact(uri)
    if scheme in ("http", "https"):
        try:
            parts.port  # noqa: B018 (parses the port: "host:abc" raises)
        except ValueError as err:
            raise ConfigError(f"tracking URI '{shown}' is malformed: {err}") from None
        if not parts.hostname:
            raise ConfigError(f"tracking URI '{shown}' has no host; use e.g. http://127.0.0.1:5000")
        try:
            with urllib.request.urlopen(_health_request(parts), timeout=SERVER_TIMEOUT_S):
                pass
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(
                f"MLflow server at {shown} is not reachable ({reason}); start it with "
                "`make server` or unset MLFLOW_TRACKING_URI to use the local sqlite store"
            ) from None
    elif scheme == "sqlite":
        if not uri.startswith("sqlite:///") or uri == "sqlite:///":
            raise ConfigError(
                f"tracking URI '{shown}' is malformed; use sqlite:///relative.db or "
                "sqlite:////absolute/path/mlflow.db"
            )
        db = sqlite_path(uri)
        if read_only and not db.is_file():
            raise ConfigError(
                f"no MLflow store at {db}; set MLFLOW_TRACKING_URI to the store the runs were "
                "logged to"
            )
        if not read_only:
            _check_writable(db)
        location = _check_sqlite_store(db, experiment)
        if not read_only:
            _check_artifacts(location or artifact_root(uri) or "")
    elif scheme in ("", "file") or re.fullmatch(r"[a-z]", scheme):
        raise ConfigError(
            f"tracking URI '{shown}' is a file store, which MLflow >= 3.13 refuses; use "
            "sqlite:///mlflow.db (migrate old runs with `mlflow migrate-filestore`)"
        )
    elif is_sql(uri):
        _check_driver(uri, shown)
    elif scheme != "databricks":
        raise ConfigError(
            f"tracking URI '{shown}' has an unknown scheme '{scheme}'; use http://host:port, "
            "sqlite:///path.db or postgresql://..."
        )


def _health_request(parts: SplitResult) -> urllib.request.Request:
    """GET <server>/health; credentials in the URI go in a header (urllib cannot read them
    from the host part), as MLflow's own client sends them."""
    host = parts.netloc.rpartition("@")[2]
    path = parts.path.rstrip("/")
    request = urllib.request.Request(f"{parts.scheme}://{host}{path}/health")
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", f"Basic {base64.b64encode(token).decode()}")
    return request


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent."""
    return next(p for p in (path, *path.parents) if p.exists())


def writable_folder(path: Path) -> Path:
    """The nearest existing folder at or above ``path``, once a real write in it worked (a
    temporary file, removed again; not os.access, which root passes even under /proc).
    Raises OSError saying why not."""
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file, not a folder")
    with tempfile.TemporaryFile(dir=existing):
        pass
    return existing


def _check_writable(db: Path) -> None:
    """The database (or the folder it will be created in) must be writable. A real probe file,
    not os.access: root passes every permission check yet cannot write under /proc."""
    target = db.resolve()
    if target.is_dir():
        raise ConfigError(f"the MLflow store {db} is a directory; name a .db file inside it")
    if target.exists():
        if not os.access(target, os.W_OK):
            raise ConfigError(f"cannot write the MLflow store {db}; check its permissions")
        return
    try:
        writable_folder(target)
    except OSError as err:
        raise ConfigError(
            f"cannot create the MLflow store {db} ({err.strerror or err}); "
            "point MLFLOW_TRACKING_URI at a writable sqlite:/// path"
        ) from None


SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}
LOCK_WAIT_S = 30.0


def _check_sqlite_store(db: Path, experiment: str | None) -> str | None:
    """An existing sqlite file must be an MLflow store (checked read-only, with the standard
    library: nothing is written to a file that is not one), not locked for longer than
    LOCK_WAIT_S, and ``experiment`` must not be deleted in it. Returns the experiment's
    artifact location when it exists."""
    if not db.is_file() or db.stat().st_size == 0:
        return None  # MLflow creates it
    with db.open("rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise ConfigError(
                f"the MLflow store {db} is not an SQLite database; move it away or point "
                "MLFLOW_TRACKING_URI at an MLflow store"
            )
    try:
        tables, deleted, location = _read_store(db, experiment, timeout=0.5)
    except sqlite3.OperationalError as error:
        if "locked" not in str(error):
            raise ConfigError(f"the MLflow store {db} cannot be read ({error})") from None
        print(f"losslab: the MLflow store {db} is locked; waiting up to {LOCK_WAIT_S:.0f} s")
        try:
            tables, deleted, location = _read_store(db, experiment, timeout=LOCK_WAIT_S)
        except sqlite3.OperationalError as again:
            raise ConfigError(
                f"the MLflow store {db} is still locked by another process after "
                f"{LOCK_WAIT_S:.0f} s ({again}); try again when it is done"
            ) from None
    except sqlite3.DatabaseError as error:
        raise ConfigError(
            f"the MLflow store {db} is damaged ({error}); move it away or point "
            "MLFLOW_TRACKING_URI at another store"
        ) from None
    if tables and not tables >= MLFLOW_TABLES:
        shown = ", ".join(sorted(tables)[:5])
        raise ConfigError(
            f"{db} is not an MLflow store: it holds another application's tables ({shown}); "
            "point MLFLOW_TRACKING_URI at an MLflow store"
        )
    if deleted is not None:
        raise ConfigError(
            f"experiment '{experiment}' is deleted in {db}; restore it with `mlflow "
            f"experiments restore --experiment-id {deleted}` or use logger.experiment=<name>"
        )
    return location


def _check_artifacts(location: str) -> None:
    """A local artifact location must be writable before training, not after it: models,
    figures and checkpoints go there at the end of a run."""
    parts = urlsplit(location)
    if not location or parts.scheme not in ("", "file"):
        return  # a server's or cloud store: the tracking process reports its failures
    folder = Path(urllib.request.url2pathname(parts.path))
    try:
        writable_folder(folder)
    except OSError as err:
        raise ConfigError(
            f"cannot write run artifacts to {folder} ({err.strerror or err}); make it a "
            "writable folder or use another store"
        ) from None


def _read_store(
    db: Path, experiment: str | None, timeout: float
) -> tuple[set[str], str | None, str | None]:
    """(table names, id of ``experiment`` if it is deleted, its artifact location if it is
    active), read-only."""
    connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {name for (name,) in rows}
        deleted = location = None
        if experiment and tables >= MLFLOW_TABLES:
            found = connection.execute(
                "SELECT experiment_id, lifecycle_stage, artifact_location FROM experiments "
                "WHERE name = ?",
                (experiment,),
            ).fetchone()
            if found and found[1] == "deleted":
                deleted = str(found[0])
            elif found:
                location = found[2]
        return tables, deleted, location
    finally:
        connection.close()


def _check_driver(uri: str, shown: str) -> None:
    """A database URI needs its Python driver; say so now, not after the run has started."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise ConfigError(f"tracking URI '{shown}' is malformed: {err}") from None
    except ImportError as err:
        raise ConfigError(
            f"tracking URI '{shown}' needs the database driver '{err.name}', which is not "
            "installed; pip install it or use sqlite:///mlflow.db"
        ) from None
