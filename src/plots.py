"""Pictures a person would rather look at than read: learning curves and the data.

Drawn in the tracking process (src/tracking.py), which never imports Lightning: so this module
imports matplotlib and numpy, not src.data."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter


class LearningCurves:
    """The study's figure: the loss on top, the task's metric below, train vs test per epoch;
    one panel when the loss is the metric (the same numbers twice told nothing). A panel
    whose values span more than a decade (MSE falls 1000-fold in 20 epochs) gets a log axis.

    One figure per job: a job of K seeds (members) draws each seed's curves, thinner, in the
    same two colours, so every seed's run shows where it lies among its siblings. Drawing it
    once instead of once per seed is what lets a 50-run sweep's figures keep pace with its
    training (a figure takes 50-90 ms).

    Built once per layout and redrawn with each job's data: building the axes costs as much
    as drawing them. Save the figure before the next call."""

    def __init__(self) -> None:
        self._built: dict[tuple, tuple[Figure, list[Axes], dict[str, list[Line2D]]]] = {}

    def __call__(
        self, history: Sequence[Mapping[str, Sequence[float]]], loss: str, metric: str, title: str
    ) -> Figure:
        """``history[epoch][key]``: the K members' values of ``train/loss``, ``test/<metric>``..."""
        members = np.size(history[0]["train/loss"]) if history else 1
        keys = [f"{split}/{name}" for name in ("loss", metric) for split in SPLITS]
        curves = {key: _member_axis(history, key, members) for key in keys}
        panels = ("loss",) if _same(curves, metric) else ("loss", metric)
        layout = (loss, members, *panels)
        if layout not in self._built:
            self._built[layout] = self._build(loss, panels, members)
        fig, axes, lines = self._built[layout]
        epochs = np.arange(1, len(history) + 1)
        for key, group in lines.items():
            for line, values in zip(group, curves[key].T):
                line.set_data(epochs, values)
        for ax, name in zip(axes, panels):
            values = np.concatenate([curves[f"{split}/{name}"].ravel() for split in SPLITS])
            if _spans_decades(values):
                _log_y(ax)
            else:
                ax.set_yscale("linear")
            ax.relim()
            ax.autoscale_view()
        fig.suptitle(f"{title}: " + " and ".join(axis.get_ylabel() for axis in axes))
        return fig

    @staticmethod
    def _build(
        loss: str, panels: tuple[str, ...], members: int
    ) -> tuple[Figure, list[Axes], dict[str, list[Line2D]]]:
        # Fixed margins: constrained layout costs a third of the rendering time.
        fig = Figure(figsize=(7, 3.2 + 2.8 * len(panels)))
        fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.08, hspace=0.08)
        axes = list(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
        style = {} if members == 1 else {"linewidth": 0.9, "alpha": 0.6}
        lines = {}
        for ax, name in zip(axes, panels):
            for split, color in zip(SPLITS, ("tab:blue", "tab:orange")):
                label = split if members == 1 else f"{split} ({members} seeds)"
                lines[f"{split}/{name}"] = [
                    ax.plot([], [], color=color, label=label if k == 0 else None, **style)[0]
                    for k in range(members)
                ]
            ax.set_ylabel(f"loss ({loss})" if name == "loss" else name)
            ax.grid(alpha=0.3, which="both")
            ax.legend()
        axes[-1].set_xlabel("epoch")
        return fig, axes, lines


SPLITS = ("train", "test")


def _member_axis(history: Sequence[Mapping], key: str, members: int) -> np.ndarray:
    """(epochs, members) values of ``key``; a value missing from an epoch is NaN (not drawn)."""
    rows = [np.broadcast_to(np.asarray(row.get(key, np.nan), float), members) for row in history]
    return np.array(rows, dtype=float).reshape(len(history), members)


def _same(curves: Mapping[str, np.ndarray], metric: str) -> bool:
    """Whether the metric's curves are the loss's own (the mse loss scored by mse)."""
    loss = np.concatenate([curves[f"{split}/loss"] for split in SPLITS])
    scored = np.concatenate([curves[f"{split}/{metric}"] for split in SPLITS])
    return bool(np.allclose(loss, scored, equal_nan=True))


def _log_y(ax: Axes) -> None:
    """A log y axis labelled in plain text (1e-03): matplotlib's default labels are mathtext
    (10 to the power), whose parsing took a quarter of a learning-curve figure's 70-90 ms."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))


def _spans_decades(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return finite.size > 1 and finite.min() > 0 and finite.max() / finite.min() > 10


learning_curves = LearningCurves()


def dataset(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    title: str,
    classes: bool,
) -> Figure:
    """The data as a person would look at it, one value per target row (``data.labels``):
    classes as a scatter coloured by class with train/test as the marker's shape (the two
    features, or the first two principal components of wider data); a regression target
    against its most informative feature (the largest |correlation|), beside the targets'
    histogram. Legends sit outside the data."""
    fig = Figure(figsize=(8, 6) if classes else (11, 4.8))
    fig.subplots_adjust(left=0.1, right=0.8, top=0.9, bottom=0.1, wspace=0.25)
    splits = ((x_train, y_train, "o", "train"), (x_test, y_test, "x", "test"))
    if classes:
        ax = fig.subplots()
        wide = x_train.shape[1] > 2
        project = _principal(np.concatenate([x_train, x_test]), 2) if wide else (lambda x: x)
        labels = np.unique(np.concatenate([y_train, y_test]))
        colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
        for x, y, marker, _ in splits:
            xy = project(x)
            ax.scatter(*xy.T, s=12, marker=marker, c=[colours[v] for v in y], linewidths=0.8)
        ax.set_xlabel("principal component 1" if wide else "x0")
        ax.set_ylabel("principal component 2" if wide else "x1")
        if not wide:
            ax.set_aspect("equal")
        handles = [_key("o", colours[v], f"class {v:g}") for v in labels]
        handles += [_key(m, "0.3", name) for _, _, m, name in splits]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    else:
        scatter, hist = fig.subplots(1, 2)
        x_all, y_all = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
        best = _most_informative(x_all, y_all)
        for (x, y, marker, name), colour in zip(splits, ("tab:blue", "tab:orange")):
            scatter.scatter(x[:, best], y, s=10, marker=marker, color=colour, label=name)
            hist.hist(y, bins=40, alpha=0.6, color=colour, label=name)
        r = np.corrcoef(x_all[:, best], y_all)[0, 1]
        scatter.set_xlabel(f"feature {best} (most informative, r = {r:.2f})")
        scatter.set_ylabel("target")
        hist.set_xlabel("target")
        hist.set_ylabel("rows")
        hist.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title)
    return fig


def _key(marker: str, colour: str, label: str) -> Line2D:
    return Line2D([], [], marker=marker, color=colour, linestyle="", label=label)


def _principal(x: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """Projection onto the first ``k`` principal components of ``x``."""
    mean = x.mean(axis=0)
    components = np.linalg.svd(x - mean, full_matrices=False)[2][:k]
    return lambda rows: (rows - mean) @ components.T


def _most_informative(x: np.ndarray, y: np.ndarray) -> int:
    """The column most correlated with the target (constant columns count as 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = [np.corrcoef(column, y)[0, 1] for column in x.T]
    return int(np.nanargmax(np.abs(np.nan_to_num(r))))


def _by_task(results: Sequence) -> dict[str, list]:
    tasks: dict[str, list] = {}
    for r in results:
        tasks.setdefault(r.task, []).append(r)
    return tasks


def _margins(
    fig: Figure, rows: int, cols: int, left: float, bottom: float, gap: float = 0.75
) -> None:
    """Fixed margins in inches (the suptitle's 0.65 on top, 0.25 on the right, ``gap``
    between axes) instead of a layout engine: the report's two figures are drawn at the end
    of every sweep, and constrained layout doubled their time (0.7-0.9 s against 0.4 s)."""
    width, height = fig.get_size_inches()
    top, right = 0.65, 0.25
    axis_height = (height - top - bottom - (rows - 1) * gap) / rows
    axis_width = (width - left - right - (cols - 1) * gap) / cols
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        hspace=gap / axis_height,
        wspace=gap / axis_width,
    )


def sweep_curves(results: Sequence, curves: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Per task, the train and test metric per epoch of every group (loss): the median over
    seeds as a line, the min-max band over seeds shaded. ``curves[run_id][split]``."""
    tasks = _by_task(results)
    rows = max(len(tasks), 1)
    fig = Figure(figsize=(11, 0.3 + 3.8 * rows))
    axes = fig.subplots(rows, 2, squeeze=False)
    _margins(fig, rows, 2, left=0.7, bottom=0.55)
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
                _log_y(ax)
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
    rows = max(len(tasks), 1)
    fig = Figure(figsize=(5 + 1.2 * len(results) ** 0.5, 0.3 + 4 * rows))
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    _margins(fig, rows, 1, left=0.95, bottom=0.7, gap=0.95)
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
            _log_y(ax)
        ax.set_ylabel(f"final test {members[0].metric}")
        ax.set_title(task)
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Final test metric per loss over seeds")
    return fig
