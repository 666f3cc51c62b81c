"""Sweeps end to end through the real CLI: grouping under one parent, the comparison report
(checked against numbers recomputed from the child runs), failure isolation, the joblib and
submitit launchers, and an Optuna search that tags its best trial."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from src.report import main as report_main
from tests.conftest import runs_of

pytestmark = pytest.mark.slow
FAST = ("trainer.max_epochs=2", "logger.log_model=false", "callbacks=none")


def _split(runs: list) -> tuple:
    parents = [r for r in runs if r.data.tags.get("losslab.sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _csv(client, run_id: str, path: str, tmp_path: Path) -> list[dict[str, str]]:
    local = client.download_artifacts(run_id, path, str(tmp_path))
    with open(local) as handle:
        return list(csv.DictReader(handle))


def test_parallel_sweep_and_its_report(
    run_cli, client, tmp_path, store_uri, monkeypatch, capsys
) -> None:
    """Two joblib workers on a fresh store: nothing lost, one parent over four children, and a
    report whose numbers are those recomputed here from the child runs."""
    apart = "hydra.sweeper.batch_losses=false"  # two jobs for the two workers, not one
    result = run_cli("-m", "hydra/launcher=parallel", "loss=mse,mae", "seed=0,1", apart, *FAST)
    assert result.returncode == 0, result.stderr
    parents, children = _split(runs_of(client))
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted((c.data.tags["loss"], c.data.tags["seed"]) for c in children) == [
        ("mae", "0"),
        ("mae", "1"),
        ("mse", "0"),
        ("mse", "1"),
    ]
    assert "all 4 run(s) finished" in result.stdout

    summary = _csv(client, parent.info.run_id, "report/summary.csv", tmp_path / "a")
    assert [row["group"] for row in summary] == ["mse", "mae"]
    values = {}
    for child in children:  # every epoch of every run arrived
        history = client.get_metric_history(child.info.run_id, "test/mse")
        assert sorted(m.step for m in history) == [1, 2]
    for row in summary:
        mine = [c for c in children if c.data.tags["loss"] == row["group"]]
        assert all(c.data.tags["outcome"] == "ok" for c in mine)
        assert (row["metric"], row["direction"]) == ("mse", "lower is better")
        for split in ("train", "test"):
            x = np.array([c.data.metrics[f"final_{split}_mse"] for c in mine])
            expected = {"n": len(x), "median": np.median(x), "mean": x.mean(), "std": x.std(ddof=1)}
            for key, value in expected.items():
                assert float(row[f"{split}_{key}"]) == pytest.approx(value, rel=1e-12)
            # a bootstrap interval of the mean: inside the values, so never below 0 for MSE
            low, high = float(row[f"{split}_ci_low"]), float(row[f"{split}_ci_high"])
            assert x.min() <= low <= x.mean() <= high <= x.max()
        for name in ("mse", "rmse", "mae", "median_ae", "r2"):  # the panel, as plain numbers
            x = [c.data.metrics[f"final_test_{name}"] for c in mine]
            assert float(row[f"test_median_{name}"]) == pytest.approx(np.median(x), rel=1e-12)
        values[row["group"]] = {c.data.tags["seed"]: c.data.metrics["final_test_mse"] for c in mine}
    (comparison,) = _csv(client, parent.info.run_id, "report/comparisons.csv", tmp_path / "b")
    paired = stats.ttest_rel(
        [values["mse"][s] for s in ("0", "1")], [values["mae"][s] for s in ("0", "1")]
    )
    assert comparison["test"] == "paired t"
    assert float(comparison["p"]) == pytest.approx(paired.pvalue, rel=1e-12)
    assert comparison["real"] in ("yes", "no")
    # the answer on the parent run itself, for the UI's run list
    best = min(summary, key=lambda row: float(row["test_median"]))["group"]
    parent = client.get_run(parent.info.run_id)
    assert parent.data.tags["best.regression"] == best
    assert parent.data.tags["best.regression.by"] == "mse"
    assert parent.data.tags["verdict"].startswith(
        f"regression, by test mse (lower is better): best {best}"
    )
    for row in summary:
        key = f"median/{row['group']}/test_mse"
        assert parent.data.metrics[key] == pytest.approx(float(row["test_median"]), rel=1e-12)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert artifacts == {
        f"report/{name}"
        for name in ("report.md", "summary.csv", "comparisons.csv", "curves.png", "final.png")
    }

    # Regenerated later from the parent run id alone: the same numbers.
    sweep_dir = tmp_path / "multirun"
    first = (sweep_dir / "summary.csv").read_text()
    (sweep_dir / "summary.csv").unlink()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    assert report_main([parent.info.run_id]) == 0
    assert (sweep_dir / "summary.csv").read_text() == first
    assert report_main(["no-such-run"]) == 1
    # a child's id names its parent and writes nothing over the true report
    assert report_main([children[0].info.run_id]) == 1
    assert f"give its parent: python -m src.report {parent.info.run_id}" in capsys.readouterr().err
    assert (sweep_dir / "summary.csv").read_text() == first


def test_two_sweeps_started_in_the_same_second_get_their_own_folders() -> None:
    from tests.conftest import compose_cfg

    folders = set()
    for _ in range(2):
        folder = str(compose_cfg(hydra_node=True).hydra.sweep.dir)
        assert re.search(r"/\d\d-\d\d-\d\d-\d{6}$", folder), folder
        folders.add(folder)
    assert len(folders) == 2


def test_a_failed_jobs_traceback_is_in_every_members_run(run_cli, client, tmp_path) -> None:
    """A 2-member job that fails inside training: both runs FAILED, each with the job's
    traceback as error.txt (sent once for the job)."""
    result = run_cli(
        "loss.fn._target_=tests.failing.explode",
        "allowed_target_prefixes=[src.,sklearn.,torch.,tests.]",
        "members=2",
        *FAST,
    )
    assert result.returncode == 1
    runs = runs_of(client)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FAILED"}
    texts = {
        Path(
            client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path / run.info.run_id))
        ).read_text()
        for run in runs
    }
    assert len(texts) == 1 and "deliberate failure inside training" in texts.pop()


def test_failing_jobs_do_not_stop_the_sweep(run_cli, client, tmp_path) -> None:
    """Four jobs: two fail while making data (no run yet), one fails inside training, one
    trains. Every job runs; the failures are counted, reported and exit 1."""
    result = run_cli(
        "-m",
        "loss.fn._target_=tests.failing.explode,torch.nn.functional.mse_loss",
        "dataset.generator._target_=tests.failing.no_data,sklearn.datasets.make_regression",
        "allowed_target_prefixes=[src.,sklearn.,torch.,tests.]",
        *FAST,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"losslab: 3 of 4 run(s) failed; report in {tmp_path}/multirun/report.md"
    )
    assert "Traceback" not in result.stderr
    parents, children = _split(runs_of(client))
    assert [p.info.status for p in parents] == ["FAILED"]
    by_target = {c.data.params["loss.fn._target_"]: c for c in children}
    assert set(by_target) == {"tests.failing.explode", "torch.nn.functional.mse_loss"}
    failed, ok = by_target["tests.failing.explode"], by_target["torch.nn.functional.mse_loss"]
    assert (failed.info.status, failed.data.tags["outcome"]) == ("FAILED", "failed")
    assert "deliberate failure inside training" in failed.data.tags["error"]
    error_txt = client.download_artifacts(failed.info.run_id, "error.txt", str(tmp_path))
    assert "RuntimeError" in Path(error_txt).read_text()
    assert ok.info.status == "FINISHED" and ok.data.metrics["final_test_mse"] > 0
    report = Path(
        client.download_artifacts(parents[0].info.run_id, "report/report.md", str(tmp_path))
    ).read_text()
    assert f"({failed.info.run_id}): FAILED, failed: RuntimeError: deliberate" in report
    assert report.count("no MLflow run; ") == 2
    assert "deliberate failure before tracking" in report


def test_submitit_local_runs_a_two_job_sweep(run_cli, client, tmp_path) -> None:
    one_job_per_seed = "hydra.sweeper.batch_seeds=false"  # two real submitit jobs
    result = run_cli(
        "-m",
        "hydra/launcher=local",
        "loss=mse",
        "seed=0,1",
        one_job_per_seed,
        "trainer.threads=1",
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    parents, children = _split(runs_of(client))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["seed"] for c in children) == ["0", "1"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))) == 2


def test_optuna_search_tags_its_best_trial(run_cli, client, tmp_path) -> None:
    result = run_cli(
        "-m", "hparams_search=mse_optuna", "hydra.sweeper.n_trials=3", "members=1", *FAST
    )
    assert result.returncode == 0, result.stderr
    parents, children = _split(runs_of(client))
    assert len(parents) == 1 and len(children) == 3
    assert len({c.data.params["optimizer.lr"] for c in children}) == 3
    found = OmegaConf.load(tmp_path / "multirun" / "optimization_results.yaml")
    best = [c for c in children if c.data.tags.get("best_trial") == "true"]
    assert len(best) == 1
    scores = [c.data.metrics["final_test_mse"] for c in children]
    assert best[0].data.metrics["final_test_mse"] == pytest.approx(found.best_value)
    assert found.best_value == pytest.approx(min(scores))  # minimize, as mse_optuna says
    assert float(best[0].data.params["optimizer.lr"]) == found.best_params["optimizer.lr"]
    assert parents[0].data.tags["best_value"] == str(found.best_value)


def test_the_reports_curves_come_from_the_tracking_process_or_else_the_store(client) -> None:
    """The sweep's tracking process hands the report the curves it drew (no read-back of every
    run's history); a run it did not draw is read from the store, in epoch order."""
    from src.report import Result, histories

    experiment = client.create_experiment("curves")
    drawn, stored = (client.create_run(experiment).info.run_id for _ in range(2))
    for step, value in ((2, 0.5), (1, 0.9), (3, 0.25)):  # logged out of order
        client.log_metric(stored, "train/mse", value, step=step)
        client.log_metric(stored, "test/mse", value * 2, step=step)
    for run_id in (drawn, stored):
        client.set_terminated(run_id)
    results = [
        Result(
            run_id=run_id,
            name="",
            status="FINISHED",
            outcome="ok",
            task="regression",
            loss="mse",
            seed="0",
            fold="-",
            metric="mse",
            curve="mse",
            train=0.0,
            test=0.0,
            job_dir="",
            error="",
        )
        for run_id in (drawn, stored)
    ]
    known = {drawn: {"train/mse": [3.0, 2.0], "test/mse": [4.0, 1.0]}}
    curves = histories(client, results, known)
    assert curves[drawn] == {"train": [3.0, 2.0], "test": [4.0, 1.0]}
    assert curves[stored] == {"train": [0.9, 0.5, 0.25], "test": [1.8, 1.0, 0.5]}
