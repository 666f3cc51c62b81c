"""The metric panel and the report's ranking: each metric against scikit-learn on the same
predictions, metrics refused where they do not fit, the verdict under a chosen metric,
intervals inside a metric's range, and cross-validation folds through the real CLI."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from src import config, experiment, report
from src.metrics import class_labels
from tests.conftest import compose_cfg, runs_of


def built(*overrides: str):
    """An untrained module of two members a loss, its data and each loss's panel, as a run
    builds them."""
    cfg = compose_cfg(*overrides, "members=2")
    typed = config.validate(cfg)
    seeds = [0, 1] * len(typed.job_losses())
    data, module, panels = experiment.build(cfg, typed, seeds)
    return typed, data, module, panels


def expected_panel(loss, pred: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """The panel recomputed with scikit-learn alone, per member, from the activated outputs
    and the targets as ``loss`` takes them."""
    task, targets = loss.task.value, loss.targets
    truth = class_labels(torch.from_numpy(y), targets).numpy() if task != "regression" else None
    out: dict[str, list[float]] = {}
    for k in range(len(pred)):
        p = pred[k]
        if task == "regression":
            true, value = y.ravel(), p.ravel()
            out.setdefault("mse", []).append(skm.mean_squared_error(true, value))
            out.setdefault("rmse", []).append(skm.root_mean_squared_error(true, value))
            out.setdefault("mae", []).append(skm.mean_absolute_error(true, value))
            out.setdefault("median_ae", []).append(skm.median_absolute_error(true, value))
            out.setdefault("r2", []).append(skm.r2_score(true, value))
            if (y >= 0).all():
                clipped = np.clip(value, 0, None)
                out.setdefault("msle", []).append(skm.mean_squared_log_error(true, clipped))
            continue
        if p.shape[1] > 1:
            label = p.argmax(1)
            out.setdefault("macro_f1", []).append(skm.f1_score(truth, label, average="macro"))
            out.setdefault("log_loss", []).append(skm.log_loss(truth, p / p.sum(1, keepdims=True)))
        else:
            score = p[:, 0]
            label = (score > (0.5 if loss.output.value == "sigmoid" else 0.0)).astype(int)
            out.setdefault("f1", []).append(skm.f1_score(truth, label))
            out.setdefault("roc_auc", []).append(skm.roc_auc_score(truth, score))
            if loss.output.value == "sigmoid":
                out.setdefault("log_loss", []).append(skm.log_loss(truth, score))
                out.setdefault("brier", []).append(skm.brier_score_loss(truth, score))
            else:
                rounded = np.mean(np.round(score) == y.ravel())
                out.setdefault("rounded_accuracy", []).append(rounded)
        out.setdefault("accuracy", []).append(skm.accuracy_score(truth, label))
        out.setdefault("balanced_accuracy", []).append(skm.balanced_accuracy_score(truth, label))
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        ("loss=mse", "dataset=regression_positive"),  # targets >= 0: msle joins the panel
        ("loss=mae",),
        ("loss=bce",),
        ("loss=hinge",),
        ("loss=sparse_cce",),
        ("loss=kld",),
        ("loss=mse", "dataset=diabetes"),  # a table: metrics in the target's units
        # losses of one task as one model: each reads the outputs and targets its own way
        ("loss=bce", "+loss@member_losses.hinge=hinge"),
        ("loss=cce", "+loss@member_losses.sparse_cce=sparse_cce"),
    ],
    ids=lambda o: " ".join(o),
)
def test_each_panel_metric_equals_scikit_learn_per_member(overrides) -> None:
    typed, data, module, panels = built(*overrides)
    with torch.no_grad():  # perturb every second member so each loss's two members differ
        for weight in module.model.weights:
            weight[1::2] += 0.05
    primary = typed.primary_metric()
    epoch = module.evaluate(*data.test)
    assert len(panels) == len(module.heads) == len(typed.job_losses())
    for head, panel, (pred, target) in zip(module.heads, panels, module.outputs(*data.test)):
        values = panel(pred, target)
        expected = expected_panel(head.loss, pred.numpy().astype(np.float64), target[0].numpy())
        assert sorted(values) == sorted(expected)
        for name, per_member in values.items():
            assert per_member == pytest.approx(expected[name], abs=1e-6), name
            assert per_member[0] != per_member[1] or name == "rounded_accuracy", name
        # the per-epoch function of the primary metric agrees with the panel's
        per_epoch = epoch[primary][head.members].tolist()
        assert per_epoch == pytest.approx(values[primary], rel=1e-6, abs=1e-6)  # float32
    if overrides[-1] == "dataset=diabetes":  # squared units of disease progression
        assert values["mse"][0] > 1000 and values["r2"][0] < 1


@pytest.mark.parametrize(
    "overrides",
    [("loss=bce",), ("loss=hinge",), ("loss=sparse_cce",), ("loss=mse", "dataset=diabetes")],
    ids=lambda o: " ".join(o),
)
def test_a_model_that_ignores_its_input_is_scored_by_each_panel_metric(overrides) -> None:
    """The bar a run must clear not to have collapsed, by whichever metric the sweep ranks
    by: the train rows' mean, or their class shares as the loss's output, scored on the
    test rows by scikit-learn."""
    from src.experiment import trivial_score

    _, data, module, panels = built(*overrides)
    (head,), (panel,), split = module.heads, panels, data.split
    y_train, y_test = split.y_train, split.y_test
    n = len(y_test)
    if head.loss.targets == config.Targets.real:  # in the target's units
        scale, offset = split.units
        y_test = y_test * scale + offset
        pred = np.full((1, n, 1), (y_train * scale + offset).mean())
    elif head.loss.targets == config.Targets.index:  # the classes' shares, a row each
        shares = np.bincount(y_train, minlength=split.n_outputs) / len(y_train)
        pred = np.tile(shares, (1, n, 1))
    else:  # the positive class's share as a probability (bce), or as a sign's lean (hinge)
        positive = float(np.mean(y_train == 1))
        lean = positive if head.loss.targets == config.Targets.binary else 2 * positive - 1
        pred = np.full((1, n, 1), lean)
    expected = expected_panel(head.loss, pred, y_test)
    for name in panel.fns:
        value = trivial_score(module, head, panel, split, name)
        assert value == pytest.approx(expected[name][0], rel=1e-5, abs=1e-6), name
    if "roc_auc" in panel.fns:  # a constant score ranks no row above another
        assert trivial_score(module, head, panel, split, "roc_auc") == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("loss=sparse_cce", "loss.metrics=[r2]"), "'r2' does not apply to loss 'sparse_cce'"),
        (("loss=bce", "loss.metrics=[log_loss]"), "computed after training only"),
        (("report.metric=nope",), "unknown metric 'nope'; choose one of: ['accuracy'"),
        (("metrics.mse.primary=[]",), "regression needs exactly one primary metric"),
    ],
)
def test_a_metric_that_does_not_fit_is_refused_at_start_up(overrides, message) -> None:
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[")):
        config.validate(compose_cfg(*overrides))


def test_a_metric_function_that_refuses_the_outputs_is_one_line_before_any_run() -> None:
    cfg = compose_cfg("loss=bce", "metrics.f1.fn.zero_division=bogus")
    with pytest.raises(config.ConfigError, match=r"metrics\.f1: InvalidParameterError"):
        experiment.build(cfg, config.validate(cfg), [0])


def _facts() -> dict[str, report.MetricFacts]:
    return {
        "mse": report.MetricFacts(higher=False, low=0.0),
        "median_ae": report.MetricFacts(higher=False, low=0.0),
    }


def _results(metric: str) -> list[report.Result]:
    """Least squares against least absolute deviations on data with outliers, five resamples:
    the squared-loss fit wins on test MSE, the absolute-loss fit on median absolute error."""
    results = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=400)
        y = 2 * x + rng.normal(scale=0.1, size=400)
        y[rng.random(400) < 0.1] += rng.choice([-8.0, 8.0], size=1)  # outliers, one side each
        train, test = slice(0, 200), slice(200, 400)
        slope_sq, icpt_sq = np.polyfit(x[train], y[train], 1)
        icpt_abs = np.median(y[train] - 2 * x[train])  # the LAD fit, slope known
        fits = {"mse": slope_sq * x[test] + icpt_sq, "mae": 2 * x[test] + icpt_abs}
        for loss, pred in fits.items():
            values = {
                "mse": skm.mean_squared_error(y[test], pred),
                "median_ae": skm.median_absolute_error(y[test], pred),
            }
            results.append(
                report.Result(
                    *(f"{loss}{seed}", f"{loss} seed={seed}", "FINISHED", "ok", "regression"),
                    *(loss, str(seed), "-", metric, metric),
                    train=values[metric],
                    test=values[metric],
                    job_dir="",
                    error="",
                    group=loss,
                    values=values,
                )
            )
    return results


@pytest.mark.parametrize(("metric", "best"), [("mse", "mse"), ("median_ae", "mae")])
def test_the_verdict_ranks_by_the_chosen_metric(metric: str, best: str) -> None:
    results = _results(metric)
    facts = _facts()
    built_report = report.Report(
        results=results,
        summary=report.summarize_groups(results, facts),
        comparisons=report.compare(results, facts),
        lost_jobs=[],
        facts=facts,
    )
    (verdict,) = report.verdicts(built_report)
    assert verdict.startswith(f"regression, by test {metric} (lower is better): best {best} ")
    (comparison,) = built_report.comparisons
    assert comparison["test"] == "paired t" and comparison["better"] == best
    assert f"{'mae' if best == 'mse' else 'mse'} worse (p=" in verdict


def test_intervals_stay_inside_the_metrics_range() -> None:
    accuracy = report.spread([1.0, 1.0, 0.98, 1.0, 0.99], report.MetricFacts(True, 0.0, 1.0))
    assert accuracy["ci_high"] <= 1.0 and accuracy["ci_low"] >= 0.98
    mse = report.spread([0.0003, 0.011, 0.0005, 0.0069, 0.004], report.MetricFacts(False, 0.0))
    assert 0.0003 <= mse["ci_low"] < mse["mean"] < mse["ci_high"] <= 0.011
    # the t-interval the report used before put this MSE below zero
    x = np.array([0.0003, 0.011, 0.0005, 0.0069, 0.004])
    assert x.mean() - 2.776 * x.std(ddof=1) / math.sqrt(5) < 0


@pytest.mark.slow
def test_folds_times_seeds_are_runs_paired_in_the_report(run_cli, client, tmp_path) -> None:
    done = run_cli(
        "-m",
        "loss=mse,mae",
        "dataset=diabetes",
        "dataset.folds=3",
        "seed=0,1",
        "report.metric=r2",
        "trainer.max_epochs=3",
        "logger.log_model=false",
    )
    assert done.returncode == 0, done.stderr
    # 12 runs (2 losses x 3 folds x 2 seeds): a job per fold, mse and mae members of one model
    assert "12 runs launched as 3 jobs (seeds and losses as members)" in done.stdout
    children = [r for r in runs_of(client) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(
        (r.data.tags["loss"], r.data.tags["fold"], r.data.tags["seed"]) for r in children
    ) == [
        (loss, str(fold), str(seed))
        for loss in ("mae", "mse")
        for fold in range(3)
        for seed in (0, 1)
    ]
    assert all(r.info.status == "FINISHED" for r in children)
    names = {r.info.run_name for r in children}
    assert "mse dataset=diabetes trainer.max_epochs=3 fold=2/3 seed=1" in names
    # each fold tests on its own third of the rows
    tested = {r.data.tags["fold"]: int(float(r.data.params["dataset.folds"])) for r in children}
    assert tested == {"0": 3, "1": 3, "2": 3}
    with open(tmp_path / "multirun" / "comparisons.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["test"], row["n_a"], row["n_b"], row["metric"]) == ("paired t", "6", "6", "r2")
    assert "regression, by test r2 (higher is better): best " in done.stdout
    for r in children:  # judged by the sweep's metric: r2 of the train mean, a little below 0
        trivial = float(r.data.tags["trivial_test_score"])
        assert r.data.tags["outcome_metric"] == "r2" and -0.1 < trivial <= 0
        ok = r.data.metrics["final_test_r2"] > trivial
        assert r.data.tags["outcome"] == ("ok" if ok else "collapsed")


def test_a_loss_that_mostly_collapsed_is_unreliable_in_the_verdict_and_on_the_parent() -> None:
    """msle ok in 3 of 15 runs with the best median: the verdict and the parent's best.<task>
    tag (both read report.standing) name the reliable best instead."""
    facts = {"r2": report.MetricFacts(higher=True, high=1.0)}
    summary = [
        {
            "task": "regression",
            "group": g,
            "metric": "r2",
            "runs": 15,
            "test_n": n,
            "test_median": m,
        }
        for g, n, m in (("mse", 14, 0.31), ("msle", 3, 0.48), ("log_cosh", 15, 0.36))
    ]
    built_report = report.Report(
        results=[], summary=summary, comparisons=[], lost_jobs=[], facts=facts
    )
    found = report.standing(built_report, "regression")
    assert found.best["group"] == "log_cosh"
    assert [r["group"] for r in found.unreliable] == ["msle"]
    (verdict,) = report.verdicts(built_report)
    assert verdict.startswith("regression, by test r2 (higher is better): best log_cosh 0.36")
    assert verdict.endswith("msle unreliable (ok in 3 of 15 runs)")
