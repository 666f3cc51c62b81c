"""Shared fixtures: drive the real CLI in a subprocess against a fresh sqlite store in tmp_path."""

from __future__ import annotations

import contextlib
import numbers
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # pandas loads in the tests that need it, not in every worker's start
    import pandas as pd

ROOT = Path(__file__).resolve().parent.parent

# Timeouts catch hangs, not slowness. Each is a generous multiple of what the step takes on a
# quiet machine, stretched by SLOWDOWN: LOSSLAB_TEST_SLOWDOWN when set, else the load per core
# when the session starts (at least 1), so a loaded machine gets proportionally longer.
SLOWDOWN = float(
    os.environ.get("LOSSLAB_TEST_SLOWDOWN") or max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
)
TEST_TIMEOUT = 600  # seconds per test (pytest-timeout), before SLOWDOWN


def hang(seconds: float) -> float:
    """A subprocess timeout: ``seconds`` on a quiet machine, stretched by SLOWDOWN."""
    return seconds * SLOWDOWN


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test without its own timeout gets TEST_TIMEOUT x SLOWDOWN. The SLURM tests
    (one file, one worker, minutes) go first, so the other worker takes the rest meanwhile
    instead of the suite ending on them alone."""
    items.sort(key=lambda item: item.path.name != "test_slurm.py")  # stable
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(hang(TEST_TIMEOUT)))


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def sigint_default() -> None:
    """For a CLI a test interrupts: SIGINT at its default, whatever this worker inherited
    (Python then turns it into KeyboardInterrupt, as a terminal's Ctrl-C would)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_command(folder: Path, *args: str) -> list[str]:
    """The real CLI with Hydra's run and sweep dirs under ``folder`` (Hydra's switches such as
    -m go first: its argparse takes no flag after an override)."""
    flags = [a for a in args if a.startswith("-")]
    return [
        sys.executable,
        "-m",
        "src.train",
        *flags,
        f"hydra.run.dir={folder}/outputs/run",
        f"hydra.sweep.dir={folder}/multirun",
        *(a for a in args if not a.startswith("-")),
    ]


def cli_env(store_uri: str, env: dict[str, str] | None = None) -> dict[str, str]:
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return full_env


def invoke(
    folder: Path,
    store_uri: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> CliResult:
    done = subprocess.run(
        cli_command(folder, *args),
        cwd=ROOT,
        env=cli_env(store_uri, env),
        capture_output=True,
        text=True,
        timeout=hang(timeout),
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def run_cli(tmp_path: Path, store_uri: str) -> Callable[..., CliResult]:
    """Run ``python -m src.train <args>`` from the project root, writing Hydra outputs and the
    MLflow store under tmp_path. Extra environment variables go in ``env``."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
        return invoke(tmp_path, store_uri, *args, env=env, timeout=timeout)

    return run


@pytest.fixture
def client(store_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store_uri)


def runs_of(client, experiment: str = "losslab") -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], max_results=10000)


TIMINGS = ("job_seconds",)  # metrics that measure the machine, not the result


def results(run) -> dict[str, float]:
    """A run's metrics that the config and seed decide: all but the timings."""
    return {k: v for k, v in run.data.metrics.items() if k not in TIMINGS}


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(folder: Path) -> tuple[subprocess.Popen, int]:
    """A real `mlflow server` on 127.0.0.1 with its own sqlite store and artifact folder, in
    a process group of its own (its workers die with it)."""
    port = closed_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "server-artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + hang(90)
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
    return server, port


@pytest.fixture
def mlflow_server(tmp_path):
    server, port = start_mlflow_server(tmp_path)
    yield port
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=hang(30))


def compose_cfg(*overrides: str, hydra_node: bool = False):
    """The config the CLI would compose for these overrides (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir

    from src import config

    config.register()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


def finished_children(client) -> dict[str, object]:
    """The child runs of the store's sweep, by loss; every one must have FINISHED."""
    children = [r for r in runs_of(client) if "mlflow.parentRunId" in r.data.tags]
    assert all(r.info.status == "FINISHED" for r in children), [r.info for r in children]
    return {r.data.tags["loss"]: r for r in children}


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def write_xls(path: Path, frame: pd.DataFrame) -> None:
    """An Excel 97-2003 workbook (.xls) of one sheet, as old exports still are: pandas no
    longer writes the format, xlwt does. Empty cells are missing values."""
    import xlwt

    book = xlwt.Workbook()
    sheet = book.add_sheet("Data")
    for col, name in enumerate(frame.columns):
        sheet.write(0, col, name)
    for row, values in enumerate(frame.astype(object).itertuples(index=False), start=1):
        for col, value in enumerate(values):
            if value is not None and value == value:  # None and NaN stay empty
                is_number = isinstance(value, numbers.Real)
                sheet.write(row, col, float(value) if is_number else str(value))
    book.save(str(path))


def write_ods(path: Path, sheets: dict[str, object]) -> None:
    """An OpenDocument spreadsheet (.ods) of DataFrames, one sheet each, written by hand: the
    test environment has no ODS writer. Its first row names the columns; empty cells are
    missing values."""
    from xml.sax.saxutils import escape, quoteattr

    def cell(value: object) -> str:
        if value is None or value != value:  # None or NaN
            return "<table:table-cell/>"
        if isinstance(value, numbers.Real):  # numpy's too; repr: every digit, no np.float64()
            number = repr(float(value))
            kind, shown = f'"float" office:value="{number}"', number
        else:
            kind, shown = '"string"', escape(str(value))
        paragraph = f"<text:p>{shown}</text:p>"
        return f"<table:table-cell office:value-type={kind}>{paragraph}</table:table-cell>"

    tables = []
    for name, frame in sheets.items():
        rows = [list(frame.columns), *frame.astype(object).itertuples(index=False)]
        body = "".join(
            f"<table:table-row>{''.join(map(cell, row))}</table:table-row>" for row in rows
        )
        tables.append(f"<table:table table:name={quoteattr(name)}>{body}</table:table>")
    office = "urn:oasis:names:tc:opendocument:xmlns"
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content '
        f'xmlns:office="{office}:office:1.0" xmlns:table="{office}:table:1.0" '
        f'xmlns:text="{office}:text:1.0" office:version="1.2"><office:body><office:spreadsheet>'
        f"{''.join(tables)}</office:spreadsheet></office:body></office:document-content>"
    )
    manifest = (
        f'<?xml version="1.0" encoding="UTF-8"?><manifest:manifest '
        f'xmlns:manifest="{office}:manifest:1.0" manifest:version="1.2">'
        '<manifest:file-entry manifest:full-path="/" '
        'manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
        "</manifest:manifest>"
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        archive.writestr("META-INF/manifest.xml", manifest)
        archive.writestr("content.xml", content)


def write_tables(folder: Path) -> dict[str, Path]:
    """Real tables from scikit-learn's bundled data, as a user brings them: a text category
    column, missing values, text class labels; and the broken files the start-up check
    refuses. Returns name -> path."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def save(name: str, frame: pd.DataFrame) -> None:
        files[name] = folder / name
        if name.endswith(".parquet"):
            frame.to_parquet(files[name])
        else:
            frame.to_csv(files[name], index=False)

    diabetes = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    diabetes.insert(2, "region", rng.choice(["north", "south", "east"], len(diabetes)))
    diabetes.loc[rng.choice(len(diabetes), 20, replace=False), "bmi"] = np.nan
    diabetes.loc[rng.choice(len(diabetes), 5, replace=False), "region"] = None
    save("diabetes.csv", diabetes)

    cancer = load_breast_cancer(as_frame=True).frame
    labels = np.where(cancer.pop("target") == 1, "benign", "malignant")
    cancer.insert(0, "diagnosis", labels)
    cancer["site"] = rng.choice(["clinic a", "clinic b"], len(cancer))
    cancer.loc[rng.choice(len(cancer), 15, replace=False), "mean radius"] = np.nan
    save("cancer.csv", cancer)
    save("cancer.parquet", cancer)

    wine = load_wine(as_frame=True)
    frame = wine.frame.copy()
    frame["target"] = wine.target_names[frame["target"]]
    save("wine.csv", frame)

    # what the start-up check refuses
    (folder / "empty.csv").write_text("")
    files["empty.csv"] = folder / "empty.csv"
    save("header.csv", diabetes.iloc[:0])
    save("one_class.csv", cancer.assign(diagnosis="benign"))
    no_target = diabetes.copy()
    no_target.loc[[3, 7, 11], "progression"] = np.nan
    save("no_target.csv", no_target)
    save("all_nan.csv", diabetes.assign(bmi=np.nan))
    save("small.csv", diabetes.iloc[:12])
    save("rare_class.csv", pd.concat([cancer, cancer.iloc[:1].assign(diagnosis="unsure")]))
    regions = {"north": "Nord", "south": "Süd", "east": "Öst"}  # text a spreadsheet writes
    europe = diabetes.assign(region=diabetes["region"].map(regions))
    europe.to_csv(folder / "cp1252.csv", index=False, sep=";", decimal=",", encoding="cp1252")
    files["cp1252.csv"] = folder / "cp1252.csv"
    save("utf16.csv", diabetes.iloc[:50])
    files["utf16.csv"].write_text(files["utf16.csv"].read_text(), encoding="utf-16")
    with zipfile.ZipFile(folder / "broken.xlsx", "w") as book:  # a zip, but no workbook
        book.writestr("xl/workbook.xml", "<workbook/>")
    files["broken.xlsx"] = folder / "broken.xlsx"
    files["diabetes.xlsx"] = folder / "diabetes.xlsx"  # the data on its second sheet
    with pd.ExcelWriter(files["diabetes.xlsx"], engine="openpyxl") as book:
        pd.DataFrame({"about": ["scikit-learn's diabetes data"]}).to_excel(
            book, sheet_name="About", index=False
        )
        diabetes.to_excel(book, sheet_name="Data", index=False)
    titled = folder / "titled.csv"  # a report's title above the header, as exports have
    titled.write_text("Diabetes progression, 2026\n\n" + diabetes.to_csv(index=False))
    files["titled.csv"] = titled
    (folder / "ragged.csv").write_text("age,bmi,progression\n50,22.1,151\n61,30.2,75,9\n")
    files["ragged.csv"] = folder / "ragged.csv"
    write_ods(folder / "diabetes.ods", {"Data": diabetes})
    files["diabetes.ods"] = folder / "diabetes.ods"
    write_xls(folder / "diabetes.xls", diabetes)
    files["diabetes.xls"] = folder / "diabetes.xls"
    # an Excel 97-2003 workbook's signature (OLE2), and no workbook after it
    (folder / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))
    files["old.xls"] = folder / "old.xls"
    (folder / "fake.parquet").write_bytes(b"PAR1" + bytes(range(256)))  # damaged
    files["fake.parquet"] = folder / "fake.parquet"

    # daily sales over two years: a trend, busier weekends, promotions; the dates as ISO text
    days = pd.date_range("2024-01-01", periods=730, freq="D")
    years = np.arange(len(days)) / 365.2425
    promo = rng.integers(0, 2, len(days))
    sales = 50 + 20 * years + 8 * (days.day_of_week >= 5) + 5 * promo + rng.normal(0, 2, len(days))
    shops = rng.choice(["centre", "mall"], len(days))
    dated = pd.DataFrame({"day": days, "shop": shops, "promo": promo, "sales": sales.round(2)})
    save("sales.csv", dated.assign(day=days.strftime("%Y-%m-%d")))
    files["sales.xlsx"] = folder / "sales.xlsx"  # the dates as a workbook's date cells
    dated.to_excel(files["sales.xlsx"], index=False, engine="openpyxl")
    save("waits.parquet", dated.assign(wait=pd.to_timedelta(promo, unit="min")))
    return files
