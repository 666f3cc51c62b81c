"""The sweep's answer to "which loss?", by the metric the user answers to: a verdict per task,
every metric's median per loss, the spread of the ranking metric over seeds (and folds), the
pairwise tests between losses of a task, learning curves and the spread of final metrics.

Everything is read back from MLflow (the child runs of the sweep's parent run), so the report
can be regenerated for any past sweep: ``python -m src.report <sweep dir | parent run id>``.
Runs that collapsed, diverged, failed or were killed are counted, never averaged in.
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from scipy import stats

from src import plots, quick_exit, store, tracking
from src.config import MEMBER_LOSS_KEY, ConfigError
from src.render import Saving

OPTUNA_RESULTS = "optimization_results.yaml"  # written into the sweep dir by the Optuna sweeper
ARTIFACT_DIR = "report"
ALPHA = 0.05
EXCLUDED = ("collapsed", "diverged", "failed")  # counted separately, in this order
NOT_SWEPT = ("loss", "seed", "members", "dataset.fold", "report.metric")  # replicates etc.
PRIMARY = {"regression": "mse", "binary": "accuracy", "multiclass": "accuracy"}  # untagged runs
BOOTSTRAP = 2000  # resamples for the interval of a mean
CONSOLE_WIDTH = 100


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
    fold: str  # "-" without cross-validation
    metric: str  # the metric this run's task is ranked by
    curve: str  # the metric drawn per epoch (the task's primary)
    train: float
    test: float
    job_dir: str
    error: str
    overrides: dict[str, str] = field(default_factory=dict)
    group: str = ""  # the loss, then key=value for every other swept key
    values: dict[str, float] = field(default_factory=dict)  # every final test metric

    @property
    def replicate(self) -> tuple[str, str]:
        """What pairs two runs of different losses: the same fold and seed."""
        return self.fold, self.seed


@dataclass(frozen=True)
class MetricFacts:
    """What the report knows of a metric, read back from the runs' logged config."""

    higher: bool | None  # None: unknown direction (no verdict)
    low: float = -math.inf
    high: float = math.inf

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓", None: ""}[self.higher]

    @property
    def words(self) -> str:
        return {True: "higher is better", False: "lower is better", None: "?"}[self.higher]


@dataclass
class Report:
    results: list[Result]
    summary: list[dict[str, object]]
    comparisons: list[dict[str, object]]
    lost_jobs: list[tuple[str, str]]  # (job dir, error) of jobs that never reached MLflow
    facts: dict[str, MetricFacts] = field(default_factory=dict)
    verdicts: list[str] = field(default_factory=list)
    markdown: str = ""
    console: str = ""

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


def metric_facts(runs: Iterable) -> dict[str, MetricFacts]:
    """Each metric's direction and range, from the runs' params (their logged config)."""
    facts: dict[str, MetricFacts] = {}
    for run in runs:
        params = run.data.params
        for key, value in params.items():
            name = re.fullmatch(r"metrics\.(\w+)\.direction", key)
            if name is None or name.group(1) in facts:
                continue
            bound = {}
            for side in ("low", "high"):
                text = params.get(f"metrics.{name.group(1)}.{side}", "None")
                bound[side] = float(text) if text not in ("None", "null", "") else None
            facts[name.group(1)] = MetricFacts(
                higher=value == "higher",
                low=-math.inf if bound["low"] is None else bound["low"],
                high=math.inf if bound["high"] is None else bound["high"],
            )
    for name, higher in (("mse", False), ("accuracy", True)):  # runs from before the panel
        facts.setdefault(name, MetricFacts(higher=higher, low=0.0))
    return facts


def collect(runs: Iterable, metric: str | None = None) -> list[Result]:
    """Reduce child runs to results ranked by ``metric`` where their task has it (else by the
    task's primary metric), grouped by loss and every other key the sweep varied."""
    results = []
    for run in runs:
        tags, metrics = run.data.tags, tracking.run_metrics(run)
        task = tags.get("task", "")
        primary = tags.get("metric") or PRIMARY.get(task, "?")
        chosen = metric if metric and f"final_test_{metric}" in metrics else primary
        results.append(
            Result(
                run_id=run.info.run_id,
                name=run.info.run_name,
                status=run.info.status,
                outcome=_outcome(run),
                task=task or "?",
                loss=tags.get("loss", "?"),
                seed=tags.get("seed", "?"),
                fold=tags.get("fold", "-"),
                metric=chosen,
                curve=primary,
                train=metrics.get(f"final_train_{chosen}", math.nan),
                test=metrics.get(f"final_test_{chosen}", math.nan),
                job_dir=tags.get("output_dir", ""),
                error=tags.get("error", ""),
                overrides=parse_overrides(tags.get("overrides", "")),
                values={
                    key.removeprefix("final_test_"): value
                    for key, value in metrics.items()
                    if key.startswith("final_test_") and key != "final_test_loss"
                },
            )
        )
    swept = swept_keys([r.overrides for r in results])
    for r in results:
        r.group = " ".join([r.loss, *(f"{k}={r.overrides.get(k, '-')}" for k in swept)])
    return results


def swept_keys(overrides: Sequence[dict[str, str]]) -> list[str]:
    """Keys other than loss and seed whose value differs between jobs."""
    keys = sorted({key for job in overrides for key in job} - set(NOT_SWEPT))
    keys = [k for k in keys if not k.startswith(MEMBER_LOSS_KEY)]  # a merged job's other losses
    return [k for k in keys if len({job.get(k) for job in overrides}) > 1]


def spread(values: Sequence[float], facts: MetricFacts) -> dict[str, float]:
    """n, median, mean, sample std and a 95% bootstrap percentile interval of the mean (nan
    below n = 2): resampled means stay within the values, so the interval never leaves the
    metric's range (a t-interval put an MSE below 0)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    nan = math.nan
    if n == 0:
        return {"n": 0, "median": nan, "mean": nan, "std": nan, "ci_low": nan, "ci_high": nan}
    low, high = (nan, nan)
    if n > 1:
        means = np.random.default_rng(0).choice(x, size=(BOOTSTRAP, n)).mean(axis=1)
        low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2]).tolist()
        low, high = max(low, facts.low), min(high, facts.high)
    return {
        "n": n,
        "median": float(np.median(x)),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if n > 1 else nan,
        "ci_low": low,
        "ci_high": high,
    }


def summarize_groups(
    results: Sequence[Result], facts: Mapping[str, MetricFacts]
) -> list[dict[str, object]]:
    """One row per group: outcome counts, the ranking metric's spread over the ok runs, and
    the test median of every other metric."""
    rows = []
    for group in dict.fromkeys(r.group for r in results):
        members = [r for r in results if r.group == group]
        ok = [r for r in members if r.outcome == "ok"]
        metric = members[0].metric
        row: dict[str, object] = {
            "task": members[0].task,
            "group": group,
            "metric": metric,
            "direction": facts.get(metric, MetricFacts(None)).words,
            "runs": len(members),
            **{name: sum(r.outcome == name for r in members) for name in EXCLUDED},
        }
        for split in ("train", "test"):
            values = [getattr(r, split) for r in ok]
            for key, value in spread(values, facts.get(metric, MetricFacts(None))).items():
                row[f"{split}_{key}"] = value
        names = dict.fromkeys(name for r in members for name in r.values)
        for name in names:
            values = [r.values[name] for r in ok if name in r.values]
            row[f"test_median_{name}"] = float(np.median(values)) if values else math.nan
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


def compare(results: Sequence[Result], facts: Mapping[str, MetricFacts]) -> list[dict[str, object]]:
    """Every pair of groups of one task that differ only in the loss, on the final test value
    of the task's ranking metric.

    Paired t-test over (fold, seed) pairs when both groups hold the same ones (the data are
    identical and a seed fixes initialization and shuffling), Welch's t-test otherwise.
    p-values are Holm-adjusted within each task; "real" means adjusted p < 0.05.
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
        if ra[0].metric != rb[0].metric:
            continue
        keys_a, keys_b = [r.replicate for r in ra], [r.replicate for r in rb]
        paired = sorted(keys_a) == sorted(keys_b) and len(set(keys_a)) == len(keys_a)
        xa = np.array([r.test for r in sorted(ra, key=lambda r: r.replicate)])
        xb = np.array([r.test for r in sorted(rb, key=lambda r: r.replicate)])
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
            higher = facts.get(str(row["metric"]), MetricFacts(None)).higher
            row["real"] = "yes" if real else "no"
            row["better"] = ""
            if real and higher is not None:
                a_better = (float(row["diff"]) > 0) == higher
                row["better"] = row["a"] if a_better else row["b"]
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


def record_lost_job(job_dir: Path, overrides: Sequence[str], error: str) -> None:
    """Leave what ``lost_jobs`` reads for a job that ended before it could write it (a SLURM
    job cancelled while queued): its overrides, as Hydra records them, and the reason."""
    from omegaconf import OmegaConf

    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), job_dir / ".hydra" / "overrides.yaml")
    (job_dir / "error.txt").write_text(error + "\n")


@dataclass
class Standing:
    """How one task's groups rank: the ranking metric, the groups that can be ranked, the
    best of them (None when the metric's direction is unknown), and the groups whose runs
    mostly collapsed, diverged or failed, which cannot be best on the few that did not."""

    metric: str
    facts: MetricFacts
    rows: list[dict[str, object]]
    unreliable: list[dict[str, object]]
    best: dict[str, object] | None


def standing(report: Report, task: str) -> Standing | None:
    """The task's standing, or None when no run of it finished ok. The verdict and the
    parent run's ``best.<task>`` tag both read it, so they always name the same group."""
    rows = [r for r in report.summary if r["task"] == task and r["test_n"]]
    if not rows:
        return None
    reliable = [r for r in rows if 2 * int(r["test_n"]) >= int(r["runs"])]
    unreliable = [r for r in rows if r not in reliable] if reliable else []
    rows = reliable or rows
    metric = str(rows[0]["metric"])
    facts = report.facts.get(metric, MetricFacts(None))
    best = None
    if facts.higher is not None:
        best = (max if facts.higher else min)(rows, key=lambda r: float(r["test_median"]))
    return Standing(metric, facts, rows, unreliable, best)


def verdicts(report: Report) -> list[str]:
    """One line per task: the best group by the ranking metric's median, how every other
    group compares with it (the Holm-adjusted pairwise test), and the unreliable groups."""
    lines = []
    for task in dict.fromkeys(str(row["task"]) for row in report.summary):
        found = standing(report, task)
        if found is None:
            lines.append(f"{task}: no run finished ok; nothing to rank")
            continue
        head = f"{task}, by test {found.metric} ({found.facts.words})"
        best = found.best
        if best is None:
            lines.append(f"{head}: no direction known, no verdict")
            continue
        parts = [f"best {best['group']} {_num(best['test_median'])}"]
        for row in found.rows:
            if row is best:
                continue
            pair = next(
                (
                    c
                    for c in report.comparisons
                    if {c["a"], c["b"]} == {row["group"], best["group"]}
                ),
                None,
            )
            if pair is None or math.isnan(float(pair["p_holm"])):
                parts.append(f"{row['group']} untested (too few runs)")
            elif pair["better"] == best["group"]:
                parts.append(f"{row['group']} worse (p={_num(pair['p_holm'], 2)})")
            elif pair["better"]:
                parts.append(f"{row['group']} better on average (p={_num(pair['p_holm'], 2)})")
            else:
                parts.append(f"{row['group']} not distinguishable (p={_num(pair['p_holm'], 2)})")
        for row in found.unreliable:
            parts.append(f"{row['group']} unreliable (ok in {row['test_n']} of {row['runs']} runs)")
        lines.append(f"{head}: " + "; ".join(parts))
    return lines


def _num(value: object, digits: int = 4) -> str:
    """Numbers to 4 significant digits (3 decimals hid an MSE of 0.0007)."""
    if isinstance(value, (float, np.floating)):
        return "–" if math.isnan(value) else f"{float(value):.{digits}g}"
    return str(value)


def _spread_cells(row: dict[str, object], split: str) -> list[str]:
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


def _metric_names(report: Report, task: str) -> list[str]:
    """The task's metrics, the ranking one first, then as the panel lists them."""
    rows = [r for r in report.summary if r["task"] == task]
    names = [str(rows[0]["metric"])]
    names += [
        k.removeprefix("test_median_") for r in rows for k in r if k.startswith("test_median_")
    ]
    return list(dict.fromkeys(names))


def _medians(report: Report, task: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the task's loss x metric table (test medians, ok runs)."""
    names = _metric_names(report, task)
    header = [f"{name} {report.facts.get(name, MetricFacts(None)).arrow}".strip() for name in names]
    rows = []
    for row in (r for r in report.summary if r["task"] == task):
        cells = [_num(row.get(f"test_median_{name}", math.nan)) for name in names]
        rows.append([str(row["group"]), f"{row['test_n']}/{row['runs']}", *cells])
    return header, rows


def to_markdown(report: Report, title: str) -> str:
    """The report as Markdown narrow enough for MLflow's artifact viewer (about 700 pixels
    wide: a table of 13 columns had its headers cut to 'collaps...'). Per task: the test
    medians with metrics as rows and losses as columns, the ranking metric's spread, the
    pairwise comparisons; then every run left out of the statistics. The wide tables are the
    CSV files beside it."""
    parts = [f"# {title}", "", "## Verdict", ""]
    parts += [f"- {line}" for line in report.verdicts]
    for task in dict.fromkeys(str(row["task"]) for row in report.summary):
        parts += ["", f"## {task}", "", *_task_markdown(report, task)]
    left_out = [r for r in report.results if r.outcome != "ok"]
    if left_out or report.lost_jobs:
        parts += ["", "## Runs left out of the statistics", ""]
        parts += [
            f"- {r.name} ({r.run_id}): {r.status}, {r.outcome}"
            + (f": {r.error.splitlines()[0]}" if r.error else "")
            for r in left_out
        ]
        parts += [f"- job {job}: no MLflow run; {error}" for job, error in report.lost_jobs]
    return "\n".join(parts) + "\n"


def _task_markdown(report: Report, task: str) -> list[str]:
    rows = [r for r in report.summary if r["task"] == task]
    metric = str(rows[0]["metric"])
    arrow = report.facts.get(metric, MetricFacts(None)).arrow
    header, medians = _medians(report, task)
    losses = [str(r["group"]) for r in rows]
    left = [", ".join(f"{r[e]} {e}" for e in EXCLUDED if r[e]) or "none" for r in rows]
    by_metric = [[name, *(m[2 + i] for m in medians)] for i, name in enumerate(header)]
    parts = [
        "Test medians over the ok runs (↑ higher is better, ↓ lower is better; in the target's "
        "units).",
        "",
        _table(["", *losses], [["ok/runs", *(m[1] for m in medians)], ["left out", *left]]),
        "",
        _table(["test median", *losses], by_metric),
        "",
        f"**{metric} {arrow}** over seeds (and folds); 95% CI: bootstrap percentile interval of "
        "the mean of the ok runs.",
        "",
        _table(
            ["loss", "test median", "mean ± std", "95% CI", "train median"],
            [[str(r["group"]), *_spread_cells(r, "test"), _num(r["train_median"])] for r in rows],
        ),
    ]
    compared = [c for c in report.comparisons if c["task"] == task]
    if compared:
        parts += [
            "",
            f"Pairwise on the final test {metric} (alpha {ALPHA}, p Holm-adjusted within the "
            "task); real: a difference at these seeds.",
            "",
            _table(
                ["a vs b (test)", "diff a−b [95% CI]", "p / Holm", "real", "better"],
                (
                    [
                        f"{c['a']} vs {c['b']} ({c['test']})",
                        f"{_num(c['diff'])} [{_num(c['diff_low'])}, {_num(c['diff_high'])}]",
                        f"{_num(c['p'])} / {_num(c['p_holm'])}",
                        str(c["real"]),
                        str(c["better"]) or "–",
                    ]
                    for c in compared
                ),
            ),
        ]
    return parts


def to_console(report: Report, where: Path) -> str:
    """The report for a terminal of 100 columns: the verdicts, then per task a compact table
    of test medians (as many metrics as fit, the ranking one first)."""
    lines = []
    for verdict in report.verdicts:
        lines += textwrap.wrap(verdict, CONSOLE_WIDTH, subsequent_indent="    ")
    for task in dict.fromkeys(str(row["task"]) for row in report.summary):
        header, rows = _medians(report, task)
        first = max(len(task), *(len(row[0]) for row in rows)) + 2
        widths = [first, 8]
        shown = 0
        for name in header:
            width = max(len(name), 9) + 2
            if sum(widths) + width > CONSOLE_WIDTH:
                break
            widths.append(width)
            shown += 1
        lines.append("")
        cells = [task, "ok/runs", *header[:shown]]
        lines.append("".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        for row in rows:
            lines.append("".join(c.ljust(w) for c, w in zip(row[: 2 + shown], widths)).rstrip())
    left_out = sum(r.outcome != "ok" for r in report.results) + len(report.lost_jobs)
    lines += ["", f"test medians of ok runs; {left_out} run(s) left out; full report: {where}"]
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[dict[str, object]]) -> str:
    """Plain numbers (not np.float64(...)); columns as in the first row, then any others."""
    if not rows:
        return ""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {k: repr(float(v)) if isinstance(v, (float, np.floating)) else v for k, v in row.items()}
        for row in rows
    )
    return out.getvalue()


def _metric_key(*parts: str) -> str:
    """An MLflow metric name from free text (it takes letters, digits, _ - . / and space)."""
    return "/".join(re.sub(r"[^\w.\- ]", "-", part) for part in parts)


def summarize_on_parent(client, parent_run_id: str, report: Report) -> None:
    """The sweep's answer in the UI's run list: the best group per task as tags, every
    group's median of its ranking metric as metrics."""
    from mlflow.entities import Metric, RunTag

    tags = [RunTag("verdict", "\n".join(report.verdicts)[:5000])]
    metrics = []
    now = int(time.time() * 1000)
    for task in dict.fromkeys(str(row["task"]) for row in report.summary):
        found = standing(report, task)
        if found is None:
            continue
        if found.best is not None:
            tags += [
                RunTag(f"best.{task}", str(found.best["group"])),
                RunTag(f"best.{task}.by", found.metric),
            ]
        for row in [*found.rows, *found.unreliable]:
            key = _metric_key("median", str(row["group"]), f"test_{found.metric}")
            metrics.append(Metric(key, float(row["test_median"]), now, 0))
    client.log_batch(parent_run_id, metrics=metrics[:1000], tags=tags)


def histories(
    client, results: Sequence[Result], known: Mapping[str, Mapping[str, list[float]]]
) -> dict[str, dict[str, list[float]]]:
    """Per run: the per-epoch train and test metric, ordered by epoch; from ``known`` (run id
    -> key -> values, what the tracking process drew) where it has them, else the store."""
    curves = {}
    for r in results:
        curves[r.run_id] = {}
        for split in ("train", "test"):
            key = f"{split}/{r.curve}"
            if key in known.get(r.run_id, {}):
                curves[r.run_id][split] = list(known[r.run_id][key])
                continue
            points = client.get_metric_history(r.run_id, key)
            curves[r.run_id][split] = [m.value for m in sorted(points, key=lambda m: m.step)]
    return curves


def build(
    uri: str,
    parent_run_id: str,
    sweep_dir: Path,
    metric: str | None = None,
    curves: Mapping[str, Mapping[str, list[float]]] | None = None,
) -> Report:
    """Compute the report (ranked by ``metric``, else each task's primary metric), write it
    under ``sweep_dir`` and log it, and its summary, to the parent run. ``curves``: runs'
    per-epoch values already at hand (``histories``)."""
    client = tracking.get_client(uri)
    runs = child_runs(uri, parent_run_id)
    results = collect(runs, metric)
    facts = metric_facts(runs)
    report = Report(
        results=results,
        summary=summarize_groups(results, facts),
        comparisons=compare(results, facts),
        lost_jobs=lost_jobs(
            sweep_dir, results, client.get_run(parent_run_id).info.start_time / 1000
        ),
        facts=facts,
    )
    report.verdicts = verdicts(report)
    report.markdown = store.redact(to_markdown(report, f"Sweep {sweep_dir.name}: which loss?"))
    report.console = store.redact(to_console(report, sweep_dir / "report.md"))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report.md": report.markdown,
        "summary.csv": _csv(report.summary),
        "comparisons.csv": _csv(report.comparisons),
    }
    for name, text in files.items():
        (sweep_dir / name).write_text(text)
    ok = [r for r in results if r.outcome == "ok"]
    # Each figure drawn by a child process (src/render.py) as soon as it is built, while this
    # one builds the next and logs the text files; each logged once written.
    curves_png = Saving(
        plots.sweep_curves(ok, histories(client, ok, curves or {})),
        sweep_dir / "curves.png",
        dpi=110,
    )
    final_png = Saving(plots.final_spread(results), sweep_dir / "final.png", dpi=110)
    for name in files:
        client.log_artifact(parent_run_id, str(sweep_dir / name), ARTIFACT_DIR)
    for saving in (curves_png, final_png):
        client.log_artifact(parent_run_id, str(saving.wait()), ARTIFACT_DIR)
    summarize_on_parent(client, parent_run_id, report)
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
    """A sweep dir (holding mlflow_parent_run_id) or a parent run id -> (run id, sweep dir).
    Anything else (a child run, a run of another store) is one line: a report built from it
    would replace the sweep's true report with an empty one."""
    from mlflow.exceptions import MlflowException

    path = Path(target)
    if path.is_dir():
        id_file = path / tracking.PARENT_RUN_FILE
        if not id_file.exists():
            raise ConfigError(f"{path} is not a sweep dir: it has no {tracking.PARENT_RUN_FILE}")
        run_id = id_file.read_text().strip()
        where = f"sweep dir {path} belongs to run {run_id}, which"
    else:
        run_id, where = target, f"'{target}' is neither a sweep dir nor a run id that"
    try:
        parent = tracking.get_client(uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"{where} is not in {store.redact(uri)}; set MLFLOW_TRACKING_URI to the sweep's store"
        ) from None
    tags = parent.data.tags
    if "mlflow.parentRunId" in tags:
        raise ConfigError(
            f"run {run_id} is one run of a sweep; give its parent: python -m src.report "
            f"{tags['mlflow.parentRunId']}"
        )
    if tags.get("losslab.sweep") != "parent":
        raise ConfigError(f"run {run_id} is a single run, not a sweep's parent run")
    return run_id, path if path.is_dir() else Path(tags.get("sweep_dir") or f"report-{run_id}")


USAGE = "usage: python -m src.report <sweep dir | parent run id> [report.metric=<name>]"
HELP = f"""{USAGE}

Rebuild a sweep's comparison report from MLflow (store: $MLFLOW_TRACKING_URI, else
./mlflow.db): verdict per task, every metric per loss, the pairwise tests. It is written into
the sweep dir (report.md, summary.csv, comparisons.csv, curves.png, final.png) and logged to
the sweep's parent run under report/.

  report.metric=<name>   rank by this metric (mse, mae, r2, roc_auc, f1, log_loss, ...)
                         where a task has it; default: each task's primary (mse, accuracy)
"""


def main(argv: Sequence[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(HELP, end="")
        return 0
    targets = [a for a in argv if not a.startswith("report.metric=")]
    chosen = [a.partition("=")[2] for a in argv if a.startswith("report.metric=")]
    if len(targets) != 1 or len(chosen) > 1 or chosen == [""]:
        print(f"losslab: error: {USAGE}", file=sys.stderr)
        return 2
    uri = store.resolve_uri(None)
    try:
        store.check(uri, read_only=True)
        parent_run_id, sweep_dir = resolve(targets[0], uri)
    except ConfigError as error:
        print(f"losslab: error: {error}", file=sys.stderr)
        return 1
    report = build(uri, parent_run_id, sweep_dir, chosen[0] if chosen else None)
    print(report.console, end="")
    print(f"written to {sweep_dir} and logged to run {parent_run_id} under {ARTIFACT_DIR}/")
    return 0


if __name__ == "__main__":
    quick_exit.run(
        lambda: sys.exit(main(sys.argv[1:])),
        interrupted="interrupted; the report may be part old, part new: run the command again",
    )
