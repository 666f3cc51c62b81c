"""The pictures say what they should: a log axis where a curve spans decades, no duplicate
panel when the loss is the metric, classes coloured by class with the split as marker shape
and the legend outside the data, regression data against its most informative feature."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_rgba

from src import plots


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
