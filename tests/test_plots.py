"""The pictures say what they should: a log axis where a curve spans decades, no duplicate
panel when the loss is the metric, classes coloured by class with the split as marker shape
and the legend outside the data, regression data against its most informative feature."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from src import plots, render
from tests.conftest import hang


def history(epochs: int, loss: np.ndarray, metric: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for e in range(epochs):
        row = {"train/loss": float(loss[e]), "test/loss": float(loss[e] * 1.1)}
        for name, values in metric.items():
            row[f"train/{name}"] = float(values[e])
            row[f"test/{name}"] = float(values[e] * 1.1)
        rows.append(row)
    return rows


def test_loss_that_is_the_metric_gets_one_panel_on_a_log_axis() -> None:
    falling = np.geomspace(1.0, 1e-4, 50)
    figure = plots.learning_curves(history(50, falling, {"mse": falling}), "mse", "mse", "run")
    [axis] = figure.axes
    assert axis.get_yscale() == "log"
    assert axis.get_ylabel() == "loss (mse)"
    assert figure._suptitle.get_text() == "run: loss (mse)"


def test_other_metric_gets_its_own_linear_panel() -> None:
    loss = np.linspace(0.8, 0.4, 30)
    accuracy = np.linspace(0.5, 0.85, 30)
    figure = plots.learning_curves(
        history(30, loss, {"accuracy": accuracy}), "bce", "accuracy", "r"
    )
    assert [a.get_ylabel() for a in figure.axes] == ["loss (bce)", "accuracy"]
    assert [a.get_yscale() for a in figure.axes] == ["linear", "linear"]
    train = figure.axes[1].get_lines()[0]
    assert np.allclose(train.get_ydata(), accuracy)


def test_a_job_of_seeds_draws_every_seed_in_one_figure_with_plain_log_labels() -> None:
    epochs = 40
    falling = [np.geomspace(1.0, 10.0 ** -(2 + k), epochs) for k in range(3)]  # 3 members
    rows = [
        {
            "train/loss": [float(f[e]) for f in falling],
            "test/loss": [float(f[e] * 1.1) for f in falling],
            "train/accuracy": [0.5 + 0.01 * e] * 3,
            "test/accuracy": [0.5 + 0.01 * e + 0.001 * k for k in range(3)],
        }
        for e in range(epochs)
    ]
    figure = plots.learning_curves(rows, "bce", "accuracy", "bce seeds=0-2")
    loss_axis, metric_axis = figure.axes
    assert [t.get_text() for t in loss_axis.get_legend().get_texts()] == [
        "train (3 seeds)",
        "test (3 seeds)",
    ]
    lines = loss_axis.get_lines()
    assert len(lines) == 6 and len(metric_axis.get_lines()) == 6
    for k in range(3):  # each seed's own values, train then test
        assert np.allclose(lines[k].get_ydata(), falling[k])
        assert np.allclose(lines[3 + k].get_ydata(), falling[k] * 1.1)
    assert np.allclose(metric_axis.get_lines()[5].get_ydata(), 0.502 + 0.01 * np.arange(epochs))
    assert loss_axis.get_yscale() == "log" and metric_axis.get_yscale() == "linear"
    figure.canvas.draw()  # plain-text labels on the log axis (mathtext's are slow to parse)
    labels = [t.get_text() for t in loss_axis.get_yticklabels() if t.get_text()]
    assert labels and not any("$" in label for label in labels), labels
    assert figure._suptitle.get_text() == "bce seeds=0-2: loss (bce) and accuracy"


def test_classes_are_coloured_by_class_and_the_legend_sits_outside() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] > 0).astype(float)
    figure = plots.dataset(x[:100], y[:100], x[100:], y[100:], "circles data", classes=True)
    [axis] = figure.axes
    colours = {"C0": to_rgba("C0"), "C1": to_rgba("C1")}
    for points, labels in zip(axis.collections, (y[:100], y[100:])):
        faces = points.get_facecolors() if len(points.get_facecolors()) else points.get_edgecolors()
        expected = [colours[f"C{int(v)}"] for v in labels]
        assert np.allclose(faces, expected)
    legend = axis.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["class 0", "class 1", "train", "test"]
    figure.canvas.draw()
    assert legend.get_window_extent().x0 >= axis.get_window_extent().x1


def test_regression_data_is_drawn_against_its_most_informative_feature() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5))
    y = 3 * x[:, 3] + rng.normal(size=300)
    figure = plots.dataset(x[:150], y[:150], x[150:], y[150:], "regression data", classes=False)
    scatter = figure.axes[0]
    assert scatter.get_xlabel().startswith("feature 3 (most informative")
    assert np.allclose(scatter.collections[0].get_offsets()[:, 0], x[:150, 3])


class _Unsaveable:
    """A figure whose drawing fails, as a broken font or a full disk would make it."""

    def savefig(self, path, **options) -> None:
        raise OSError("No space left on device")


def test_a_figure_saved_by_a_child_is_the_file_the_parent_would_write(tmp_path) -> None:
    """src/render.py: each figure is saved by a forked child (at most MAX_CHILDREN at once),
    byte for byte the file this process writes; one that cannot be drawn says why when
    waited for, and the others are unaffected."""
    figure = plots.learning_curves(
        history(20, np.geomspace(1.0, 1e-2, 20), {"accuracy": np.linspace(0.5, 0.9, 20)}),
        "bce",
        "accuracy",
        "bce seed=0",
    )
    figure.savefig(tmp_path / "here.png")
    savings = [render.Saving(figure, tmp_path / f"child{i}.png") for i in range(3)]
    failed = render.Saving(_Unsaveable(), tmp_path / "broken.png")
    assert len(render._running) <= render.MAX_CHILDREN
    for i, saving in enumerate(savings):
        assert saving.wait() == tmp_path / f"child{i}.png"
        assert saving.path.read_bytes() == (tmp_path / "here.png").read_bytes()
    with pytest.raises(RuntimeError, match=r"could not draw broken\.png: OSError: No space left"):
        failed.wait()
    assert render._running == [] and not (tmp_path / "broken.png").exists()


def test_a_figure_stopped_by_ctrl_c_is_an_error_and_its_process_ends_there(tmp_path) -> None:
    """The child that saves a figure is a copy of this process: Ctrl-C must end it, not send it
    back into this process's code (here: the rest of the test session)."""

    class Slow:
        def savefig(self, path: Path, **options: object) -> None:
            (tmp_path / "pid").write_text(str(os.getpid()))
            time.sleep(60)

    saving = render.Saving(Slow(), tmp_path / "slow.png")
    deadline = time.monotonic() + hang(30)
    while not (tmp_path / "pid").exists():
        assert time.monotonic() < deadline, "the figure's process never started to save"
        time.sleep(0.01)
    child = int((tmp_path / "pid").read_text())
    assert child != os.getpid()
    os.kill(child, signal.SIGINT)
    sent = time.monotonic()
    with pytest.raises(RuntimeError, match=r"could not draw slow\.png: its process ended"):
        saving.wait()
    assert time.monotonic() - sent < 30  # ended by the signal, not after its minute
    assert not (tmp_path / "slow.png").exists()
