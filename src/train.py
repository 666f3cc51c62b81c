"""Entry point: ``python -m src.train loss=msle`` or ``python -m src.train -m loss=mse,bce``.

Only Hydra and OmegaConf are imported here: the config is composed and validated before torch,
Lightning or MLflow is loaded, so a mistake is reported at once, in one line.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src import (
    INTERRUPTED,
    cluster,
    config,
    hydra_callbacks,
    override_policy,
    quick_exit,
    store,
    tracking,
)
from src.cli import one_line_error
from src.config import ConfigError
from src.frozen_imports import frozen_imports

config.register()
# A full disk or a vanished log folder must not turn every later log line into a logging
# traceback (378 lines on a disk that filled mid-run): the run's own error says it once.
logging.raiseExceptions = False
SWITCHES = ("-m", "--multirun", "-r", "--run", "--resolve")  # Hydra flags that take no value


class RunFailed(ConfigError):
    """A run that started but could not finish (it is marked FAILED in MLflow)."""


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    quick_exit.raise_if_interrupted()
    typed = config.validate(cfg)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN

    # Third-party warnings (Lightning's srun hint, deprecations) go to the job's log file
    # (the py.warnings logger of conf/hydra/job_logging/losslab.yaml), not to the console.
    logging.captureWarnings(True)
    # losslab's launchers did this before Hydra's job set-up; hydra-submitit's own did not
    cluster.handle_job_signals(hc.launcher.get("max_num_timeout"))
    if not multirun and "src.experiment" not in sys.modules:  # seconds of silence otherwise
        shown = " ".join(hc.overrides.task) or "defaults"
        print(f"losslab: {shown}: loading torch and Lightning", flush=True)
    with frozen_imports():  # heavy imports, after validation
        from src.experiment import JobContext, run

    job = JobContext(
        overrides=list(hc.overrides.task),
        output_dir=Path(hc.runtime.output_dir),
        sweep_dir=Path(hc.sweep.dir) if multirun else None,
        job_num=hc.job.num if multirun else None,
    )
    try:
        return run(cfg, typed, job)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # a started run is already marked FAILED in MLflow
        if isinstance(error, ConfigError) and not multirun:  # refused before any run started
            raise hydra_callbacks.Abort() from error  # one line, as a bad override gets
        reason = " ".join(str(error).split())  # one line, even for a multi-line message
        shown = " ".join(job.overrides) or "defaults"
        message = store.redact(f"{shown}: {type(error).__name__}: {reason}")
        if multirun:  # let the other jobs run; the sweep reports failures at the end
            print(f"#{job.job_num} FAILED {message}", file=sys.stderr)
            (job.output_dir / "error.txt").write_text(message + "\n")  # for the report
            return math.nan
        # Abort, not an Exception: Hydra would print its own "Error executing job" line first.
        raise hydra_callbacks.Abort() from RunFailed(f"run failed: {message}")


def _check_arguments() -> bool:
    """Hydra's argparse answers a bad flag with ten lines of usage and cannot take a switch
    after an override (`loss=mse -m seed=0,1`): move switches first, then parse once with
    Hydra's own parser so a mistake becomes one line. Returns whether the command runs
    (not --help, --cfg, --info or shell completion)."""
    args = sys.argv[1:]
    sys.argv[1:] = [a for a in args if a in SWITCHES] + [a for a in args if a not in SWITCHES]
    parser = get_args_parser()

    def fail(message: str) -> NoReturn:
        raise ConfigError(f"{message} (python -m src.train --help lists the options)")

    parser.error = fail  # type: ignore[method-assign]
    parsed = parser.parse_args(sys.argv[1:])
    override_policy.check(parsed.overrides)
    shown = parsed.help or parsed.hydra_help or parsed.cfg or parsed.info
    return not (shown or parsed.shell_completion)


def cli() -> None:
    """Run Hydra, turning user mistakes into one line and failed sweeps into exit code 1."""
    cluster.stop_on_sigterm()
    full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's printer

    try:
        if _check_arguments():
            # Its MLflow import (1.5 s) overlaps Hydra's composing now, not the job's start.
            tracking.prestart()
        hydra_callbacks.compose_primary_once()
        main()
    except KeyboardInterrupt as stop:
        killed = hydra_callbacks.close_sweep("KILLED") or isinstance(stop, tracking.RunsKilled)
        said = "; runs are marked KILLED in MLflow" if killed else ""  # none began, or all ended
        print(f"losslab: interrupted{said}", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except (Exception, hydra_callbacks.Abort) as caught:
        hydra_callbacks.close_sweep("FAILED")
        error = caught.__cause__ if isinstance(caught, hydra_callbacks.Abort) else caught
        line = one_line_error(error)
        if line is None or full_error:
            raise error from None
        print(f"losslab: error: {store.redact(line)}", file=sys.stderr)
        sys.exit(1)
    if hydra_callbacks.SWEEP.failures:
        print(f"losslab: {hydra_callbacks.SWEEP.summary}", file=sys.stderr)
        sys.exit(1)
    if hydra_callbacks.SWEEP.summary:
        print(f"losslab: {hydra_callbacks.SWEEP.summary}")


if __name__ == "__main__":
    quick_exit.run(cli)
