"""What a job needs to know of the cluster it runs on: its SLURM job id, how SLURM's signals
end it, and whether SLURM restarted it (a requeue after preemption or a time-out).

SLURM ends a job by sending SIGTERM to every process of the job (``scancel``, the time
limit, preemption), and SIGKILL ``KillWait`` seconds later. submitit ignores SIGTERM in its
jobs; losslab turns it into the same stop as Ctrl-C, so the runs are marked KILLED with what
they logged so far while the tracking process (which ignores SIGTERM: src/writer.py) is
still there to record it. The launcher (hydra_plugins/losslab/launcher.py) then adds what
SLURM knows and the job cannot: why the job ended (CANCELLED, TIMEOUT, ...).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def job_id() -> str | None:
    """The SLURM job id as squeue, sacct and submitit show it (``<array>_<task>`` for a job
    of an array), or None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def tags() -> dict[str, str]:
    """Tags that tie a run to its SLURM job, and how often SLURM restarted the job."""
    found = job_id()
    if found is None:
        return {}
    node = os.environ.get("SLURMD_NODENAME", "")
    return {"slurm.job_id": found, "slurm.node": node, "slurm.restarts": str(restarts())}


def restarts() -> int:
    """How often SLURM restarted this job (requeued after preemption or ``scontrol
    requeue``); 0 for a first start and outside SLURM."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def requeued_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint a requeued job continues from: the one its first start left in its
    output folder (a job keeps its folder across restarts). None for a first start."""
    last = output_dir / "checkpoints" / "last.ckpt"
    return last if restarts() > 0 and last.is_file() else None


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM ends a run like Ctrl-C: marked KILLED, metrics and checkpoint kept."""
    signal.signal(signal.SIGTERM, _stop)


def _warned(signum: int, frame: object) -> None:
    log.warning("SLURM signalled that this job will be stopped soon (time limit or preemption)")


def handle_job_signals(max_num_timeout: int | None) -> None:
    """In a submitit job (SLURM or local): SIGTERM stops the job like Ctrl-C. submitit's
    early-warning signal (SIGUSR2, ``signal_delay_s`` before the time limit) is left to
    submitit when the job may be requeued (``hydra.launcher.max_num_timeout`` > 0: it requeues
    the job, which then resumes from its checkpoint); otherwise it is only logged, so the job
    uses all of its time instead of failing ``signal_delay_s`` early."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return
    stop_on_sigterm()
    if int(max_num_timeout or 0) <= 0:  # submitit's signal: SIGUSR2 unless named otherwise
        early = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        signal.signal(getattr(signal, f"SIG{early}"), _warned)
