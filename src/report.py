"""The sweep's answer to "which loss?": seed statistics per loss (and per any other swept key),
pairwise tests between losses of a task, learning curves and the spread of final metrics.

Everything is read back from MLflow (the child runs of the sweep's parent run), so the report
can be regenerated for any past sweep: ``python -m src.report <sweep dir | parent run id>``.
Runs that collapsed, diverged, failed or were killed are counted, never averaged in.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from scipy import stats

from src import plots, store, tracking
from src.config import ConfigError, Task, lower_is_better, primary_name

OPTUNA_RESULTS = "optimization_results.yaml"  # written into the sweep dir by the Optuna sweeper
ARTIFACT_DIR = "report"
ALPHA = 0.05
EXCLUDED = ("collapsed", "diverged", "failed")  # counted separately, in this order
COMPARISON_HEADER = (
    *("task", "a", "b", "test", "mean diff a−b", "95% CI of diff", "p", "p (Holm)"),
    *("real difference at these seeds?", "better"),
)
NOT_SWEPT = ("loss", "seed", "members")  # loss groups anyway; seeds are the replicates


@dataclass
class Result:
    """One child run, reduced to what the report needs."""

    run_id: str
    name: str
    status: str
    outcome: str  # ok, collapsed, diverged, failed (killed and unfinished runs count as failed)
    task: str
    loss: str
    seed: str
    metric: str
    train: float
    test: float
    job_dir: str
    error: str
    overrides: dict[str, str] = field(default_factory=dict)
    group: str = ""  # the loss, then key=value for every other swept key


@dataclass
class Report:
    results: list[Result]
    summary: list[dict[str, object]]
    comparisons: list[dict[str, object]]
    lost_jobs: list[tuple[str, str]]  # (job dir, error) of jobs that never reached MLflow
    markdown: str

    @property
    def failures(self) -> int:
        """Runs that did not finish, plus jobs that failed before their run was created."""
        return sum(r.status != "FINISHED" for r in self.results) + len(self.lost_jobs)


def child_runs(uri: str, parent_run_id: str) -> list:
    """The sweep's runs in sweep order (job number, then member), whatever order parallel
    jobs started in, so the report's rows follow the command line."""
    client = tracking.get_client(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )

    def position(run) -> tuple[int, int]:
        tags = run.data.tags
        return int(tags.get("job", sys.maxsize)), int(tags.get("member", 0))

    return sorted(runs, key=position)


def parse_overrides(text: str) -> dict[str, str]:
    """'loss=mse seed=1' -> {'loss': 'mse', 'seed': '1'} (Hydra's +/~ prefixes dropped)."""
    pairs = (item.split("=", 1) for item in text.split() if "=" in item)
    return {key.lstrip("+~"): value for key, value in pairs}


def _outcome(run) -> str:
    outcome = run.data.tags.get("outcome", "")
    if outcome in ("ok", *EXCLUDED) and not (outcome == "ok" and run.info.status != "FINISHED"):
        return outcome
    return "failed"  # killed, still RUNNING after the sweep, or no outcome recorded


def collect(runs: Iterable) -> list[Result]:
    """Reduce child runs to results, grouped by loss and every other key the sweep varied."""
    results = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        task = tags.get("task", "")
        metric = primary_name(Task(task)) if task in Task.__members__ else "?"
        results.append(
            Result(
                run_id=run.info.run_id,
                name=run.info.run_name,
                status=run.info.status,
                outcome=_outcome(run),
                task=task or "?",
                loss=tags.get("loss", "?"),
                seed=tags.get("seed", "?"),
                metric=metric,
                train=metrics.get(f"final/train/{metric}", math.nan),
                test=metrics.get(f"final/test/{metric}", math.nan),
                job_dir=tags.get("output_dir", ""),
                error=tags.get("error", ""),
                overrides=parse_overrides(tags.get("overrides", "")),
            )
        )
    swept = swept_keys([r.overrides for r in results])
    for r in results:
        r.group = " ".join([r.loss, *(f"{k}={r.overrides.get(k, '-')}" for k in swept)])
    return results


def swept_keys(overrides: Sequence[dict[str, str]]) -> list[str]:
    """Keys other than loss and seed whose value differs between jobs."""
    keys = sorted({key for job in overrides for key in job} - set(NOT_SWEPT))
    return [k for k in keys if len({job.get(k) for job in overrides}) > 1]


def t_stats(values: Sequence[float]) -> dict[str, float]:
    """n, median, mean, sample std and the 95% t-interval of the mean (nan below n = 2)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    nan = math.nan
    if n == 0:
        return {"n": 0, "median": nan, "mean": nan, "std": nan, "ci_low": nan, "ci_high": nan}
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else nan
    low, high = (nan, nan)
    if n > 1:
        half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    return {
        "n": n,
        "median": float(np.median(x)),
        "mean": mean,
        "std": std,
        "ci_low": low,
        "ci_high": high,
    }


def summarize_groups(results: Sequence[Result]) -> list[dict[str, object]]:
    """One row per group: outcome counts, then statistics of the ok runs only."""
    rows = []
    for group in dict.fromkeys(r.group for r in results):
        members = [r for r in results if r.group == group]
        ok = [r for r in members if r.outcome == "ok"]
        row: dict[str, object] = {
            "task": members[0].task,
            "group": group,
            "metric": members[0].metric,
            "runs": len(members),
            **{name: sum(r.outcome == name for r in members) for name in EXCLUDED},
        }
        for split in ("train", "test"):
            for key, value in t_stats([getattr(r, split) for r in ok]).items():
                row[f"{split}_{key}"] = value
        rows.append(row)
    return rows


def _holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (nan stays nan and is not counted)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def compare(results: Sequence[Result]) -> list[dict[str, object]]:
    """Every pair of groups of one task that differ only in the loss, on the final test metric.

    Paired t-test over seeds when both groups hold the same seeds (the data are identical and
    a seed fixes initialization and shuffling), Welch's t-test otherwise. p-values are
    Holm-adjusted within each task; "real" means adjusted p < 0.05 at these seeds.
    """
    ok = [r for r in results if r.outcome == "ok" and not math.isnan(r.test)]
    rows = []
    groups = list(dict.fromkeys(r.group for r in ok))
    for a, b in combinations(groups, 2):
        ra = [r for r in ok if r.group == a]
        rb = [r for r in ok if r.group == b]
        rest_a, rest_b = a.split(" ", 1)[1:], b.split(" ", 1)[1:]
        if ra[0].task != rb[0].task or rest_a != rest_b:
            continue
        seeds_a, seeds_b = [r.seed for r in ra], [r.seed for r in rb]
        paired = sorted(seeds_a) == sorted(seeds_b) and len(set(seeds_a)) == len(seeds_a)
        xa = np.array([r.test for r in sorted(ra, key=lambda r: r.seed)])
        xb = np.array([r.test for r in sorted(rb, key=lambda r: r.seed)])
        row: dict[str, object] = {
            "task": ra[0].task,
            "a": a,
            "b": b,
            "metric": ra[0].metric,
            "n_a": len(xa),
            "n_b": len(xb),
            "test": "paired t" if paired else "Welch t",
            "diff": float(xa.mean() - xb.mean()),
            "diff_low": math.nan,
            "diff_high": math.nan,
            "p": math.nan,
        }
        if min(len(xa), len(xb)) >= 2:
            test = stats.ttest_rel(xa, xb) if paired else stats.ttest_ind(xa, xb, equal_var=False)
            if not math.isnan(test.pvalue):
                interval = test.confidence_interval(1 - ALPHA)
                row.update(p=float(test.pvalue), diff_low=interval.low, diff_high=interval.high)
        rows.append(row)
    for task in dict.fromkeys(str(row["task"]) for row in rows):
        in_task = [row for row in rows if row["task"] == task]
        for row, adjusted in zip(in_task, _holm([float(row["p"]) for row in in_task])):
            row["p_holm"] = adjusted
            if math.isnan(adjusted):
                row["real"], row["better"] = "n/a (needs 2+ ok runs each)", ""
                continue
            real = adjusted < ALPHA
            a_better = (float(row["diff"]) < 0) == lower_is_better(str(row["metric"]))
            row["real"] = "yes" if real else "no"
            row["better"] = (row["a"] if a_better else row["b"]) if real else ""
    return rows


def lost_jobs(sweep_dir: Path, results: Sequence[Result], since: float) -> list[tuple[str, str]]:
    """Jobs of this sweep (output dir written after ``since``, the parent run's start in
    seconds) that left no run: they failed before tracking began. Older job dirs belong to an
    earlier sweep into the same folder."""
    if not sweep_dir.is_dir():
        return []
    tracked = {Path(r.job_dir).resolve() for r in results if r.job_dir}
    lost = []
    for marker in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job = marker.parent.parent
        if job.resolve() not in tracked and marker.stat().st_mtime >= since:
            error_file = job / "error.txt"
            error = error_file.read_text().strip() if error_file.exists() else "see the job's log"
            lost.append((str(job), error))
    return lost


def _num(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _spread(row: dict[str, object], split: str) -> list[str]:
    mean, std = row[f"{split}_mean"], row[f"{split}_std"]
    low, high = row[f"{split}_ci_low"], row[f"{split}_ci_high"]
    return [
        _num(row[f"{split}_median"]),
        f"{_num(mean)} ± {_num(std)}",
        f"[{_num(low)}, {_num(high)}]",
    ]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(report: Report, title: str) -> str:
    """The report as Markdown: summary, comparisons, and every run left out of the statistics."""
    summary = _table(
        [
            "task",
            "loss",
            "metric",
            "ok/runs",
            *EXCLUDED,
            "train median",
            "train mean ± std",
            "train 95% CI",
            "test median",
            "test mean ± std",
            "test 95% CI",
        ],
        (
            [
                str(row["task"]),
                str(row["group"]),
                str(row["metric"]),
                f"{row['test_n']}/{row['runs']}",
                *(str(row[name]) for name in EXCLUDED),
                *_spread(row, "train"),
                *_spread(row, "test"),
            ]
            for row in report.summary
        ),
    )
    parts = [f"# {title}", "", "Final metric per loss over seeds (ok runs only).", "", summary]
    if report.comparisons:
        comparisons = _table(
            COMPARISON_HEADER,
            (
                [
                    str(row["task"]),
                    str(row["a"]),
                    str(row["b"]),
                    str(row["test"]),
                    _num(row["diff"]),
                    f"[{_num(row['diff_low'])}, {_num(row['diff_high'])}]",
                    _num(row["p"]),
                    _num(row["p_holm"]),
                    str(row["real"]),
                    str(row["better"]),
                ]
                for row in report.comparisons
            ),
        )
        parts += [
            "",
            f"Pairwise comparisons of the final test metric (alpha {ALPHA}, Holm-adjusted "
            "within each task).",
            "",
            comparisons,
        ]
    left_out = [r for r in report.results if r.outcome != "ok"]
    if left_out or report.lost_jobs:
        parts += ["", "Runs left out of the statistics:", ""]
        parts += [
            f"- {r.name} ({r.run_id}): {r.status}, {r.outcome}"
            + (f": {r.error.splitlines()[0]}" if r.error else "")
            for r in left_out
        ]
        parts += [f"- job {job}: no MLflow run; {error}" for job, error in report.lost_jobs]
    return "\n".join(parts) + "\n"


def _csv(rows: Sequence[dict[str, object]]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {k: repr(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows
    )
    return out.getvalue()


def histories(client, results: Sequence[Result]) -> dict[str, dict[str, list[float]]]:
    """Per run: the per-epoch train and test metric, ordered by epoch."""
    curves = {}
    for r in results:
        curves[r.run_id] = {}
        for split in ("train", "test"):
            points = client.get_metric_history(r.run_id, f"{split}/{r.metric}")
            curves[r.run_id][split] = [m.value for m in sorted(points, key=lambda m: m.step)]
    return curves


def build(uri: str, parent_run_id: str, sweep_dir: Path) -> Report:
    """Compute the report, write it under ``sweep_dir`` and log it to the parent run."""
    client = tracking.get_client(uri)
    results = collect(child_runs(uri, parent_run_id))
    report = Report(
        results=results,
        summary=summarize_groups(results),
        comparisons=compare(results),
        lost_jobs=lost_jobs(
            sweep_dir, results, client.get_run(parent_run_id).info.start_time / 1000
        ),
        markdown="",
    )
    report.markdown = to_markdown(report, f"Sweep {sweep_dir.name}: which loss?")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report.md": report.markdown,
        "summary.csv": _csv(report.summary),
        "comparisons.csv": _csv(report.comparisons),
    }
    for name, text in files.items():
        (sweep_dir / name).write_text(text)
    ok = [r for r in results if r.outcome == "ok"]
    figures = {
        "curves.png": plots.sweep_curves(ok, histories(client, ok)),
        "final.png": plots.final_spread(results),
    }
    for name, figure in figures.items():
        figure.savefig(sweep_dir / name, dpi=110)
    for name in (*files, *figures):
        client.log_artifact(parent_run_id, str(sweep_dir / name), ARTIFACT_DIR)
    return report


def tag_best_trial(uri: str, parent_run_id: str, sweep_dir: Path) -> list[str]:
    """After an Optuna search: tag the best trial's runs ``best_trial=true`` (and the parent
    with the best value and parameters); return their run ids."""
    results_file = sweep_dir / OPTUNA_RESULTS
    if not results_file.exists():
        return []
    found = OmegaConf.to_container(OmegaConf.load(results_file))
    if "best_params" not in found:  # a multi-objective study has a Pareto front instead
        return []
    best = {str(k): v for k, v in found["best_params"].items()}

    def same(value: str, wanted: object) -> bool:
        try:
            return float(value) == float(wanted)
        except (TypeError, ValueError):
            return value == str(wanted)

    client = tracking.get_client(uri)
    ids = []
    for run in child_runs(uri, parent_run_id):
        overrides = parse_overrides(run.data.tags.get("overrides", ""))
        if all(k in overrides and same(overrides[k], v) for k, v in best.items()):
            client.set_tag(run.info.run_id, "best_trial", "true")
            ids.append(run.info.run_id)
    client.set_tag(parent_run_id, "best_value", str(found["best_value"]))
    client.set_tag(parent_run_id, "best_params", " ".join(f"{k}={v}" for k, v in best.items()))
    return ids


def resolve(target: str, uri: str) -> tuple[str, Path]:
    """A sweep dir (holding mlflow_parent_run_id) or a parent run id -> (run id, sweep dir)."""

    path = Path(target)
    if path.is_dir():
        id_file = path / tracking.PARENT_RUN_FILE
        if not id_file.exists():
            raise ConfigError(f"{path} is not a sweep dir: it has no {tracking.PARENT_RUN_FILE}")
        return id_file.read_text().strip(), path
    from mlflow.exceptions import MlflowException

    try:
        parent = tracking.get_client(uri).get_run(target)
    except MlflowException:
        raise ConfigError(
            f"'{target}' is neither a sweep dir nor a run id in {store.redact(uri)}"
        ) from None
    return target, Path(parent.data.tags.get("sweep_dir") or f"report-{target}")


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m src.report <sweep dir | parent run id>", file=sys.stderr)
        return 2
    uri = store.resolve_uri(None)
    try:
        store.check(uri)
        parent_run_id, sweep_dir = resolve(argv[0], uri)
    except ConfigError as error:
        print(f"losslab: error: {error}", file=sys.stderr)
        return 1
    report = build(uri, parent_run_id, sweep_dir)
    print(report.markdown)
    print(f"written to {sweep_dir} and logged to run {parent_run_id} under {ARTIFACT_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
