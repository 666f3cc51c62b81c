"""losslab's saved view of its experiment in MLflow's UI: the run list's columns and the
learning curves with train and test in one chart.

MLflow 3.17 keeps a run list's columns and chart layout in the browser; the one server-side
place it reads them from is a shared view: the experiment tag ``mlflow.sharedViewState.<key>``
(JSON of the experiment page's state), opened by a link with ``viewStateShareKey=<key>``.
The tracking process writes it with the experiment, and ``make ui`` links to it. Checked in
the browser test: the columns show the parent's verdict and the runs' final test values.
"""

from __future__ import annotations

import json

KEY = "losslab"
TAG = f"mlflow.sharedViewState.{KEY}"
# A sweep's parent carries best.<task> (src/report.py); its runs carry the rest. A column
# whose key no run has stays empty, so one view serves every task.
COLUMNS = (
    "attributes.`Dataset`",
    *(f"tags.`best.{task}`" for task in ("regression", "binary", "multiclass")),
    *(f"tags.`{tag}`" for tag in ("loss", "seed", "outcome")),
    *(f"metrics.`final_test_{name}`" for name in ("mse", "accuracy", "r2", "loss")),
    "metrics.`job_seconds`",
)
CURVES = (("loss", "log"), ("mse", "log"), ("accuracy", "linear"))  # (metric, y scale)


def state() -> str:
    """The view as MLflow's experiment page stores it. Charts other than these the page adds
    itself, in its own sections."""
    section = "learning curves: train and test"
    charts = [
        {
            "uuid": f"losslab-{metric}",
            "type": "LINE",
            "runsCountToCompare": 10,
            "metricSectionId": "losslab-curves",
            "deleted": False,
            "isGenerated": False,
            "displayName": f"{metric}: train and test",
            "metricKey": f"train/{metric}",
            "selectedMetricKeys": [f"train/{metric}", f"test/{metric}"],
            "lineSmoothness": 0,
            "xAxisKey": "step",
            "selectedXAxisMetricKey": "",
            "scaleType": scale,
        }
        for metric, scale in CURVES
    ]
    sections = [
        {
            "uuid": "losslab-curves",
            "name": section,
            "display": True,
            "isReordered": False,
            "deleted": False,
            "isGenerated": False,
        }
    ]
    view = {
        "selectedColumns": list(COLUMNS),
        "compareRunCharts": charts,
        "compareRunSections": sections,
    }
    return json.dumps(view, separators=(",", ":"))
