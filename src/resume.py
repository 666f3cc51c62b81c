"""`resume=<run id or checkpoint>`: find the checkpoint and the MLflow runs it continues.

A checkpoint names its runs (callbacks.TRACKING_KEY); a run id finds its checkpoint in the
run's output folder, or else in its artifacts. The runs must be in the current store, not
FINISHED, and the settings that decide the numbers must match what the runs were started with:
a resumed run then ends with the numbers of an uninterrupted one.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from src import store, tracking
from src.callbacks import TRACKING_KEY
from src.config import ConfigError, without_hydra

RUN_ID = re.compile(r"[0-9a-f]{32}")
# Settings a resumed run may change: they do not alter the numbers up to the old last epoch.
FREE_KEYS = (
    "resume",
    "trainer.max_epochs",
    "trainer.enable_progress_bar",
    "callbacks.model_checkpoint.every_n_epochs",
    "logger.",
)


@dataclass
class Resume:
    checkpoint: Path
    run_ids: list[str]  # one per member, in member order
    epoch: int  # epochs the checkpoint has trained
    logged: int  # epochs of metrics the runs already hold


def locate(target: str, uri: str, cfg: DictConfig) -> Resume:
    """Resolve ``target`` against the store at ``uri``; ``cfg`` (this invocation's settings)
    must match what the runs were started with, but for FREE_KEYS."""
    checkpoint = Path(target).expanduser()
    if not checkpoint.is_file() and not RUN_ID.fullmatch(target):
        raise ConfigError(f"resume={target} is neither a checkpoint file nor an MLflow run id")
    if uri.startswith("sqlite:///") and not store.sqlite_path(uri).is_file():
        raise ConfigError(f"resume: the MLflow store {uri} does not exist; nothing to resume")
    client = tracking.get_client(uri)
    if not checkpoint.is_file():
        checkpoint = _checkpoint_of(client, _run(client, target, uri))
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception:  # not a torch file at all
        state = None
    tracked = state.get(TRACKING_KEY) if isinstance(state, dict) else None
    if not tracked:
        raise ConfigError(f"resume: {checkpoint} is not a losslab checkpoint")
    run_ids = tracked["run_ids"]
    # A job names its runs on a SQL store and checkpoints before the store has created them
    # (RunSet.start): a job stopped in that moment left a checkpoint of runs that never were.
    never = "its job stopped before the store created it (start it again instead), or"
    runs = [_run(client, run_id, uri, never) for run_id in run_ids]
    for run in runs:
        if run.info.status == "FINISHED":
            raise ConfigError(f"resume: run {run.info.run_id} already FINISHED; nothing to resume")
    settings = OmegaConf.to_container(without_hydra(cfg), resolve=True, enum_to_str=True)
    _same_settings(runs[0], tracking.flatten(settings))  # runs[0] has seed=cfg.seed
    return Resume(
        checkpoint=checkpoint,
        run_ids=list(run_ids),
        epoch=tracked["epochs"],
        logged=tracking.logged_epochs(client, run_ids[0]),
    )


def _run(client: Any, run_id: str, uri: str, or_else: str = "") -> Any:
    """The run, or one line that says why it is not there (``or_else``: a likelier reason)."""
    try:
        return client.get_run(run_id)
    except MlflowException:
        fix = f"{or_else} set" if or_else else "set"
        raise ConfigError(
            f"resume: no run {run_id} in the MLflow store {store.redact(uri)}; {fix} "
            "MLFLOW_TRACKING_URI to the store the run was tracked in"
        ) from None


def _checkpoint_of(client: Any, run: Any) -> Path:
    """The run's local last.ckpt when its output folder still has it, else its artifact."""
    local = Path(run.data.tags.get("output_dir", "")) / "checkpoints" / "last.ckpt"
    if local.is_file():
        return local
    # the job's checkpoint lives in its first member's run (tag checkpoint=runs:/<id>/...)
    holder = run.data.tags.get("checkpoint", f"runs:/{run.info.run_id}/").split("/")[1]
    found = tracking.download_checkpoint(
        client, holder, Path(tempfile.mkdtemp(prefix="losslab-resume-"))
    )
    if found is None:
        raise ConfigError(
            f"resume: run {run.info.run_id} has no checkpoint (it stopped before the first "
            "one; see callbacks.model_checkpoint.every_n_epochs); start it again instead"
        )
    return found


def _same_settings(run: Any, params: dict[str, Any]) -> None:
    started = run.data.params
    differ = [
        key
        for key in sorted(started.keys() & params.keys())
        if not key.startswith(FREE_KEYS)
        and started[key] != store.redact(str(params[key]))[: tracking.PARAM_VALUE_MAX]
    ]
    if differ:
        shown = ", ".join(f"{k}={started[k]} (now {params[k]})" for k in differ[:3])
        raise ConfigError(
            f"resume: run {run.info.run_id} was started with {shown}; repeat its overrides "
            f"({run.data.tags.get('overrides') or 'none'}) beside resume="
        )
