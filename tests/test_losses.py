"""The study's other losses (squared hinge, multi-class, robust regression), their pairings,
the data options they need (blobs, outliers, target scaling) and the experiment presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from src import config
from src.config import ConfigError, MetricInput, Targets
from src.data import make_split
from src.losses import EPS, cross_entropy, kl_divergence, log_cosh, per_member, squared_hinge
from src.metrics import accuracy, inputs
from tests.conftest import compose_cfg, finished_children, results, runs_of

config.register()


def typed(*overrides: str) -> config.LosslabConfig:
    """The validated config for these overrides, composed as the CLI composes it."""
    return config.validate(compose_cfg(*overrides))


def loss_value(cfg: config.LosslabConfig, output: torch.Tensor, target: torch.Tensor) -> list:
    """Per-member loss through the configured fn, as the module computes it."""
    return per_member(instantiate(cfg.loss.fn)(output, target)).tolist()


# --- values by hand -------------------------------------------------------------------------


def test_squared_hinge_with_signed_labels() -> None:
    out = torch.tensor([[[0.8], [-0.2], [0.3]], [[2.0], [1.0], [-1.0]]])  # two members
    target = torch.tensor([[1.0], [-1.0], [-1.0]]).expand(2, 3, 1)
    # member 0: 0.2^2, 0.8^2, 1.3^2; member 1: 0, 2^2, 0
    expected = [(0.04 + 0.64 + 1.69) / 3, 4 / 3]
    assert per_member(squared_hinge(out, target)).tolist() == pytest.approx(expected)


def test_focal_loss_by_hand_and_its_settings_refused_at_start_up() -> None:
    """(1 - p_t) ** gamma times the cross-entropy, through conf/loss/focal.yaml: gamma=0 is
    BCE, and alpha weighs the classes; a bad gamma or alpha is one line before any run."""
    logits = torch.tensor([[[2.0], [-1.0], [0.5]]])  # one member, three rows
    target = torch.tensor([[[1.0], [1.0], [0.0]]])
    p = torch.sigmoid(logits).flatten().tolist()
    p_true = [p[0], p[1], 1 - p[2]]
    ce = [-math.log(q) for q in p_true]
    focal = [(1 - q) ** 2 * c for q, c in zip(p_true, ce)]
    assert loss_value(typed("loss=focal"), logits, target) == pytest.approx([sum(focal) / 3])
    bce = typed("loss=bce")
    assert loss_value(typed("loss=focal", "loss.fn.gamma=0"), logits, target) == pytest.approx(
        loss_value(bce, logits, target)
    )
    weighted = [0.75 * focal[0], 0.75 * focal[1], 0.25 * focal[2]]
    alpha = typed("loss=focal", "loss.fn.alpha=0.75")
    assert loss_value(alpha, logits, target) == pytest.approx([sum(weighted) / 3])
    sure = torch.tensor([[[30.0]]], requires_grad=True)  # p_t rounds to 1: no NaN gradient
    half = instantiate(typed("loss=focal", "loss.fn.gamma=0.5").loss.fn)
    per_member(half(sure, target[:, :1])).sum().backward()
    assert torch.isfinite(sure.grad).all()
    for bad, said in [("gamma=-1", "gamma=-1 must be"), ("alpha=1.5", "alpha=1.5 must be")]:
        with pytest.raises(Exception, match=said):
            instantiate(typed("loss=focal", f"loss.fn.{bad}").loss.fn)


LOGITS = torch.tensor(
    [
        [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]],  # member 0, two samples, three classes
        [[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]],  # member 1
    ]
)
LABELS = torch.tensor([[0, 1], [1, 2]])


def _neg_log_softmax(row: list[float], label: int) -> float:
    return -(row[label] - math.log(sum(math.exp(v) for v in row)))


def test_cross_entropy_one_hot_and_integer_labels_agree_with_hand_values() -> None:
    expected = [
        np.mean([_neg_log_softmax(LOGITS[k, b].tolist(), int(LABELS[k, b])) for b in range(2)])
        for k in range(2)
    ]
    one_hot = torch.nn.functional.one_hot(LABELS, 3).float()
    assert cross_entropy(LOGITS, one_hot).shape == (2, 2)  # per sample: summed over classes
    assert per_member(cross_entropy(LOGITS, one_hot)).tolist() == pytest.approx(expected)
    assert per_member(cross_entropy(LOGITS, LABELS)).tolist() == pytest.approx(expected)


def test_kl_divergence_clips_both_sides_like_keras() -> None:
    probs = torch.tensor([[[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]]])  # one member, two samples
    one_hot = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    # zeros become eps on both sides: eps * log(eps / p) per empty class, 0 when both are eps
    first = math.log(1 / 0.7) + EPS * math.log(EPS / 0.3)
    second = math.log(1 / EPS) + EPS * math.log(EPS / 0.4) + EPS * math.log(EPS / 0.6)
    assert kl_divergence(probs, one_hot)[0].tolist() == pytest.approx([first, second], rel=1e-5)
    # on one-hot targets it is cross-entropy up to the eps terms
    ce = cross_entropy(LOGITS, LABELS)
    kl = kl_divergence(torch.softmax(LOGITS, -1), torch.nn.functional.one_hot(LABELS, 3).float())
    assert torch.allclose(kl, ce, atol=1e-5)


def test_kl_divergence_gives_no_gradient_below_eps() -> None:
    probs = torch.tensor([[[1e-9, 1.0]]], requires_grad=True)
    kl_divergence(probs, torch.tensor([[[1.0, 0.0]]])).sum().backward()
    assert probs.grad[0, 0, 0].item() == 0.0


def test_huber_both_branches_and_a_configured_delta() -> None:
    out = torch.tensor([[[0.5], [3.0]], [[-2.0], [0.0]]])
    target = torch.zeros(2, 2, 1)
    # delta 1: 0.5 * 0.5^2 = 0.125 (quadratic), 1 * (3 - 0.5) = 2.5 (linear); 1.5 and 0
    assert loss_value(typed("loss=huber"), out, target) == pytest.approx([1.3125, 0.75])
    # delta 2: 0.125, 2 * (3 - 1) = 4; 0.5 * 2^2 = 2 (quadratic at the edge), 0
    assert loss_value(typed("loss=huber", "loss.fn.delta=2"), out, target) == pytest.approx(
        [2.0625, 1.0]
    )


def test_log_cosh_matches_log_of_cosh_and_stays_finite() -> None:
    errors = [0.0, 0.3, -1.5, 4.0, 60.0, -200.0]
    out = torch.tensor(errors).reshape(1, -1, 1)
    values = log_cosh(out, torch.zeros_like(out)).flatten().tolist()
    expected = [math.log(math.cosh(e)) if abs(e) < 50 else abs(e) - math.log(2) for e in errors]
    assert values == pytest.approx(expected, abs=1e-5)


# --- pairings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "dataset", "output", "targets", "epochs", "hidden"),
    [
        ("squared_hinge", "circles", "tanh", "signed", 200, [50]),
        ("focal", "circles", "sigmoid", "binary", 200, [50]),
        ("cce", "blobs", "softmax", "onehot", 100, [50]),
        ("sparse_cce", "blobs", "softmax", "index", 100, [50]),
        ("kld", "blobs", "softmax", "onehot", 100, [50]),
        ("huber", "regression", "identity", "real", 100, [25]),
        ("log_cosh", "regression", "identity", "real", 100, [25]),
    ],
)
def test_each_new_loss_selects_its_dataset_output_and_encoding(
    loss: str, dataset: str, output: str, targets: str, epochs: int, hidden: list[int]
) -> None:
    cfg = typed(f"loss={loss}")
    assert cfg.dataset.name == dataset and cfg.loss.task.value == cfg.dataset.task.value
    assert (cfg.loss.output.value, cfg.loss.targets.value) == (output, targets)
    assert cfg.trainer.max_epochs == epochs and cfg.model.hidden_sizes == hidden


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("loss=cce", "dataset=circles"), "loss 'cce' is a multiclass loss but dataset 'circles'"),
        (("loss=kld", "dataset=regression_outliers"), "pick one of: blobs"),
        (("loss=huber", "dataset=blobs"), "pick one of: diabetes, regression, regression_outliers"),
        (("loss=squared_hinge", "loss.output=sigmoid"), "needs an output in ['tanh', 'identity']"),
        (("loss=sparse_cce", "loss.output=sigmoid"), "needs an output in ['softmax']"),
        (("loss=cce", "loss.targets=signed"), "cannot use targets=signed"),
    ],
)
def test_pairing_rejects_mismatches(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        typed(*overrides)
    assert message in str(caught.value)


# --- data -----------------------------------------------------------------------------------


def test_blobs_encodings_agree_and_set_the_output_width() -> None:
    cfg = typed("loss=cce")
    onehot = make_split(cfg.dataset, Targets.onehot)
    index = make_split(cfg.dataset, Targets.index)
    assert onehot.x_train.shape == index.x_test.shape == (500, 2)
    assert onehot.y_train.shape == (500, 3) and onehot.y_train.dtype == np.float32
    assert index.y_train.shape == (500,) and index.y_train.dtype == np.int64
    assert set(np.unique(index.y_train)) == {0, 1, 2}
    assert np.array_equal(onehot.y_train.sum(1), np.ones(500))
    assert np.array_equal(onehot.y_test.argmax(1), index.y_test)
    assert onehot.n_outputs == index.n_outputs == 3
    # the accuracy of each encoding reads the same labels
    pred = torch.from_numpy(onehot.y_test)[None]
    for split, targets in ((onehot, Targets.onehot), (index, Targets.index)):
        target = torch.from_numpy(split.y_test)[None]
        assert accuracy(*inputs(MetricInput.label, pred, target, targets)).item() == 1.0
    # two classes still get one output per class under softmax
    two = typed("loss=sparse_cce", "dataset.generator.centers=2")
    assert make_split(two.dataset, Targets.index).n_outputs == 2


def test_target_scaling_options() -> None:
    positive = make_split(typed("loss=msle", "dataset=regression_positive").dataset, Targets.real)
    both_y = np.concatenate([positive.y_train, positive.y_test])
    assert both_y.min() == pytest.approx(0.0, abs=1e-6) and both_y.max() == pytest.approx(1.0)
    assert abs(np.concatenate([positive.x_train, positive.x_test]).mean()) < 1e-5  # x standard
    raw = make_split(typed("loss=mse", "dataset.scale_y=none").dataset, Targets.real)
    standard = make_split(typed("loss=mse").dataset, Targets.real)
    assert raw.y_train.std() > 10 * standard.y_train.std()  # make_regression's own scale
    ratio = (raw.y_train - raw.y_train.mean()) / (positive.y_train - positive.y_train.mean())
    assert np.allclose(ratio, ratio[0], rtol=1e-3)  # min-max is affine in the raw targets


@pytest.mark.parametrize("in_test", [False, True])
def test_outliers_land_in_train_only_unless_asked(in_test: bool) -> None:
    clean = make_split(typed("loss=mse").dataset, Targets.real)
    dirty = make_split(
        typed(
            "loss=mse", "dataset=regression_outliers", f"dataset.outliers.in_test={in_test}"
        ).dataset,
        Targets.real,
    )
    assert np.array_equal(dirty.x_train, clean.x_train)
    train_shift = (dirty.y_train - clean.y_train).ravel()
    test_shift = (dirty.y_test - clean.y_test).ravel()
    hit_train, hit_test = np.flatnonzero(train_shift), np.flatnonzero(test_shift)
    assert np.allclose(np.abs(train_shift[hit_train]), 10.0, atol=1e-4)
    if in_test:  # 10% of all 1,000 rows, spread over both halves
        assert len(hit_train) + len(hit_test) == 100 and len(hit_test) > 0
        assert np.allclose(np.abs(test_shift[hit_test]), 10.0, atol=1e-4)
    else:  # 10% of the 500 train rows; the test set is scored against the true function
        assert len(hit_train) == 50 and len(hit_test) == 0
    assert {-1.0, 1.0} == set(np.sign(train_shift[hit_train]))


# --- presets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("experiment", "losses", "dataset"),
    [
        ("regression", "mse,msle,mae,huber,log_cosh", None),
        ("binary", "bce,focal,hinge,squared_hinge", None),
        ("multiclass", "cce,sparse_cce,kld", None),
        ("outliers", "mse,mae,huber,log_cosh", "regression_outliers"),
        ("msle_positive", "msle,mse", "regression_positive"),
    ],
)
def test_each_preset_sweeps_its_section(experiment: str, losses: str, dataset: str | None) -> None:
    cfg = compose_cfg(f"experiment={experiment}", hydra_node=True)
    params = dict(cfg.hydra.sweeper.params)
    assert params.pop("loss") == losses and params.pop("dataset", None) == dataset
    assert not params and cfg.members == 5


def _one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("losslab: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def test_preset_sweeps_are_validated_before_any_run(run_cli, tmp_path) -> None:
    # the preset's losses are all multiclass; circles is binary: every job fails validation
    bad = run_cli("-m", "experiment=multiclass", "dataset=circles")
    assert bad.returncode == 1
    assert "loss 'cce' is a multiclass loss but dataset 'circles'" in _one_line_error(bad)
    # a sweep over presets would silently drop each preset's own sweep (Hydra 1.3)
    every = run_cli("-m", "experiment=glob(*)")
    assert every.returncode == 1 and "make study" in _one_line_error(every)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_new_losses_train_through_the_cli(run_cli, client) -> None:
    result = run_cli(
        "-m",
        "loss=squared_hinge,cce,sparse_cce",  # kld, log_cosh: same paths as cce, huber
        "trainer.max_epochs=2",
        "logger.log_model=false",
    )
    assert result.returncode == 0, result.stderr
    children = finished_children(client)
    assert {loss: r.data.tags["dataset"] for loss, r in children.items()} == {
        "squared_hinge": "circles",
        "cce": "blobs",
        "sparse_cce": "blobs",
    }
    by_loss = {loss: results(r) for loss, r in children.items()}
    assert "final_test_rounded_accuracy" in by_loss["squared_hinge"]
    # one-hot and integer labels are the same loss on the same data: the same numbers
    assert by_loss["cce"] == by_loss["sparse_cce"]


@pytest.mark.slow
def test_outlier_preset_runs_its_dataset_with_batched_seeds(run_cli, client) -> None:
    result = run_cli(
        "-m",
        "experiment=outliers",
        "loss=huber",
        "members=2",
        "trainer.max_epochs=2",
        "logger.log_model=false",
    )
    assert result.returncode == 0, result.stderr
    children = [r for r in runs_of(client) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["seed"] for r in children) == ["0", "1"]
    for run in children:
        assert (run.data.tags["loss"], run.data.tags["dataset"]) == ("huber", "regression_outliers")
        assert run.info.status == "FINISHED"
        assert run.data.params["dataset.outliers.fraction"] == "0.1"
