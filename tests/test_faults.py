"""Faults through the real CLI: a truthful store, nothing lost (bad input: test_bad_input.py).

Two parts: faults (divergence, SIGTERM and resume, SIGKILL, an unreachable store, simultaneous
writers, a failing artifact store), and safe defaults (credentials, instantiate's allow-list).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import (
    ROOT,
    cli_command,
    cli_env,
    closed_port,
    compose_cfg,
    hang,
    invoke,
    one_error_line,
    runs_of,
    sigint_default,
    start_mlflow_server,
)

# ---- faults: each drives a real subprocess and then reads the store ----------------------------

SLOW_BCE = (  # 20 short epochs on circles, a checkpoint every 5
    "loss=bce",
    "trainer.max_epochs=20",
    "callbacks.model_checkpoint.every_n_epochs=5",
    "logger.log_model=false",
    "trainer.enable_progress_bar=false",
)


def start_cli(folder: Path, store_uri: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(folder, *args),
        cwd=ROOT,
        env=cli_env(store_uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    """Block until ``path`` exists (the run has reached that point), failing if it never does."""
    deadline = time.monotonic() + hang(timeout)
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.002)


def wait_for_run(client, process: subprocess.Popen, timeout: float = 60) -> None:
    """Block until the store holds the job's run: a job checkpoints before its tracking
    process has created its runs (it names them itself), so a checkpoint does not say so."""
    deadline = time.monotonic() + hang(timeout)
    while not runs_of(client):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run was never created"
        time.sleep(0.05)


def history(client, run_id: str, key: str = "train/loss") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_divergence_stops_at_once_failed_with_reason_and_metrics_kept(run_cli, client):
    result = run_cli(
        "optimizer.lr=100",
        "trainer.max_epochs=30",
        "logger.log_model=false",
        "trainer.enable_progress_bar=false",
    )
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert line.startswith("losslab: error: run failed: ") and "Diverged" in line
    assert "lower optimizer.lr" in line
    (run,) = runs_of(client)
    assert run.info.status == "FAILED"
    assert run.data.tags["outcome"] == "diverged"
    assert "training loss is [nan] at epoch 1" in run.data.tags["error"]
    steps = history(client, run.info.run_id)
    assert [s for s, _ in steps] == [1] and math.isnan(steps[0][1])  # stopped at once, kept
    assert history(client, run.info.run_id, "test/mse")  # the test score of that epoch too


def test_kill_keeps_metrics_and_checkpoint_then_resume_matches_uninterrupted(
    tmp_path, store_uri, run_cli, client
):
    process = start_cli(tmp_path, store_uri, *SLOW_BCE)
    checkpoint = tmp_path / "outputs/run/checkpoints/last.ckpt"
    wait_for(checkpoint, process)  # epoch 5 done
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=hang(120))
    assert process.returncode == 130
    assert "losslab: interrupted; runs are marked KILLED in MLflow" in stderr
    hint = f"losslab: continue it with: python -m src.train {' '.join(SLOW_BCE)} resume="
    assert hint in stderr
    assert "Traceback" not in stderr
    (killed,) = runs_of(client)
    run_id = killed.info.run_id
    assert killed.info.status == "KILLED" and killed.data.tags["outcome"] == "killed"
    kept = history(client, run_id)
    assert 5 <= len(kept) < 20 and [s for s, _ in kept] == list(range(1, len(kept) + 1))
    assert checkpoint.is_file()
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/last.ckpt"
    ]

    # Resume by run id from the artifact alone: the local output folder is gone.
    shutil.rmtree(tmp_path / "outputs")
    wrong = run_cli(*SLOW_BCE, "optimizer.lr=0.02", f"resume={run_id}")
    assert wrong.returncode == 1
    assert "was started with optimizer.lr=0.01 (now 0.02)" in one_error_line(wrong.stderr)
    assert not (tmp_path / "outputs").exists()
    resumed = run_cli(*SLOW_BCE, f"resume={run_id}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming 1 run(s) from epoch 5" in resumed.stdout

    full = run_cli(*SLOW_BCE)  # the same seed, never interrupted
    assert full.returncode == 0, full.stderr
    runs = {r.info.run_id: r for r in runs_of(client)}
    assert len(runs) == 2
    after = runs.pop(run_id)
    (uninterrupted,) = runs.values()
    assert after.info.status == "FINISHED" and after.data.tags["outcome"] == "ok"
    assert "error" not in after.data.tags and after.data.tags["resumed_from"].startswith("epoch 5")
    for key in ("train/loss", "test/loss", "train/accuracy", "test/accuracy"):
        got, want = history(client, run_id, key), history(client, uninterrupted.info.run_id, key)
        assert [s for s, _ in got] == list(range(1, 21))  # every epoch once, none twice
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6)
    finals = {k: v for k, v in after.data.metrics.items() if k.startswith("final_")}
    assert len(finals) == 14  # loss and the binary panel (6 metrics for bce), train and test
    assert finals == pytest.approx({k: uninterrupted.data.metrics[k] for k in finals}, abs=1e-6)


def test_a_checkpoint_of_runs_the_store_never_created_is_refused_in_one_line(
    tmp_path, store_uri, client, run_cli
):
    """A job stopped between its first checkpoint and its runs' creation leaves a checkpoint
    of runs that never were: resume says so, in one line, and starts nothing."""
    import torch

    from src.callbacks import TRACKING_KEY

    client.create_experiment("losslab")  # the store exists, without that run
    checkpoint = tmp_path / "last.ckpt"
    torch.save({TRACKING_KEY: {"run_ids": ["ab" * 16], "epochs": 10}}, checkpoint)
    result = run_cli("loss=bce", f"resume={checkpoint}")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert f"resume: no run {'ab' * 16} in the MLflow store" in line
    assert "its job stopped before the store created it (start it again instead), or" in line
    assert runs_of(client) == [] and not (tmp_path / "outputs").exists()


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """A two-run sweep to point the other commands at: its store, its folder, and the mse
    run's id."""
    folder = tmp_path_factory.mktemp("small_sweep")
    store_uri = f"sqlite:///{folder / 'mlflow.db'}"
    done = invoke(folder, store_uri, "-m", "loss=mse,bce", "trainer.max_epochs=2")
    assert done.returncode == 0, done.stderr
    (mse,) = [run for run in runs_of(store_client(store_uri)) if run.data.tags.get("loss") == "mse"]
    return store_uri, folder / "multirun", mse.info.run_id


def store_client(store_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(store_uri)


def ctrl_c(command: list[str], env: dict[str, str], after: float) -> tuple[int, str]:
    """A terminal's Ctrl-C ``after`` seconds into ``command``: SIGINT to its whole process
    group. Its exit code and standard error."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=sigint_default,
    )
    time.sleep(after)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=hang(120))
    return process.returncode, stderr


def python_start(env: dict[str, str]) -> float:
    """Seconds Python's own start (the interpreter, the venv's site) takes now, on this
    machine at its present load: before that no code of ours can answer a signal."""
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], env=env, timeout=hang(60), check=True)
    return time.monotonic() - began


# Seconds into the command: while it imports (0.2 s, or 3x Python's own start where that is
# slower, as in CI beside the other worker), and while it works (each command takes 2.5 s or
# more quiet; should it still be loading, the same one line is due).
@pytest.mark.parametrize(
    ("after", "seed"), [(None, 5), (1.0, 6)], ids=["while loading", "while working"]
)
@pytest.mark.parametrize("command", ["train", "predict", "report"])
def test_ctrl_c_ends_a_command_in_one_line_wherever_it_lands(
    tmp_path, small_sweep, command, after, seed
) -> None:
    """No traceback of whatever import or call Ctrl-C cut short: one line, exit 130, and no
    half output (a command's first seconds are its imports, before any of its own work)."""
    store_uri, sweep_dir, run_id = small_sweep
    output = tmp_path / "predictions.csv"
    args = {
        # seed: this case's run, if it starts one
        "train": cli_command(tmp_path, "loss=mse", "trainer.max_epochs=500", f"seed={seed}")[1:],
        "predict": ["-m", "src.predict", f"run_id={run_id}", "split=test", f"output={output}"],
        "report": ["-m", "src.report", str(sweep_dir)],
    }[command]
    env = cli_env(store_uri)
    after = after or max(0.2, 3 * python_start(env))
    code, stderr = ctrl_c([sys.executable, *args], env, after)
    assert code == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = stderr.strip().splitlines()  # (a run's progress bar is there too)
    assert any(line.startswith("losslab: interrupted") for line in lines), stderr
    assert not output.exists() and not list(tmp_path.glob(".*.partial"))
    runs = runs_of(store_client(store_uri))
    assert not any(run.info.status == "RUNNING" for run in runs)
    mine = [run for run in runs if command == "train" and run.data.tags.get("seed") == str(seed)]
    assert all(run.info.status == "KILLED" for run in mine)  # said only if so:
    assert ("losslab: interrupted; runs are marked KILLED in MLflow" in lines) == bool(mine)


LOST_CTRL_C = """
import sys, time
from pathlib import Path
sys.argv[:1] = ["-m"]  # as `python -m`: src arms its Ctrl-C handling
from src import quick_exit

class Slow:
    def __del__(self):  # Python drops an exception raised here: "Exception ignored in"
        Path(sys.argv[1]).touch()
        sent = Path(sys.argv[1] + ".sent")  # busy till the signal lands here, however slow
        end = time.monotonic() + 60
        while not sent.exists() and time.monotonic() < end:
            pass

def main():
    Slow()
    time.sleep(5)
    print("finished")

quick_exit.run(main)
"""


def test_a_ctrl_c_that_lands_where_python_drops_exceptions_still_ends_the_command(tmp_path):
    """Seen in CI: SIGINT during a weakref callback of importlib, run by the garbage collector;
    Python printed 'Exception ignored' and the command went on to exit 0."""
    mark = tmp_path / "in_del"
    process = subprocess.Popen(
        [sys.executable, "-c", LOST_CTRL_C, str(mark)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    wait_for(mark, process, timeout=60)
    process.send_signal(signal.SIGINT)
    Path(f"{mark}.sent").touch()
    stdout, stderr = process.communicate(timeout=hang(60))
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["losslab: interrupted"], stderr
    assert "finished" not in stdout


def test_predictions_are_written_whole_or_not_at_all(tmp_path) -> None:
    """A write cut short (Ctrl-C, a full disk) leaves neither a half file nor a half-overwritten
    earlier one."""
    from src.predict import write_table

    class CutShort:
        def to_csv(self, path: Path, index: bool) -> None:
            Path(path).write_text("x,prediction\n1,")
            raise KeyboardInterrupt

    earlier = tmp_path / "predictions.csv"
    earlier.write_text("x,prediction\n1,2\n")
    with pytest.raises(KeyboardInterrupt):
        write_table(CutShort(), earlier)
    assert earlier.read_text() == "x,prediction\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
    write_table(pd.DataFrame({"x": [1], "prediction": [3]}), tmp_path / "new" / "out.csv")
    assert (tmp_path / "new" / "out.csv").read_text() == "x,prediction\n1,3\n"


def test_a_killed_job_is_closed_by_its_tracking_process(tmp_path, store_uri, client):
    """SIGKILL runs no handler in the job; its tracking process sees it gone and closes the
    run KILLED, keeping what had been sent (here every 5 epochs)."""
    process = start_cli(tmp_path, store_uri, *SLOW_BCE, "logger.flush_every_n_epochs=5")
    wait_for(tmp_path / "outputs/run/checkpoints/last.ckpt", process)  # epoch 5 sent
    process.kill()
    process.communicate(timeout=hang(60))
    deadline = time.monotonic() + 60
    while (run := runs_of(client)[0]).info.status == "RUNNING":
        assert time.monotonic() < deadline, "the run was left RUNNING"
        time.sleep(0.2)
    assert run.info.status == "KILLED"
    assert run.data.tags["outcome"] == "killed"
    assert run.data.tags["error"] == "the job process died"
    kept = history(client, run.info.run_id)
    assert len(kept) >= 5 and [s for s, _ in kept] == list(range(1, len(kept) + 1))


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_runs_whose_process_is_gone_are_closed_at_the_next_start(
    tmp_path, store_uri, run_cli, client
):
    """The job and its tracking process both killed (nothing records the stop): the run
    stays RUNNING until the next command on the store closes it, KILLED with the reason."""
    args = [a.replace("max_epochs=20", "max_epochs=400") for a in SLOW_BCE]  # still training
    process = start_cli(tmp_path, store_uri, *args, "logger.flush_every_n_epochs=5")
    wait_for(tmp_path / "outputs/run/checkpoints/last.ckpt", process)
    wait_for_run(client, process)
    (run,) = runs_of(client)
    deadline = time.monotonic() + hang(60)
    while not history(client, run.info.run_id):  # the tracking process writes epochs 1-5
        assert process.poll() is None and time.monotonic() < deadline, "no epoch was written"
        time.sleep(0.1)
    for tracker in children_of(process.pid):
        os.kill(tracker, signal.SIGKILL)
    process.kill()
    process.communicate(timeout=hang(60))
    (left,) = runs_of(client)
    assert left.info.status == "RUNNING"
    assert left.data.tags["losslab.pid"] == str(process.pid)
    assert left.data.tags["losslab.host"] == socket.gethostname()
    again = run_cli("loss=mse", "trainer.max_epochs=1", "logger.log_model=false", "callbacks=none")
    assert again.returncode == 0, again.stderr
    runs = {r.info.run_id: r for r in runs_of(client)}
    reaped = runs[left.info.run_id]
    assert reaped.info.status == "KILLED" and reaped.data.tags["outcome"] == "killed"
    assert f"its process (pid {process.pid} on " in reaped.data.tags["error"]
    assert len(history(client, left.info.run_id)) >= 1  # what it had sent is kept
    (new,) = [r for r in runs.values() if r.info.run_id != left.info.run_id]
    assert new.info.status == "FINISHED"


def test_the_reaper_keeps_live_and_foreign_runs(store_uri, client) -> None:
    """``make ui`` runs tracking.reap_store: a run of a live process (this one), another
    host's run and a run without owner tags stay RUNNING; a dead pid's run is closed."""
    from src import tracking

    dead = subprocess.Popen(["true"])
    dead.wait()
    experiment = client.create_experiment("losslab")
    owners = {
        "dead": {"losslab.host": socket.gethostname(), "losslab.pid": str(dead.pid)},
        "live": tracking.owner_tags(),
        "elsewhere": {"losslab.host": "another-host", "losslab.pid": str(dead.pid)},
        "older": {},
    }
    ids = {name: client.create_run(experiment, tags=t).info.run_id for name, t in owners.items()}
    tracking.reap_store(store_uri)
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {
        "dead": "KILLED",
        "live": "RUNNING",
        "elsewhere": "RUNNING",
        "older": "RUNNING",
    }
    for name in ("live", "elsewhere", "older"):  # no store left with a RUNNING run
        client.set_terminated(ids[name], "KILLED")


def test_a_sweep_killed_with_sigkill_leaves_no_run_running(tmp_path, store_uri, client):
    """SIGKILL of a sweep's launching process: its tracking process closes the parent and
    the running child KILLED."""
    process = start_cli(
        tmp_path, store_uri, "-m", "seed=0,1", "hydra.sweeper.batch_seeds=false", *SLOW_BCE
    )
    deadline = time.monotonic() + hang(180)
    while not list(tmp_path.glob("multirun/*/checkpoints/last.ckpt")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    process.kill()
    process.communicate(timeout=hang(60))
    deadline = time.monotonic() + hang(60)
    runs = runs_of(client)
    while any(r.info.status == "RUNNING" for r in runs):
        assert time.monotonic() < deadline, [(r.info.run_name, r.info.status) for r in runs]
        time.sleep(0.2)
        runs = runs_of(client)
    assert {r.info.status for r in runs} == {"KILLED"}
    assert len(runs) == 2  # the parent and the first job's run


def test_a_tracking_process_that_cannot_start_answers_with_the_reason(tmp_path):
    """The store fails as the tracking process builds its client: every answered call says
    why, rather than the helper dying with its own traceback."""
    from src import tracking
    from src.writer import WriterError

    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    writer = tracking.writer(f"sqlite:///{blocker}/mlflow.db")
    try:
        with pytest.raises(WriterError, match=r"NotADirectoryError|FileExistsError"):
            writer.call("take_failures")
        with pytest.raises(WriterError, match=r"NotADirectoryError|FileExistsError"):
            writer.call("start", 1, "losslab", ["a"], [{}], [{}])
        assert writer.alive
    finally:
        writer.close()


def test_runs_named_by_the_job_fail_it_once_the_store_says_they_could_not_start(tmp_path):
    """On a SQL store the job names its runs, so their ids need no wait; a start the store
    refuses still stops the job: ``check`` (every epoch) raises the reason once it has come,
    and from then on so do the ids, without waiting again."""
    from src import tracking

    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker}/mlflow.db"
    try:
        runs = tracking.RunSet.start(uri, "losslab", ["a", "b"], [{}, {}], [{}, {}])
        named = runs.run_ids
        assert len(named) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in named)
        deadline = time.monotonic() + 120  # a hang, not slowness
        with pytest.raises(tracking.TrackingError, match=r"NotADirectoryError|FileExistsError"):
            while time.monotonic() < deadline:
                runs.check()
                time.sleep(0.01)
        with pytest.raises(tracking.TrackingError, match=r"NotADirectoryError|FileExistsError"):
            runs.run_ids  # noqa: B018
    finally:
        tracking.writer(uri).close()


def test_runs_named_by_the_job_are_the_stores_runs(tmp_path, store_uri, client):
    """The ids a job gives its runs on a SQL store are the ids the store holds (a server
    names its runs itself: the job waits for those)."""
    from src import tracking

    runs = tracking.RunSet.start(store_uri, "losslab", ["a", "b"], [{}, {}], [{"p": 1}] * 2)
    named = list(runs.run_ids)
    runs.end(["FINISHED", "FINISHED"])
    runs.wait()
    assert [client.get_run(i).data.params for i in named] == [{"p": "1"}] * 2
    assert [client.get_run(i).info.status for i in named] == ["FINISHED"] * 2
    assert tracking.store.is_sql(store_uri) and tracking.store.is_sql("postgresql+psycopg2://h/d")
    assert not tracking.store.is_sql("http://127.0.0.1:5000")


class Prepared:
    """A helper's object that notes when its ``prepare`` ran and when it was built."""

    prepared_at: float | None = None

    @classmethod
    def prepare(cls) -> None:
        cls.prepared_at = time.time()
        Path(os.environ["PREPARED_MARK"]).touch()  # the test sends the arguments after this

    def __init__(self, name: str) -> None:
        self.name, self.built_at = name, time.time()

    def times(self) -> tuple[str, float | None, float]:
        return self.name, self.prepared_at, self.built_at


def test_a_helper_started_early_prepares_then_is_taken_over_or_killed_unused(tmp_path, monkeypatch):
    """``Writer.prestart``: the helper runs its factory's ``prepare`` before the arguments
    exist, the next Writer of that factory takes it over; one never taken is killed at exit
    (a command that stopped at a config mistake)."""
    from src import writer

    mark = tmp_path / "prepared"
    monkeypatch.setenv("PREPARED_MARK", str(mark))
    writer.Writer.prestart(Prepared)
    spare = writer._SPARES[Prepared][0]
    wait_for(mark, spare, timeout=60)  # it prepares without its arguments
    sent_at = time.time()
    helper = writer.Writer(Prepared, "taken")
    try:
        assert helper.process is spare
        name, prepared_at, built_at = helper.call("times")
        assert name == "taken" and prepared_at is not None
        assert prepared_at <= sent_at <= built_at  # prepared before the arguments were sent
    finally:
        helper.close()
    assert spare.returncode == 0

    writer.Writer.prestart(Prepared)
    unused = writer._SPARES[Prepared][0]
    writer._kill_spares()  # what the exit handler does
    assert unused.returncode == -signal.SIGKILL and not writer._SPARES
    fresh = writer.Writer(Prepared, "fresh")  # no spare left: a new helper, as before
    try:
        assert fresh.process is not unused and fresh.call("times")[0] == "fresh"
    finally:
        fresh.close()

    writer.Writer.prestart(Prepared)
    dead, dead_socket = writer._SPARES[Prepared]
    dead.kill()  # e.g. killed by the machine's OOM killer before it was taken
    dead.wait()
    time.sleep(0.2)
    replaced = writer.Writer(Prepared, "replaced")
    try:
        assert replaced.process is not dead and replaced.call("times")[0] == "replaced"
        assert dead_socket.closed  # not left open for the life of the process
    finally:
        replaced.close()


def test_a_helper_that_cannot_start_early_is_left_to_the_writer(monkeypatch):
    """No process can be started now (EAGAIN): the command goes on without one started
    early; the Writer starts it when needed, or fails there with the reason."""
    from src import writer

    def no_process(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(writer.subprocess, "Popen", no_process)
    writer.Writer.prestart(Prepared)
    assert Prepared not in writer._SPARES
    with pytest.raises(BlockingIOError):
        writer.Writer(Prepared, "later")


def _missing_config() -> None:
    """Raises as Hydra does: an exception whose __init__ takes more than its message, with a
    cause that src/cli.py reads."""
    from hydra.errors import MissingConfigException

    try:
        raise ValueError("the cause")
    except ValueError as cause:
        raise MissingConfigException("no such config", "loss/nope") from cause


def test_an_error_in_the_forked_copy_is_raised_here_as_it_was_raised():
    from hydra.errors import MissingConfigException

    from src import overlap

    with pytest.raises(MissingConfigException, match="no such config") as raised:
        overlap.Forked(_missing_config).result()
    assert raised.value.missing_cfg_file == "loss/nope"
    assert isinstance(raised.value.__cause__, ValueError)
    assert str(raised.value.__cause__) == "the cause"
    assert overlap.Forked(os.getpid).result() != os.getpid()  # it did run in a copy


def test_work_no_copy_can_do_is_done_in_this_process(monkeypatch):
    """A copy that dies before answering (a signal), or none that can be made (EAGAIN)."""
    from src import overlap

    here = os.getpid()

    def pid_unless_copy() -> int:
        if os.getpid() != here:
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    assert overlap.Forked(pid_unless_copy).result() == here

    def no_process() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(overlap.os, "fork", no_process)
    assert overlap.Forked(os.getpid).result() == here


JOB_ALONE = """
import sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from src import config, experiment
config.register()
with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
    cfg = compose("config", overrides=sys.argv[2:])
job = experiment.JobContext(sys.argv[2:], Path(sys.argv[1]), None, None)
experiment.run(cfg, config.validate(cfg), job)
print(sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "sqlalchemy", "alembic"}))
"""


def test_the_job_never_imports_mlflow_its_tracking_process_does_the_work(
    tmp_path, store_uri, client
):
    """Training never waits on MLflow's import (1.4 s) or its store: every MLflow call is made
    by the tracking process, yet the run is complete, model included."""
    args = ["loss=mse", "trainer.max_epochs=3", "trainer.enable_progress_bar=false"]
    done = subprocess.run(
        [sys.executable, "-c", JOB_ALONE, str(tmp_path / "job"), *args],
        cwd=ROOT,
        env=cli_env(store_uri),
        capture_output=True,
        text=True,
        timeout=hang(240),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    (run,) = runs_of(client)
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "ok"
    assert [s for s, _ in history(client, run.info.run_id)] == [1, 2, 3]
    assert {"learning_curves.png", "dataset.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == run.info.run_id


class SilentServer:
    """Accepts connections and never answers: a hung tracking server."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.mark.parametrize("server", ["closed port", "hung server"])
def test_unreachable_store_fails_in_seconds_before_training(run_cli, tmp_path, server):
    with SilentServer() as hung:
        uri = hung if server == "hung server" else f"http://127.0.0.1:{closed_port()}"
        began = time.monotonic()
        result = run_cli("trainer.max_epochs=2", env={"MLFLOW_TRACKING_URI": uri})
        elapsed = time.monotonic() - began
    assert result.returncode == 1
    assert "is not reachable" in one_error_line(result.stderr)
    assert elapsed < hang(15)  # start-up plus a 3 s timeout
    assert list(tmp_path.iterdir()) == []


RACER = """
import sys, time
from pathlib import Path
import mlflow.tracking
from src import tracking
uri, go, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
(go.parent / f"ready{seed}").touch()
while not go.exists():  # all eight are imported and waiting: go at the same instant
    time.sleep(0.002)
tracker = tracking.Tracker(uri)  # what each job's tracking process does first
tracker.start(1, "losslab", [f"seed {seed}"], [{"seed": str(seed)}], [{}])
tracker.log_metrics(1, [(1, 0, {"train/loss": [seed / 10]})])
tracker.end(1, ["FINISHED"])
"""


def test_eight_writers_starting_at_once_on_a_fresh_store_all_land(tmp_path, store_uri, client):
    """The race behind parallel jobs, made exact: eight processes create the store, the
    experiment and a run at the same instant. Without the lock in tracking.get_client, 7 of 8
    died on the migrations here."""
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, store_uri, str(go), str(seed)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(8)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready*"))) < 8:  # every racer has imported MLflow
        assert time.monotonic() < deadline and all(r.poll() is None for r in racers)
        time.sleep(0.05)
    go.touch()
    errors = [racer.communicate(timeout=hang(120))[1] for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 8, errors
    runs = runs_of(client)
    assert sorted(r.data.tags["seed"] for r in runs) == [str(seed) for seed in range(8)]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.metrics["train/loss"] for r in runs) == [s / 10 for s in range(8)]
    default = client.get_experiment_by_name("Default")  # no run strayed there (mlflow#4123)
    assert default is None or not client.search_runs([default.experiment_id])


def send_unsent(folder: Path, store_uri: str) -> subprocess.CompletedProcess:
    """`python -m src.unsent <folder>` against ``store_uri``, as a user runs it later."""
    return subprocess.run(
        [sys.executable, "-m", "src.unsent", str(folder)],
        cwd=ROOT,
        env=cli_env(store_uri),
        capture_output=True,
        text=True,
        timeout=hang(120),
    )


def break_folder(folder: Path) -> None:
    """Turn ``folder`` into a file under a live writer. Renaming is atomic: a copy in flight
    lands in the renamed folder, and every later write meets a file. The folder may not exist
    yet (the tracking process writes asynchronously), or be recreated between the two steps."""
    for attempt in itertools.count():
        if folder.is_dir():
            folder.rename(folder.with_name(f"{folder.name}.gone{attempt}"))
        try:
            folder.write_text("not a folder")
            return
        except IsADirectoryError:
            continue


def test_artifact_store_failing_mid_run_marks_the_run_failed_until_its_data_is_sent(
    tmp_path, store_uri, client
):
    """The artifact folder turns into a file mid-run: the figures, checkpoint and model that
    fail are kept on disk, the run ends FAILED and tagged ``unsent`` (never FINISHED with
    holes); once the folder is back, `python -m src.unsent` sends them and the run is
    FINISHED."""
    epochs = 60  # time enough after the epoch-5 checkpoint for the store to break mid-run
    args = [a.replace("max_epochs=20", f"max_epochs={epochs}") for a in SLOW_BCE]
    process = start_cli(tmp_path, store_uri, *args)
    wait_for(tmp_path / "outputs/run/checkpoints/last.ckpt", process)
    break_folder(tmp_path / "mlartifacts")  # the artifact store breaks under the running job
    _, stderr = process.communicate(timeout=hang(120))
    assert process.returncode == 1
    # one line when the store first fails, one at the end (the retry failed too)
    notice, line = [line for line in stderr.splitlines() if line.strip()]
    assert "MLflow could not take the run's data" in notice and "Traceback" not in stderr
    # the reason is named: a write met the file, or (rarely) its folder was renamed mid-copy
    reasons = ("NotADirectoryError", "FileNotFoundError")
    assert line.startswith("losslab: error: run failed: ") and any(r in line for r in reasons)
    (run,) = runs_of(client)
    assert run.info.status == "FAILED"  # not FINISHED with holes
    assert any(r in run.data.tags["error"] for r in reasons)
    unsent = tmp_path / "outputs/run/unsent"
    assert run.data.tags["unsent"] == str(unsent)
    kept = [s for s, _ in history(client, run.info.run_id)]
    assert kept == list(range(1, epochs + 1))  # every epoch kept
    assert "final_test_accuracy" in run.data.metrics
    assert "learning_curves.png" not in {a.path for a in client.list_artifacts(run.info.run_id)}

    (tmp_path / "mlartifacts").unlink()  # the store mended: its folder back, if it had one
    for gone in sorted(tmp_path.glob("mlartifacts.gone*")):
        shutil.copytree(gone, tmp_path / "mlartifacts", dirs_exist_ok=True)
    sent = send_unsent(tmp_path / "outputs", store_uri)
    assert sent.returncode == 0, sent.stderr
    assert list(unsent.iterdir()) == []
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert "error" not in run.data.tags and "unsent" not in run.data.tags
    assert run.data.tags["outcome"] == "ok"  # kept behind the figure, in order
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"learning_curves.png", "checkpoints"} <= artifacts, artifacts


# ---- safe defaults --------------------------------------------------------------------------


SECRETS = ("pw-in-uri-7f3a", "pw-in-env-9c1b")


def test_a_server_that_dies_mid_run_costs_seconds_not_a_hang_and_loses_nothing(tmp_path):
    """The tracking server is killed after epoch 5: training goes on, every later call fails
    at once (not after MLflow's minutes of retries each), one line says where the unsent
    epochs are kept, and the command ends with one line naming the server, exit 1. With the
    server back, `python -m src.unsent` sends every epoch and the run's final status."""
    server, port = start_mlflow_server(tmp_path)
    url = f"http://127.0.0.1:{port}"
    args = [a.replace("max_epochs=20", "max_epochs=60") for a in SLOW_BCE]
    args = [a.replace("log_model=false", "log_model=true") for a in args]
    process = start_cli(tmp_path, url, *args, "logger.flush_every_n_epochs=5")
    wait_for(tmp_path / "outputs/run/checkpoints/last.ckpt", process)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=hang(30))
    started = time.monotonic()
    _, stderr = process.communicate(timeout=hang(240))
    assert process.returncode == 1
    kept = tmp_path / "outputs/run/unsent"
    notice, line = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and f"kept in {kept}" in notice, notice
    assert f"the MLflow server at {url} stopped answering" in line, line
    assert f"python -m src.unsent {kept}" in line, line
    assert time.monotonic() - started < hang(120)
    assert (tmp_path / "outputs/run/checkpoints/last.ckpt").is_file()

    server, port = start_mlflow_server(tmp_path)  # the same store, back
    try:
        sent = send_unsent(tmp_path / "outputs", f"http://127.0.0.1:{port}")
        assert sent.returncode == 0, sent.stderr
        assert " file(s) and 1 model(s) of 1 run(s) to http://127.0.0.1:" in sent.stdout
        assert list(kept.iterdir()) == []  # every run's file and copies sent and removed
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"http://127.0.0.1:{port}")
        (run,) = runs_of(client)
        assert run.info.status == "FINISHED", run.data.tags.get("error")  # nothing was lost
        assert "error" not in run.data.tags
        for key in ("train/loss", "test/loss"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, 61)), (key, steps)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        expected = {"learning_curves.png", "dataset.png", "config", "checkpoints"}
        assert expected <= artifacts, artifacts
        assert client.get_run(run.info.run_id).inputs.dataset_inputs != []
        model = client.get_logged_model(run.data.tags["model"].removeprefix("models:/"))
        assert model.source_run_id == run.info.run_id and model.name.startswith("bce")
        linked = {m.key for m in model.metrics or []}
        assert "final_test_accuracy" in linked, linked  # MLflow linked the finals sent before
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=hang(30))
    import mlflow.pytorch

    (saved,) = [p.parent for p in (tmp_path / "server-artifacts").rglob("MLmodel")]
    assert model.model_id in str(saved)
    net = mlflow.pytorch.load_model(str(saved))
    assert sum(p.numel() for p in net.parameters()) > 0


def test_credentials_never_reach_params_tags_or_artifacts(run_cli, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    base = f"127.0.0.1:{mlflow_server}"
    result = run_cli(
        "loss=mae",
        "trainer.max_epochs=2",
        "logger.log_model=false",
        f"logger.tracking_uri=http://alice:{SECRETS[0]}@{base}",  # shows in overrides and config
        env={
            "MLFLOW_TRACKING_USERNAME": "alice",
            "MLFLOW_TRACKING_PASSWORD": SECRETS[1],
        },
    )
    assert result.returncode == 0, result.stderr
    client = MlflowClient(f"http://{base}")
    (run,) = runs_of(client)
    assert run.info.status == "FINISHED"
    assert run.data.params["logger.tracking_uri"] == f"http://***@{base}"
    assert "logger.tracking_uri=http://***@" in run.data.tags["overrides"]
    recorded = [run.info.run_name, *run.data.params.values(), *run.data.tags.values()]
    folder = Path(client.download_artifacts(run.info.run_id, "config", str(tmp_path / "got")))
    recorded += [path.read_text() for path in folder.iterdir()]
    assert "http://***@" in (folder / "config.yaml").read_text()
    assert not [text for text in recorded if any(secret in text for secret in SECRETS)]
    leaked = [  # the server's database and artifact store, byte for byte
        path
        for path in tmp_path.rglob("*")
        if path.is_file()
        and "outputs" not in path.parts  # Hydra's own local record of the command line
        and any(secret.encode() in path.read_bytes() for secret in SECRETS)
    ]
    assert leaked == []
    hydra_record = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    assert any(SECRETS[0].encode() in p.read_bytes() for p in hydra_record)  # the scan sees it


def test_credentials_in_a_sweeps_tracking_uri_reach_no_run_file_or_output(
    run_cli, tmp_path, mlflow_server
):
    """A sweep: Hydra writes each job's override escaped (http\\://alice\\:PW@...), and the
    parent's run name holds the command line; neither may carry the password anywhere."""
    from mlflow.tracking import MlflowClient

    base = f"127.0.0.1:{mlflow_server}"
    result = run_cli(
        "-m",
        "loss=mae",
        "seed=0,1",
        "trainer.max_epochs=2",
        "logger.log_model=false",
        f"logger.tracking_uri=http://alice:{SECRETS[0]}@{base}",
    )
    assert result.returncode == 0, result.stderr
    assert SECRETS[0] not in result.stdout + result.stderr
    client = MlflowClient(f"http://{base}")
    runs = runs_of(client)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    recorded = [text for r in runs for text in (r.info.run_name, *r.data.tags.values())]
    recorded += [value for r in runs for value in r.data.params.values()]
    for run in runs:
        for folder in ("config", "report"):
            got = tmp_path / "got" / run.info.run_id / folder
            try:
                local = Path(client.download_artifacts(run.info.run_id, folder, str(got)))
            except Exception:
                continue  # a child has no report, the parent no config
            recorded += [path.read_text() for path in local.rglob("*") if path.suffix != ".png"]
    assert any("http://***@" in text or "http\\://***@" in text for text in recorded)
    assert not [text for text in recorded if SECRETS[0] in text]
    leaked = [
        path
        for path in tmp_path.rglob("*")
        if path.is_file()
        and ".hydra" not in path.parts  # Hydra's own local records of the command line
        and path.name != "multirun.yaml"
        and SECRETS[0].encode() in path.read_bytes()
    ]
    assert leaked == []


def test_instantiate_is_fed_project_targets_unless_the_user_widens_the_list():
    from src import config

    foreign = "dataset.generator._target_=mylab.data.make_spirals"
    refused = compose_cfg(foreign)
    trusted = "allowed_target_prefixes=[src.,sklearn.,torch.,mylab.]"
    widened = compose_cfg(foreign, trusted)
    assert config.DEFAULT_TARGET_PREFIXES == (
        "src.",
        "sklearn.datasets.",
        "sklearn.metrics.",
        "torch.nn.functional.",
        "torch.optim.",
    )
    with pytest.raises(config.ConfigError, match="outside the allowed prefixes"):
        config.validate(refused)
    assert config.validate(widened).dataset.generator["_target_"] == "mylab.data.make_spirals"


def test_a_store_locked_mid_run_loses_no_epoch(tmp_path, store_uri, client):
    """The sqlite store is held under an exclusive lock for longer than MLflow waits (its
    busy timeout is 20 s) while the run logs: the batches that fail are kept on disk and sent
    once the store answers again, while the run still trains (80 s, well past the lock), so
    every epoch is in the store; one line says what happened, no traceback."""
    import sqlite3

    process = start_cli(
        tmp_path,
        store_uri,
        "loss=bce",
        "trainer.max_epochs=1000000",
        "trainer.max_time=00:00:01:20",
        "trainer.enable_progress_bar=false",
        "logger.flush_every_n_epochs=5",
        "callbacks.model_checkpoint.every_n_epochs=5",
    )
    wait_for(tmp_path / "outputs/run/checkpoints/last.ckpt", process)
    wait_for_run(client, process)  # locked mid-run, not while its run is created
    connection = sqlite3.connect(store_uri.removeprefix("sqlite:///"), timeout=30)
    connection.execute("BEGIN EXCLUSIVE")
    time.sleep(25)
    connection.rollback()
    connection.close()
    kept = tmp_path / "outputs/run/unsent"
    while process.poll() is None and list(kept.glob("*.jsonl")):
        time.sleep(0.5)
    sent_while_training = process.poll() is None  # tried every 10 s once it failed
    _, stderr = process.communicate(timeout=hang(240))
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "MLflow could not take the run's data" in stderr, stderr  # the lock was hit
    (run,) = runs_of(client)
    assert run.info.status == "FINISHED"
    epochs = int(run.data.tags["stopped_epoch"])  # max_time ended it
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, epochs + 1))
    assert not list(kept.glob("*.jsonl"))  # all sent
    assert sent_while_training


def test_a_kept_status_does_not_overwrite_a_resumed_run(tmp_path, store_uri, client):
    """What a job kept on disk ends with the status it had then; if another process has since
    continued the run (a resume: its own pid in losslab.pid), sending the file adds the kept
    epochs but leaves the newer status alone. A run the reaper closed meanwhile (same pid)
    gets the kept status, which is the truth."""
    from src import tracking, unsent

    experiment = tracking.ensure_experiment(client, "kept")
    resumed = client.create_run(experiment, tags={"losslab.pid": "111"}).info.run_id
    reaped = client.create_run(experiment, tags={"losslab.pid": "222"}).info.run_id
    kept = tmp_path / "outputs" / unsent.FOLDER
    for run_id in (resumed, reaped):
        unsent.keep(kept, run_id, {"metrics": [["train/loss", 0.5, 0, 1]]})
    unsent.keep(kept, resumed, {"status": "KILLED", "owner": "100"})  # before the resume
    unsent.keep(kept, reaped, {"status": "FINISHED", "owner": "222"})
    client.set_terminated(resumed, "FINISHED")  # the resumed job finished it
    client.set_terminated(reaped, "KILLED")  # the reaper: its process was gone
    found = unsent.files([tmp_path])
    assert len(found) == 2
    for path in found:
        assert unsent.send(client, path)["metrics"] == 1
    assert client.get_run(resumed).info.status == "FINISHED"
    assert client.get_run(reaped).info.status == "FINISHED"
    assert unsent.files([tmp_path]) == []


def test_what_is_kept_or_reported_after_a_failure_carries_no_password(tmp_path, store_uri):
    """An MLflow error may quote the tracking URI with its password: it is redacted in the
    tags kept on disk (and so in what src.unsent sends) and in the failures a job prints."""
    from src import tracking, unsent

    quoted = f"MlflowException: API request to http://alice:{SECRETS[0]}@127.0.0.1:5000 failed"
    path = unsent.keep(tmp_path, "run1", {"tags": {"error": quoted}})
    assert SECRETS[0] not in path.read_text() and "http://***@127.0.0.1" in path.read_text()
    tracker = tracking.Tracker(store_uri, models=False)
    tracker.failures.append(quoted)
    (reported,) = tracker.take_failures()
    assert SECRETS[0] not in reported and "http://***@127.0.0.1:5000" in reported


def test_a_text_kept_for_every_member_or_one_lands_in_those_runs(tmp_path, store_uri):
    """A job's text (its config, its traceback) is sent once for all its members; kept on
    disk (the store failed), it is kept in every member's folder, and a text for one member
    in that member's alone."""
    from src import tracking, unsent

    tracker = tracking.Tracker(store_uri, models=False)
    kept = tmp_path / unsent.FOLDER
    tracker._keep_call(kept, ["a", "b"], "log_text", None, "members: 2\n", "config/config.yaml")
    tracker._keep_call(kept, ["a", "b"], "log_text", 1, "Traceback ...\n", "error.txt")
    assert (kept / "a/config/config.yaml").read_text() == "members: 2\n"
    assert (kept / "b/config/config.yaml").read_text() == "members: 2\n"
    assert not (kept / "a/error.txt").exists()
    assert (kept / "b/error.txt").read_text() == "Traceback ...\n"
    assert (kept / "a.jsonl").read_text().splitlines() == [
        '{"artifact": ["a/config/config.yaml", "config"]}'
    ]


def test_a_file_kept_for_every_member_takes_the_disk_once(tmp_path):
    """A file shared by K members' runs (the dataset figure, the preprocessing files) is kept
    once and hard-linked into the other runs' folders; a later version replaces it in every
    run without writing through the links into an earlier one."""
    from src import unsent

    local = tmp_path / "dataset.png"
    local.write_bytes(b"first")
    kept = tmp_path / unsent.FOLDER
    runs = ["a", "b", "c"]
    unsent.keep_file(kept, runs, local, "figures")
    copies = [kept / run / "figures" / "dataset.png" for run in runs]
    assert len({copy.stat().st_ino for copy in copies}) == 1
    assert [copy.read_bytes() for copy in copies] == [b"first"] * 3
    local.write_bytes(b"second")
    unsent.keep_file(kept, ["a"], local, "figures")
    assert [copy.read_bytes() for copy in copies] == [b"second", b"first", b"first"]
    entries = (kept / "b.jsonl").read_text().splitlines()
    assert entries == ['{"artifact": ["b/figures/dataset.png", "figures"]}']
