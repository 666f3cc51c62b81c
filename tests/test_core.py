"""The core study path: losses by hand, data, pairing, and the real CLI end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from src import config
from src.config import ConfigError, MetricInput, Targets, Task
from src.data import make_split
from src.losses import hinge, msle, per_member
from src.metrics import accuracy, inputs, rounded_accuracy
from tests.conftest import (
    ROOT,
    compose_cfg,
    finished_children,
    hang,
    one_error_line,
    results,
    runs_of,
)


def test_msle_clips_negative_targets_and_predictions_like_keras() -> None:
    out = torch.tensor([[[2.0], [-1.0], [0.5]]])  # one member, three samples
    target = torch.tensor([[[1.0], [3.0], [-2.0]]])
    eps = 1e-7
    expected = [
        (math.log1p(2.0) - math.log1p(1.0)) ** 2,
        (math.log1p(eps) - math.log1p(3.0)) ** 2,  # prediction clipped at eps
        (math.log1p(0.5) - math.log1p(eps)) ** 2,  # negative target counts as 0
    ]
    assert per_member(msle(out, target)).item() == pytest.approx(np.mean(expected), rel=1e-6)


def test_msle_gives_no_gradient_below_eps() -> None:
    out = torch.tensor([[[-0.3]]], requires_grad=True)
    per_member(msle(out, torch.tensor([[[1.0]]]))).sum().backward()
    assert out.grad.item() == 0.0


def test_hinge_with_signed_labels() -> None:
    out = torch.tensor([[[0.8], [-0.2], [0.3]], [[2.0], [1.0], [-1.0]]])  # two members
    target = torch.tensor([[1.0], [-1.0], [-1.0]]).expand(2, 3, 1)
    # member 0: max(1-0.8,0)=0.2, max(1-0.2,0)=0.8, max(1+0.3,0)=1.3 -> 2.3/3
    # member 1: 0, 2, 0 -> 2/3
    assert per_member(hinge(out, target)).tolist() == pytest.approx([2.3 / 3, 2 / 3])


def test_accuracy_readings_for_tanh_outputs() -> None:
    pred = torch.tensor([[[0.9], [0.3], [-0.7], [-0.2]]])
    target = torch.tensor([[[1.0], [1.0], [-1.0], [1.0]]])
    # sign agreement: 3 of 4; the study's round(pred) == y: only 0.9 and -0.7 count -> 2 of 4
    labels = inputs(MetricInput.label, pred, target, Targets.signed)
    assert accuracy(*labels).item() == pytest.approx(0.75)
    assert rounded_accuracy(target, pred).item() == pytest.approx(0.5)


def test_regression_split_matches_the_study() -> None:
    cfg = config.validate(compose_cfg("loss=mse"))
    split = make_split(cfg.dataset, Targets.real)
    assert split.x_train.shape == (500, 20) and split.x_test.shape == (500, 20)
    assert split.y_train.shape == (500, 1)
    both_x = np.concatenate([split.x_train, split.x_test])
    both_y = np.concatenate([split.y_train, split.y_test])
    # scalers fit on all 1,000 rows, as the study does
    assert np.allclose(both_x.mean(0), 0, atol=1e-5) and np.allclose(both_x.std(0), 1, atol=1e-4)
    assert abs(both_y.mean()) < 1e-5 and abs(both_y.std() - 1) < 1e-4
    assert 0.3 < (both_y < 0).mean() < 0.7  # about half the targets are negative


def test_circles_split_encodes_labels_for_each_loss() -> None:
    bce = config.validate(compose_cfg("loss=bce"))
    hinge_cfg = config.validate(compose_cfg("loss=hinge"))
    assert bce.dataset.name == hinge_cfg.dataset.name == "circles"
    binary = make_split(bce.dataset, bce.loss.targets)
    signed = make_split(hinge_cfg.dataset, hinge_cfg.loss.targets)
    assert set(np.unique(binary.y_train)) == {0.0, 1.0}
    assert set(np.unique(signed.y_train)) == {-1.0, 1.0}
    assert np.array_equal(signed.y_train, 2 * binary.y_train - 1)
    assert binary.x_train.shape == (500, 2)


@pytest.mark.parametrize(
    ("loss", "dataset", "output", "targets", "epochs"),
    [
        ("mse", "regression", "identity", "real", 100),
        ("msle", "regression", "identity", "real", 100),
        ("mae", "regression", "identity", "real", 100),
        ("bce", "circles", "sigmoid", "binary", 200),
        ("hinge", "circles", "tanh", "signed", 200),
    ],
)
def test_each_loss_selects_its_dataset_output_and_encoding(
    loss: str, dataset: str, output: str, targets: str, epochs: int
) -> None:
    cfg = config.validate(compose_cfg(f"loss={loss}"))
    assert cfg.dataset.name == dataset
    assert cfg.loss.output.value == output and cfg.loss.targets.value == targets
    assert cfg.trainer.max_epochs == epochs
    assert cfg.model.hidden_sizes == ([25] if dataset == "regression" else [50])


def test_pairing_rejects_a_task_mismatch_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="pick one of: breast_cancer, circles"):
        config.validate(compose_cfg("loss=bce", "dataset=regression"))
    assert config.options_for("dataset", Task.binary) == ["breast_cancer", "circles"]
    assert config.options_for("loss", Task.binary) == ["bce", "focal", "hinge", "squared_hinge"]


@pytest.mark.parametrize(
    ("choice", "built", "group"),
    [
        ("sgd", torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": False}),
        ("adam", torch.optim.Adam, {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-8}),
    ],
)
def test_each_optimizer_option_has_its_schema_and_builds_its_optimizer(
    choice: str, built: type, group: dict
) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    assert sorted(config.OPTIMIZER_SCHEMAS) == sorted(
        p.stem for p in (config.CONF_DIR / "optimizer").glob("*.yaml")
    )
    cfg = compose_cfg(f"optimizer={choice}")
    assert type(config.validate(cfg).optimizer) is config.OPTIMIZER_SCHEMAS[choice]
    arguments = OmegaConf.to_container(cfg.optimizer, resolve=True)
    optimizer = instantiate(arguments, params=[torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer) is built
    assert {key: optimizer.param_groups[0][key] for key in group} == group
    # What predict/report read back from a run: its logged config.yaml, typed again.
    logged = OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True))
    assert config.from_logged(logged) == config.validate(cfg)


def test_single_run_logs_everything(run_cli, client, store_uri) -> None:
    result = run_cli("loss=hinge", "trainer.max_epochs=3", "seed=1")
    assert result.returncode == 0, result.stderr
    assert "accuracy Train: " in result.stdout and "rounded_accuracy Train: " in result.stdout
    (run,) = runs_of(client)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "hinge trainer.max_epochs=3 seed=1"
    tags = run.data.tags
    assert (tags["loss"], tags["task"], tags["dataset"], tags["seed"]) == (
        "hinge",
        "binary",
        "circles",
        "1",
    )
    assert tags["overrides"] == "loss=hinge trainer.max_epochs=3 seed=1"
    assert len(tags["mlflow.source.git.commit"]) >= 40
    params = run.data.params
    assert params["optimizer.lr"] == "0.01" and params["optimizer.momentum"] == "0.9"
    assert params["dataset.generator.noise"] == "0.1" and params["trainer.max_epochs"] == "3"
    for key in ("train/loss", "test/loss", "train/accuracy", "test/accuracy"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3]
    metrics = run.data.metrics
    assert 0.0 <= metrics["final_test_accuracy"] <= 1.0
    assert metrics["final_test_rounded_accuracy"] <= metrics["final_test_accuracy"]
    printed = f"accuracy Train: {metrics['final_train_accuracy']:.4g}, "
    printed += f"Test: {metrics['final_test_accuracy']:.4g}"
    assert printed in result.stdout
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"learning_curves.png", "dataset.png", "config"} <= artifacts
    config_files = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert config_files == {"config/config.yaml", "config/overrides.txt"}
    # The model is named for its run, comes from src.train, and carries the run's finals.
    model = client.get_logged_model(tags["model"].removeprefix("models:/"))
    assert model.name == "hinge-trainer_max_epochs3-seed1"
    assert model.source_run_id == run.info.run_id
    assert model.tags["mlflow.source.name"] == "src.train"
    linked = {m.key: m.value for m in model.metrics}
    assert linked["final_test_accuracy"] == metrics["final_test_accuracy"]
    assert not any(key.startswith(("train/", "test/")) for key in linked)

    import mlflow.pytorch

    mlflow.set_tracking_uri(store_uri)
    model = mlflow.pytorch.load_model(run.data.tags["model"])
    cfg = config.validate(compose_cfg("loss=hinge"))
    split = make_split(cfg.dataset, cfg.loss.targets)
    with torch.no_grad():
        pred = model(torch.from_numpy(split.x_test))
    accuracy = float(((pred > 0) == (torch.from_numpy(split.y_test) > 0)).float().mean())
    assert accuracy == pytest.approx(metrics["final_test_accuracy"], abs=1e-6)


def test_same_seed_same_numbers(run_cli, client) -> None:
    for _ in range(2):
        assert run_cli("loss=mae", "trainer.max_epochs=2", "logger.log_model=false").returncode == 0
    first, second = (results(r) for r in runs_of(client))
    assert first == second


def test_five_loss_sweep_pairs_every_loss(run_cli, client) -> None:
    result = run_cli(
        "-m", "loss=mse,msle,mae,bce,hinge", "trainer.max_epochs=2", "logger.log_model=false"
    )
    assert result.returncode == 0, result.stderr
    children = finished_children(client)
    assert {loss: r.data.tags["dataset"] for loss, r in children.items()} == {
        "mse": "regression",
        "msle": "regression",
        "mae": "regression",
        "bce": "circles",
        "hinge": "circles",
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("loss=nope",), "unknown loss 'nope'; choose one of: "),
        (("loss=bce", "dataset=regression"), "loss 'bce' is a binary loss"),
    ],
)
def test_user_mistakes_get_one_line(run_cli, tmp_path, args, expected) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("losslab: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_no_srun_hint_on_a_machine_with_srun(run_cli, tmp_path) -> None:
    """Every cluster node has srun on PATH; Lightning's two-line hint must not reach a run's
    output (it also broke the one-line error promise there)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    path = f"{fake}:{os.environ['PATH']}"
    done = run_cli("trainer.max_epochs=2", "logger.log_model=false", env={"PATH": path})
    assert done.returncode == 0, done.stderr
    assert "srun" not in done.stdout + done.stderr
    log = (tmp_path / "outputs/run/train.log").read_text()  # kept where a person can look
    assert "The `srun` command is available" in log and "py.warnings" in log
    bad = run_cli("optimizer.lr=0", env={"PATH": path})
    assert one_error_line(bad.stderr) == "losslab: error: optimizer.lr=0.0 must be > 0"


def test_the_progress_bar_fits_an_80_column_terminal(tmp_path, store_uri) -> None:
    """Through a real pseudo-terminal of 80 columns: every redraw of the bar fits, and it
    shows the run, the epoch and the primary test metric."""
    import fcntl
    import pty
    import re
    import struct
    import subprocess
    import termios
    import time

    from tests.conftest import ROOT, cli_command, cli_env, hang

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    args = ("loss=mse", "trainer.max_epochs=30", "logger.log_model=false", "optimizer.lr=0.02")
    process = subprocess.Popen(
        cli_command(tmp_path, *args),
        cwd=ROOT,
        env=cli_env(store_uri, {"COLUMNS": "80"}),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + hang(300)
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    process.wait(timeout=hang(60))
    os.close(master)
    assert process.returncode == 0, output.decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode())
    bars = [s for s in re.split(r"[\r\n]", text) if "|" in s and "/30" in s]
    assert bars, text
    assert max(len(s) for s in bars) <= 80, [s for s in bars if len(s) > 80]
    assert any(s.startswith("mse seed=0 30/30 |") for s in bars), bars
    assert "test/mse=" in bars[-1]


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "src.train", "--help"],
        [sys.executable, "-m", "src.predict", "--help"],
        [sys.executable, "-m", "src.report", "--help"],
        [sys.executable, "-m", "src.serve", "--help"],
        [sys.executable, "-m", "src.unsent", "--help"],
        ["scripts/slurm.sh", "--help"],
    ],
    ids=lambda command: command[-2].split("/")[-1],
)
def test_every_command_answers_help(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=hang(120))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    shown = done.stdout.lower()
    assert "usage" in shown or "powered by hydra" in shown, done.stdout


def test_frozen_imports_turn_the_collector_off_inside_and_freeze_after() -> None:
    """Off inside (also when nested), back on after, even after an error; what existed at the
    end is frozen, so later collections do not walk it."""
    import gc

    from src.frozen_imports import frozen_imports

    assert gc.isenabled()
    try:
        with pytest.raises(ValueError), frozen_imports():
            kept = [[] for _ in range(1000)]
            with frozen_imports():
                assert not gc.isenabled()
            assert not gc.isenabled()  # the inner block does not turn it back on
            raise ValueError
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(kept)
        walked = {id(item) for item in gc.get_objects()}  # the permanent generation is not
        assert gc.is_tracked(kept[0]) and id(kept[0]) not in walked
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    ("asked", "timeout_min", "sent"), [(120, 1, 0), (10, 1, 0), (120, 2, 60), (120, 60, 120)]
)
def test_slurm_early_warning_leaves_the_job_its_start(asked, timeout_min, sent) -> None:
    """SLURM sends the warning up to 30 s (its check period) early: what is asked for leaves
    a job 30 s to start before it can come, and none at all on a 1-minute limit."""
    from hydra_plugins.losslab.launcher import early_warning_s

    assert early_warning_s(asked, timeout_min) == sent


def test_a_sweeps_primary_config_is_composed_once_and_still_checked(monkeypatch) -> None:
    """Hydra's get_mode composes a sweep's primary config, and the sweep composes it again:
    with compose_primary_once the second gets the first (one composition), equal to what
    Hydra would compose, with the sweep's overrides still checked; RUN mode recomposes."""
    from hydra import initialize_config_dir
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from src import hydra_callbacks

    composed = []
    impl = ConfigLoaderImpl._load_configuration_impl
    monkeypatch.setattr(
        ConfigLoaderImpl,
        "_load_configuration_impl",
        lambda self, **kw: composed.append(kw["overrides"]) or impl(self, **kw),
    )
    config.register()
    overrides = ["loss=mse,bce", "seed=0,1"]
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        expected = hydra.compose_config("config", overrides, run_mode=RunMode.MULTIRUN)
        monkeypatch.setattr(
            ConfigLoaderImpl, "load_configuration", ConfigLoaderImpl.load_configuration
        )
        hydra_callbacks.compose_primary_once()
        composed.clear()
        assert hydra.get_mode("config", overrides) is None  # no hydra.mode in the config
        handed = hydra.compose_config("config", overrides, run_mode=RunMode.MULTIRUN)
        assert len(composed) == 1
        assert OmegaConf.to_yaml(handed) == OmegaConf.to_yaml(expected)
        hydra.get_mode("config", ["hydra.job.name=a,b"])
        with pytest.raises(ConfigCompositionException, match="Sweeping over Hydra's config"):
            hydra.compose_config("config", ["hydra.job.name=a,b"], run_mode=RunMode.MULTIRUN)
        composed.clear()
        hydra.get_mode("config", ["loss=mse"])
        hydra.compose_config("config", ["loss=mse"], run_mode=RunMode.RUN)
        assert len(composed) == 2


def test_a_sweeps_jobs_are_composed_once_beside_the_imports(run_cli, client, tmp_path) -> None:
    """The real CLI composes each job of a sweep once, in a forked copy of the launching
    process (while that imports torch), and the launcher reuses those compositions."""
    log = tmp_path / "composed.txt"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "from hydra._internal.config_loader_impl import ConfigLoaderImpl\n"
        "compose = ConfigLoaderImpl.load_sweep_config\n"
        "def load_sweep_config(self, master, overrides):\n"
        f"    with open({str(log)!r}, 'a') as out:\n"
        "        out.write(f'{os.getpid()} {\" \".join(overrides)}\\n')\n"
        "    return compose(self, master, overrides)\n"
        "ConfigLoaderImpl.load_sweep_config = load_sweep_config\n"
        "if sys.orig_argv[1:3] == ['-m', 'src.train']:\n"  # not the tracking process
        f"    open({str(log)!r}, 'a').write(f'main {{os.getpid()}}\\n')\n"
    )
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    result = run_cli(
        "-m", "loss=mse,bce", "seed=0,1", "trainer.max_epochs=2", env={"PYTHONPATH": path}
    )
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    main = {line.split()[1] for line in lines if line.startswith("main ")}
    jobs = [line.split(" ", 1) for line in lines if not line.startswith("main ")]
    assert len(main) == 1
    assert sorted(overrides for _, overrides in jobs) == [
        "loss=bce seed=0 trainer.max_epochs=2 members=2",
        "loss=mse seed=0 trainer.max_epochs=2 members=2",
    ]
    assert {pid for pid, _ in jobs} != main and len({pid for pid, _ in jobs}) == 1
    children = [run for run in runs_of(client) if "mlflow.parentRunId" in run.data.tags]
    assert [run.info.status for run in children] == ["FINISHED"] * 4


def _pools() -> dict[str, list[int]]:
    """The thread count of each numeric library's pool loaded here, by kind."""
    import scipy.linalg  # noqa: F401  (scipy's own OpenBLAS)
    import threadpoolctl

    found: dict[str, list[int]] = {}
    for pool in threadpoolctl.threadpool_info():
        found.setdefault(pool["internal_api"], []).append(pool["num_threads"])
    return found


class Pools:
    """A helper's object that reports its process's thread pools (after importing torch)."""

    def __init__(self) -> None:
        torch.zeros(1)

    def pools(self) -> dict[str, list[int]]:
        return _pools()


def test_numeric_libraries_compute_on_the_jobs_threads_and_the_tracking_process_on_one():
    """numpy's and scipy's OpenBLAS start an idle worker per extra core when they load, which
    spins (0.05 s of CPU each on 2 cores). A command loads them with one thread (a value the
    user set is kept), a job sets them to trainer.threads with torch's, and the tracking
    process runs every pool, OpenMP's included, on one."""
    import threadpoolctl

    from src import writer
    from src.experiment import use_threads

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: no library starts a worker thread")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    probe = "import src, json, tests.test_core as t; print(json.dumps(t._pools()['openblas']))"
    for user, expected in ((None, {1}), ("2", {2})):
        extra = {"OPENBLAS_NUM_THREADS": user} if user else {}
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=hang(120),
        )
        assert out.returncode == 0, out.stderr
        assert set(json.loads(out.stdout)) == expected

    before, blas_before = torch.get_num_threads(), max(_pools()["openblas"])
    try:
        for threads in (2, 1):
            use_threads(threads)
            assert torch.get_num_threads() == threads
            assert set(_pools()["openblas"]) == {threads}
    finally:
        torch.set_num_threads(before)
        threadpoolctl.threadpool_limits(blas_before, user_api="blas")

    helper = writer.Writer(Pools)
    try:
        pools = helper.call("pools")
    finally:
        helper.close()
    assert set(pools["openblas"]) == {1} and set(pools["openmp"]) == {1}
