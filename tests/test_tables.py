"""Your own data: CSV and Parquet files and the bundled real datasets, through the real CLI.

The files are scikit-learn's bundled data written as a user brings them (conftest.write_tables:
a text category column, missing values, text class labels). Every reported metric is checked
against scikit-learn on an independently rebuilt split, in the target's own units.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, mean_squared_error
from sklearn.model_selection import train_test_split

from src import config
from src.config import Targets
from src.data import make_split
from tests.conftest import (
    ROOT,
    cli_env,
    compose_cfg,
    finished_children,
    hang,
    runs_of,
    write_tables,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tables(tmp_path_factory.mktemp("tables"))


def independent_split(frame: pd.DataFrame, labels: pd.Series | None) -> tuple:
    """The default table split, rebuilt with scikit-learn alone: 80% train, seed 0,
    stratified by class for classification."""
    rows = np.arange(len(frame))
    n_train = round(0.8 * len(frame))
    return train_test_split(rows, train_size=n_train, random_state=0, shuffle=True, stratify=labels)


def logged_pieces(client, store_uri: str, run, tmp_path: Path):
    """The run's model and fitted feature pipeline, loaded as a user outside losslab would."""
    import joblib
    import mlflow.pytorch

    mlflow.set_tracking_uri(store_uri)
    model = mlflow.pytorch.load_model(run.data.tags["model"])
    folder = Path(client.download_artifacts(run.info.run_id, "preprocessing", str(tmp_path)))
    facts = json.loads((folder / "target.json").read_text())
    return model, joblib.load(folder / "features.joblib"), facts


def predict_cli(store_uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.predict", *args],
        cwd=ROOT,
        env=cli_env(store_uri),
        capture_output=True,
        text=True,
        timeout=hang(240),
    )


@pytest.mark.slow
def test_a_regression_csv_trains_and_reports_in_the_targets_units(
    files, run_cli, client, store_uri, tmp_path
) -> None:
    path = files["diabetes.csv"]
    done = run_cli(
        "dataset=csv", f"dataset.path={path}", "dataset.target=progression", "trainer.max_epochs=8"
    )
    assert done.returncode == 0, done.stderr
    assert "diabetes.csv: regression on target 'progression' (214 distinct integers" in done.stdout
    assert "25 missing value(s) in 2 column(s) will be imputed" in done.stdout
    (run,) = runs_of(client)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mse diabetes.csv trainer.max_epochs=8 seed=0"
    tags = run.data.tags
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tags["dataset"], tags["task"], tags["dataset.sha256"]) == (
        "diabetes.csv",
        "regression",
        sha256,
    )
    assert (tags["dataset.split"], tags["dataset.missing_imputed"]) == ("shuffle", "25")
    (found,) = run.inputs.dataset_inputs
    assert (found.dataset.name, found.dataset.digest) == ("diabetes.csv", sha256[:8])
    assert json.loads(found.dataset.source) == {"uri": str(path.resolve())}
    columns = [c["name"] for c in json.loads(found.dataset.schema)["mlflow_colspec"]]
    assert columns[:3] == ["age", "sex", "region"] and columns[-1] == "progression"

    # scikit-learn on the same split, from the raw file: the same numbers, in the target's units
    frame = pd.read_csv(path)
    train, test = independent_split(frame, None)
    model, pipeline, facts = logged_pieces(client, store_uri, run, tmp_path)
    assert facts["target"] == "progression" and facts["task"] == "regression"
    median_bmi = pipeline.named_steps["columns"].named_transformers_["numeric"][0].statistics_
    numeric = [c for c in frame.columns if c not in ("progression", "region")]
    assert median_bmi == pytest.approx(frame.iloc[train][numeric].median().to_numpy())  # train
    for rows, split in ((train, "train"), (test, "test")):
        with torch.no_grad():
            x = torch.tensor(pipeline.transform(frame.iloc[rows]), dtype=torch.float32)
            predicted = model(x).numpy()[:, 0]
        expected = mean_squared_error(frame["progression"].iloc[rows], predicted)
        assert expected > 100  # squared units of the target, not of its standardized form
        assert run.data.metrics[f"final_{split}_mse"] == pytest.approx(expected, rel=1e-4)
    assert f"Test: {run.data.metrics['final_test_mse']:.4g}" in done.stdout


@pytest.mark.slow
def test_a_classification_csv_sweeps_reports_and_predicts_class_names(
    files, run_cli, client, store_uri, tmp_path
) -> None:
    path = files["cancer.csv"]
    done = run_cli(
        "-m",
        "dataset=csv",
        f"dataset.path={path}",
        "dataset.target=diagnosis",
        "loss=bce,hinge",
        "seed=0,1",
        "trainer.max_epochs=5",
    )
    assert done.returncode == 0, done.stderr
    assert "binary on target 'diagnosis' (two distinct values); 569 rows" in done.stdout
    assert (tmp_path / "multirun" / "report.md").is_file()
    children = [r for r in runs_of(client) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in children) == [
        "bce cancer.csv trainer.max_epochs=5 seed=0",
        "bce cancer.csv trainer.max_epochs=5 seed=1",
        "hinge cancer.csv trainer.max_epochs=5 seed=0",
        "hinge cancer.csv trainer.max_epochs=5 seed=1",
    ]
    assert finished_children(client)
    assert {r.data.tags["dataset.split"] for r in children} == {"stratified"}

    # Raw rows of the test split (independently rebuilt), columns shuffled, one extra column,
    # no target: predict writes class names whose accuracy is the one each run logged.
    frame = pd.read_csv(path)
    _, test = independent_split(frame, frame["diagnosis"])
    truth = frame["diagnosis"].iloc[test].to_numpy()
    raw = frame.iloc[test].drop(columns=["diagnosis"]).sample(frac=1.0, axis=1, random_state=1)
    raw["note"] = "extra column"
    raw.to_csv(tmp_path / "raw.csv", index=False)
    for run in children:
        out = tmp_path / f"{run.info.run_id}.csv"
        done = predict_cli(
            store_uri, f"run_id={run.info.run_id}", f"input={tmp_path / 'raw.csv'}", f"output={out}"
        )
        assert done.returncode == 0, done.stderr
        written = pd.read_csv(out)
        assert list(written.columns[: raw.shape[1]]) == list(raw.columns)
        predicted = written["predicted_diagnosis"].to_numpy()
        assert set(predicted) <= {"benign", "malignant"}
        logged = run.data.metrics["final_test_accuracy"]
        assert accuracy_score(truth, predicted) == pytest.approx(logged, abs=1e-6)


def test_the_stratified_split_keeps_each_class_share(files) -> None:
    path = files["cancer.csv"]
    base = ("loss=bce", "dataset=csv", f"dataset.path={path}", "dataset.target=diagnosis")
    typed = config.validate(compose_cfg(*base))
    split = make_split(typed.dataset, typed.loss.targets)
    labels = pd.read_csv(path)["diagnosis"]
    share = float((labels == "malignant").mean())  # class 1: classes are sorted
    assert split.preprocessing.classes == ["benign", "malignant"]
    for y in (split.y_train, split.y_test):
        assert abs(float(y.mean()) - share) < 1.5 / len(y)  # within one row of the share
    assert (len(split.y_train), len(split.y_test)) == (455, 114)

    other_seed = make_split(
        config.validate(compose_cfg(*base, "dataset.split_seed=1")).dataset, Targets.binary
    )
    assert not np.array_equal(other_seed.x_train, split.x_train)
    ordered = make_split(
        config.validate(compose_cfg(*base, "dataset.split=ordered")).dataset, Targets.binary
    )
    first = (labels.iloc[:455] == "malignant").to_numpy(dtype=np.float32)
    assert np.array_equal(ordered.y_train[:, 0], first)

    # the same rows from Parquet give the same split
    parquet = ("dataset=parquet", f"dataset.path={files['cancer.parquet']}")
    from_parquet = config.validate(compose_cfg("loss=bce", *parquet, "dataset.target=diagnosis"))
    again = make_split(from_parquet.dataset, Targets.binary)
    assert np.array_equal(again.x_test, split.x_test) and np.array_equal(again.y_test, split.y_test)


@pytest.mark.parametrize(
    ("dataset", "loss", "inputs", "classes", "rows"),
    [
        ("diabetes", "mse", 10, 0, 442),
        ("breast_cancer", "bce", 30, 2, 569),
        ("wine", "sparse_cce", 13, 3, 178),
        ("digits", "cce", 64, 10, 1797),
    ],
)
def test_each_bundled_dataset_serves_the_losses_of_its_task(
    dataset: str, loss: str, inputs: int, classes: int, rows: int
) -> None:
    typed = config.validate(compose_cfg(f"loss={loss}", f"dataset={dataset}"))
    split = make_split(typed.dataset, typed.loss.targets)
    assert split.n_inputs == inputs and split.n_classes == classes
    assert len(split.x_train) + len(split.x_test) == rows
    assert len(split.x_train) == round(0.8 * rows)
    if classes:
        assert len(split.preprocessing.classes) == classes
        if dataset == "breast_cancer":
            assert split.preprocessing.classes == ["benign", "malignant"]
    for option in config.options_for("loss", typed.loss.task):  # every loss of the task fits
        config.validate(compose_cfg(f"loss={option}", f"dataset={dataset}"))


@pytest.mark.slow
def test_a_preset_runs_on_a_bundled_dataset_of_its_task(run_cli, client) -> None:
    done = run_cli(
        "-m", "experiment=regression", "dataset=diabetes", "trainer.max_epochs=2", "members=2"
    )
    assert done.returncode == 0, done.stderr
    children = [r for r in runs_of(client) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 10 and {r.data.tags["dataset"] for r in children} == {"diabetes"}
    assert {r.data.tags["loss"] for r in children} == {"mse", "msle", "mae", "huber", "log_cosh"}
    assert all(r.info.status == "FINISHED" for r in children)


def test_the_study_data_is_unchanged() -> None:
    """dataset=regression and dataset=circles are the study's arrays exactly: generated,
    scaled on all rows (regression), the first half training."""
    from sklearn.datasets import make_circles, make_regression
    from sklearn.preprocessing import StandardScaler

    regression = make_split(config.validate(compose_cfg("loss=mse")).dataset, Targets.real)
    x, y = make_regression(
        n_samples=1000, n_features=20, n_informative=10, noise=0.1, random_state=1
    )
    x = StandardScaler().fit_transform(x).astype(np.float32)
    y = StandardScaler().fit_transform(y.reshape(-1, 1)).astype(np.float32)
    assert np.array_equal(regression.x_train, x[:500]) and np.array_equal(
        regression.y_test, y[500:]
    )
    assert regression.units == (1.0, 0.0) and regression.preprocessing is None

    circles = make_split(config.validate(compose_cfg("loss=hinge")).dataset, Targets.signed)
    x, y = make_circles(n_samples=1000, noise=0.1, random_state=1)
    assert np.array_equal(circles.x_test, x[500:].astype(np.float32))
    assert np.array_equal(circles.y_train[:, 0], (2 * y[:500] - 1).astype(np.float32))


def test_predict_reads_every_row_of_a_headerless_csv_and_refuses_gaps(tmp_path: Path) -> None:
    from src.config import ConfigError
    from src.predict import output_path, read_inputs

    (tmp_path / "rows.csv").write_text("0.5,0.5\n1,2\n3,4\n")  # a first row that repeats a value
    assert read_inputs(tmp_path / "rows.csv", 2).tolist() == [[0.5, 0.5], [1, 2], [3, 4]]
    (tmp_path / "named.csv").write_text("a,b\n1,2\n")
    assert read_inputs(tmp_path / "named.csv", 2).tolist() == [[1, 2]]
    (tmp_path / "gap.csv").write_text("1,2\n3,\n")
    with pytest.raises(ConfigError, match=r"1 row\(s\) have a missing or infinite value"):
        read_inputs(tmp_path / "gap.csv", 2)
    (tmp_path / "header_only.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match="has no data rows"):
        read_inputs(tmp_path / "header_only.csv", 2)
    same = str(tmp_path / "rows.csv")
    with pytest.raises(ConfigError, match="is the input file"):
        output_path({"run_id": "abc", "input": same, "output": same})
    default = output_path({"run_id": "0123456789", "input": same})
    assert default == Path("outputs/predict/01234567-rows.csv")


def test_a_categorical_column_with_a_value_per_row_is_named_with_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An id, a date or free text read as a category: one-hot makes a feature per row. Said in
    one line, with the override that leaves it out; a category of a few values is not."""
    from src import tables

    rows = 60
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=rows),
            "city": rng.choice(["a", "b", "c"], rows),
            "ticket": [f"T-{i:04d}" for i in range(rows)],
            "note": [f"visit {i}" if i % 10 else None for i in range(rows)],  # 54 of 60 distinct
            "y": rng.normal(size=rows),
        }
    )
    path = tmp_path / "visits.csv"
    frame.to_csv(path, index=False)
    base = ("loss=mse", "dataset=csv", f"dataset.path={path}", "dataset.target=y")
    table = tables.inspect(config.validate(compose_cfg(*base)).dataset)
    assert table.categorical == ["city", "ticket", "note"]  # still trained on, as asked
    said = [line for line in capsys.readouterr().out.splitlines() if "look like ids" in line]
    assert said == [
        "losslab: visits.csv: categorical column(s) 'ticket' (60 distinct), 'note' (54 distinct) "
        "in 60 rows look like ids, dates or free text: one-hot, each value is a feature of its "
        "own few rows; leave them out with dataset.drop=[ticket,note]"
    ]
    again = tmp_path / "visits_again.csv"  # a line is said once per file and process
    again.write_bytes(path.read_bytes())
    dropped = [*base[:2], f"dataset.path={again}", base[3], "dataset.drop=[ticket,note]"]
    assert tables.inspect(config.validate(compose_cfg(*dropped)).dataset).categorical == ["city"]
    out = capsys.readouterr().out
    assert "visits_again.csv: regression" in out and "look like ids" not in out


@pytest.mark.slow
def test_a_spreadsheets_files_train_and_predict_as_their_comma_twin(
    files, run_cli, client, store_uri, tmp_path
) -> None:
    """The same rows as a European spreadsheet exports them (semicolons, decimal commas,
    cp1252 text), as a .tsv file and as a workbook's second sheet train to the same numbers
    as the plain CSV, each said in one line; predictions of a CSV come back in its dialect,
    read with the run's encoding, and a workbook's from the run's sheet."""
    europe, book = files["cp1252.csv"], tmp_path / "book.xlsx"
    plain = pd.read_csv(europe, sep=";", decimal=",", encoding="cp1252")
    plain.to_csv(tmp_path / "plain.csv", index=False)
    plain.to_csv(tmp_path / "rows.tsv", index=False, sep="\t")
    with pd.ExcelWriter(book, engine="openpyxl") as sheets:
        pd.DataFrame({"about": ["the data is on the next sheet"]}).to_excel(
            sheets, sheet_name="About", index=False
        )
        plain.to_excel(sheets, sheet_name="Data", index=False)
    cases = {  # file -> (its overrides, the line that says how it is read)
        "plain.csv": (("dataset=csv", f"dataset.path={tmp_path / 'plain.csv'}"), []),
        "rows.tsv": (
            ("dataset=csv", f"dataset.path={tmp_path / 'rows.tsv'}"),
            ["fields separated by tabs"],
        ),
        "cp1252.csv": (
            ("dataset=csv", f"dataset.path={europe}", "dataset.encoding=cp1252"),
            ["fields separated by semicolons, decimal commas"],
        ),
        "book.xlsx": (
            ("dataset=excel", f"dataset.path={book}", "dataset.sheet=Data"),
            ["sheet 'Data'"],
        ),
    }
    finals, runs = {}, {}
    for name, (overrides, lines) in cases.items():
        done = run_cli(*overrides, "dataset.target=progression", "trainer.max_epochs=3")
        assert done.returncode == 0, done.stderr
        said = [line for line in done.stdout.splitlines() if line.startswith(f"losslab: {name}")]
        assert said[: len(lines)] == [f"losslab: {name}: {line}" for line in lines]
        assert f"{name}: regression on target 'progression' (214 distinct integers" in said[-2]
        assert "25 missing value(s) in 2 column(s) will be imputed" in said[-1]
        (runs[name],) = [r for r in runs_of(client) if r.data.tags["dataset"] == name]
        metrics = runs[name].data.metrics.items()
        finals[name] = {k: v for k, v in metrics if k.startswith("final_")}
    assert finals["plain.csv"] == finals["rows.tsv"] == finals["cp1252.csv"]
    # a workbook holds some numbers an ulp off the CSV parser's reading (5.6e-17 here)
    assert finals["book.xlsx"] == pytest.approx(finals["plain.csv"], rel=1e-5)
    assert finals["plain.csv"]["final_test_mse"] > 100  # the target's units: 1,5 read as 1.5

    output = tmp_path / "predicted.csv"
    run_id = runs["cp1252.csv"].info.run_id
    done = predict_cli(store_uri, f"run_id={run_id}", f"input={europe}", f"output={output}")
    assert done.returncode == 0, done.stderr
    back = pd.read_csv(output, sep=";", decimal=",", encoding="cp1252")
    assert list(back.columns) == [*plain.columns, "predicted_progression"]
    pd.testing.assert_frame_equal(back[plain.columns], plain)  # every value as it was
    assert set(back["region"].dropna()) == {"Nord", "Süd", "Öst"}
    assert back["predicted_progression"].between(0, 1000).all()
    run_id = runs["book.xlsx"].info.run_id  # its sheet is the run's: Data, not About
    misnamed = tmp_path / "export.csv"  # a workbook is read as one whatever its name
    misnamed.write_bytes(book.read_bytes())
    done = predict_cli(store_uri, f"run_id={run_id}", f"input={misnamed}", f"output={output}")
    assert done.returncode == 0, done.stderr
    from_book = pd.read_csv(output)["predicted_progression"]
    assert from_book.to_numpy() == pytest.approx(back["predicted_progression"].to_numpy())


def test_the_dialect_is_read_from_the_rows_not_guessed_from_a_character(tmp_path: Path) -> None:
    """A comma file whose quoted text holds semicolons stays a comma file; a semicolon file
    that writes 1.5 keeps its decimal points; every row must agree on a separator's count;
    grouped thousands are read as numbers, in each decimal convention."""
    from src import table_files
    from src.config import DecimalMark, Separator, Thousands

    cases = {  # file -> (text, separator, decimal mark, thousands, column b as read)
        "quoted.csv": ('a,b,n\n1.5,2,"x; y"\n3,4,"p;q"\n', ",", ".", "", [2, 4]),
        "points.csv": ("a;b;c\n1.5;2.25;x\n3.25;4;y\n", ";", ".", "", [2.25, 4]),
        "commas.csv": ("a;b;c\n1,5;2;x\n-3,25;4,5;y\n", ";", ",", "", [2, 4.5]),
        "piped.txt": ("a|b\n1|2\n3|4\n", "|", ".", "", [2, 4]),
        "single.csv": ("b\n1\n2\n", ",", ".", "", [1, 2]),
        "tabbed.tsv": ("a\tb,c\n1\t2,5\n", "\t", ",", "", None),  # a tie: tabs for .tsv
        "dollars.csv": ('a,b\n1,"1,234.50"\n2,"-12,345"\n', ",", ".", ",", [1234.5, -12345]),
        "euros.csv": ("a;b\n1;1.234,50\n2;12.345\n", ";", ",", ".", [1234.5, 12345]),
        "francs.csv": ("a;b\n1;1 234,50\n2;12 345\n", ";", ",", " ", [1234.5, 12345]),
        # no-break spaces (U+00A0, U+202F), as French locales write them; Swiss apostrophes
        "nbsp.csv": ("a;b\n1;1\u00a0234,50\n2;12\u00a0345\n", ";", ",", "\u00a0", [1234.5, 12345]),
        "narrow.csv": ("a;b\n1;1\u202f234,50\n2;-999,5\n", ";", ",", "\u202f", [1234.5, -999.5]),
        "swiss.csv": ("a,b\n1,1'234.50\n2,-12'345\n", ",", ".", "'", [1234.5, -12345]),
        "report.csv": ("Sales 2026\n\na;b\n1;2,5\n3;4\n", ";", ",", "", [2.5, 4]),
        # the README's example: the comma in its title and its numbers' commas make a table of
        # comma-separated rows too, but of fewer rows than the semicolons' table
        "prices.csv": (
            "Prices, Q3\n\na;b\n100,5;1.234,50\n80,25;12.345,00\n90,1;2.000,75\n",
            *(";", ",", "."),
            [1234.5, 12345, 2000.75],
        ),
    }
    for name, (text, sep, decimal, thousands, column) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")  # as dialect() reads it
        how = table_files.dialect(tmp_path / name)
        expected = (Separator(sep), DecimalMark(decimal), Thousands(thousands))
        assert (how.sep, how.decimal, how.thousands) == expected, name
        titled = name in ("report.csv", "prices.csv")
        assert how.skip == (2 if titled else 0), name  # the title, a blank line
        if column:
            assert how.read(tmp_path / name)["b"].tolist() == column, name
    assert str(table_files.dialect(tmp_path / "prices.csv")) == (
        "fields separated by semicolons, decimal commas, thousands grouped (1.234), header on "
        "line 3, the line(s) above it skipped"
    )
    assert str(table_files.dialect(tmp_path / "narrow.csv")) == (
        "fields separated by semicolons, decimal commas, thousands grouped (1 234, narrow "
        "no-break spaces)"
    )
    assert str(table_files.dialect(tmp_path / "report.csv")) == (
        "fields separated by semicolons, decimal commas, header on line 3, the line(s) above "
        "it skipped"
    )
    (tmp_path / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n6,7,8\n")  # not a title
    assert table_files.dialect(tmp_path / "ragged.csv").skip == 0
    packed = tmp_path / "commas.csv.gz"  # read through its compression, as pandas reads it
    packed.write_bytes(gzip.compress(cases["commas.csv"][0].encode()))
    how = table_files.dialect(packed)
    assert (how.sep, how.decimal) == (Separator.semicolon, DecimalMark.comma)
    assert how.read(packed)["a"].tolist() == [1.5, -3.25]
    asked = table_files.dialect(
        tmp_path / "commas.csv", Separator.semicolon, DecimalMark.point, thousands=Thousands.none
    )
    assert asked.options == {"sep": ";", "decimal": ".", "encoding": "utf-8"}
    assert asked.read(tmp_path / "commas.csv")["a"].tolist() == ["1,5", "-3,25"]  # as told


def test_a_title_above_the_header_is_skipped_and_said(files, capsys) -> None:
    """A report's title and a blank line above the header (as exports write them): the rows
    read are the plain file's, and the start-up says which line the header is on."""
    from src import tables

    def inspected(name: str) -> tables.Table:
        overrides = ("loss=mse", "dataset=csv", f"dataset.path={files[name]}")
        return tables.inspect(
            config.validate(compose_cfg(*overrides, "dataset.target=progression")).dataset
        )

    pd.testing.assert_frame_equal(inspected("titled.csv").frame, inspected("diabetes.csv").frame)
    said = capsys.readouterr().out.splitlines()
    assert "losslab: titled.csv: header on line 3, the line(s) above it skipped" in said


def test_a_utf16_file_reads_once_its_encoding_is_named(files) -> None:
    """The file the catalogue refuses without dataset.encoding (tests/test_bad_input.py)."""
    from src import tables

    overrides = ("loss=mse", "dataset=csv", f"dataset.path={files['utf16.csv']}")
    named = (*overrides, "dataset.target=progression", "dataset.encoding=utf-16")
    table = tables.inspect(config.validate(compose_cfg(*named)).dataset)
    expected = pd.read_csv(files["utf16.csv"], encoding="utf-16")
    assert table.task == config.Task.regression
    pd.testing.assert_frame_equal(
        table.frame.reset_index(drop=True),
        expected.dropna(subset=["progression"]).reset_index(drop=True)[table.frame.columns],
    )


@pytest.mark.parametrize("book", ["diabetes.ods", "diabetes.xls"])
def test_an_opendocument_or_excel_97_sheet_reads_as_its_csv_twin(files, book) -> None:
    """dataset=excel reads what calamine reads: an .ods or .xls sheet gives the CSV's rows,
    and the same start-up facts."""
    from src import tables

    def inspected(*overrides: str) -> tables.Table:
        base = ("loss=mse", "dataset.target=progression")
        return tables.inspect(config.validate(compose_cfg(*base, *overrides)).dataset)

    sheet = inspected("dataset=excel", f"dataset.path={files[book]}")
    plain = inspected("dataset=csv", f"dataset.path={files['diabetes.csv']}")
    assert (sheet.task, sheet.numeric, sheet.categorical) == (
        plain.task,
        plain.numeric,
        plain.categorical,
    )
    assert sheet.missing == plain.missing == {"region": 5, "bmi": 20}
    pd.testing.assert_frame_equal(sheet.frame, plain.frame, check_dtype=False)


def test_dates_become_elapsed_years_and_cycles_alike_from_text_or_date_cells() -> None:
    """The transformer's numbers, by hand: years since the first train date, and the year's
    and week's cycles (the day's only where times differ); a missing or unreadable date is
    NaN for the imputer; text and datetimes give the same numbers; offsets compare in UTC."""
    from src.date_features import YEAR_DAYS, DateFeatures

    text = pd.DataFrame({"at": ["2024-12-31", "2025-01-01", "2025-01-04", None, "2025-12-31"]})
    cells = pd.DataFrame({"at": pd.to_datetime(text["at"])})
    features = DateFeatures().fit(text.iloc[:3])
    out = features.transform(text)
    same = DateFeatures().fit(cells.iloc[:3]).transform(cells)
    assert np.array_equal(out, same, equal_nan=True)
    names = ["at_years", "at_year_sin", "at_year_cos", "at_week_sin", "at_week_cos"]
    assert list(features.get_feature_names_out()) == names
    assert out[[0, 1, 2, 4], 0] == pytest.approx(np.array([0, 1, 4, 365]) / YEAR_DAYS)
    assert np.isnan(out[3]).all()
    new_year = np.hypot(*(out[0, 1:3] - out[1, 1:3]))  # 31 December next to 1 January
    assert new_year < 2 * np.pi / 365 * 1.01
    tuesday, saturday = 2 * np.pi * 1 / 7, 2 * np.pi * 5 / 7  # 2024-12-31, 2025-01-04
    assert out[0, 3:5] == pytest.approx([np.sin(tuesday), np.cos(tuesday)])
    assert out[2, 3:5] == pytest.approx([np.sin(saturday), np.cos(saturday)])
    assert np.isnan(features.transform(pd.DataFrame({"at": ["not a date"]}))).all()

    times = pd.DataFrame(
        {"at": ["2025-03-01T06:00:00+01:00", "2025-03-01 05:00Z", "2025-03-01T18:30"]}
    )
    timed = DateFeatures().fit(times)
    assert list(timed.get_feature_names_out())[-2:] == ["at_day_sin", "at_day_cos"]
    out = timed.transform(times)
    assert out[0] == pytest.approx(out[1])  # 06:00 at +01:00 is 05:00 UTC
    evening = 2 * np.pi * 18.5 / 24
    assert out[2, -2:] == pytest.approx([np.sin(evening), np.cos(evening)])


def test_which_columns_hold_dates() -> None:
    """Every value present must read as a date, ISO 8601 unless a format is named; numbers,
    years alone and a column with one other value are never dates."""
    from src.date_features import holds_dates

    assert holds_dates(pd.Series(["2024-01-31", None, " 2024-02-01 10:30 "]))
    assert holds_dates(pd.Series(pd.to_datetime(["2024-01-31"])))
    assert not holds_dates(pd.Series([20240131, 20240201]))
    assert not holds_dates(pd.Series(["2024", "2025"]))
    assert not holds_dates(pd.Series(["2024-01-31", "soon"]))
    assert not holds_dates(pd.Series(["31/01/2024", "01/02/2024"]))
    assert holds_dates(pd.Series(["31/01/2024", "01/02/2024"]), "%d/%m/%Y")
    assert not holds_dates(pd.Series(["31/01/2024", "01/13/2024"]), "%d/%m/%Y")
    assert not holds_dates(pd.Series([None, None], dtype=object))


def test_dates_in_another_order_are_named_and_read_once_their_format_is(
    files, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """31/01/2024 could be either order: without dataset.date_format the column stays a
    category and one line says how to read it as dates; with it, it is dates."""
    from src import tables

    frame = pd.read_csv(files["sales.csv"])
    frame["day"] = pd.to_datetime(frame["day"]).dt.strftime("%d/%m/%Y")
    path = tmp_path / "ventes.csv"
    frame.to_csv(path, index=False)
    base = ("loss=mse", "dataset=csv", f"dataset.path={path}", "dataset.target=sales")
    table = tables.inspect(config.validate(compose_cfg(*base)).dataset)
    assert (table.categorical, table.dates) == (["day", "shop"], [])
    out = capsys.readouterr().out
    assert "look like ids" not in out  # one line for the column, not two
    said = [line for line in out.splitlines() if "look like dates" in line]
    assert said == [
        "losslab: ventes.csv: column(s) 'day' (01/01/2024) look like dates but not ISO 8601 "
        "(2024-01-31), so they are categories; to use them as dates name their order, e.g. "
        "dataset.date_format=%d/%m/%Y"
    ]
    table = tables.inspect(
        config.validate(compose_cfg(*base, "dataset.date_format=%d/%m/%Y")).dataset
    )
    assert (table.categorical, table.dates) == (["shop"], ["day"])
    assert "look like dates" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_date_column_trains_as_dates_from_text_and_from_date_cells(
    files, run_cli, client, store_uri, tmp_path
) -> None:
    """Sales that grow over two years and peak at weekends. With the day as dates the test
    error is a fraction of the error without it (dataset.dates=drop); ISO text in a CSV and
    a workbook's date cells train to the same numbers; predictions start from the raw text."""
    common = ("dataset.target=sales", "trainer.max_epochs=30")
    cases = {
        "text": ("dataset=csv", f"dataset.path={files['sales.csv']}"),
        "cells": ("dataset=excel", f"dataset.path={files['sales.xlsx']}"),
        "dropped": ("dataset=csv", f"dataset.path={files['sales.csv']}", "dataset.dates=drop"),
    }
    outs, runs = {}, {}
    for case, overrides in cases.items():
        before = {r.info.run_id for r in runs_of(client)}
        done = run_cli(*overrides, *common)
        assert done.returncode == 0, done.stderr
        outs[case] = done.stdout
        (runs[case],) = [r for r in runs_of(client) if r.info.run_id not in before]
    assert "730 rows, 1 numeric, 1 categorical and 1 date feature(s)" in outs["text"]
    assert (
        "losslab: sales.csv: date column(s) ['day'] become years since the first train date "
        "and the year's and week's cycles (the day's where times differ); dataset.dates=drop "
        "leaves them out"
    ) in outs["text"].splitlines()
    assert (
        "losslab: sales.csv: date column(s) ['day'] left out (dataset.dates=drop)"
        in outs["dropped"].splitlines()
    )
    assert "730 rows, 1 numeric and 1 categorical feature(s)" in outs["dropped"]
    finals = {
        case: {k: v for k, v in run.data.metrics.items() if k.startswith("final_")}
        for case, run in runs.items()
    }
    assert finals["cells"] == pytest.approx(finals["text"], rel=1e-5)
    assert finals["text"]["final_test_mse"] < 0.2 * finals["dropped"]["final_test_mse"]

    model, pipeline, _ = logged_pieces(client, store_uri, runs["text"], tmp_path)
    dates = pipeline.named_steps["columns"].named_transformers_["dates"][0]
    assert list(dates.get_feature_names_out()) == [
        "day_years",
        "day_year_sin",
        "day_year_cos",
        "day_week_sin",
        "day_week_cos",
    ]
    output = tmp_path / "predicted.csv"
    run_id = runs["text"].info.run_id
    done = predict_cli(
        store_uri, f"run_id={run_id}", f"input={files['sales.csv']}", f"output={output}"
    )
    assert done.returncode == 0, done.stderr
    raw = pd.read_csv(files["sales.csv"])  # the day as text, as the file has it
    with torch.no_grad():
        x = torch.tensor(pipeline.transform(raw), dtype=torch.float32)
        expected = model(x).numpy()[:, 0]  # the logged network ends in the target's units
    predicted = pd.read_csv(output)["predicted_sales"].to_numpy()
    assert predicted == pytest.approx(expected, rel=1e-4)
    assert np.sqrt(np.mean((predicted - raw["sales"]) ** 2)) < 0.5 * raw["sales"].std()

    # a value the run would not read as it read its data: one line, no predictions written
    unreadable = {
        "days.csv": (
            raw.assign(day=raw["day"].where(raw.index != 4, "31/01/2025")),
            "days.csv: column 'day' holds 1 value(s) that are not dates as the run read them "
            "(ISO 8601; first: '31/01/2025', in data row 5)",
        ),
        "promos.csv": (
            raw.astype({"promo": object}).assign(promo=raw["promo"].where(raw.index != 2, "abc")),
            "promos.csv: column 'promo' holds 1 value(s) that are not numbers (first: 'abc', in "
            "data row 3); the run trained on numbers",
        ),
    }
    for name, (frame, expected) in unreadable.items():
        frame.to_csv(tmp_path / name, index=False)
        kept = tmp_path / f"kept-{name}"
        done = predict_cli(
            store_uri, f"run_id={run_id}", f"input={tmp_path / name}", f"output={kept}"
        )
        assert (done.returncode, done.stderr) == (1, f"losslab: error: {expected}\n")
        assert not kept.exists()
