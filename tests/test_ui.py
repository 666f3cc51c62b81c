"""Browsing results, for real: `src.serve` runs `mlflow server` on a free 127.0.0.1 port with a
temporary sqlite backend and artifact root; sweeps reach it over HTTP; logged models reproduce
their logged test metric; headless Chromium walks the UI to a run's metric charts."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, hang, runs_of, sigint_default

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
LOSSES = ("mse", "msle", "mae", "bce", "hinge")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.serve", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=hang(60),
    )


def predict_cli(*args: str, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.predict", *args],
        cwd=ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, **QUIET},
        capture_output=True,
        text=True,
        timeout=hang(120),
    )


@dataclass
class Server:
    url: str
    store: str  # its sqlite backend, which runs can also log to directly
    artifacts: Path
    log: Path  # what `make server` printed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python -m src.serve` (which becomes `mlflow server`) on a fresh store; stopped, with
    its uvicorn workers, through its own process group."""
    root = tmp_path_factory.mktemp("server")
    store = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    port = free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "src.serve",
            "--team",
            "--port",
            str(port),
            "--store",
            store,
            "--artifacts",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        cwd=ROOT,
        env={**os.environ, **QUIET},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield Server(url, store, root / "artifacts", root / "server.log")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=hang(20))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_serve_prints_its_link_once_the_server_answers_and_no_deprecations(server) -> None:
    deadline = time.monotonic() + hang(30)
    while "losslab: the UI answers: " not in (text := server.log.read_text()):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    lines = text.splitlines()
    answers = next(i for i, line in enumerate(lines) if "the UI answers: " in line)
    assert lines[answers] == f"losslab: the UI answers: {server.url}"  # no experiment yet
    assert any("Application startup complete" in line for line in lines[:answers])
    assert "Deprecat" not in text and "Warning" not in text, text


def test_serve_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve("--port", str(port), "--store", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"losslab: error: port {port} on 127.0.0.1 is already in use (another MLflow UI?); "
        f"stop it or pick another port, e.g. `make ui PORT={port + 1}`"
    )
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was created


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("when", ["starting", "answering"])
def test_ctrl_c_stops_the_server_in_one_line_and_leaves_nothing(tmp_path: Path, when: str) -> None:
    """A terminal's Ctrl-C (SIGINT to the command's process group) while MLflow's command still
    loads, or once it answers: no process of the server prints a traceback or stays behind."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--port", str(port), "--workers", "1", "--store", store, "--artifacts", str(tmp_path)]
    process = subprocess.Popen(
        [sys.executable, "-m", "src.serve", *args],
        cwd=ROOT,
        env={**os.environ, **QUIET},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=sigint_default,
    )
    if when == "starting":  # its checks are done; then MLflow's command loads, for seconds
        assert "losslab: starting" in process.stdout.readline() + process.stdout.readline()
        time.sleep(0.5)
        assert not answers(url)
    else:
        deadline = time.monotonic() + hang(90)
        while not answers(url):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=hang(60))
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stdout + stderr
    assert stderr.strip().splitlines()[-1] == "losslab: server stopped"
    assert not answers(url)
    left = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True)
    assert left.stdout == ""


@pytest.mark.parametrize(
    ("server_kind", "sweep"),
    [("closed port", False), ("closed port", True), ("silent server", False)],
)
def test_unreachable_server_fails_fast_before_training(
    run_cli, tmp_path: Path, server_kind: str, sweep: bool
) -> None:
    """Nothing listening answers at once; a server that accepts but never replies hits the
    3 s health-check timeout. Either way: one line, exit 1, no run or sweep directory."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        if server_kind == "silent server":
            silent.listen()  # the kernel accepts the connection; nobody ever answers
        else:
            silent.close()
        started = time.monotonic()
        done = run_cli(
            *(["hydra.mode=MULTIRUN", "loss=mse,bce"] if sweep else ["loss=mse"]),
            "trainer.max_epochs=2",
            env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
            timeout=hang(60),
        )
        elapsed = time.monotonic() - started
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"losslab: error: MLflow server at http://127.0.0.1:{port} is not reachable ("
    )
    assert ("timed out" in lines[0]) == (server_kind == "silent server")
    assert "Traceback" not in done.stdout + done.stderr
    assert "Train:" not in done.stdout + done.stderr  # no training line was printed
    assert not (tmp_path / "outputs").exists()
    assert not (tmp_path / "multirun").exists()
    assert elapsed < hang(20), f"took {elapsed:.1f}s"


@pytest.mark.slow
def test_sweep_over_http_lands_on_server_and_models_reproduce_metrics(
    run_cli, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from src import predict

    done = run_cli(
        "hydra.mode=MULTIRUN",  # run_cli puts its own overrides first, so not -m
        "loss=mse,bce",
        "trainer.max_epochs=3",
        env={"MLFLOW_TRACKING_URI": server.url, **QUIET},
    )
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=server.url)
    runs = {run.info.run_name: run for run in runs_of(client)}
    parent = next(run for run in runs.values() if run.data.tags.get("losslab.sweep") == "parent")
    children = {name: run for name, run in runs.items() if run is not parent}
    assert sorted(children) == [
        "bce trainer.max_epochs=3 seed=0",
        "mse trainer.max_epochs=3 seed=0",
    ]
    for name, run in children.items():
        loss = name.split()[0]
        metric = "mse" if loss == "mse" else "accuracy"
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["loss"] == loss
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == [1, 2, 3]
        assert all(np.isfinite(m.value) for m in history)
        assert 0 <= run.data.metrics[f"final_test_{metric}"] < 10
        # Artifacts go through the server into its artifact root, not to the client's disk.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        paths = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config", "dataset.png", "learning_curves.png"} <= paths
        assert len(list(server.artifacts.rglob(f"{run.info.run_id}/**/learning_curves.png"))) == 1
        (output,) = run.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.source_run_id == run.info.run_id
        assert model.artifact_location.startswith("mlflow-artifacts:/")
        model_files = {a.path for a in client.list_logged_model_artifacts(output.model_id)}
        assert {"MLmodel", "input_example.json", "data"} <= model_files

    # The real CLI: the bce run's model, reloaded, scores its rebuilt test split as logged.
    bce_run = children["bce trainer.max_epochs=3 seed=0"]
    logged = bce_run.data.metrics["final_test_accuracy"]
    out = tmp_path / "bce_test.csv"
    done = predict_cli(
        f"run_id={bce_run.info.run_id}", "split=test", f"output={out}", uri=server.url
    )
    assert done.returncode == 0, done.stderr
    assert f"test accuracy: {logged:.6f} (logged final_test_accuracy: {logged:.6f})" in done.stdout
    scored = pd.read_csv(out)
    assert list(scored.columns) == ["x0", "x1", "target", "prediction"]
    assert len(scored) == 500
    accuracy = np.mean((scored["prediction"] > 0.5) == (scored["target"] > 0.5))
    assert accuracy == pytest.approx(logged, rel=1e-6)

    # In process, for the regression run: the same check on mse, then predictions for a CSV
    # of features (what a user brings) match the model's predictions on the split.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    mse_run = children["mse trainer.max_epochs=3 seed=0"]
    test = predict.score_test(client, mse_run)
    mse = float(np.mean((test.prediction - test.target) ** 2))
    assert mse == pytest.approx(mse_run.data.metrics["final_test_mse"], rel=1e-5)
    assert test.recomputed["mse"] == pytest.approx(mse, rel=1e-5)
    features = pd.DataFrame(test.x[:7], columns=[f"f{i}" for i in range(test.x.shape[1])])
    features.to_csv(tmp_path / "features.csv", index=False)
    out = tmp_path / "predictions.csv"
    predict.main(
        [f"run_id={mse_run.info.run_id}", f"input={tmp_path / 'features.csv'}", f"output={out}"]
    )
    written = pd.read_csv(out)
    assert list(written.columns) == [*(f"x{i}" for i in range(20)), "prediction"]
    np.testing.assert_allclose(written["prediction"], test.prediction[:7, 0], rtol=1e-6)
    # The same rows as other files bring them: UTF-16 text (encoding= read), a workbook's
    # second sheet without a header row (sheet= read, its first row kept as data), Parquet.
    features.to_csv(tmp_path / "utf16.csv", index=False, encoding="utf-16")
    with pd.ExcelWriter(tmp_path / "book.xlsx", engine="openpyxl") as book:
        features.iloc[:0].to_excel(book, sheet_name="About", index=False)
        features.to_excel(book, sheet_name="Rows", index=False, header=False)
    features.to_parquet(tmp_path / "rows.parquet")
    for source, extra in [
        ("utf16.csv", ["encoding=utf-16"]),
        ("book.xlsx", ["sheet=Rows"]),
        ("rows.parquet", []),
    ]:
        out = tmp_path / f"{source}.predictions.csv"
        run_id = mse_run.info.run_id
        predict.main([f"run_id={run_id}", f"input={tmp_path / source}", f"output={out}", *extra])
        np.testing.assert_allclose(
            pd.read_csv(out)["prediction"], test.prediction[:7, 0], rtol=1e-6, err_msg=source
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run_id=0123456789abcdef", "split=test"], "no run 0123456789abcdef in http://"),
        (["run_id=NOMODEL", "split=test"], "run NOMODEL has no logged model"),
        (["run_id=NOMODEL", "input=a.csv", "split=test"], "usage: python -m src.predict"),
        (["run_id=NOMODEL", "outptu=x.csv"], "cannot read 'outptu=x.csv'; usage:"),
    ],
)
def test_predict_bad_input_is_one_line(
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    args: list[str],
    message: str,
) -> None:
    from mlflow.tracking import MlflowClient

    from src import predict

    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("no-models")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("no-models")
    )
    bare = client.create_run(experiment_id).info.run_id  # a run that logged no model
    client.set_terminated(bare)  # FINISHED: no test leaves a run RUNNING
    args = [arg.replace("NOMODEL", bare) for arg in args]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setattr(sys, "argv", ["src.predict", *args])
    with pytest.raises(SystemExit) as exit_info:
        predict.cli()
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"losslab: error: {message.replace('NOMODEL', bare)}")


@pytest.mark.slow
def test_browser_shows_the_sweep_and_a_runs_metric_chart(
    run_cli, server: Server, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from src.serve import runs_link

    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}; install it with `make browser` (root)")
    from playwright.sync_api import expect, sync_playwright

    # Logged straight to the server's sqlite store, as `make ui` users do: file:// artifacts.
    done = run_cli(
        "hydra.mode=MULTIRUN",  # run_cli puts its own overrides first, so not -m
        f"loss={','.join(LOSSES)}",
        "trainer.max_epochs=2",
        "logger.experiment=browse",
        env={"MLFLOW_TRACKING_URI": server.store, **QUIET},
    )
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=server.url)
    names = [f"{loss} trainer.max_epochs=2 seed=0" for loss in LOSSES]
    wait = 45_000  # ms: the UI bundle is large and the CPUs are shared
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 2000})
            page.set_default_timeout(wait)
            expect.set_options(timeout=wait)
            # The link `make ui` prints: straight to the runs, not MLflow 3's GenAI view.
            link = runs_link(server.store, server.url, experiment="browse")
            assert link and link.endswith(
                "/runs?workflowType=machine_learning&viewStateShareKey=losslab"
            )
            page.goto(link, wait_until="domcontentloaded")
            expect(page.get_by_text("losslab: which loss function fits").first).to_be_visible()
            # The children sit under the sweep's parent run: expand it, then all five show.
            parent_row = page.locator(".ag-row", has=page.get_by_role("link", name="sweep "))
            parent_row.get_by_role("button").first.click()
            for name in names:
                expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
            # losslab's saved view: the sweep's answer and the final values as columns
            expect(page.get_by_text("You're viewing a shared view")).to_be_visible()
            headers = page.get_by_role("columnheader")
            expect(headers.filter(has_text="final_test_accuracy").first).to_be_attached()
            page.screenshot(path=str(tmp_path / "run-list.png"))
            page.locator(".ag-body-horizontal-scroll-viewport").evaluate(
                "view => { view.scrollLeft = view.scrollWidth; }"
            )
            expect(headers.filter(has_text="best.regression").first).to_be_attached()
            parent = next(r for r in runs_of(client, "browse") if r.info.run_name.startswith("sw"))
            best = parent.data.tags["best.regression"]  # the sweep's answer, in its row
            index = parent_row.first.get_attribute("row-index")  # pinned and scrolled halves
            cells = page.locator(f".ag-center-cols-container .ag-row[row-index='{index}']")
            expect(cells.get_by_text(best, exact=True).first).to_be_visible()
            print("run list columns:", headers.all_inner_texts())
            page.screenshot(path=str(tmp_path / "run-list-right.png"))
            bce = page.get_by_role("link", name="bce trainer.max_epochs=2 seed=0", exact=True)
            bce.click()
            heading = page.get_by_role("heading", name="bce trainer.max_epochs=2 seed=0")
            expect(heading).to_be_visible()
            # MLflow's run link drops the link's workflowType: a new browser sees the GenAI
            # view. The one click the README and `make ui` name makes the classic view stick.
            genai = page.get_by_role("link", name="Evaluation runs")
            print(f"run link in a new browser: GenAI view = {genai.count() > 0}")
            page.screenshot(path=str(tmp_path / "run-first-visit.png"))
            run_link = page.url  # what MLflow links a run with: no workflowType
            assert "workflowType" not in run_link
            if genai.count():
                page.get_by_text("Model training", exact=True).first.click()
                page.wait_for_url(re.compile(r".*workflowType=machine_learning"))
                page.goto(run_link, wait_until="domcontentloaded")
                expect(heading).to_be_visible()
            expect(page.get_by_role("link", name="Models", exact=True)).to_be_visible()
            expect(genai).to_have_count(0)
            page.get_by_role("tab", name="Model metrics").click()
            # Sections group keys by prefix, sorted, unprefixed keys last: the learning curves
            # (test/, train/) come first, the final values (step-0 bars) in the last section.
            tops = []
            for section in ("test", "train", "Model metrics"):
                header = page.get_by_role("figure").filter(has_text=re.compile(rf"^{section}\s*\("))
                expect(header).to_be_visible()
                tops.append(header.bounding_box()["y"])
            assert tops == sorted(tops), tops
            page.wait_for_function(
                "() => [...document.querySelectorAll('.js-plotly-plot')]"
                ".filter(plot => plot.data.some(trace => trace.x.length > 1)).length >= 4"
            )
            first = page.evaluate(
                "() => [...document.querySelectorAll('.js-plotly-plot')]"
                ".sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top)[0]"
                ".data.map(trace => [trace.type || 'scatter', trace.x.length])"
            )
            assert first and all(t == ["scatter", 2] for t in first), first  # a curve: 2 epochs
            finals = page.get_by_role("figure").filter(has_text=re.compile(r"^Model metrics\s*\("))
            finals.scroll_into_view_if_needed()
            page.wait_for_function(
                "() => [...document.querySelectorAll('.js-plotly-plot')]"
                ".some(plot => plot.data.some(trace => trace.type === 'bar'))"
            )
            plotted = page.evaluate(
                "() => [...document.querySelectorAll('.js-plotly-plot')]"
                ".flatMap(plot => plot.data.map(trace => [trace.x, trace.y]))"
            )
            page.wait_for_timeout(1500)  # let the plot finish drawing before the screenshot
            shot = tmp_path / "run-metrics.png"
            page.screenshot(path=str(shot))
            # Artifacts logged as file:// paths are served too: the learning-curve figure.
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("learning_curves.png", exact=True).click()
            path = re.compile(r"^Path: file:///.+/artifacts/learning_curves\.png$")
            expect(page.get_by_text(path)).to_be_visible()
            page.wait_for_function(  # the PNG itself arrived and decoded
                "() => [...document.images].some(image => image.src.startsWith('blob:')"
                " && image.complete && image.naturalWidth > 300)"
            )
            page.screenshot(path=str(tmp_path / "run-artifacts.png"))
            # The Models page lists each run's model by the run's name, logged from src.train.
            page.get_by_role("link", name="Models", exact=True).click()
            for name in names:
                model = name.replace("=", "").replace(".", "_").replace(" ", "-")
                expect(page.get_by_text(model, exact=True)).to_be_visible()
            expect(page.get_by_text("-c", exact=True)).to_have_count(0)
            page.screenshot(path=str(tmp_path / "models.png"))
        finally:
            browser.close()
    # The per-epoch chart draws the very values the run logged.
    run_id = next(r.info.run_id for r in runs_of(client, "browse") if r.info.run_name == names[3])
    logged = client.get_metric_history(run_id, "train/loss")
    assert [[m.step for m in logged], [m.value for m in logged]] in plotted
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
