"""What the tracking store could not take, kept on local disk and sent later.

When MLflow fails mid-run (a server that died or hangs, a sqlite store locked for longer than
its timeout), training goes on and everything of each run that could not be written is kept
in ``<output dir>/unsent/``: ``<run id>.jsonl`` lists it in order (epoch metrics, tags,
dataset inputs, artifacts, models, the final status) and ``<run id>/`` holds the artifacts'
copies and the pickled models. Once one call of a job is kept, the job's later calls are kept
behind it, so they reach the store in the order they were made. They are sent once the store
answers again (the tracking process tries every 10 s while the runs train, and when they
end), or later by::

    python -m src.unsent <output dir | sweep dir> [...]

which sends every such file under the folders to ``$MLFLOW_TRACKING_URI`` (else ./mlflow.db),
skips the epochs and the model the store already holds, and deletes each run's data once all
of it is in.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from src import bulk_writes

FOLDER = "unsent"


def keep(folder: Path, run_id: str, entry: dict[str, Any]) -> Path:
    """Append one entry (``metrics``: [[key, value, timestamp, step], ...], ``tags``,
    ``input``, ``artifact``, ``model`` or ``status``) to the run's file; returns the file.
    Tags are redacted here: an error message may quote a tracking URI with its password."""
    from src import store

    if "tags" in entry:
        entry = {**entry, "tags": {k: store.redact(str(v)) for k, v in entry["tags"].items()}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.jsonl"
    with path.open("a") as file:
        file.write(json.dumps(entry) + "\n")
    return path


def keep_file(
    folder: Path, run_ids: Sequence[str], local: Path, artifact_folder: str | None
) -> None:
    """A copy of the file as it is now (a checkpoint is overwritten by the next epochs), for
    each of the runs: one copy, hard-linked into the other runs' folders, so a file shared by
    K members does not take K times the disk."""
    first: Path | None = None
    for run_id in run_ids:
        copy = folder / run_id / (artifact_folder or "") / local.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.unlink(missing_ok=True)  # an earlier version of it, or a link to one
        if first is None:
            shutil.copyfile(local, copy)
            first = copy
        else:
            try:
                os.link(first, copy)
            except OSError:  # a file system without hard links
                shutil.copyfile(first, copy)
        keep(folder, run_id, {"artifact": [str(copy.relative_to(folder)), artifact_folder]})


def keep_text(folder: Path, run_id: str, text: str, artifact_path: str) -> None:
    copy = folder / run_id / artifact_path
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(text)
    artifact_folder = str(Path(artifact_path).parent)
    entry = [str(copy.relative_to(folder)), None if artifact_folder == "." else artifact_folder]
    keep(folder, run_id, {"artifact": entry})


def keep_model(folder: Path, run_id: str, name: str, model: Any, example: Any, **how: Any) -> None:
    """The model and its input example pickled by torch (read back only by ``send``, from the
    user's own output folder); ``how``: ``tracking.ModelToLog``'s other fields."""
    import torch

    saved = folder / run_id / f"{name}.model.pt"
    saved.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "input_example": example}, saved)
    keep(folder, run_id, {"model": {"file": str(saved.relative_to(folder)), "name": name, **how}})


def send(client: Any, path: Path) -> Counter[str]:
    """Send one run's file, in the order it was kept, then delete it and its folder; returns
    what was new to the store: ``metrics`` (values), ``files`` and ``models``. The status goes
    last, so a run is closed only once all of it is in; a model goes after the final metrics,
    which are then linked to it."""
    from src import tracking

    run_id, folder = path.stem, path.parent
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [row for entry in entries for row in entry.get("metrics", [])]
    held = {
        (key, m.step)
        for key in {row[0] for row in rows}
        for m in client.get_metric_history(run_id, key)
    }
    new = [(k, v, t, s) for k, v, t, s in rows if (k, s) not in held]
    bulk_writes.log_history(client, run_id, new)
    sent = Counter(metrics=len(new))
    for entry in entries:
        if "input" in entry:
            client.log_inputs(run_id, datasets=[tracking.dataset_input(entry["input"])])
        if "artifact" in entry:
            local, artifact_folder = entry["artifact"]
            client.log_artifact(run_id, str(folder / local), artifact_folder)
            sent["files"] += 1
        if "model" in entry:
            sent["models"] += _send_model(client, run_id, folder, **entry["model"])
        if entry.get("tags"):
            tracking.log_tags(client, run_id, entry["tags"])
        if entry.get("untag"):  # what the run said while this waited here
            held_tags = client.get_run(run_id).data.tags
            for key in (key for key in entry["untag"] if key in held_tags):
                client.delete_tag(run_id, key)
    closing = [entry for entry in entries if "status" in entry]
    if closing and _still_ours(client, run_id, closing[-1].get("owner")):
        client.set_terminated(run_id, closing[-1]["status"])
    path.unlink()
    shutil.rmtree(folder / run_id, ignore_errors=True)
    return sent


def _still_ours(client: Any, run_id: str, owner: str | None) -> bool:
    """Whether the kept status is still the run's truth: not if another process has continued
    the run since (a resume records its own pid in ``losslab.pid``). A run the reaper closed
    KILLED meanwhile keeps its pid, and gets its true status."""
    return owner is None or client.get_run(run_id).data.tags.get("losslab.pid") == owner


def _send_model(client: Any, run_id: str, folder: Path, file: str, **how: Any) -> bool:
    """Log the kept model, then its run's final metrics again, linked to it (they were sent
    before it, without its id); False if the run already has it."""
    import time

    import torch
    from mlflow.entities import Metric

    from src import tracking

    run = client.get_run(run_id)
    if "model" in run.data.tags:  # sent by an earlier try that failed later on
        return False
    saved = torch.load(folder / file, weights_only=False)
    logged: dict[str, str] = {}
    entry = tracking.ModelToLog(
        run_id, run.data.params, model=saved["model"], input_example=saved["input_example"], **how
    )
    tracking.log_models(client, run.info.experiment_id, [entry], logged)
    model_id = logged[run_id]
    now = int(time.time() * 1000)
    finals = [
        Metric(key, value, now, 0, model_id=model_id)
        for key, value in tracking.run_metrics(run).items()
        if key.startswith("final_")
    ]
    client.log_batch(run_id, metrics=finals)
    return True


def files(folders: Sequence[Path]) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob(f"{FOLDER}/*.jsonl"))


HELP = """usage: python -m src.unsent <output dir | sweep dir> [...]

Send what MLflow could not take during a run (epoch metrics, tags, figures and other
artifacts, models and final statuses, kept in <output dir>/unsent/) to $MLFLOW_TRACKING_URI
(else ./mlflow.db). Epochs and models the store already holds are skipped; each run's data is
deleted once all of it is in. Safe to run again.
"""


def main(argv: Sequence[str]) -> int:
    from src import store, tracking
    from src.config import ConfigError

    if not argv or any(arg in ("-h", "--help") for arg in argv):
        print(HELP, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    folders = [Path(arg) for arg in argv]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        print(f"losslab: error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 1
    found = files(folders)
    if not found:
        print(f"losslab: nothing unsent under {', '.join(argv)}")
        return 0
    uri = store.resolve_uri(None)
    try:
        store.check(uri, read_only=True)
    except ConfigError as error:
        print(f"losslab: error: {error}", file=sys.stderr)
        return 1
    import mlflow  # (quiet_mlflow sets its loggers after this import)

    tracking.quiet_mlflow()
    client = tracking.get_client(uri)
    mlflow.set_tracking_uri(uri)  # models' artifacts are written the fluent way (log_model)
    sent: Counter[str] = Counter()
    failed = 0
    for path in found:
        try:
            sent += send(client, path)
        except Exception as error:  # the store still fails: the file stays for next time
            failed += 1
            reason = store.redact(" ".join(str(error).split()))[:300]
            print(f"losslab: could not send {path}: {reason}", file=sys.stderr)
    done = len(found) - failed
    print(
        f"losslab: sent {sent['metrics']} metric value(s), {sent['files']} file(s) and "
        f"{sent['models']} model(s) of {done} run(s) to {store.redact(uri)}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    from src import quick_exit

    quick_exit.run(
        lambda: sys.exit(main(sys.argv[1:])),
        interrupted="interrupted; what was not sent stays in its files: run the command again",
    )
