"""Use a logged model: ``python -m src.predict run_id=<id> input=<csv> [output=<csv>]``.

The model is the run's MLflow pytorch model (its tag ``model``: ``models:/<id>``): a plain torch
network that returns the activated output (a value for regression, a probability for bce, a tanh
value for hinge). A run on table data (``dataset=csv``, a bundled dataset) also logged its
fitted preprocessing (``preprocessing/``): then ``input=`` takes raw rows with the original
columns (any order, extra columns ignored; a CSV, workbook or Parquet file) and the predictions
come in the target's own units and class names. For the study's arrays, the input is the
features as the run's data produced them (scaled), one column per input.

``split=test`` instead of ``input=`` rebuilds the run's own test split from its logged config
(``config/config.yaml``) and scores it, next to the test metrics the run logged: a logged result
is only trustworthy if the model that was saved reproduces it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from src import quick_exit, store, tracking
from src.config import ConfigError, LosslabConfig, is_text_encoding
from src.frozen_imports import frozen_imports

if TYPE_CHECKING:  # MLflow and torch load only once the arguments are known to be good
    import torch
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from src.preprocess import Preprocessing
    from src.table_files import Dialect

USAGE = (
    "usage: python -m src.predict run_id=<id> (input=<file> | split=test) [output=<csv>] "
    "[encoding=<name>] [sheet=<name>]"
)
HELP = f"""{USAGE}

Predict with a logged model (store: $MLFLOW_TRACKING_URI, else ./mlflow.db).

  run_id=<id>     the MLflow run whose model to use
  input=<file>    rows to predict: for a run on table data (dataset=csv, excel, parquet,
                  diabetes, ...) the raw columns, in any order (a CSV, workbook or Parquet file);
                  else one numeric column per model input, scaled as in training (a CSV,
                  workbook or Parquet file; a header row is optional)
  split=test      instead of input=: rebuild the run's test split and score it next to the
                  metrics the run logged
  output=<csv>    where to write (default: outputs/predict/<run id>-<input name>.csv); never
                  the input file
  encoding=<name> the input CSV's text encoding (default: the run's dataset.encoding, else
                  utf-8); its separator and decimal mark are read from the file
  sheet=<name>    the input workbook's sheet (default: the run's dataset.sheet, else the
                  first sheet)
"""
KEYS = ("run_id", "input", "split", "output", "encoding", "sheet")
PREDICTIONS = Path("outputs") / "predict"


@dataclass
class Scored:
    """A run's test split with the logged model's predictions and both sets of metrics."""

    x: np.ndarray
    target: np.ndarray
    prediction: np.ndarray
    recomputed: dict[str, float]
    logged: dict[str, float]


def parse(argv: list[str]) -> dict[str, str]:
    if any(arg in ("-h", "--help") for arg in argv):
        print(HELP, end="")
        raise SystemExit(0)
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
    if not is_text_encoding(args.get("encoding", "utf-8")):
        raise ConfigError(f"encoding={args['encoding']} is not a text encoding Python knows")
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
    return mlflow.pytorch.load_model(model_uri(run))


def model_uri(run: Run) -> str:
    """Where the run's model is: its tag ``model`` (``models:/<id>``; models are named for
    their run), or ``runs:/<id>/model`` for runs logged before models had names."""
    return run.data.tags.get("model", f"runs:/{run.info.run_id}/model")


def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def score_test(client: MlflowClient, run: Run) -> Scored:
    """Predict the run's test split with its logged model and recompute its test metrics."""
    import torch

    from src.data import make_split
    from src.metrics import Panel

    model = load_model(client, run)
    typed = run_config(client, run.info.run_id)
    # the run's own loss: its job may have trained several (member_losses), one config.yaml
    loss = typed.loss_named(run.data.tags.get("loss", typed.loss.name))
    split = make_split(typed.dataset, loss.targets)
    prediction = predict(model, split.x_test)  # the model's last layer maps back to the units
    y_test = split.in_units(split.y_test)
    panel = Panel.build(typed.panel(split.nonnegative, loss), loss.targets)
    pred, target = torch.from_numpy(prediction)[None], torch.from_numpy(y_test)[None]
    recomputed = {name: values[0] for name, values in panel(pred, target).items()}
    logged_metrics = tracking.run_metrics(run)
    logged = {
        name: logged_metrics[f"final_test_{name}"]
        for name in recomputed
        if f"final_test_{name}" in logged_metrics
    }
    return Scored(split.x_test, y_test, prediction, recomputed, logged)


def read_inputs(
    path: Path, n_inputs: int, encoding: str = "utf-8", sheet: str | None = None
) -> np.ndarray:
    """A numeric table with one column per model input; a header row is optional (the first
    row is data when every value in it is a number)."""
    import pandas as pd

    frame, _ = _read(path, header=None, encoding=encoding, sheet=sheet)
    first = pd.to_numeric(frame.iloc[0], errors="coerce")
    if first.isna().any():  # a header row: names, not numbers
        frame = frame.iloc[1:]
    if frame.empty:
        raise ConfigError(f"{path} has no data rows")
    if frame.shape[1] != n_inputs:
        raise ConfigError(
            f"{path} has {frame.shape[1]} columns but the model takes {n_inputs} inputs "
            "(the run's dataset features, scaled as in training)"
        )
    try:
        x = frame.to_numpy(dtype=np.float32)
    except ValueError as error:
        raise ConfigError(f"{path} holds a value that is not a number ({error})") from None
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise ConfigError(
            f"{path}: {len(bad)} row(s) have a missing or infinite value (first: data row "
            f"{bad[0] + 1}); the model takes numbers only"
        )
    return x


def _read(
    path: Path, header: int | None = 0, encoding: str = "utf-8", sheet: str | None = None
) -> tuple[Any, Dialect | None]:
    """A CSV (any dialect, src.table_files), workbook or Parquet file as a DataFrame and the
    CSV's dialect (None for the others), or one line saying why not. ``header``: the row
    that names the columns, for a CSV file or a sheet (a Parquet file's come named)."""
    import pandas as pd

    from src import table_files

    if not path.is_file():
        raise ConfigError(f"input file {path} does not exist")
    found = table_files.kind(path)  # by its first bytes, whatever its name
    if found == "parquet":
        how = table_files.ParquetFile()
    elif found in table_files.WORKBOOKS:
        how = table_files.sheet_of(path, sheet, f"input={path}", "sheet")
    else:
        how = table_files.dialect(path, encoding=encoding)
    try:
        if isinstance(how, table_files.ParquetFile):
            return how.read(path), None
        frame = how.read(path, header=header)
        return frame, how if isinstance(how, table_files.Dialect) else None
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{path} is empty") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path} is not {encoding} text ({error.reason}); set encoding= to the file's "
            "(e.g. cp1252, latin-1)"
        ) from None
    except Exception as error:
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"{path} cannot be read ({type(error).__name__}: {reason})") from None


def load_preprocessing(client: MlflowClient, run_id: str) -> Preprocessing | None:
    """The run's fitted preprocessing (table data), or None (the study's arrays)."""
    from mlflow.exceptions import MlflowException

    from src.preprocess import Preprocessing

    try:
        folder = client.download_artifacts(run_id, "preprocessing")
    except (MlflowException, OSError):
        return None
    if not (Path(folder) / "target.json").is_file():
        return None
    return Preprocessing.load(Path(folder))


def predict_table(
    model: torch.nn.Module, pre: Preprocessing, frame: Any, output: str, source: Path
) -> Any:
    """Raw rows in, the input's columns plus predictions (target units, class names) out."""
    import pandas as pd

    frame.columns = [str(c) for c in frame.columns]
    absent = [name for name in pre.features if name not in frame.columns]
    if absent:
        raise ConfigError(
            f"{source} lacks column(s) {absent} that the model was trained on "
            f"(it needs: {', '.join(pre.features)})"
        )
    if frame.empty:
        raise ConfigError(f"{source} has no data rows")
    pre.check(frame, source.name)
    raw = predict(model, pre.pipeline.transform(frame[pre.features]))
    result = frame.copy()
    name = f"predicted_{pre.target}"
    if pre.task.value == "regression":
        result[name] = raw[:, 0]
        return result
    classes = np.array(pre.classes, dtype=object)
    if raw.shape[1] == 1:  # binary: a probability (sigmoid) or a signed score (tanh)
        threshold = 0.5 if output == "sigmoid" else 0.0
        result[name] = classes[(raw[:, 0] > threshold).astype(int)]
        column = f"p_{classes[1]}" if output == "sigmoid" else f"score_{classes[1]}"
        result[column] = raw[:, 0]
        return result
    result[name] = classes[raw.argmax(axis=1)]
    probabilities = pd.DataFrame(raw, columns=[f"p_{c}" for c in classes], index=result.index)
    return pd.concat([result, probabilities], axis=1)


def write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Blocks of columns (name -> (rows,) or (rows, k)) side by side: x0.., target.., ..."""
    import pandas as pd

    parts = {}
    for name, block in columns.items():
        block = block.reshape(len(block), -1)
        names = [name] if block.shape[1] == 1 else [f"{name}{i}" for i in range(block.shape[1])]
        parts.update(zip(names, block.T))
    write_table(pd.DataFrame(parts), path)


def write_table(frame: Any, path: Path, how: Dialect | None = None) -> None:
    """The whole CSV or none: written beside ``path``, then renamed over it, so a Ctrl-C or a
    full disk mid-write leaves no half file (nor a half-overwritten earlier one). Written in
    the input CSV's dialect (``how``), so a spreadsheet that wrote it reads the result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        frame.to_csv(partial, index=False, **(how.options if how else {}))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def output_path(args: dict[str, str]) -> Path:
    """Where predictions go, checked before anything loads: never the input, in a folder
    that can be written."""
    stem = Path(args["input"]).stem if "input" in args else "test"
    output = Path(args.get("output") or PREDICTIONS / f"{args['run_id'][:8]}-{stem}.csv")
    if "input" in args and output.resolve() == Path(args["input"]).resolve():
        raise ConfigError(f"output={output} is the input file; choose another output=")
    folder = output.resolve().parent
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"output={output}: {existing} cannot be written; choose another output=")
    if output.is_dir():
        raise ConfigError(f"output={output} is a directory; name a file")
    return output


def main(argv: list[str]) -> None:
    args = parse(argv)
    run_id = args["run_id"]
    output = output_path(args)
    uri = store.resolve_uri(None)
    store.check(uri, read_only=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from src import tracking

    client = tracking.get_client(uri)
    run = find_run(client, run_id)
    if "split" in args:
        scored = score_test(client, run)
        write_csv(output, {"x": scored.x, "target": scored.target, "prediction": scored.prediction})
        for name, value in scored.recomputed.items():
            logged = scored.logged.get(name, float("nan"))
            print(f"test {name}: {value:.6f} (logged final_test_{name}: {logged:.6f})")
    else:
        import mlflow.models

        source = Path(args["input"])
        model = load_model(client, run)
        pre = load_preprocessing(client, run_id)
        params = run.data.params  # a study run has no dataset.encoding or dataset.sheet
        encoding = args.get("encoding") or params.get("dataset.encoding", "utf-8")
        sheet = args.get("sheet") or params.get("dataset.sheet")
        sheet = None if sheet == "None" else sheet
        if pre is not None:
            frame, how = _read(source, encoding=encoding, sheet=sheet)
            result = predict_table(model, pre, frame, params.get("loss.output", ""), source)
            write_table(result, output, how)
        else:
            signature = mlflow.models.get_model_info(model_uri(run)).signature
            x = read_inputs(source, signature.inputs.inputs[0].shape[-1], encoding, sheet)
            write_csv(output, {"x": x, "prediction": predict(model, x)})
    print(f"wrote {output}")


def cli() -> None:
    """Bad input or an unknown run: one line and exit 1, as for src.train."""
    with frozen_imports():
        from mlflow.exceptions import MlflowException

    try:
        main(sys.argv[1:])
    except (ConfigError, MlflowException) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"losslab: error: {store.redact(message)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    quick_exit.run(cli, interrupted="interrupted; no predictions written")
