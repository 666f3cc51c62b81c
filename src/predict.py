"""Use a logged model: ``python -m src.predict run_id=<id> input=<csv> [output=<csv>]``.

The model is the run's MLflow pytorch model (``runs:/<id>/model``): a plain torch network that
takes the features as the run's data module produced them (scaled) and returns the activated
output (a value for regression, a probability for bce, a tanh value for hinge).

``split=test`` instead of ``input=`` rebuilds the run's own test split from its logged config
(``config/config.yaml``) and scores it, next to the test metrics the run logged: a logged result
is only trustworthy if the model that was saved reproduces it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from src import store
from src.config import ConfigError, LosslabConfig

if TYPE_CHECKING:  # MLflow and torch load only once the arguments are known to be good
    import torch
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

USAGE = "usage: python -m src.predict run_id=<id> (input=<csv> | split=test) [output=<csv>]"
KEYS = ("run_id", "input", "split", "output")


@dataclass
class Scored:
    """A run's test split with the logged model's predictions and both sets of metrics."""

    x: np.ndarray
    target: np.ndarray
    prediction: np.ndarray
    recomputed: dict[str, float]
    logged: dict[str, float]


def parse(argv: list[str]) -> dict[str, str]:
    args = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS or not value:
            raise ConfigError(f"cannot read '{item}'; {USAGE}")
        args[key] = value
    if "run_id" not in args or ("input" in args) == ("split" in args):
        raise ConfigError(USAGE)
    if args.get("split", "test") != "test":
        raise ConfigError(f"split={args['split']} is not known; only split=test is")
    return args


def run_config(client: MlflowClient, run_id: str) -> LosslabConfig:
    """The run's typed config, from the resolved config.yaml it logged."""
    from omegaconf import OmegaConf

    from src.config import from_logged

    folder = client.download_artifacts(run_id, "config")
    return from_logged(OmegaConf.load(Path(folder) / "config.yaml"))


def find_run(client: MlflowClient, run_id: str) -> Run:
    """The run, or one line naming the store it was looked for in (a common slip: the wrong
    MLFLOW_TRACKING_URI)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ConfigError(
            f"no run {run_id} in {store.redact(client.tracking_uri)}; set MLFLOW_TRACKING_URI "
            "to the store the run was logged to"
        ) from None


def load_model(client: MlflowClient, run: Run) -> torch.nn.Module:
    """The run's logged model, or one line saying why there is none."""
    import mlflow.pytorch

    if not run.outputs or not run.outputs.model_outputs:
        raise ConfigError(
            f"run {run.info.run_id} has no logged model (trained with logger.log_model=false, "
            "or it diverged)"
        )
    mlflow.set_tracking_uri(client.tracking_uri)
    return mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")


def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def score_test(client: MlflowClient, run: Run) -> Scored:
    """Predict the run's test split with its logged model and recompute its test metrics."""
    import torch

    from src.data import make_split
    from src.metrics import metrics_for

    model = load_model(client, run)
    typed = run_config(client, run.info.run_id)
    split = make_split(typed.dataset, typed.loss.targets)
    prediction = predict(model, split.x_test)
    metrics = metrics_for(typed.loss.task, typed.loss.targets, typed.loss.metrics)
    pred, target = torch.from_numpy(prediction)[None], torch.from_numpy(split.y_test)[None]
    recomputed = {name: float(fn(pred, target)[0]) for name, fn in metrics.items()}
    logged_metrics = run.data.metrics
    logged = {
        name: logged_metrics[f"final/test/{name}"]
        for name in metrics
        if f"final/test/{name}" in logged_metrics
    }
    return Scored(split.x_test, split.y_test, prediction, recomputed, logged)


def read_inputs(path: Path, n_inputs: int) -> np.ndarray:
    """A numeric CSV with one column per model input; a header row is optional."""
    import pandas as pd

    if not path.is_file():
        raise ConfigError(f"input file {path} does not exist")
    frame = pd.read_csv(path)
    try:
        [float(name) for name in frame.columns]
        frame = pd.read_csv(path, header=None)  # the first row was data, not names
    except ValueError:
        pass
    if frame.shape[1] != n_inputs:
        raise ConfigError(
            f"{path} has {frame.shape[1]} columns but the model takes {n_inputs} inputs "
            "(the run's dataset features, scaled as in training)"
        )
    try:
        return frame.to_numpy(dtype=np.float32)
    except ValueError as error:
        raise ConfigError(f"{path} holds a value that is not a number ({error})") from None


def write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Blocks of columns (name -> (rows,) or (rows, k)) side by side: x0.., target.., ..."""
    import pandas as pd

    parts = {}
    for name, block in columns.items():
        block = block.reshape(len(block), -1)
        names = [name] if block.shape[1] == 1 else [f"{name}{i}" for i in range(block.shape[1])]
        parts.update(zip(names, block.T))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(parts).to_csv(path, index=False)


def main(argv: list[str]) -> None:
    args = parse(argv)
    run_id = args["run_id"]
    output = Path(args.get("output", f"predictions_{run_id}.csv"))
    uri = store.resolve_uri(None)
    store.check(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from src import tracking

    client = tracking.get_client(uri)
    run = find_run(client, run_id)
    if "split" in args:
        scored = score_test(client, run)
        write_csv(output, {"x": scored.x, "target": scored.target, "prediction": scored.prediction})
        for name, value in scored.recomputed.items():
            logged = scored.logged.get(name, float("nan"))
            print(f"test {name}: {value:.6f} (logged final/test/{name}: {logged:.6f})")
    else:
        import mlflow.models

        model = load_model(client, run)
        signature = mlflow.models.get_model_info(f"runs:/{run_id}/model").signature
        x = read_inputs(Path(args["input"]), signature.inputs.inputs[0].shape[-1])
        write_csv(output, {"x": x, "prediction": predict(model, x)})
    print(f"wrote {output}")


def cli() -> None:
    """Bad input or an unknown run: one line and exit 1, as for src.train."""
    from mlflow.exceptions import MlflowException

    try:
        main(sys.argv[1:])
    except (ConfigError, MlflowException) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"losslab: error: {store.redact(message)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
