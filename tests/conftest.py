"""Shared fixtures: drive the real CLI in a subprocess against a fresh sqlite store in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


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
    timeout: float = 240,
) -> CliResult:
    done = subprocess.run(
        cli_command(folder, *args),
        cwd=ROOT,
        env=cli_env(store_uri, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def run_cli(tmp_path: Path, store_uri: str) -> Callable[..., CliResult]:
    """Run ``python -m src.train <args>`` from the project root, writing Hydra outputs and the
    MLflow store under tmp_path. Extra environment variables go in ``env``."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> CliResult:
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
