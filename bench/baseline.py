"""The plain-PyTorch baseline: the study written by hand, as a careful engineer would.

Same data (scikit-learn, scaled and split as the study does), Keras initialisation, SGD with
momentum, batch 32 reshuffled every epoch, the test set scored after every epoch, and a final
evaluation on train and test. No framework, no tracking: the floor losslab is measured against.
Nothing here imports losslab, so the baseline pays only for what it uses (torch and sklearn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import make_circles, make_regression
from sklearn.preprocessing import StandardScaler
from torch import nn

import bench

EPS = 1e-7  # Keras' epsilon, for MSLE's clipping


@dataclass(frozen=True)
class Study:
    """One loss of the study: its data, width, output and epoch count."""

    loss: str
    regression: bool
    hidden: int
    epochs: int


STUDIES = {
    "mse": Study("mse", True, 25, 100),
    "msle": Study("msle", True, 25, 100),
    "mae": Study("mae", True, 25, 100),
    "bce": Study("bce", False, 50, 200),
    "hinge": Study("hinge", False, 50, 200),
}
LOSSES = tuple(STUDIES)


def make_data(study: Study, n_samples: int = 1000) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) as float32 tensors; the first half trains."""
    if study.regression:
        x, y = make_regression(n_samples=n_samples, n_features=20, noise=0.1, random_state=1)
        x = StandardScaler().fit_transform(x)
        y = StandardScaler().fit_transform(y.reshape(-1, 1))
    else:
        x, y = make_circles(n_samples=n_samples, noise=0.1, random_state=1)
        y = (2 * y - 1 if study.loss == "hinge" else y).reshape(-1, 1)
    half = round(n_samples * 0.5)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return as_t(x[:half]), as_t(y[:half]), as_t(x[half:]), as_t(y[half:])


def make_model(n_inputs: int, hidden: int, seed: int) -> nn.Sequential:
    """Dense(ReLU, He-uniform) -> Dense(Glorot-uniform), zero biases, as Keras initialises."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    nn.init.kaiming_uniform_(model[0].weight, nonlinearity="relu")
    nn.init.xavier_uniform_(model[2].weight)
    nn.init.zeros_(model[0].bias)
    nn.init.zeros_(model[2].bias)
    return model


def loss_of(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The study's losses on the raw last layer (BCE in its logits form, hinge on tanh)."""
    if name == "mse":
        return ((out - y) ** 2).mean()
    if name == "mae":
        return (out - y).abs().mean()
    if name == "msle":
        return ((torch.log1p(out.clamp(min=EPS)) - torch.log1p(y.clamp(min=EPS))) ** 2).mean()
    if name == "bce":
        return nn.functional.binary_cross_entropy_with_logits(out, y)
    return (1.0 - y * torch.tanh(out)).clamp(min=0.0).mean()  # hinge


def metric_of(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE for regression, accuracy for classification (sign for hinge, p > 0.5 for BCE)."""
    if STUDIES[name].regression:
        return ((out - y) ** 2).mean()
    return ((out > 0) == (y > 0)).float().mean()


def train(
    name: str,
    seed: int,
    data: tuple[torch.Tensor, ...] | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
) -> dict[str, list[float] | float]:
    """One study run; returns per-epoch train/test loss and metric and the final scores."""
    study = STUDIES[name]
    x, y, x_test, y_test = data if data is not None else make_data(study)
    model = make_model(x.shape[1], study.hidden, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    steps = math.ceil(n / batch_size)
    history: list[torch.Tensor] = []  # per epoch: train loss, train metric, test loss, metric
    for _ in range(epochs or study.epochs):
        order = torch.randperm(n, generator=generator)
        sums = torch.zeros(2)
        for step in range(steps):
            rows = order[step * batch_size : (step + 1) * batch_size]
            xb, yb = x[rows], y[rows]
            out = model(xb)
            loss = loss_of(name, out, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                sums += torch.stack([loss, metric_of(name, out, yb)]) * len(rows)
        with torch.no_grad():
            out = model(x_test)
            test = torch.stack([loss_of(name, out, y_test), metric_of(name, out, y_test)])
        history.append(torch.cat([sums / n, test]))
    with torch.no_grad():
        final_train = metric_of(name, model(x), y).item()
        final_test = metric_of(name, model(x_test), y_test).item()
    curves = torch.stack(history).T.tolist()
    keys = ("train/loss", "train/metric", "test/loss", "test/metric")
    return {**dict(zip(keys, curves)), "final/train": final_train, "final/test": final_test}


def peak_mb() -> float:
    """Peak resident memory of this process in MB. VmHWM, not getrusage's ru_maxrss: Linux
    carries ru_maxrss over from the parent across fork and exec, so a child started by a large
    harness would report the harness's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    """``python -m bench.baseline --losses mse,bce --seeds 0,1``: runs in one process, then one
    JSON line with the wall time since start-up (imports included), fit time and peak memory."""
    import argparse
    import json
    import sys
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rows", type=int, default=1000, help="n_samples; half train")
    parser.add_argument("--epochs", type=int, default=None, help="default: the study's")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--warm-up", action="store_true", help="one untimed epoch first (first-call costs)"
    )
    args = parser.parse_args()
    if args.warm_up:
        train("mse", 0, epochs=1)
    fit = 0.0
    for name in args.losses.split(","):
        data = make_data(STUDIES[name], args.rows)
        for seed in (int(s) for s in args.seeds.split(",")):
            started = time.perf_counter()
            result = train(name, seed, data, args.epochs, args.batch)
            fit += time.perf_counter() - started
            print(
                f"{name} seed={seed}: Train: {result['final/train']:.3f}, "
                f"Test: {result['final/test']:.3f}",
                file=sys.stderr,
            )
    print(json.dumps({"fit_s": fit, "peak_mb": peak_mb()}))


if __name__ == "__main__":
    bench.command(main)
