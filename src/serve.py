"""``make ui`` / ``make server``: the MLflow UI and tracking server on a losslab store.

Checks first, so a mistake costs one line instead of a uvicorn traceback: the port must be free
and the store usable. Then this process runs ``mlflow server`` (``mlflow ui`` is its alias) in
a process group of its own and stops it on Ctrl-C (``supervise``).

Artifacts, by mode:
- local (``make ui``): runs logged straight to the sqlite store have ``file://`` artifact
  locations, which the server reads from disk. Experiments created through this server get
  ``file://`` locations under ``--artifacts`` too, so the same store keeps working without the
  server (an ``mlflow-artifacts:/`` location would need a server to log to).
- team (``--team``, ``make server``): clients may be on other machines, so new experiments get
  ``mlflow-artifacts:/`` locations and artifacts travel through the server into ``--artifacts``.

Options this script does not know are passed to ``mlflow server`` unchanged
(e.g. ``--allowed-hosts``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from src import store, ui_view
from src.config import ConfigError, LoggerConfig


def port_taken(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (bind fails with EADDRINUSE).
    SO_REUSEADDR, as uvicorn sets it, so connections lingering in TIME_WAIT do not count."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def artifacts_uri(artifacts: str) -> str:
    """A folder becomes a file:// URI; a URI (s3://bucket/path, ...) is used as given."""
    return artifacts if "://" in artifacts else Path(artifacts).resolve().as_uri()


def runs_link(
    store_uri: str, base_url: str, experiment: str = LoggerConfig.experiment
) -> str | None:
    """The experiment's runs page in the classic view, with losslab's saved view (its columns
    and curves, ui_view.py): MLflow 3's UI opens in its GenAI view, and only a
    ``workflowType`` in the link (or a click on its switch) leaves it. Read from a
    sqlite store's experiments table, without importing MLflow; None when there is none yet."""
    if not store_uri.startswith("sqlite:///") or not store.sqlite_path(store_uri).is_file():
        return None
    query = "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'"
    try:
        with sqlite3.connect(f"{store.sqlite_path(store_uri).as_uri()}?mode=ro", uri=True) as db:
            row = db.execute(query, (experiment,)).fetchone()
    except sqlite3.Error:  # not an MLflow database yet, or one from another schema
        return None
    if row is None:
        return None
    view = f"workflowType=machine_learning&viewStateShareKey={ui_view.KEY}"
    return f"{base_url}/#/experiments/{row[0]}/runs?{view}"


def when_up(store_uri: str, base_url: str, reap: bool) -> None:
    """Run beside the server (``after_start``): close runs left RUNNING by processes that are
    gone (src/tracking.py ``reap``), then print the runs link once the server answers (it
    takes seconds to start; a link printed before that leads nowhere)."""
    code = (
        "from src.serve import after_start; "
        f"after_start({store_uri!r}, {base_url!r}, {os.getpid()}, {reap})"
    )
    # A session of its own: Ctrl-C is for the server; this helper ends when the server has.
    subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        start_new_session=True,
    )


def after_start(store_uri: str, base_url: str, serve_pid: int, reap: bool) -> None:
    import urllib.request

    if reap:
        from src.tracking import reap_store

        reap_store(store_uri)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if os.getppid() != serve_pid:  # the server (run by its parent) is gone: say nothing
            return
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        return
    link = runs_link(store_uri, base_url) or base_url
    print(f"losslab: the UI answers: {link}", flush=True)
    print(f"losslab: {CLASSIC_VIEW}", flush=True)


# MLflow 3.17 keeps its GenAI/Model training choice per browser (localStorage
# mlflow.workflowType_v1, GenAI until chosen); the printed link's workflowType parameter holds
# for that page only, and MLflow's own run links drop it. Nothing server-side sets it.
CLASSIC_VIEW = (
    "first visit in a browser: click 'Model training' at the top of MLflow's sidebar once; "
    "the browser keeps the classic run view from then on"
)


def server_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    artifacts = artifacts_uri(args.artifacts)
    local = [] if args.team else ["--default-artifact-root", artifacts]
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        args.store,
        *local,
        "--serve-artifacts",  # for experiments whose location is mlflow-artifacts:/
        "--artifacts-destination",
        artifacts,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
        *extra,
    ]


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m src.serve",
        description="Start the MLflow UI / tracking server on a losslab store.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: local)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--store", default=store.DEFAULT_URI, help="backend store URI")
    parser.add_argument(
        "--artifacts",
        default=str(store.PROJECT_ROOT / "mlartifacts"),
        help="artifact folder, or a URI such as s3://bucket/path (team mode)",
    )
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument(
        "--team",
        action="store_true",
        help="artifacts of new experiments go through the server (clients on other machines)",
    )
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> None:
    args, extra = parse(argv)
    try:
        if args.store.startswith(("http://", "https://")):
            raise ConfigError(f"--store {store.redact(args.store)} is a server, not a store")
        store.check(args.store)
        if not 0 <= args.port <= 65535:
            raise ConfigError(
                f"--port {args.port} is not a TCP port; use 1-65535 (0: any free one)"
            )
        if args.port == 0:  # any free port, said in the links below
            with socket.socket() as probe:
                probe.bind((args.host, 0))
                args.port = probe.getsockname()[1]
        if port_taken(args.host, args.port):
            raise ConfigError(
                f"port {args.port} on {args.host} is already in use (another MLflow UI?); "
                f"stop it or pick another port, e.g. `make ui PORT={args.port + 1}`"
            )
    except (ConfigError, OSError) as error:
        print(f"losslab: error: {error}", file=sys.stderr)
        sys.exit(1)
    if "://" not in args.artifacts:
        Path(args.artifacts).mkdir(parents=True, exist_ok=True)
    if args.store.startswith("sqlite:///"):  # sqlite creates the file, not its folder
        store.sqlite_path(args.store).parent.mkdir(parents=True, exist_ok=True)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # wildcard: local URL
    what = "tracking server" if args.team else "UI"
    base_url = f"http://{shown}:{args.port}"
    print(
        f"losslab: MLflow {what} at {base_url}  "
        f"(store {store.redact(args.store)}, artifacts {args.artifacts}; Ctrl-C stops it)",
        flush=True,
    )
    print("losslab: starting; the link follows when the server answers", flush=True)
    exists = not args.store.startswith("sqlite:///") or store.sqlite_path(args.store).is_file()
    # MLflow's and Starlette's deprecation notices are for MLflow's developers, not its users.
    quiet = "ignore::DeprecationWarning,ignore::FutureWarning,ignore:starlette.middleware.wsgi is"
    os.environ.setdefault("PYTHONWARNINGS", quiet)
    # The job runner serves GenAI features (judges, trace roll-ups) losslab does not use: two
    # worker pools fewer on a small machine. Set it to true in the environment to keep it.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    sys.exit(supervise(server_command(args, extra), lambda: when_up(args.store, base_url, exists)))


STOP_SECONDS = 30  # how long a stopping server may take before it is killed


def supervise(command: list[str], started: Callable[[], None]) -> int:
    """Run the server (``command``), then ``started()``; return its exit code. Ctrl-C, SIGTERM
    or a closed terminal stop it: SIGTERM to its process group (MLflow's CLI, uvicorn and its
    workers), which uvicorn takes as a graceful shutdown and a process still loading as a
    quiet end, where a Ctrl-C mid-import would print that import's traceback (the server
    loads for seconds, in three processes one after the other). Then one line, and 128 + the
    signal. A second signal, or STOP_SECONDS without an end, kills the group."""
    received: list[int] = []
    group: list[int] = []  # the server's process group, once it runs

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group[0], signal.SIGKILL if len(received) > 1 else signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's stays ignored
            signal.signal(signum, stop)
    server = subprocess.Popen(command, process_group=0)
    group.append(server.pid)
    if received:  # came while it was being started
        os.killpg(server.pid, signal.SIGTERM)
    else:
        started()
    deadline = None
    while True:
        try:
            code = server.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if received and deadline is None:
                deadline = time.monotonic() + STOP_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
    if not received:
        return code
    # MLflow's CLI ends at once on SIGTERM; uvicorn and its workers take a moment longer.
    deadline = time.monotonic() + STOP_SECONDS
    while _group_alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    print("losslab: server stopped", file=sys.stderr, flush=True)
    return 128 + received[0]


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    main()
