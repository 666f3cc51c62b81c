"""Bad input and faults through the real CLI: one clear line, a truthful store, nothing lost.

The catalogue is one table: add a ``bad(args, expected)`` row for a new mistake. Every row runs
``python -m src.train <args>`` in its own empty folder (store and Hydra dirs inside it) and must
exit != 0 with exactly one stderr line ``losslab: error: ...`` containing ``expected``, no
traceback, and nothing created: no Hydra output dir, no MLflow store, so no run and no parent.
The rows run a few at a time (each is a fresh interpreter), then each is checked on its own.
"""

from __future__ import annotations

import shlex
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import CliResult, invoke


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bad(args: str, expected: str, **env: str):
    return pytest.param(args, expected, env, id=args if not env else f"{env} {args}")


CATALOGUE = [
    # unknown group options list the valid ones
    bad("loss=foo", "unknown loss 'foo'; choose one of: bce, hinge, mae, mse, msle"),
    bad("dataset=foo", "unknown dataset 'foo'; choose one of: circles, regression"),
    bad("model=foo", "unknown model 'foo'; choose one of: mlp"),
    bad("optimizer=foo", "unknown optimizer 'foo'; choose one of: sgd"),
    # unknown keys, wrong types
    bad("optimizer.lrr=0.1", "Key 'lrr' not in 'OptimizerConfig' (to add a new key use +"),
    bad("+optimizer.betas=1", "unknown key 'optimizer.betas'"),
    bad("+foo=1", "unknown key 'foo'"),
    bad("optimizer.lr=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    bad("loss.output=softplus", "Invalid value 'softplus', expected one of [identity"),
    bad("trainer.max_epochs=many", "could not be converted to Integer"),
    bad("--bogus", "unrecognized arguments: --bogus"),
    # out-of-range values
    bad("optimizer.lr=0", "optimizer.lr=0.0 must be > 0"),
    bad("optimizer.lr=-0.1", "optimizer.lr=-0.1 must be > 0"),
    bad("optimizer.lr=nan", "optimizer.lr=nan must be > 0"),
    bad("optimizer.momentum=1", "optimizer.momentum=1.0 must be in [0, 1)"),
    bad("optimizer.momentum=-0.5", "optimizer.momentum=-0.5 must be in [0, 1)"),
    bad("trainer.max_epochs=0", "trainer.max_epochs=0 must be >= 1"),
    bad("dataset.batch_size=0", "dataset.batch_size=0 must be >= 1"),
    bad("dataset.batch_size=501", "larger than the train split (500 rows)"),
    bad("dataset.generator.n_samples=1", "n_samples=1 is too small to split"),
    bad("dataset.generator.n_samples=abc", "n_samples='abc' must be an integer"),
    bad("dataset.generator.noise=-0.1", "dataset.generator.noise=-0.1 must be a number >= 0"),
    bad("dataset.train_fraction=0", "must be strictly between 0 and 1"),
    bad("dataset.train_fraction=1.5", "must be strictly between 0 and 1"),
    bad("model.hidden_sizes=[0]", "every layer needs at least 1 unit"),
    bad("members=0", "members=0 must be >= 1"),
    bad("seed=-1", "seed=-1 must be a non-negative integer"),
    bad("seed=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
    # combinations that do not fit together
    bad("loss=bce dataset=regression", "loss 'bce' is a binary loss but dataset 'regression'"),
    bad("loss=mse dataset=circles", "pick one of: regression"),
    bad("loss=hinge loss.output=sigmoid", "needs an output in ['tanh', 'identity']"),
    bad("dataset.generator._target_=os.system", "outside the allowed prefixes"),
    # the store
    bad("loss=mse", "is a file store", MLFLOW_TRACKING_URI="mlruns"),
    bad("loss=mse", "is malformed", MLFLOW_TRACKING_URI="sqlite://"),
    bad("loss=mse", "unknown scheme 'htp'", MLFLOW_TRACKING_URI="htp://127.0.0.1:5000"),
    bad("loss=mse", "has no host", MLFLOW_TRACKING_URI="http://"),
    bad("loss=mse", "needs the database driver", MLFLOW_TRACKING_URI="mysql://u@127.0.0.1/db"),
    bad(f"logger.tracking_uri=http://127.0.0.1:{closed_port()}", "is not reachable"),
    bad("logger.tracking_uri=sqlite:////dev/null/mlflow.db", "cannot create the MLflow store"),
    bad("logger.tracking_uri=sqlite:////proc/losslab/mlflow.db", "cannot create the MLflow"),
    # a sweep with one bad grid point: nothing runs, no parent run
    bad("-m optimizer.lr=0.01,0", "optimizer.lr=0.0 must be > 0"),
    bad("-m loss=mse,nope", "unknown loss 'nope'"),
    bad("-m loss=mse,bce dataset=regression", "loss 'bce' is a binary loss"),
    bad("-m seed=0,-2", "seed=-2 must be a non-negative integer"),
    bad("-m dataset.batch_size=32,600", "larger than the train split"),
    bad("-m seed=0,1", "is not reachable", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{closed_port()}"),
]


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, CliResult]]:
    """Every catalogue row run through the real CLI, each in its own empty folder."""

    def one(row) -> tuple[Path, CliResult]:
        args, _, env = row.values
        folder = tmp_path_factory.mktemp("bad")
        store = f"sqlite:///{folder / 'mlflow.db'}"
        return folder, invoke(folder, store, *shlex.split(args), env=env, timeout=60)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip((row.id for row in CATALOGUE), pool.map(one, CATALOGUE)))


@pytest.mark.parametrize(("args", "expected", "env"), CATALOGUE)
def test_bad_input_gets_one_line_and_creates_nothing(answers, request, args, expected, env):
    folder, result = answers[request.node.callspec.id]
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("losslab: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert list(folder.iterdir()) == []  # no outputs/, multirun/ or mlflow.db
