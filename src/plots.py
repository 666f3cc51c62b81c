"""Pictures a person would rather look at than read: learning curves and the data.

Drawn in the tracking process (src/tracking.py), which never imports Lightning: so this module
imports matplotlib and numpy, not src.data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


class LearningCurves:
    """The study's figure: loss on top, the task's metric below, train vs test per epoch.

    Built once per metric and redrawn with each run's data: building the axes costs as much
    as drawing them, and a sweep draws one per run. Save the figure before the next call."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[Figure, list[Axes], dict[str, Line2D]]] = {}

    def __call__(self, history: Sequence[Mapping[str, float]], metric: str, title: str) -> Figure:
        if metric not in self._built:
            self._built[metric] = self._build(metric)
        fig, axes, lines = self._built[metric]
        epochs = np.arange(1, len(history) + 1)
        for key, line in lines.items():
            line.set_data(epochs, [row[key] for row in history])
        for ax in axes:
            ax.relim()
            ax.autoscale_view()
        fig.suptitle(title)
        return fig

    @staticmethod
    def _build(metric: str) -> tuple[Figure, list[Axes], dict[str, Line2D]]:
        # Fixed margins: constrained layout costs a third of the rendering time.
        fig = Figure(figsize=(7, 6))
        fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.08, hspace=0.08)
        axes = list(fig.subplots(2, 1, sharex=True))
        lines = {}
        for ax, name in zip(axes, ("loss", metric)):
            for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
                (lines[f"{split}/{name}"],) = ax.plot([], [], color=color, label=split)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        axes[-1].set_xlabel("epoch")
        return fig, axes, lines


learning_curves = LearningCurves()


def dataset(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, title: str
) -> Figure:
    """Two-feature data as a scatter coloured by class (train dots, test crosses); wider data
    as its first principal component against the target, with the targets' histogram. The
    targets come one value per row (``data.labels``)."""
    fig = Figure(figsize=(10, 4.5))
    fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.12, wspace=0.2)
    if x_train.shape[1] == 2:
        ax = fig.subplots()
        for label in np.unique(np.concatenate([y_train, y_test])):
            for x, y, marker, name in (
                (x_train, y_train, "o", "train"),
                (x_test, y_test, "x", "test"),
            ):
                rows = y == label
                ax.scatter(*x[rows].T, s=10, marker=marker, label=f"{name} class {label:g}")
        ax.set_xlabel("x0")
        ax.set_ylabel("x1")
        ax.set_aspect("equal")
        ax.legend(fontsize="small", markerscale=1.5)
    else:
        scatter, hist = fig.subplots(1, 2)
        x_all = np.concatenate([x_train, x_test])
        centred = x_all - x_all.mean(axis=0)
        component = np.linalg.svd(centred, full_matrices=False)[2][0]
        for x, y, name in ((x_train, y_train, "train"), (x_test, y_test, "test")):
            scatter.scatter((x - x_all.mean(axis=0)) @ component, y, s=6, alpha=0.6, label=name)
            hist.hist(y, bins=40, alpha=0.6, label=name)
        scatter.set_xlabel("first principal component of X")
        scatter.set_ylabel("target")
        hist.set_xlabel("target")
        scatter.legend()
        hist.legend()
    fig.suptitle(title)
    return fig


def _by_task(results: Sequence) -> dict[str, list]:
    tasks: dict[str, list] = {}
    for r in results:
        tasks.setdefault(r.task, []).append(r)
    return tasks


def sweep_curves(results: Sequence, curves: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Per task, the train and test metric per epoch of every group (loss): the median over
    seeds as a line, the min-max band over seeds shaded. ``curves[run_id][split]``."""
    tasks = _by_task(results)
    fig = Figure(figsize=(11, 3.8 * max(len(tasks), 1)), layout="constrained")
    axes = fig.subplots(max(len(tasks), 1), 2, squeeze=False)
    for row, (task, members) in zip(axes, tasks.items()):
        metric = members[0].curve
        for ax, split in zip(row, ("train", "test")):
            for group in dict.fromkeys(r.group for r in members):
                series = [curves[r.run_id][split] for r in members if r.group == group]
                length = min(len(s) for s in series)
                if length == 0:
                    continue
                values = np.array([s[:length] for s in series])
                epochs = np.arange(1, length + 1)
                (line,) = ax.plot(
                    epochs, np.median(values, axis=0), label=f"{group} (n={len(series)})"
                )
                ax.fill_between(
                    epochs,
                    values.min(axis=0),
                    values.max(axis=0),
                    color=line.get_color(),
                    alpha=0.2,
                )
            if metric == "mse":
                ax.set_yscale("log")
            ax.set_title(f"{task}: {split} {metric}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle("Learning curves: median over seeds, band = min-max (ok runs)")
    return fig


def final_spread(results: Sequence) -> Figure:
    """Per task, a box of the final test metric per group with every ok run as a dot; runs
    left out of the statistics (collapsed, diverged) are drawn as red crosses."""
    tasks = _by_task(results)
    fig = Figure(
        figsize=(5 + 1.2 * len(results) ** 0.5, 4 * max(len(tasks), 1)), layout="constrained"
    )
    axes = fig.subplots(max(len(tasks), 1), 1, squeeze=False)[:, 0]
    jitter = np.random.default_rng(0)
    for ax, (task, members) in zip(axes, tasks.items()):
        groups = list(dict.fromkeys(r.group for r in members))
        ok = [[r.test for r in members if r.group == g and r.outcome == "ok"] for g in groups]
        ax.boxplot([v if v else [np.nan] for v in ok], tick_labels=groups, showfliers=False)
        for i, g in enumerate(groups, start=1):
            for r in members:
                if r.group != g or not np.isfinite(r.test):
                    continue
                x = i + jitter.uniform(-0.12, 0.12)
                if r.outcome == "ok":
                    ax.plot(x, r.test, "o", color="tab:blue", alpha=0.7)
                else:
                    ax.plot(x, r.test, "x", color="tab:red", label=r.outcome)
        handles, labels = ax.get_legend_handles_labels()
        if labels:
            unique = dict(zip(labels, handles))
            ax.legend(unique.values(), [f"{k} (not in the box)" for k in unique], fontsize="small")
        if members[0].metric == "mse":
            ax.set_yscale("log")
        ax.set_ylabel(f"final test {members[0].metric}")
        ax.set_title(task)
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Final test metric per loss over seeds")
    return fig
