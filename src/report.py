"""The end-of-sweep table: each job's final train/test metric, read back from MLflow."""

from __future__ import annotations

from pathlib import Path

from src import tracking


def child_runs(uri: str, parent_run_id: str) -> list:
    client = tracking.get_client(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )


def summarize(uri: str, parent_run_id: str, sweep_dir: Path) -> int:
    """Print and save the sweep's table; return how many child runs did not finish."""
    rows = []
    for run in child_runs(uri, parent_run_id):
        metrics = run.data.metrics
        metric = "mse" if run.data.tags.get("task") == "regression" else "accuracy"
        rows.append(
            (
                run.info.run_name,
                run.info.status,
                run.data.tags.get("outcome", ""),
                metric,
                metrics.get(f"final/train/{metric}", float("nan")),
                metrics.get(f"final/test/{metric}", float("nan")),
            )
        )
    header = ("run", "status", "outcome", "metric", "train", "test")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *(f"| {n} | {s} | {o} | {m} | {tr:.4f} | {te:.4f} |" for n, s, o, m, tr, te in rows),
    ]
    table = "\n".join(lines)
    print(table)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "summary.md").write_text(table + "\n")
    return sum(1 for row in rows if row[1] != "FINISHED")
