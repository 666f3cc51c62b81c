"""Own data at scale: a generated CSV (default 100,000 rows x 50 columns, 5 of them text
categories, 1% missing cells) through a five-loss sweep, run as a user runs it, from the shell.

    python -m bench.tables [--rows 100000] [--columns 50] [--epochs 2]

Prints the command's wall time, the time from launch to each loss's first epoch (read back
from the first ``train/loss`` timestamp MLflow holds for it), and the launching process's peak
memory (with the default launcher the jobs train in it; the tracking process is apart).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_regression

import bench

LOSSES = "mse,msle,mae,huber,log_cosh"


def write_csv(path: Path, rows: int, columns: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    categories = 5
    x, y = make_regression(rows, columns - categories, n_informative=10, noise=5.0, random_state=0)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    for i in range(categories):
        frame[f"c{i}"] = rng.choice(["a", "b", "c", "d"], rows)
    frame = frame.mask(rng.random(frame.shape) < 0.01)  # 1% missing cells
    frame["target"] = y * 10 + 500
    frame.to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--columns", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix="losslab-bench-tables-") as folder:
        work = Path(folder)
        data = work / "data.csv"
        write_csv(data, args.rows, args.columns)
        size = data.stat().st_size / 1e6
        print(f"{data.name}: {args.rows} rows x {args.columns + 1} columns, {size:.1f} MB")
        store = f"sqlite:///{work / 'mlflow.db'}"
        command = [
            sys.executable,
            "-m",
            "src.train",
            "-m",
            f"hydra.sweep.dir={work / 'multirun'}",
            "dataset=csv",
            f"dataset.path={data}",
            "dataset.target=target",
            f"loss={LOSSES}",
            f"trainer.max_epochs={args.epochs}",
        ]
        launched = time.time()
        done = subprocess.run(
            command,
            env={**os.environ, "MLFLOW_TRACKING_URI": store},
            capture_output=True,
            text=True,
            timeout=3600,
        )
        wall = time.time() - launched
        if done.returncode != 0:
            sys.exit(f"the sweep failed:\n{done.stderr}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        client = MlflowClient(store)
        experiment = client.get_experiment_by_name("losslab")
        firsts, jobs = [], set()
        for run in client.search_runs([experiment.experiment_id], "tags.loss != ''"):
            jobs.add(run.data.tags["job"])  # the losses of one task train as one job
            history = client.get_metric_history(run.info.run_id, "train/loss")
            first = min(m.timestamp for m in history if m.step == 1) / 1000
            firsts.append((first - launched, run.data.tags["loss"]))
        print(
            f"sweep of {len(firsts)} losses in {len(jobs)} job(s), {args.epochs} epochs each: "
            f"{wall:.1f} s wall"
        )
        for seconds, loss in sorted(firsts):
            print(f"  {loss:9s} first epoch done {seconds:6.1f} s after launch")
        print(f"peak memory of the launching (training) process: {peak:.0f} MB")


if __name__ == "__main__":
    bench.command(main)
