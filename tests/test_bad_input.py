"""Bad input through the real CLI: one clear line, exit 1, and nothing lost or left behind.

Two tables. The catalogue: mistakes the config checks catch before torch is imported. Add a
``bad(args, expected)`` row for a new one. Every row runs ``python -m src.train <args>`` in its
own empty folder (store and Hydra dirs inside it) and must exit != 0 with exactly one stderr
line ``losslab: error: ...`` containing ``expected``, no traceback, and nothing created: no
Hydra output dir, no MLflow store, so no run and no parent. The rows run a few at a time (each
is a fresh interpreter), then each is checked on its own.

REFUSED: values only the function a config names can refuse (its arguments, what it returns).
The job finds them after its imports, still before any run is started.
"""

from __future__ import annotations

import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from src.config import CONF_DIR
from tests.conftest import CliResult, hang, invoke, one_error_line, write_tables

# The discard port: nothing listens there, and a fixed value keeps test ids stable (xdist).
NOBODY = "http://127.0.0.1:9"


def bad(args: str, expected: str, **env: str):
    return pytest.param(args, expected, env, id=args if not env else f"{env} {args}")


def options(group: str) -> str:
    return ", ".join(sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml")))


CATALOGUE = [
    # unknown group options list the valid ones
    bad("loss=foo", f"unknown loss 'foo'; choose one of: {options('loss')}"),
    bad("dataset=foo", f"unknown dataset 'foo'; choose one of: {options('dataset')}"),
    bad("model=foo", f"unknown model 'foo'; choose one of: {options('model')}"),
    bad("optimizer=foo", f"unknown optimizer 'foo'; choose one of: {options('optimizer')}"),
    # unknown keys, wrong types
    bad("optimizer.lrr=0.1", "Key 'lrr' not in 'SGDConfig'; it takes: _target_, lr, weight_"),
    bad("optimizer=adam optimizer.momentum=0.9", "Key 'momentum' not in 'AdamConfig'"),
    bad("dataset.generator.foo=1", "(to add a new key use +dataset.generator.foo=1)"),
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
    bad("optimizer.nesterov=true optimizer.momentum=0", "nesterov=true needs optimizer.momentum"),
    bad("optimizer=adam optimizer.betas=[0.9,1]", "betas=[0.9, 1.0] must be two values in [0, 1)"),
    bad("optimizer=adam optimizer.eps=0", "optimizer.eps=0.0 must be > 0"),
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
    bad("loss=mse dataset=circles", "pick one of: diabetes, regression, regression_outliers"),
    bad("loss=hinge loss.output=sigmoid", "needs an output in ['tanh', 'identity']"),
    bad("dataset.generator._target_=os.system", "outside the allowed prefixes"),
    bad("loss.fn._target_=builtins.eval", "loss.fn._target_=builtins.eval is outside"),
    bad("optimizer._target_=subprocess.Popen", "optimizer._target_=subprocess.Popen is outside"),
    # the store
    bad("loss=mse", "is a file store", MLFLOW_TRACKING_URI="mlruns"),
    bad("loss=mse", "is malformed", MLFLOW_TRACKING_URI="sqlite://"),
    bad("loss=mse", "unknown scheme 'htp'", MLFLOW_TRACKING_URI="htp://127.0.0.1:5000"),
    bad("loss=mse", "has no host", MLFLOW_TRACKING_URI="http://"),
    bad("loss=mse", "needs the database driver", MLFLOW_TRACKING_URI="mysql://u@127.0.0.1/db"),
    bad(f"logger.tracking_uri={NOBODY}", "is not reachable"),
    bad("logger.tracking_uri=sqlite:////dev/null/mlflow.db", "cannot create the MLflow store"),
    bad("logger.tracking_uri=sqlite:////proc/losslab/mlflow.db", "cannot create the MLflow"),
    # resume= that cannot work
    bad("resume=nope.ckpt", "resume=nope.ckpt is neither a checkpoint file nor an MLflow run id"),
    bad("hydra.run.dir=/proc/losslab/run", "hydra.run.dir=/proc/losslab/run: cannot create a"),
    bad("-m seed=0,1 hydra.sweep.dir=/proc/losslab/x", "hydra.sweep.dir=/proc/losslab/x: cannot"),
    bad("trainer.devices=0", "trainer.devices=0: losslab trains in one process"),
    bad("trainer.precision=bf17", "trainer.precision=bf17 is not one of"),
    bad(
        "'callbacks=[default,early_stopping]' callbacks.early_stopping.monitor=val_loss",
        "is not logged each epoch",
    ),
    bad(f"resume={'ab' * 16}", "does not exist; nothing to resume"),
    # a sweep with one bad grid point: nothing runs, no parent run
    bad("-m optimizer.lr=0.01,0", "optimizer.lr=0.0 must be > 0"),
    bad("-m loss=mse,nope", "unknown loss 'nope'"),
    bad("-m optimizer.lr=0.01,abc", "Error merging override optimizer.lr=abc: Value 'abc'"),
    bad("-m loss=mse,bce dataset=regression", "loss 'bce' is a binary loss"),
    bad("-m seed=0,-2", "seed=-2 must be a non-negative integer"),
    bad("-m dataset.batch_size=32,600", "larger than the train split"),
    bad("-m seed=0,1 resume=nope.ckpt", "resume= continues one run"),
    bad("-m seed=0,1", "is not reachable", MLFLOW_TRACKING_URI=NOBODY),
    # table data ({data}: the files of conftest.write_tables), checked before any run
    bad("dataset=csv", "dataset=csv needs dataset.path=<file> and dataset.target=<column"),
    bad("dataset=csv dataset.path={data}/nope.csv dataset.target=y", "nope.csv: no such file"),
    bad("dataset=csv dataset.path={data} dataset.target=y", "is a directory; name a file in it"),
    bad("dataset=csv dataset.path={data}/empty.csv dataset.target=y", "empty.csv is empty"),
    bad("dataset=csv dataset.path={data}/header.csv dataset.target=age", "but no data rows"),
    bad(
        "dataset=csv dataset.path={data}/diabetes.csv dataset.target=progresion",
        "'progresion' is not a column of diabetes.csv; did you mean 'progression'? columns: age",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.csv dataset.target=progression "
        "dataset.features=[age,weight]",
        "name unknown column(s) ['weight'] of diabetes.csv",
    ),
    bad(
        "loss=bce dataset=csv dataset.path={data}/one_class.csv dataset.target=diagnosis",
        "target 'diagnosis' of one_class.csv has one value ('benign')",
    ),
    bad(
        "dataset=csv dataset.path={data}/no_target.csv dataset.target=progression "
        "dataset.missing=error",
        "target 'progression' of no_target.csv is missing in 3 of 442 rows",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.csv dataset.target=progression "
        "dataset.missing=error",
        "diabetes.csv has missing values in region (5), bmi (20)",
    ),
    bad(
        "dataset=csv dataset.path={data}/cancer.csv dataset.target=diagnosis "
        "dataset.task=regression",
        "target 'diagnosis' of cancer.csv holds labels ('benign', 'malignant', ...)",
    ),
    bad(
        "loss=bce dataset=csv dataset.path={data}/wine.csv dataset.target=target "
        "dataset.task=binary",
        "has 3 distinct values; binary needs exactly 2",
    ),
    bad(
        "dataset=csv dataset.path={data}/cancer.csv dataset.target=diagnosis",
        "loss 'mse' is a regression loss but dataset 'cancer.csv' is binary; use one of: "
        "loss=bce, focal, hinge, squared_hinge",
    ),
    bad(
        "dataset=csv dataset.path={data}/all_nan.csv dataset.target=progression",
        "feature column(s) ['bmi'] of all_nan.csv have no values",
    ),
    bad(
        "dataset=csv dataset.path={data}/small.csv dataset.target=progression",
        "dataset.batch_size=32 is larger than the train split of small.csv (10 of 12 rows)",
    ),
    bad(
        "loss=bce dataset=csv dataset.path={data}/rare_class.csv dataset.target=diagnosis "
        "dataset.task=multiclass loss=sparse_cce",
        "class 'unsure' of rare_class.csv has 1 row; a stratified split needs at least 2",
    ),
    bad(
        "dataset=parquet dataset.path={data}/fake.parquet dataset.target=y",
        "fake.parquet is not a readable Parquet file",
    ),
    bad(
        "dataset=csv dataset.path={data}/cp1252.csv dataset.target=progression",
        "cp1252.csv is not utf-8 text (invalid continuation byte); set dataset.encoding to the",
    ),
    bad(
        "dataset=csv dataset.path={data}/cancer.parquet dataset.target=diagnosis",
        "cancer.parquet is a Parquet file; use dataset=parquet",
    ),
    bad(
        "dataset=parquet dataset.path={data}/cancer.csv dataset.target=diagnosis",
        "cancer.csv is text, not a Parquet file; for CSV use dataset=csv",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.xlsx dataset.target=progression",
        "diabetes.xlsx is an Excel workbook; use dataset=excel (dataset.sheet=<name>)",
    ),
    bad(
        "dataset=csv dataset.path={data}/ragged.csv dataset.target=progression",
        "C error: Expected 3 fields in line 3, saw 4); read with dataset.sep=comma: if its "
        "fields are separated otherwise, set dataset.sep=comma, semicolon, tab or pipe; if "
        "lines above the header hold a title, set dataset.skip_lines to their count",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.csv dataset.target=progression "
        "dataset.skip_lines=-1",
        "dataset.skip_lines=-1 must be >= 0 (null: found in the file)",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.ods dataset.target=progression",
        "diabetes.ods is an OpenDocument spreadsheet; use dataset=excel (dataset.sheet=<name>)",
    ),
    bad(
        "dataset=csv dataset.path={data}/old.xls dataset.target=progression",
        "old.xls is an Excel 97-2003 workbook; use dataset=excel (dataset.sheet=<name>)",
    ),
    bad(
        "dataset=excel dataset.path={data}/diabetes.csv dataset.target=progression",
        "diabetes.csv is not a workbook (.xlsx, .xls or .ods); use dataset=csv",
    ),
    bad(
        "dataset=excel dataset.path={data}/broken.xlsx dataset.target=y",
        "broken.xlsx is not a readable workbook (",
    ),
    bad(
        "dataset=excel dataset.path={data}/diabetes.xlsx dataset.target=progression "
        "dataset.sheet=Sheet1",
        "dataset.sheet='Sheet1' is not a sheet of diabetes.xlsx; its sheets: About, Data",
    ),
    bad(
        "dataset=excel dataset.path={data}/diabetes.xlsx dataset.target=progression",
        "dataset.target='progression' is not a column of sheet 'About' of diabetes.xlsx "
        "(columns: about); its sheets: About, Data; name one with dataset.sheet=",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.csv dataset.target=progression "
        "dataset.sheet=Data",
        "dataset.sheet is for Excel workbooks; dataset=csv is csv: drop it",
    ),
    bad(
        "dataset=csv dataset.path={data}/utf16.csv dataset.target=progression",
        "utf16.csv is UTF-16 text (it starts with UTF-16's byte order mark, as a spreadsheet's",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.csv dataset.target=progression "
        "dataset.encoding=utf-99",
        "dataset.encoding='utf-99' is not a text encoding Python knows",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.csv dataset.target=progression "
        "dataset.encoding=base64",
        "dataset.encoding='base64' is not a text encoding Python knows",
    ),
    bad(
        "dataset=csv dataset.path={data}/sales.csv dataset.target=sales dataset.date_format=%Q",
        "dataset.date_format='%Q' is not a date format strptime reads back",
    ),
    bad(
        "dataset=csv dataset.path={data}/sales.csv dataset.target=sales dataset.date_format=%H:%M",
        "dataset.date_format='%H:%M' is not a date format strptime reads back",
    ),
    bad(
        "dataset=csv dataset.path={data}/sales.csv dataset.target=sales dataset.dates=parse",
        "Invalid value 'parse', expected one of [encode, drop]",
    ),
    bad(
        "dataset=csv dataset.path={data}/sales.csv dataset.target=sales dataset.features=[day] "
        "dataset.dates=drop",
        "no feature columns left in sales.csv but dates (dataset.dates=drop)",
    ),
    bad(
        "dataset=parquet dataset.path={data}/waits.parquet dataset.target=sales",
        "column(s) ['wait'] of waits.parquet hold durations, which losslab does not encode; "
        "drop them (dataset.drop=[wait])",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.csv dataset.target=progression dataset.sep=colon",
        "Invalid value 'colon', expected one of [auto, comma, semicolon, tab, pipe]",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.csv dataset.target=progression "
        "dataset.sep=comma dataset.decimal=comma",
        "dataset.decimal=comma needs another separator than commas",
    ),
    bad(
        "dataset=csv dataset.path={data}/diabetes.csv dataset.target=progression "
        "dataset.sep=semicolon dataset.decimal=comma dataset.thousands=comma",
        "dataset.thousands=comma is also dataset.decimal; a number's thousands and decimals",
    ),
    bad(
        "dataset=parquet dataset.path={data}/cancer.parquet dataset.target=diagnosis "
        "dataset.sep=semicolon",
        "dataset.sep, decimal, thousands, encoding and skip_lines are for CSV files; dataset=",
    ),
    bad("dataset.task=auto", "dataset.task=auto needs table data"),
    # values found only at run time before, now at validation
    bad("optimizer.weight_decay=inf", "optimizer.weight_decay=inf must be a finite number >= 0"),
    bad("seed=4294967296", "seed=4294967296 (+ members - 1) is above 4294967295"),
    bad("logger.experiment=", "logger.experiment must name an MLflow experiment (it is empty)"),
    bad("members=5000", "members=5000 is above 1000 (each member is an MLflow run)"),
    # losses as members of one model share its data and last layer: its task
    bad(
        "+loss@member_losses.bce=bce",
        "member_losses.bce (binary) cannot train beside loss mse (regression): members share "
        "one model's data and last layer; run bce as its own job",
    ),
    bad(
        "loss=bce +loss@member_losses.hinge=hinge member_losses.hinge.metrics=[log_loss]",
        "member_losses.hinge.metrics: 'log_loss' does not apply to loss 'hinge'",
    ),
    bad(
        "loss=bce +loss@member_losses.hinge=hinge member_losses.hinge.output=sigmoid",
        "loss 'hinge' with targets=signed needs an output in ['tanh', 'identity']",
    ),
    bad("+loss@member_losses.mse=mse", "loss names ['mse', 'mse'] repeat"),
    bad("members=600 +loss@member_losses.mae=mae", "is 1200 members, above 1000"),
    bad("dataset.generator.n_samples=1000000000", "features needs about 672 GB, more than half"),
    bad("logger.experiment=café", "Hydra reads only ASCII outside quotes; quote the value"),
    bad("trainer.devices=2", "trainer.devices=2: losslab trains in one process on one device"),
    bad("trainer.devices=0", "trainer.devices=0: losslab trains in one process on one device"),
    # Hydra's own nodes name only what they may call (src/override_policy.py); the payloads
    # would write into the row's folder, which must stay empty
    bad("hydra.job_logging.handlers.file.class=subprocess.Popen", "not a logging.Handler"),
    bad("+hydra.hydra_logging.formatters.x={class:pathlib.Path}", "not a logging.Formatter"),
    bad("-m hydra.launcher._target_=os.system", "hydra.launcher._target_=os.system is posix.sy"),
    bad(
        "-m +hydra.launcher.x={_target_:pathlib.Path.touch,self:pwned}",
        "hydra.launcher.x._target_=pathlib.Path.touch is pathlib.Path.touch; Hydra's launcher",
    ),
    bad(
        "+hydra.callbacks.x={_target_:subprocess.Popen,args:[touch,pwned]}",
        "hydra.callbacks.x._target_=subprocess.Popen is subprocess.Popen",
    ),
    bad("~hydra.job_logging.handlers.file", "hydra.job_logging.root uses the handler 'file'"),
    bad("~hydra.hydra_logging.handlers.console", "Hydra's logging config: Unable to configure"),
    # metrics that do not fit, and folds outside a sweep
    bad("loss=sparse_cce loss.metrics=[r2]", "loss.metrics: 'r2' does not apply to loss 'sparse"),
    bad("-m loss=mse,bce report.metric=nope", "unknown metric 'nope'; choose one of: ['accuracy'"),
    bad("dataset=diabetes dataset.folds=3", "dataset.folds=3 runs one job per fold: run it as a"),
    bad("-m dataset.folds=0", "dataset.folds=0 must be >= 1"),
    bad("dataset.folds=3 dataset.fold=5", "dataset.fold=5 must be in 0..2"),
    bad("-m experiment=binary dataset=diabetes", "loss 'bce' is a binary loss but dataset"),
]


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, CliResult]]:
    """Every catalogue row run through the real CLI, each in its own empty folder."""
    data = tmp_path_factory.mktemp("tables")
    write_tables(data)

    def one(row, folder: Path) -> tuple[Path, CliResult]:
        args, _, env = row.values
        store = f"sqlite:///{folder / 'mlflow.db'}"
        args = shlex.split(args.replace("{data}", str(data)))
        return folder, invoke(folder, store, *args, env=env, timeout=120)

    # Folders first, in this thread: pytest's numbered mktemp is not thread-safe.
    folders = [tmp_path_factory.mktemp("bad") for _ in CATALOGUE]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, CATALOGUE, folders))


@pytest.mark.timeout(hang(1800))  # the first row's test runs the whole catalogue (fixture)
@pytest.mark.parametrize(("args", "expected", "env"), CATALOGUE)
def test_bad_input_gets_one_line_and_creates_nothing(answers, request, args, expected, env):
    folder, result = answers[request.node.callspec.indices["args"]]  # ids escape non-ASCII
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("losslab: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert list(folder.iterdir()) == []  # no outputs/, multirun/ or mlflow.db


REFUSED = [
    ("optimizer._target_=torch.optim.Adam", "optimizer: TypeError: Adam.__init__() got an"),
    # spelled under src., resolved elsewhere: refused by what they are, before any call
    (
        "dataset.generator._target_=src.tracking.Path.write_text",
        "dataset.generator._target_=src.tracking.Path.write_text is Path.write_text from pathlib",
    ),
    ("loss.fn._target_=src.tracking.os.system", "loss.fn._target_=src.tracking.os.system is"),
    ("loss.fn.reduction=mean", "loss.fn returned shape () for outputs of shape (1, 2, 1)"),
    ("loss=bce metrics.f1.fn.zero_division=bogus", "metrics.f1: InvalidParameterError: The"),
]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, CliResult]]:
    def one(args: str, folder: Path) -> tuple[str, CliResult]:
        store = f"sqlite:///{folder / 'mlflow.db'}"
        return store, invoke(folder, store, *shlex.split(args), "trainer.max_epochs=2")

    folders = [tmp_path_factory.mktemp("refused") for _ in REFUSED]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, [args for args, _ in REFUSED], folders))


@pytest.mark.parametrize("row", range(len(REFUSED)), ids=[args for args, _ in REFUSED])
def test_a_target_that_refuses_its_config_fails_before_any_run(refusals, row):
    from mlflow.tracking import MlflowClient

    store, result = refusals[row]
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert line.startswith("losslab: error: ") and REFUSED[row][1] in line, line
    assert "run failed" not in line  # there is no run: nothing to mark FAILED
    client = MlflowClient(tracking_uri=store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert experiments and client.search_runs(experiments) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["loss=bce", "dataset.generator.random_state=abc"], "dataset.generator: InvalidParameter"),
        (["loss=kld", "loss.targets=index"], "loss.fn: RuntimeError: The size of tensor a (2)"),
        (["loss=bce", "+loss.fn.weight=1"], "loss.fn: TypeError: binary_cross_entropy_with_logi"),
        (["optimizer=adam", "optimizer._target_=torch.optim.SGD"], "unexpected keyword argument"),
        (["loss=focal", "loss.fn.gamma=-1"], "loss.fn: ValueError: gamma=-1 must be a finite"),
    ],
)
def test_the_build_refuses_what_its_functions_refuse(overrides: list[str], expected: str) -> None:
    """The same checks in process: every function a config names is called before a run."""
    from src import config, experiment
    from tests.conftest import compose_cfg

    cfg = compose_cfg(*overrides)
    typed = config.validate(cfg)
    with pytest.raises(config.ConfigError) as refused:
        experiment.build(cfg, typed, [0])
    assert expected in str(refused.value)


def test_an_accelerator_that_is_not_there_is_one_line_before_any_run(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = invoke(tmp_path, store, "trainer.accelerator=gpu", "trainer.max_epochs=2")
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert "trainer.accelerator=gpu, but this machine has no such device" in line, line
    from mlflow.tracking import MlflowClient  # no run, so no run left RUNNING

    client = MlflowClient(tracking_uri=store)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
