"""Sweeps on a real SLURM cluster (`make slurm` starts a one-node one here): the real CLI with
`hydra/launcher=slurm`, then the store is read. Skipped where `scontrol ping` fails, unless
LOSSLAB_REQUIRE_SLURM=1 (set by .ci/run), which makes a missing cluster a failure.

All in one file, so xdist's loadfile runs them one after another on one worker: they share
the cluster's two CPUs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_command, cli_env, hang, invoke, runs_of, sigint_default

pytestmark = pytest.mark.xdist_group("slurm")
SLURM = ("hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.poll_s=1")
EPOCH_KEYS = ("train/loss", "test/loss")


def _cluster_answers() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    if _cluster_answers():
        return
    reason = "no SLURM cluster answers `scontrol ping` (start one with `make slurm`)"
    if os.environ.get("LOSSLAB_REQUIRE_SLURM") == "1":
        pytest.fail(f"LOSSLAB_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _children(client) -> list:
    return [r for r in runs_of(client) if "mlflow.parentRunId" in r.data.tags]


def _parent(client):
    (parent,) = [r for r in runs_of(client) if r.data.tags.get("losslab.sweep") == "parent"]
    return parent


def _start(tmp_path: Path, store_uri: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(tmp_path, "-m", *SLURM, *args),
        cwd=ROOT,
        env=cli_env(store_uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )


def _wait_for_epochs(client, process: subprocess.Popen, count: int, timeout: float = 240) -> list:
    """Block until ``count`` child runs have logged an epoch; returns them."""
    deadline = time.monotonic() + hang(timeout)
    while True:
        assert process.poll() is None, process.communicate()
        started = [
            r for r in _children(client) if client.get_metric_history(r.info.run_id, "train/loss")
        ]
        if len(started) >= count:
            return started
        assert time.monotonic() < deadline, "no run logged an epoch"
        time.sleep(0.5)


def _wait_for_more_epochs(client, process: subprocess.Popen, run_id: str) -> None:
    """Block until the run has logged more epochs than it has now."""
    logged = len(client.get_metric_history(run_id, "train/loss"))
    deadline = time.monotonic() + hang(120)
    while len(client.get_metric_history(run_id, "train/loss")) <= logged:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"no epoch logged after {logged}"
        time.sleep(0.5)


def _squeue(array: str) -> list[str]:
    """squeue's lines ("<id>_<task> <name> <state>") of the jobs of one array."""
    listed = subprocess.run(
        ["squeue", "-h", "--array", "-o", "%i %j %T"], capture_output=True, text=True, timeout=30
    ).stdout
    return [line for line in listed.splitlines() if line.split("_")[0] == array]


def _job_logs(tmp_path: Path, lines: int = 15) -> str:
    """The end of each job's submitit log (stdout and stderr), for a failure's message."""
    logs = sorted((tmp_path / "multirun" / ".submitit").glob("*/*_log.*"))
    return "\n".join(
        f"{path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        for path in logs
    )


def _assert_complete(client, run, epochs: int) -> None:
    for key in EPOCH_KEYS:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(1, epochs + 1)), (key, steps)


@pytest.mark.timeout(hang(400))
def test_sweep_on_slurm_with_sqlite(tmp_path, store_uri, client) -> None:
    result = invoke(
        tmp_path, store_uri, "-m", *SLURM, "loss=mse,bce", "seed=0,1", "trainer.max_epochs=4"
    )
    assert result.returncode == 0, result.stderr
    children = _children(client)
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert _parent(client).info.status == "FINISHED"
    job_ids = {r.data.tags["slurm.job_id"] for r in children}
    assert len(job_ids) == 2 and all(re.fullmatch(r"\d+_\d+", j) for j in job_ids), job_ids
    for run in children:
        _assert_complete(client, run, 4)
        assert run.data.tags["slurm.restarts"] == "0"
    # one line per job as it ends, then the report
    lines = [line for line in result.stdout.splitlines() if re.match(r"losslab: #\d ", line)]
    assert len(lines) == 2 and all(": done (" in line for line in lines), result.stdout
    assert (tmp_path / "multirun" / "report.md").is_file()


@pytest.mark.timeout(hang(400))
def test_sweep_on_slurm_with_a_tracking_server(tmp_path, mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"http://127.0.0.1:{mlflow_server}"
    result = invoke(tmp_path, uri, "-m", *SLURM, "loss=mse", "seed=0,1", "trainer.max_epochs=4")
    assert result.returncode == 0, result.stderr
    client = MlflowClient(uri)
    children = _children(client)
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert _parent(client).info.status == "FINISHED"
    for run in children:
        _assert_complete(client, run, 4)
        assert run.data.tags["slurm.job_id"]


@pytest.mark.timeout(hang(500))
def test_scancel_of_one_job_kills_its_run_and_the_report_waits_for_the_rest(
    tmp_path, store_uri, client
) -> None:
    """Two jobs: a long one that is cancelled once it trains, a short one that finishes. The
    long one first gets SLURM's early warning, which it logs and trains on. The cancelled run
    is KILLED with the reason and its epochs kept; the report is written after the other job
    ended and counts one failure."""
    process = _start(tmp_path, store_uri, "loss=mse", "trainer.max_epochs=20000,150")
    long_run = None
    deadline = time.monotonic() + hang(240)
    while long_run is None:
        started = _wait_for_epochs(client, process, 1)
        long_run = next(
            (r for r in started if r.data.params["trainer.max_epochs"] == "20000"), None
        )
        assert time.monotonic() < deadline
        time.sleep(0.5)
    job_id = long_run.data.tags["slurm.job_id"]
    # SLURM's early warning before a time limit (what signal_delay_s asks for) is only logged:
    # the job trains on (submitit's own handler would end it)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    _wait_for_more_epochs(client, process, long_run.info.run_id)
    (log,) = (tmp_path / "multirun/.submitit").glob(f"*/{job_id}_*_log.out")
    assert "will be stopped soon" in log.read_text(), _job_logs(tmp_path)
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    stdout, stderr = process.communicate(timeout=hang(300))
    assert process.returncode == 1, stderr
    assert "1 of 2 run(s) failed" in stderr
    runs = {r.data.params["trainer.max_epochs"]: r for r in _children(client)}
    killed, finished = runs["20000"], runs["150"]
    assert killed.info.status == "KILLED", killed.data.tags
    assert "cancelled on SLURM" in killed.data.tags["error"]
    assert killed.data.tags["slurm.state"] == "CANCELLED"
    kept = client.get_metric_history(killed.info.run_id, "train/loss")
    assert 1 <= len(kept) < 20000
    assert finished.info.status == "FINISHED"
    _assert_complete(client, finished, 150)
    report = tmp_path / "multirun" / "report.md"
    assert report.stat().st_mtime * 1000 >= finished.info.end_time
    assert "CANCELLED" in stdout and _parent(client).info.status == "FAILED"


@pytest.mark.timeout(hang(600))
def test_a_job_past_its_time_limit_is_killed_with_timeout_as_the_reason(
    tmp_path, store_uri, client
) -> None:
    """timeout_min=1: SLURM stops the job after a minute (its limit is checked every 30 s).
    No early warning is asked for (signal_delay_s 120 becomes 0): SLURM would send it at its
    first check, which can come while the job starts, before losslab handles the signal."""
    result = invoke(
        tmp_path,
        store_uri,
        "-m",
        *SLURM,
        "hydra.launcher.timeout_min=1",
        "loss=mse",
        "trainer.max_epochs=1000000",
        timeout=400,
    )
    assert result.returncode == 1, result.stderr
    children = _children(client)
    assert len(children) == 1, _job_logs(tmp_path)
    (run,) = children
    assert run.info.status == "KILLED"
    assert "timeout" in run.data.tags["error"] and run.data.tags["slurm.state"] == "TIMEOUT"
    assert client.get_metric_history(run.info.run_id, "train/loss")  # what it logged is kept
    (script,) = (tmp_path / "multirun/.submitit").glob("*/*_submission.sh")
    assert "#SBATCH --signal=USR2@0" in script.read_text()


@pytest.mark.timeout(hang(500))
def test_ctrl_c_cancels_every_job_and_kills_every_unfinished_run(
    tmp_path, store_uri, client
) -> None:
    """Three long jobs on two CPUs: two run, one waits in the queue. Ctrl-C (SIGINT) of the
    launching process cancels all three on SLURM, closes the runs KILLED, and exits 130."""
    apart = "hydra.sweeper.batch_losses=false"  # three jobs, not bce and hinge as one
    process = _start(tmp_path, store_uri, "loss=mse,bce,hinge", apart, "trainer.max_epochs=20000")
    _wait_for_epochs(client, process, 2)
    ours = {r.data.tags["slurm.job_id"].split("_")[0] for r in _children(client)}
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=hang(180))
    assert process.returncode == 130, stderr
    (array,) = ours
    # cancelled: none queued or running (a cancelled job may still be COMPLETING its cleanup)
    left = [line for line in _squeue(array) if line.endswith((" PENDING", " RUNNING"))]
    assert not left, f"jobs left on SLURM: {left}"
    children = _children(client)
    assert len(children) == 2 and all(r.info.status == "KILLED" for r in children)
    assert all("interrupted" in r.data.tags["error"] for r in children)
    assert _parent(client).info.status == "KILLED"
    queued = list((tmp_path / "multirun").glob("2_*/error.txt"))  # never started a run
    assert len(queued) == 1 and "interrupted" in queued[0].read_text()


@pytest.mark.timeout(hang(400))
def test_a_failing_job_is_failed_and_the_others_go_on(tmp_path, store_uri, client) -> None:
    result = invoke(
        tmp_path,
        store_uri,
        "-m",
        *SLURM,
        "loss=mse",
        "trainer.max_epochs=3",
        "loss.fn._target_=tests.failing.explode,torch.nn.functional.mse_loss",
        "allowed_target_prefixes=[src.,sklearn.,torch.,tests.]",
    )
    assert result.returncode == 1, result.stderr
    statuses = sorted(r.info.status for r in _children(client))
    assert statuses == ["FAILED", "FINISHED"], statuses
    failed = next(r for r in _children(client) if r.info.status == "FAILED")
    assert "deliberate failure" in failed.data.tags["error"]
    assert "1 of 2 run(s) failed" in result.stderr


@pytest.mark.timeout(hang(500))
def test_a_requeued_job_resumes_its_runs_from_their_checkpoint(tmp_path, store_uri, client) -> None:
    """`scontrol requeue` (what preemption with --requeue does): the job is stopped and
    started again; it continues the same run from its last checkpoint, not from zero."""
    epochs = 1500
    process = _start(tmp_path, store_uri, "loss=mse", f"trainer.max_epochs={epochs}")
    (run,) = _wait_for_epochs(client, process, 1)
    job = run.data.tags["slurm.job_id"]
    checkpoint = next((tmp_path / "multirun").glob("0_*")) / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + hang(120)
    while not checkpoint.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    while True:  # SLURM holds a requeued job back for a while: let it start again now
        state = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        if state == "PENDING":
            # slurmd revoked the first attempt's credential when it stopped it, stamped in
            # whole seconds; a new one issued within that same second is taken as revoked
            # too, and the job is killed ("Job credential revoked", seen in CI). SLURM's own
            # hold avoids that; ours waits for the next second instead.
            time.sleep(1.05 - time.time() % 1)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=30)
            break
        assert time.monotonic() < deadline + hang(120), f"job {job} is {state!r}"
        time.sleep(0.5)
    _, stderr = process.communicate(timeout=hang(300))
    assert process.returncode == 0, stderr
    (run,) = _children(client)
    assert run.info.status == "FINISHED" and run.data.tags["slurm.restarts"] == "1"
    assert run.data.tags["resumed_from"].startswith("epoch ")
    assert int(run.data.tags["resumed_from"].split()[1].rstrip(":")) >= 10
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert steps == set(range(1, epochs + 1))


@pytest.mark.timeout(hang(400))
def test_without_accounting_a_cancelled_job_does_not_hang_the_sweep(
    tmp_path, store_uri, client
) -> None:
    """sacct fails as on a cluster without accounting (a stand-in first on PATH): a job
    cancelled before it wrote a result is seen gone from squeue, and the sweep ends."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text(
        "#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n"
    )
    (fake / "sacct").chmod(0o755)
    env = {**cli_env(store_uri), "PATH": f"{fake}:{os.environ['PATH']}"}
    process = subprocess.Popen(
        cli_command(tmp_path, "-m", *SLURM, "loss=mse", "trainer.max_epochs=20000"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    (run,) = _wait_for_epochs(client, process, 1)
    subprocess.run(["scancel", run.data.tags["slurm.job_id"]], check=True, timeout=30)
    stdout, stderr = process.communicate(timeout=hang(180))
    assert process.returncode == 1, stderr
    (run,) = _children(client)
    assert run.info.status == "KILLED"
    assert "accounting" in run.data.tags["error"] and "ENDED" in stdout
    assert stderr.count("SLURM accounting is off") == 1 and "sacct error" not in stderr, stderr
