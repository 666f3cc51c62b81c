"""What the tracking store could not take, kept on local disk and sent later.

When MLflow fails mid-run (a server that died or hangs, a sqlite store locked for longer than
its timeout), training goes on and each run's epoch metrics, tags and final status that
could not be written are appended to ``<output dir>/unsent/<run id>.jsonl``. They are sent
when the run ends, if the store answers again by then, or later by::

    python -m src.unsent <output dir | sweep dir> [...]

which sends every such file under the folders to ``$MLFLOW_TRACKING_URI`` (else ./mlflow.db),
skips the epochs the store already holds, and deletes each file once all of it is in.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FOLDER = "unsent"


def keep(folder: Path, run_id: str, entry: dict[str, Any]) -> Path:
    """Append one entry (``metrics``: [[key, value, timestamp, step], ...], ``tags``, or
    ``status``) to the run's file; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.jsonl"
    with path.open("a") as file:
        file.write(json.dumps(entry) + "\n")
    return path


def send(client: Any, path: Path) -> int:
    """Send one run's file and delete it; returns how many metric values were new. The
    status goes last, so a run is closed only once its metrics are in."""
    from mlflow.entities import Metric

    from src.tracking import BATCH_LIMIT

    run_id = path.stem
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [row for entry in entries for row in entry.get("metrics", [])]
    held = {
        (key, m.step)
        for key in {row[0] for row in rows}
        for m in client.get_metric_history(run_id, key)
    }
    new = [Metric(k, v, t, s) for k, v, t, s in rows if (k, s) not in held]
    for i in range(0, len(new), BATCH_LIMIT):
        client.log_batch(run_id, metrics=new[i : i + BATCH_LIMIT])
    for entry in entries:
        for key, value in entry.get("tags", {}).items():
            client.set_tag(run_id, key, value)
    statuses = [entry["status"] for entry in entries if "status" in entry]
    if statuses:
        client.set_terminated(run_id, statuses[-1])
    path.unlink()
    return len(new)


def files(folders: Sequence[Path]) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob(f"{FOLDER}/*.jsonl"))


HELP = """usage: python -m src.unsent <output dir | sweep dir> [...]

Send the epoch metrics, tags and final statuses that MLflow could not take during a run (kept
in <output dir>/unsent/) to $MLFLOW_TRACKING_URI (else ./mlflow.db). Epochs the store already
holds are skipped; each file is deleted once all of it is in. Safe to run again.
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
    tracking.quiet_mlflow()
    client = tracking.get_client(uri)
    sent = failed = 0
    for path in found:
        try:
            sent += send(client, path)
        except Exception as error:  # the store still fails: the file stays for next time
            failed += 1
            reason = store.redact(" ".join(str(error).split()))[:300]
            print(f"losslab: could not send {path}: {reason}", file=sys.stderr)
    done = len(found) - failed
    print(f"losslab: sent {sent} metric value(s) of {done} run(s) to {store.redact(uri)}")
    return 1 if failed else 0


if __name__ == "__main__":
    from src import quick_exit

    quick_exit.run(lambda: sys.exit(main(sys.argv[1:])))
