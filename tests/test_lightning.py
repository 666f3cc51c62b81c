"""Lightning's own machinery on the fast epoch step: steps, callback metrics, the validation
phase, ModelCheckpoint, EarlyStopping, schedulers, precision, per-member clipping, dropout and
normalization with exact members, and Trainer arguments refused before any run exists."""

from __future__ import annotations

import signal
import time

import pytest
import torch

from src.optim import member_clipper
from tests.conftest import hang, one_error_line, runs_of
from tests.test_faults import history, start_cli, wait_for

QUIET = ("logger.log_model=false", "trainer.enable_progress_bar=false")
TOLERANCE = 1e-5


def _curve(client, run_id: str, key: str) -> list[float]:
    return [value for _, value in history(client, run_id, key)]


def test_clipping_is_per_member_one_huge_gradient_changes_no_other_member() -> None:
    grads = [torch.tensor([[3.0, 4.0], [300.0, 400.0]]), torch.tensor([[0.0], [0.0]])]
    member_clipper(10.0, "norm")(grads)  # member 0 has norm 5 (kept), member 1 norm 500
    assert grads[0][0].tolist() == [3.0, 4.0]
    assert grads[0][1].norm().item() == pytest.approx(10.0, rel=1e-5)
    single = [torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0]])]  # one member: torch's clip
    reference = [g.clone().requires_grad_() for g in single]
    for r in reference:
        r.grad = r.detach().clone() * 100
    torch.nn.utils.clip_grad_norm_(reference, 10.0)
    ours = [g * 100 for g in single]
    member_clipper(10.0, "norm")(ours)
    assert all(torch.allclose(a, r.grad) for a, r in zip(ours, reference))
    values = [torch.tensor([[0.5, -7.0], [9.0, 0.25]])]
    member_clipper(1.0, "value")(values)
    assert values[0].tolist() == [[0.5, -1.0], [1.0, 0.25]]


@pytest.mark.slow
def test_dropout_norm_and_clipping_keep_members_equal_to_separate_runs(run_cli, client) -> None:
    """Every random draw of a member (init, shuffle, dropout) is its own: members=3 with dropout,
    batch norm and a clip that bites equals three separate runs."""
    model = ("model.dropout=0.3", "model.norm=batch", "trainer.gradient_clip_val=0.05")
    common = ("loss=mse", "trainer.max_epochs=3", *QUIET, *model)
    batched = run_cli("-m", "seed=0,1,2", *common)
    assert batched.returncode == 0, batched.stderr
    assert "3 runs launched as 1 jobs" in batched.stdout
    separate = run_cli("-m", "seed=0,1,2", "hydra.sweeper.batch_seeds=false", *common)
    assert separate.returncode == 0, separate.stderr
    runs = [r for r in runs_of(client) if "mlflow.parentRunId" in r.data.tags]
    together = {r.data.tags["seed"]: r for r in runs if r.data.tags["members"] == "3"}
    alone = {r.data.tags["seed"]: r for r in runs if r.data.tags["members"] == "1"}
    assert sorted(together) == sorted(alone) == ["0", "1", "2"]
    for seed, single in alone.items():
        for key in ("train/loss", "test/loss", "final_test_mse"):
            ours = _curve(client, together[seed].info.run_id, key)
            assert ours == pytest.approx(_curve(client, single.info.run_id, key), abs=TOLERANCE)
    # the members differ from each other (dropout draws are not shared)
    finals = {s: r.data.metrics["final_test_mse"] for s, r in alone.items()}
    assert len(set(finals.values())) == 3


@pytest.mark.slow
def test_early_stopping_stops_finished_with_stopped_epoch_and_seeds_are_not_batched(
    run_cli, client
) -> None:
    result = run_cli(
        "-m",
        "loss=mse",
        "seed=0,1",
        "trainer.max_epochs=40",
        "callbacks=[default,early_stopping]",
        "callbacks.early_stopping.patience=2",
        "callbacks.early_stopping.min_delta=1.0",  # only epoch 1 counts as an improvement
        *QUIET,
    )
    assert result.returncode == 0, result.stderr
    assert "launched as" not in result.stdout  # the median would steer batched members
    children = [r for r in runs_of(client) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["members"] == "1"
        stopped = int(run.data.tags["stopped_epoch"])  # patience 2 after the last big step
        assert 3 <= stopped < 40
        assert [s for s, _ in history(client, run.info.run_id)] == list(range(1, stopped + 1))


@pytest.mark.slow
def test_scheduler_lr_per_epoch_in_mlflow_and_steps_count(run_cli, client, tmp_path) -> None:
    result = run_cli(
        "loss=mse",
        "trainer.max_epochs=5",
        "scheduler=step",
        "scheduler.fn.step_size=2",
        "scheduler.fn.gamma=0.5",
        "callbacks=[default,lr_monitor]",
        "callbacks.model_checkpoint.every_n_epochs=5",
        *QUIET,
    )
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(client)
    assert _curve(client, run.info.run_id, "lr") == [0.01, 0.01, 0.005, 0.005, 0.0025]
    # Lightning's LearningRateMonitor reaches the run through losslab's Lightning logger
    assert _curve(client, run.info.run_id, "lr-SGD") == [0.01, 0.01, 0.005, 0.005, 0.0025]
    state = torch.load(tmp_path / "outputs/run/checkpoints/last.ckpt", weights_only=False)
    assert state["global_step"] == 5 * 16  # 500 train rows in minibatches of 32: 16 updates
    assert state["epoch"] == 4  # Lightning's 0-based epoch of the save


@pytest.mark.slow
def test_bf16_mixed_precision_trains_close_to_float32(run_cli, client) -> None:
    common = ("loss=bce", "trainer.max_epochs=5", *QUIET)
    assert run_cli(*common, "trainer.precision=bf16-mixed").returncode == 0
    assert run_cli(*common).returncode == 0
    runs = {r.data.params["trainer.precision"]: r for r in runs_of(client)}
    low = runs["bf16-mixed"].data.metrics["final_test_accuracy"]
    full = runs["32-true"].data.metrics["final_test_accuracy"]
    assert runs["bf16-mixed"].info.status == "FINISHED"
    assert 0.3 < low < 1.0 and abs(low - full) < 0.1
    assert _curve(client, runs["bf16-mixed"].info.run_id, "train/loss") != _curve(
        client, runs["32-true"].info.run_id, "train/loss"
    )  # bf16 really ran


@pytest.mark.slow
def test_top_k_checkpoints_and_resume_equal_an_uninterrupted_run(
    tmp_path, store_uri, run_cli, client
) -> None:
    args = (
        "loss=bce",
        "trainer.max_epochs=20",
        "dataset.generator.n_samples=20000",  # epochs long enough that SIGINT lands mid-fit
        "callbacks=[default,model_checkpoint]",
        "callbacks.model_checkpoint.save_top_k=2",
        *QUIET,
    )
    process = start_cli(tmp_path, store_uri, *args)
    folder = tmp_path / "outputs/run/checkpoints"
    wait_for(folder / "epoch004.ckpt", process)
    # Lightning writes the new top-k file before it deletes the one it displaces: interrupt
    # once that rotation is done (a kill between the two leaves three files, as it would).
    deadline = time.monotonic() + hang(60)
    while len(list(folder.glob("epoch*.ckpt"))) != 2 and time.monotonic() < deadline:
        assert process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=hang(120))
    assert process.returncode == 130, stderr
    (killed,) = runs_of(client)
    assert killed.info.status == "KILLED"
    kept = sorted(p.name for p in folder.glob("epoch*.ckpt"))
    assert len(kept) == 2, kept  # top-2 by test/loss
    resumed = run_cli(*args, f"resume={killed.info.run_id}")
    assert resumed.returncode == 0, resumed.stderr
    full = run_cli(*args)
    assert full.returncode == 0, full.stderr
    runs = {r.info.run_id: r for r in runs_of(client)}
    assert runs[killed.info.run_id].info.status == "FINISHED"
    (other,) = [r for r in runs.values() if r.info.run_id != killed.info.run_id]
    for key in ("train/loss", "test/accuracy"):
        ours = _curve(client, killed.info.run_id, key)
        assert len(ours) == 20
        assert ours == pytest.approx(_curve(client, other.info.run_id, key), abs=TOLERANCE)
    assert runs[killed.info.run_id].data.metrics["final_test_loss"] == pytest.approx(
        other.data.metrics["final_test_loss"], abs=TOLERANCE
    )
    assert other.data.tags["checkpoint.best"].endswith(".ckpt")


def test_a_trainer_failure_at_step_one_leaves_failed_runs(run_cli, client) -> None:
    result = run_cli(
        "loss=mse",
        "members=2",
        "allowed_callback_prefixes=[pytorch_lightning.callbacks.,src.,tests.]",
        "+callbacks.fail._target_=tests.failing.FailAtFirstStep",
        *QUIET,
    )
    assert result.returncode == 1
    assert "deliberate failure at the first step" in one_error_line(result.stderr)
    runs = runs_of(client)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FAILED"}
    assert all("deliberate failure" in r.data.tags["error"] for r in runs)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("trainer.devices=2",), "trainer.devices=2: losslab trains in one process"),
        (("trainer.precision=8",), "trainer.precision=8 is not one of"),
        (("trainer.accumulate_grad_batches=2",), "raise dataset.batch_size"),
        (("trainer.gradient_clip_val=-1",), "trainer.gradient_clip_val=-1.0 must be a number > 0"),
        (("model.dropout=1.5",), "model.dropout=1.5 must be in [0, 1)"),
        (
            ("callbacks=[default,early_stopping]", "callbacks.early_stopping.monitor=test/acc"),
            "callbacks.early_stopping.monitor=test/acc is not logged each epoch; use one of: "
            "train/loss, train/mse, test/loss, test/mse",
        ),
        (
            (
                "loss=bce",
                "callbacks=[early_stopping]",
                "callbacks.early_stopping.monitor=test/accuracy",
            ),
            "callbacks.early_stopping.mode=min, but test/accuracy is better when higher; "
            "use mode=max",
        ),
        (
            ("+callbacks.evil._target_=os.system",),
            "callbacks.evil._target_=os.system is outside the allowed callback prefixes",
        ),
        (
            ("+callbacks.evil._target_=src.tracking.Path",),
            "callbacks.evil._target_=src.tracking.Path is Path from pathlib, not a function or",
        ),
        (
            ("scheduler=plateau", "scheduler.monitor=lr"),
            "scheduler.monitor=lr is not logged each epoch",
        ),
    ],
)
def test_trainer_and_callback_mistakes_are_one_line_before_any_run(
    run_cli, client, tmp_path, args, expected
) -> None:
    """Refused at validation (nothing created) or, for what only the built object shows (a
    target that is no Callback), while building, before any run or checkpoint exists."""
    result = run_cli(*args, "trainer.max_epochs=2")
    assert result.returncode == 1
    assert expected in one_error_line(result.stderr)
    assert runs_of(client) == []
    assert not list(tmp_path.glob("outputs/run/checkpoints"))
