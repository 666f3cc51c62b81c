"""submitit launchers (SLURM and local) whose sweeps end truthfully.

hydra-submitit's launcher collects results job by job and raises at the first job that ended
without one, while later jobs still run; it leaves a cancelled or timed-out job's runs
RUNNING, and Ctrl-C leaves every job running on the cluster. These launchers:

- wait for every job to end, polling the cluster every ``poll_s`` seconds (submitit's own
  back-off grows to minutes), and print one line per job as it ends;
- close the runs of a job that ended without a result with what SLURM says happened
  (CANCELLED, TIMEOUT, OUT_OF_MEMORY, ...), found by the job's ``job`` tag under the sweep's
  parent, and list a job that never started in the report;
- on Ctrl-C, cancel every queued and running job, wait (bounded) for them to stop, close
  their runs KILLED, and re-raise, so the command exits 130.

conf/hydra/launcher/slurm.yaml and local.yaml select them.
"""

import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import (
    BaseQueueConf,
    LocalQueueConf,
    SlurmQueueConf,
)
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    BaseSubmititLauncher,
    LocalLauncher,
    SlurmLauncher,
)
from omegaconf import OmegaConf, open_dict

# sacct's and squeue's states of a job that is not over yet
UNFINISHED = (
    *("READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED"),
    *("CONFIGURING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING"),
    *("STAGE_OUT", "STOPPED"),
)
# What each way of ending without a result means for the job's runs
ENDINGS = {
    "CANCELLED": ("KILLED", "cancelled on SLURM (scancel)"),
    "TIMEOUT": ("KILLED", "timeout: the job reached its time limit (hydra.launcher.timeout_min)"),
    "PREEMPTED": ("KILLED", "preempted by SLURM"),
    "DEADLINE": ("KILLED", "timeout: the job reached its deadline"),
    "OUT_OF_MEMORY": ("FAILED", "out of memory (hydra.launcher.mem_gb)"),
    "NODE_FAIL": ("FAILED", "its node failed"),
    "BOOT_FAIL": ("FAILED", "its node failed to boot"),
    "INTERRUPTED": ("KILLED", "interrupted: a signal stopped the job's process"),
    "ENDED": (
        "FAILED",
        "ended without a result; SLURM accounting (sacct) is off, so why is unknown",
    ),
}
CANCEL_WAIT_S = 60.0  # after Ctrl-C: how long to wait for cancelled jobs to stop
RESULT_WAIT_S = 15.0  # how long a job that ended normally may take to show its result file
SLURM_CHECK_S = 30  # how often slurmctld checks time limits (its PERIODIC_TIMEOUT)
INTERRUPTED = "cancelled: the sweep was interrupted (Ctrl-C)"  # the reason on its runs


class _TruthfulLauncher(BaseSubmititLauncher):
    """The waiting, closing and cancelling shared by the SLURM and local launchers."""

    def __init__(self, poll_s: float = 5.0, **params: Any) -> None:
        super().__init__(**params)
        self.poll_s = poll_s

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        jobs = self._submit(job_overrides, initial_job_idx)
        try:
            self._wait(jobs, job_overrides, initial_job_idx)
        except KeyboardInterrupt:
            self._cancel(jobs)
            self._close(jobs, job_overrides, initial_job_idx, interrupted=True)
            raise
        return self._close(jobs, job_overrides, initial_job_idx, interrupted=False)

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """In the job, before Hydra sets it up: SLURM's signals become losslab's
        (src/cluster.py), so that none reaches submitit's handler, which would end the job
        without a run."""
        from src import cluster

        cluster.handle_job_signals(self.params.get("max_num_timeout"))
        return super().__call__(*args, **kwargs)

    def _submit(self, job_overrides: Sequence[Sequence[str]], first: int) -> list[Any]:
        """One job array, with hydra-submitit's parameters: those its BaseQueueConf names as
        they are, the others (partition, signal_delay_s, ...) prefixed with the cluster."""
        import submitit

        params = dict(self.params)
        folder = params.pop("submitit_folder")
        timeouts = params.pop("max_num_timeout", None)
        if "signal_delay_s" in params and params.get("timeout_min"):
            params["signal_delay_s"] = early_warning_s(
                int(params["signal_delay_s"]), int(params["timeout_min"])
            )
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=folder,
            **({f"{self._EXECUTOR}_max_num_timeout": timeouts} if timeouts is not None else {}),
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in params.items()}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        state = Singleton.get_state()
        calls = [
            (list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", state)
            for num, overrides in enumerate(job_overrides, start=first)
        ]
        return executor.map_array(self, *zip(*calls))

    def _refresh(self, jobs: list[Any]) -> None:
        """Ask the cluster about the jobs once (local jobs are asked directly, always)."""

    def _state(self, job: Any) -> str:
        """The job's state as last known: RUNNING, FINISHED, INTERRUPTED (a local job)."""
        return str(job.state).split()[0].upper()

    def _over(self, job: Any) -> bool:
        return job.paths.result_pickle.exists() or self._state(job) not in UNFINISHED

    def _wait(self, jobs: list[Any], job_overrides: Sequence[Sequence[str]], first: int) -> None:
        """Until every job has ended; one line per job as it ends."""
        started = time.monotonic()
        pending = dict(enumerate(jobs, start=first))
        shown = {first + k: " ".join(filter_overrides(o)) for k, o in enumerate(job_overrides)}
        polled = -math.inf
        while pending:
            if time.monotonic() - polled >= self.poll_s:
                polled = time.monotonic()
                self._refresh(list(pending.values()))
            for num, job in list(pending.items()):
                if self._over(job):
                    del pending[num]
                    ending = "done" if job.paths.result_pickle.exists() else self._state(job)
                    seconds = time.monotonic() - started
                    print(f"losslab: #{num} {shown[num]}: {ending} ({job.job_id}, {seconds:.0f}s)")
            if pending:
                time.sleep(min(1.0, self.poll_s))

    def _cancel(self, jobs: list[Any]) -> None:
        running = [job for job in jobs if not self._over(job)]
        if not running:
            return
        print(
            f"losslab: interrupted; cancelling {len(running)} job(s) and waiting for them to stop",
            file=sys.stderr,
        )
        for job in running:
            try:
                job.cancel(check=False)
            except OSError:  # the cluster's cancel command is gone: nothing more to do
                return
        deadline = time.monotonic() + CANCEL_WAIT_S
        try:
            while time.monotonic() < deadline:
                self._refresh(jobs)
                if all(self._over(job) for job in jobs):
                    break
                time.sleep(1.0)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting, still close the runs
            pass

    def _close(
        self, jobs: list[Any], job_overrides: Sequence[Sequence[str]], first: int, interrupted: bool
    ) -> list[JobReturn]:
        """Each job's result, or (ended without one) its runs closed with what happened."""
        from src import hydra_callbacks, report, tracking

        sweep = hydra_callbacks.SWEEP
        returns = []
        for num, (job, overrides) in enumerate(zip(jobs, job_overrides), start=first):
            state = self._state(job)
            detail = ""
            if state in ("COMPLETED", "FINISHED", "ENDED"):  # its result file may lag behind
                _await(job.paths.result_pickle, RESULT_WAIT_S)
            if job.paths.result_pickle.exists():
                try:
                    returns.append(job.results()[0])
                    continue
                except Exception as error:  # the job raised, or its result never came
                    detail = (str(error).strip().splitlines() or [""])[-1][:300]
            status, reason = ENDINGS.get(state, ("FAILED", f"the job ended {state}"))
            if interrupted:
                status, reason = "KILLED", INTERRUPTED
            reason = f"{reason} [{self._EXECUTOR} job {job.job_id}, {state}]"
            if detail:
                reason += f": {detail}"
            found = 0
            if sweep.parent_run_id is not None:
                tags = {"slurm.state": state} if self._EXECUTOR == "slurm" else {}
                found = tracking.writer(sweep.uri).call(
                    "close_job", sweep.parent_run_id, num, status, reason, tags
                )
            if not found:  # it never started a run: the report lists it from its folder
                report.record_lost_job(self._job_dir(overrides, num), overrides, reason)
            returns.append(_ended(overrides, num))
        if sweep.parent_run_id is not None:  # every job has ended: nothing can close these
            status, left = (
                ("KILLED", INTERRUPTED)
                if interrupted
                else ("FAILED", "its job ended without closing it (its tracking process was gone)")
            )
            tracking.writer(sweep.uri).call("close_orphans", sweep.parent_run_id, status, left)
        return returns

    def _job_dir(self, overrides: Sequence[str], num: int) -> Path:
        """The job's output folder, as Hydra would have named it."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = num
        return Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir)


def early_warning_s(asked: int, timeout_min: int) -> int:
    """``signal_delay_s`` as SLURM will honour it. slurmctld checks time limits every
    SLURM_CHECK_S seconds and sends the warning at the first check that finds the job within
    ``delay + SLURM_CHECK_S`` of its limit: with a short limit that is its first check, at any
    moment of the job's start-up (measured: @10 and @30 on a 1-minute job came 20-21 s after
    the start). The delay is kept to what leaves the job SLURM_CHECK_S seconds to start;
    0 (a 1-minute limit) asks for no warning at all."""
    return max(0, min(asked, timeout_min * 60 - 2 * SLURM_CHECK_S))


def _await(path: Path, seconds: float) -> None:
    """Until ``path`` exists (a shared file system can show it late), at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)


def _ended(overrides: Sequence[str], num: int) -> JobReturn:
    """The return of a job that ended without one: NaN, like a job whose run failed (the
    sweep's report counts it from MLflow or its folder)."""
    ended = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=math.nan)
    ended.hydra_cfg = None
    ended.task_name = f"job {num}"
    return ended


class LosslabSlurmLauncher(_TruthfulLauncher, SlurmLauncher):
    _EXECUTOR = "slurm"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._accounting: bool | None = None  # whether sacct answers (asked once)
        self._queue: dict[str, str] = {}  # squeue's job id -> state, without accounting

    def _refresh(self, jobs: list[Any]) -> None:
        """One sacct call answers for every job of the sweep. Without accounting, sacct
        fails, and submitit would wait forever for a job that ended without a result: then
        squeue is asked instead, and a job it no longer lists has ended."""
        if not jobs:
            return
        if self._accounting is None:
            probe = ["sacct", "-n", "-X", "-o", "JobID", "-j", jobs[0].job_id.split("_")[0]]
            self._accounting = (
                subprocess.run(probe, capture_output=True, timeout=60).returncode == 0
            )
            if not self._accounting:
                print(
                    "losslab: SLURM accounting is off (sacct fails): jobs are followed with "
                    "squeue, and why a job ended without a result cannot be known",
                    file=sys.stderr,
                )
        if self._accounting:
            jobs[0].watcher.update()
            return
        # all of this user's jobs: `squeue -j <id>` fails for an id SLURM has forgotten
        listed = subprocess.run(
            ["squeue", "--me", "-h", "--array", "-o", "%i %T"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if listed.returncode == 0:  # else the controller does not answer: ask again later
            self._queue = dict(line.split() for line in listed.stdout.splitlines() if line)
            for job in jobs:
                self._queue.setdefault(job.job_id, "ENDED")

    def _state(self, job: Any) -> str:
        """sacct's state as last asked: CANCELLED (not 'CANCELLED by 0'); without
        accounting, squeue's, or ENDED once squeue no longer lists the job."""
        if self._accounting is False:
            return self._queue.get(job.job_id, "UNKNOWN")
        state = job.watcher.get_state(job.job_id, mode="cache")
        return str(state).split()[0].upper() if state else "UNKNOWN"


class LosslabLocalLauncher(_TruthfulLauncher, LocalLauncher):
    _EXECUTOR = "local"


@dataclass
class LosslabSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.losslab.launcher.LosslabSlurmLauncher"
    poll_s: float = 5.0  # how often the cluster is asked about the jobs (sacct)


@dataclass
class LosslabLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.losslab.launcher.LosslabLocalLauncher"
    poll_s: float = 1.0


ConfigStore.instance().store(group="hydra/launcher", name="losslab_slurm", node=LosslabSlurmConf)
ConfigStore.instance().store(group="hydra/launcher", name="losslab_local", node=LosslabLocalConf)
