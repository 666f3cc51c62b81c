"""``python -m bench.run``: losslab against the plain-PyTorch baseline, on the same work.

The machine is shared and noisy, so every comparison alternates baseline and losslab (A/B,
B/A, ...) inside one invocation and reports the ratio losslab / baseline of each pair as
min / median / max, beside the absolute figures. Parts (``--only``):

  commands what the user waits for: whole commands from the shell (imports, store, runs,
           figures, models, exit), each against the baseline doing the same work in one
           process: one study run, the five-loss sweep, 5 losses x 10 seeds; on the bench's
           store (existing) and on a new store per command (fresh); with each phase's
           seconds (start-up, imports and store, jobs, report and exit) and the page-cache
           refaults of each side. --beside N runs it all beside N CPU-bound processes (a busy
           machine; --apart: each in a session of its own); --pause S waits S seconds before
           every timed command (a user reading results between commands: a machine that
           reclaims idle page cache, as this one does, then reads the command's files from
           disk again); --commands picks some of single, five, fifty
  single   one study run per loss, fit only; losslab through experiment.run (Trainer, module,
           callbacks, checkpoints, MLflow); also how long the job waits on MLflow, alone and
           as a sweep's jobs (which leave the waiting to the sweep's end)
  sweep    the five-loss sweep end to end: one ``python -m src.train -m loss=...`` against the
           baseline's five runs in one process, imports included
  members  5 losses x 10 seeds: members=10 per loss (fit only, in process) against 50 baseline
           runs; with --e2e also the batched seed sweep through the CLI
  lightning what each Lightning feature (callbacks, schedulers, dropout and norm, clipping,
           precision) adds per epoch to a study fit, against callbacks=none (in process)
  launchers the 5-loss x 5-seed sweep end to end on the default launcher (in process), on
           SLURM (when `scontrol ping` answers: `make slurm`) and on submitit-local, with where
           SLURM's time goes (queue wait, job run time) from sacct
  startup  time to report a config mistake, and --help
  scaling  regression with 1e4, 1e5, 1e6 rows, batch 32 and 1024: fit time and peak memory,
           each in a fresh process
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import bench

ROOT = Path(__file__).resolve().parent.parent
LOSSES = ("mse", "msle", "mae", "bce", "hinge")
PARTS = ("commands", "single", "sweep", "members", "lightning", "launchers", "startup", "scaling")
# What Lightning features cost per epoch: each against callbacks=none on the same loss.
LIGHTNING = {
    "default (last.ckpt every 10 epochs)": [],
    "early_stopping": [
        "callbacks=[default,early_stopping]",
        "callbacks.early_stopping.patience=1000",
    ],
    "model_checkpoint (top-3, every epoch)": ["callbacks=[default,model_checkpoint]"],
    "scheduler=step": ["scheduler=step"],
    "scheduler=plateau": ["scheduler=plateau"],
    "model.dropout=0.2 model.norm=batch": ["model.dropout=0.2", "model.norm=batch"],
    "trainer.gradient_clip_val=1": ["trainer.gradient_clip_val=1"],
    "trainer.precision=bf16-mixed": ["trainer.precision=bf16-mixed"],
}


def spread(values: list[float]) -> str:
    """min / median / max."""
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def table(header: tuple[str, ...], rows: list[tuple]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print(flush=True)


def alternate(a: Callable[[], float], b: Callable[[], float], repeats: int) -> list[tuple]:
    """(a, b) timings, in the order A B, B A, A B, ... so drift in load hits both sides."""
    pairs = []
    for i in range(repeats):
        if i % 2 == 0:
            first = a()
            pairs.append((first, b()))
        else:
            second = b()
            pairs.append((a(), second))
    return pairs


# ---------------------------------------------------------------------------- in process
class Stopwatch:
    """Sums the wall time spent in chosen functions (wrapped in place, for this process)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.depth = 0

    def wrap(self, owner: object, name: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            self.depth += 1
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.total += time.perf_counter() - started

        setattr(owner, name, timed)

    def take(self) -> float:
        total, self.total = self.total, 0.0
        return total


class Losslab:
    """Runs losslab in this process through experiment.run, timing Trainer.fit, the time the
    job spends on MLflow (handing work to the tracking process, and waiting for it), and the
    tracking process's own time per kind of work."""

    KINDS: ClassVar[dict[str, tuple[str, ...]]] = {  # the tracking process's methods, by kind
        "metrics": ("log_metrics",),
        "runs": ("start", "log_text", "log_file", "end"),
        "figures": ("log_dataset", "log_learning_curves"),
        "model": ("log_models",),
    }

    def __init__(self, store: Path) -> None:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
        import pytorch_lightning as pl
        from hydra import compose, initialize_config_dir

        from src import config, experiment, tracking, writer

        config.register()
        self.config, self.experiment, self.tracking = config, experiment, tracking
        self.compose, self.initialize = compose, initialize_config_dir
        self.out = store / "outputs"
        self.uri = os.environ["MLFLOW_TRACKING_URI"]
        self.fit, self.blocked = Stopwatch(), Stopwatch()
        self.fit.wrap(pl.Trainer, "fit")
        for name in ("send", "result"):
            self.blocked.wrap(writer.Writer, name)

    def run(self, overrides: list[str]) -> dict[str, float]:
        with self.initialize(config_dir=str(self.config.CONF_DIR), version_base="1.3"):
            cfg = self.compose("config", overrides=overrides)
        typed = self.config.validate(cfg)
        job = self.experiment.JobContext(overrides, self.out, None, None)
        started = time.perf_counter()
        self.experiment.run(cfg, typed, job)
        total = time.perf_counter() - started
        return {"fit": self.fit.take(), "blocked": self.blocked.take(), "total": total}

    def close(self) -> None:
        """Wait for the tracking process's last writes, and stop it."""
        self.tracking.writer(self.uri).close()

    def background(self) -> dict[str, float]:
        """The tracking process's seconds per kind of work since the last ask (waits for it)."""
        seconds = self.tracking.writer(self.uri).call("__seconds__")
        self.blocked.take()  # asking is not the job's time
        kinds = {k: sum(seconds.get(m, 0.0) for m in ms) for k, ms in self.KINDS.items()}
        return {**kinds, "all": sum(seconds.values())}


def part_single(lab: Losslab, repeats: int, epochs: int | None, callbacks: str) -> None:
    from bench import baseline

    print(
        f"## (1) one study run per loss, fit only, callbacks={callbacks} "
        "(in process, alternating A/B)\n"
    )
    extra = ["trainer.enable_progress_bar=false", f"callbacks={callbacks}"]
    if epochs:
        extra.append(f"trainer.max_epochs={epochs}")
    rows = []
    for loss in LOSSES:
        data = baseline.make_data(baseline.STUDIES[loss])
        lab.run([f"loss={loss}", *extra])  # warm-up: first-call imports, store creation
        lab.background()
        baseline.train(loss, 0, data, epochs)
        runs: list[dict[str, float]] = []

        def ours(loss: str = loss, runs: list = runs) -> float:
            runs.append(lab.run([f"loss={loss}", *extra]))
            runs[-1].update({f"bg {k}": v for k, v in lab.background().items()})
            return runs[-1]["fit"]

        def theirs(loss: str = loss, data: tuple = data) -> float:
            started = time.perf_counter()
            baseline.train(loss, 0, data, epochs)
            return time.perf_counter() - started

        pairs = alternate(theirs, ours, repeats)

        def median(key: str, runs: list = runs) -> str:
            return f"{statistics.median(r[key] for r in runs):.3f}"

        rows.append(
            (
                loss,
                f"{statistics.median(a for a, _ in pairs):.3f}",
                f"{statistics.median(b for _, b in pairs):.3f}",
                spread([b / a for a, b in pairs]),
                median("blocked"),
                f"{100 * statistics.median(r['blocked'] / r['fit'] for r in runs):.1f}%",
                " / ".join(median(f"bg {k}") for k in (*Losslab.KINDS, "all")),
            )
        )
    table(
        (
            "loss",
            "baseline fit s",
            "losslab fit s",
            "ratio min / median / max",
            "job waits on MLflow s",
            "of fit",
            "tracking process s: metrics / runs / figures / model / all",
        ),
        rows,
    )


def part_held(lab: Losslab, repeats: int, epochs: int | None) -> None:
    """The five-loss sweep as Hydra's default launcher runs it (jobs in one process, the
    sweep waits for MLflow once, at its end), in process so Trainer.fit can be timed."""
    print("## (2a) MLflow on the sweep's path: five losses in one process, as a sweep\n")
    extra = ["trainer.enable_progress_bar=false"]
    if epochs:
        extra.append(f"trainer.max_epochs={epochs}")
    rows = []
    for _ in range(repeats):
        lab.tracking.hold(lab.uri)
        fit = blocked = 0.0
        for loss in LOSSES:
            result = lab.run([f"loss={loss}", *extra])
            fit, blocked = fit + result["fit"], blocked + result["blocked"]
        started = time.perf_counter()
        lab.tracking.settle(lab.uri)  # the sweep's one wait, before its report
        settle = time.perf_counter() - started
        lab.blocked.take()
        background = lab.background()["all"]
        rows.append((fit, blocked, settle, background))
    table(
        (
            "fit s (5 runs)",
            "job waits s",
            "sweep's final wait s",
            "MLflow on the path / fit",
            "tracking process s",
        ),
        [
            (
                f"{fit:.2f}",
                f"{blocked:.3f}",
                f"{settle:.3f}",
                f"{100 * (blocked + settle) / fit:.1f}%",
                f"{background:.2f}",
            )
            for fit, blocked, settle, background in rows
        ],
    )


def part_lightning(lab: Losslab, repeats: int, epochs: int | None) -> None:
    """Fit seconds of loss=mse with each feature, alternating with callbacks=none."""
    print("## (4) Lightning features: fit-only cost per epoch (loss=mse, in process)\n")
    base = ["loss=mse", "trainer.enable_progress_bar=false", "logger.log_model=false"]
    if epochs:
        base.append(f"trainer.max_epochs={epochs}")
    n = epochs or 100
    plain = [*base, "callbacks=none"]
    lab.run(plain)  # warm-up
    rows = []
    for name, extra in LIGHTNING.items():
        lab.run([*base, *extra])  # warm-up: this feature's first-call costs
        pairs = alternate(
            lambda extra=extra: lab.run([*base, *extra])["fit"],
            lambda: lab.run(plain)["fit"],
            repeats,
        )
        extra_ms = [1000 * (a - b) / n for a, b in pairs]
        rows.append((name, spread(extra_ms), spread([a / b for a, b in pairs])))
    table(("feature", "ms per epoch beyond callbacks=none", "ratio"), rows)


def part_members(lab: Losslab, repeats: int, epochs: int | None, members: int) -> None:
    from bench import baseline

    print(f"## (3) 5 losses x {members} seeds, fit only: members={members} vs separate runs\n")
    extra = ["trainer.enable_progress_bar=false", "logger.log_model=false"]
    if epochs:
        extra.append(f"trainer.max_epochs={epochs}")
    rows, totals = [], []
    for loss in LOSSES:
        data = baseline.make_data(baseline.STUDIES[loss])
        overrides = [f"loss={loss}", f"members={members}", *extra]
        lab.run(overrides)  # warm-up

        def ours(overrides: list[str] = overrides) -> float:
            return lab.run(overrides)["fit"]

        def theirs(loss: str = loss, data: tuple = data) -> float:
            started = time.perf_counter()
            for seed in range(members):
                baseline.train(loss, seed, data, epochs)
            return time.perf_counter() - started

        pairs = alternate(theirs, ours, repeats)
        totals.append(pairs)
        rows.append(
            (
                loss,
                f"{statistics.median(a for a, _ in pairs):.2f}",
                f"{statistics.median(b for _, b in pairs):.2f}",
                spread([b / a for a, b in pairs]),
            )
        )
    sums = [(sum(p[i][0] for p in totals), sum(p[i][1] for p in totals)) for i in range(repeats)]
    rows.append(
        (
            f"all {5 * members} runs",
            f"{statistics.median(a for a, _ in sums):.2f}",
            f"{statistics.median(b for _, b in sums):.2f}",
            spread([b / a for a, b in sums]),
        )
    )
    table(("loss", "baseline s", f"losslab members={members} s", "ratio"), rows)


# ---------------------------------------------------------------------------- subprocesses
# A busy process; Ctrl-C ends it by the signal, without a KeyboardInterrupt traceback.
SPIN = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\nwhile True: pass"


@contextlib.contextmanager
def busy(count: int, apart: bool) -> Iterator[None]:
    """``count`` CPU-bound processes running beside everything measured (``--beside``): a
    machine shared with other work, where both sides compete for the same cores. ``apart``
    (``--apart``): each in a session of its own, as other programs are (another terminal, a
    service); else in the bench's, as jobs started from the same shell. Where the kernel
    shares CPU time out by session (Linux's autogroup) the two differ: README, Speed."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", SPIN], start_new_session=apart)
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def command(args: list[str], env: dict[str, str], what: str | None = None) -> tuple[float, str]:
    """Wall time and standard output of a subprocess run from the project root. With
    ``what``, a non-zero exit stops the bench, naming it, with the command's output."""
    elapsed, lines = timed_lines(args, env, what)
    return elapsed, "".join(line for _, line in lines)


def timed_lines(
    args: list[str], env: dict[str, str], what: str | None = None
) -> tuple[float, list[tuple[float, str]]]:
    """``command``, with the second each line of standard output came at (the phases)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        lines = [(time.perf_counter() - started, line) for line in process.stdout]
        code = process.wait()
        elapsed = time.perf_counter() - started
        if what is not None and code != 0:
            errors.seek(0)
            output = "".join(line for _, line in lines)
            raise SystemExit(f"{what} failed (exit {code}):\n{output}\n{errors.read()}")
    return elapsed, lines


# A command's phases, each ending at the first (or last) output line that matches.
PHASES = (
    ("start-up: Hydra, compose and check", re.compile(r"loading torch and Lightning"), min),
    ("imports and store", re.compile(r"^losslab: sweep of "), min),
    ("jobs", re.compile(r"\[(ok|collapsed|diverged|failed)[^\]]*\]$"), max),
)


def phases(elapsed: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds per phase of one losslab command; a phase it has not (a single run has no
    parent run) is counted with the next. The rest, to exit, is the report and exit."""
    spent, mark, skipped = {}, 0.0, []
    for name, pattern, pick in PHASES:
        times = [t for t, line in lines if pattern.search(line.rstrip())]
        if not times:
            skipped.append(name)
            continue
        spent[" + ".join([*skipped, name])], mark, skipped = pick(times) - mark, pick(times), []
    spent[" + ".join([*skipped, "report and exit"])] = elapsed - mark
    return spent


def child_env(store: Path, threads: int) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    env.pop("HYDRA_FULL_ERROR", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def sweep_runs(store: Path, overrides: list[str], env: dict[str, str]) -> float:
    sweep_dir = Path(tempfile.mkdtemp(dir=store, prefix="sweep-"))
    args = [sys.executable, "-m", "src.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    return command(args, env, "losslab sweep")[0]


def baseline_runs(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    elapsed, out = command([sys.executable, "-m", "bench.baseline", *args], env, "baseline")
    return elapsed, json.loads(out.strip().splitlines()[-1])


def part_sweep(store: Path, repeats: int, env: dict[str, str], epochs: int | None) -> None:
    print("## (2) the five-loss sweep end to end (fresh processes, imports included)\n")
    ours = ["loss=" + ",".join(LOSSES), "trainer.enable_progress_bar=false"]
    theirs = []
    if epochs:
        ours.append(f"trainer.max_epochs={epochs}")
        theirs = ["--epochs", str(epochs)]
    pairs = alternate(
        lambda: baseline_runs(theirs, env)[0], lambda: sweep_runs(store, ours, env), repeats
    )
    table(
        ("command", "seconds (median)", "ratio min / median / max"),
        [
            (
                "`python -m bench.baseline` (5 runs)",
                f"{statistics.median(a for a, _ in pairs):.2f}",
                "1",
            ),
            (
                f"`python -m src.train -m {' '.join(ours)}`",
                f"{statistics.median(b for _, b in pairs):.2f}",
                spread([b / a for a, b in pairs]),
            ),
        ],
    )


COMMANDS = {  # name: (what, losslab's arguments, the baseline's)
    "single": ("one study run (loss=mse)", ["loss=mse"], ["--losses", "mse"]),
    "five": ("the five-loss sweep", ["-m", "loss=" + ",".join(LOSSES)], []),
    "fifty": (
        "5 losses x 10 seeds",
        ["-m", "loss=" + ",".join(LOSSES), "seed=" + ",".join(map(str, range(10)))],
        ["--seeds", ",".join(map(str, range(10)))],
    ),
}


def refaults() -> int:
    """File pages read again since boot after the kernel had dropped them from the page
    cache (Linux's workingset_refault_file; 0 where /proc/vmstat has no such line)."""
    try:
        with open("/proc/vmstat") as vmstat:
            for line in vmstat:
                if line.startswith("workingset_refault_file "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def paused(measure: Callable[[], float], pause: float, refaulted: list[int]) -> float:
    """``measure`` after ``pause`` idle seconds, appending the page-cache refaults it caused."""
    time.sleep(pause)
    before = refaults()
    elapsed = measure()
    refaulted.append(refaults() - before)
    return elapsed


def part_commands(
    store: Path, repeats: int, env: dict[str, str], names: list[str], pause: float
) -> None:
    after = f", each after a {pause:g}-s pause" if pause else ""
    print(f"## (0) whole commands from the shell, against the baseline's same work{after}\n")
    # losslab as its users run it: no OMP_NUM_THREADS, its own thread count (trainer.threads);
    # the baseline, a plain torch program, takes the bench's from OMP_NUM_THREADS.
    threads = f"trainer.threads={env.get('OMP_NUM_THREADS', 0)}"
    env_ours = {key: value for key, value in env.items() if key != "OMP_NUM_THREADS"}
    warm = [sys.executable, "-m", "src.train", "trainer.max_epochs=1", "logger.log_model=false"]
    command([*warm, f"hydra.run.dir={store / 'warm-up'}"], env_ours)  # the existing store
    rows, phase_rows = [], []
    for what, ours, theirs in (COMMANDS[name] for name in names):
        args = [sys.executable, "-m", "src.train", *ours, threads]
        args.append("trainer.enable_progress_bar=false")
        for kind in ("existing", "fresh"):
            spent: list[dict[str, float]] = []

            def lab(args: list[str] = args, kind: str = kind, spent: list = spent) -> float:
                folder = Path(tempfile.mkdtemp(dir=store, prefix="cmd-"))
                fresh = {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
                dirs = [f"hydra.sweep.dir={folder / 'sweep'}", f"hydra.run.dir={folder / 'run'}"]
                store_env = {**env_ours, **(fresh if kind == "fresh" else {})}
                elapsed, lines = timed_lines([*args, *dirs], store_env, "losslab")
                spent.append(phases(elapsed, lines))
                return elapsed

            theirs_refaulted: list[int] = []
            ours_refaulted: list[int] = []
            pairs = alternate(
                lambda t=theirs, r=theirs_refaulted: paused(
                    lambda: baseline_runs(t, env)[0], pause, r
                ),
                lambda r=ours_refaulted, lab=lab: paused(lab, pause, r),
                repeats,
            )
            base = statistics.median(a for a, _ in pairs)
            ours_s = statistics.median(b for _, b in pairs)
            ratios = spread([b / a for a, b in pairs])
            refaulted = " / ".join(
                f"{statistics.median(side):.0f}" for side in (theirs_refaulted, ours_refaulted)
            )
            rows.append((what, kind, f"{base:.1f}", f"{ours_s:.1f}", ratios, refaulted))
            medians = {
                name: statistics.median(run.get(name, 0.0) for run in spent)
                for name in dict.fromkeys(name for run in spent for name in run)
            }
            phase_rows.append(
                (what, kind, "; ".join(f"{name} {s:.1f}" for name, s in medians.items()))
            )
    table(
        (
            "command",
            "store",
            "baseline s",
            "losslab s",
            "ratio min / median / max",
            "page-cache refaults: baseline / losslab (median)",
        ),
        rows,
    )
    print("losslab's phases, from the second each output line came (median seconds):\n")
    table(("command", "store", "phases"), phase_rows)


def part_members_e2e(store: Path, env: dict[str, str], members: int, epochs: int | None) -> None:
    print(f"## (3b) 5 losses x {members} seeds end to end (one repeat)\n")
    seeds = ",".join(str(s) for s in range(members))
    ours = ["loss=" + ",".join(LOSSES), f"seed={seeds}", "trainer.enable_progress_bar=false"]
    theirs = ["--seeds", seeds]
    if epochs:
        ours.append(f"trainer.max_epochs={epochs}")
        theirs += ["--epochs", str(epochs)]
    base = baseline_runs(theirs, env)[0]
    lab = sweep_runs(store, ours, env)
    table(
        ("command", "seconds", "ratio"),
        [
            (f"`python -m bench.baseline {' '.join(theirs)}`", f"{base:.1f}", "1"),
            (f"`python -m src.train -m {' '.join(ours)}`", f"{lab:.1f}", f"{lab / base:.2f}"),
        ],
    )


def _slurm_jobs(sweep_dir: Path) -> list[dict[str, float]]:
    """Queue wait and run time of each job of a SLURM sweep, from sacct (its .submitit ids)."""
    from datetime import datetime

    # an array job's folders (<id>_<index>), not submitit's .submission_file_<hash>.sh
    ids = sorted(
        p.name for p in (sweep_dir / ".submitit").iterdir() if re.match(r"\d+_\d+$", p.name)
    )
    deadline = time.monotonic() + 60
    while True:  # slurmctld hands finished jobs to the accounting database a little later
        listed = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,Submit,Start,End", *(f"-j{i}" for i in ids)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        complete = len(listed.splitlines()) >= len(ids) and "Unknown" not in listed
        if complete or time.monotonic() > deadline:
            break
        time.sleep(2)

    jobs = []
    for line in listed.splitlines():
        _, submit, start, end = line.split("|")
        if "Unknown" in (submit, start, end):
            continue
        at = [datetime.fromisoformat(t).timestamp() for t in (submit, start, end)]
        jobs.append({"wait": at[1] - at[0], "run": at[2] - at[1]})
    return jobs


def part_launchers(store: Path, repeats: int, env: dict[str, str], epochs: int | None) -> None:
    print("## (5) the 5-loss x 5-seed sweep on each launcher (whole commands)\n")
    ours = ["loss=" + ",".join(LOSSES), "seed=0,1,2,3,4", "trainer.enable_progress_bar=false"]
    theirs = ["--seeds", "0,1,2,3,4"]
    if epochs:
        ours.append(f"trainer.max_epochs={epochs}")
        theirs += ["--epochs", str(epochs)]
    slurm = subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0
    launchers = {
        "default (in process)": [],
        "submitit-local (all jobs at once)": ["hydra/launcher=local"],
    }
    if slurm:
        launchers["slurm (one-node cluster)"] = [
            "hydra/launcher=slurm",
            "hydra.launcher.partition=debug",
            "hydra.launcher.poll_s=1",
        ]
    else:
        print("(no SLURM cluster answers `scontrol ping`: `make slurm` to include it)\n")
    seconds: dict[str, list[float]] = {name: [] for name in ["baseline", *launchers]}
    jobs: list[dict[str, float]] = []
    for _ in range(repeats):  # each round runs every side once, so load drift hits them all
        seconds["baseline"].append(baseline_runs(theirs, env)[0])
        for name, extra in launchers.items():
            sweep_dir = Path(tempfile.mkdtemp(dir=store, prefix="sweep-"))
            args = [*ours, *extra, f"hydra.sweep.dir={sweep_dir}"]
            sweep = [sys.executable, "-m", "src.train", "-m", *args]
            seconds[name].append(command(sweep, env, f"losslab sweep ({name})")[0])
            if name.startswith("slurm"):
                jobs += _slurm_jobs(sweep_dir)
    base = statistics.median(seconds["baseline"])
    table(
        ("command", "seconds (median)", "ratio to the baseline"),
        [("`python -m bench.baseline` (25 runs, one process)", f"{base:.1f}", "1")]
        + [
            (name, f"{statistics.median(times):.1f}", f"{statistics.median(times) / base:.2f}")
            for name, times in seconds.items()
            if name != "baseline"
        ],
    )
    if jobs:
        waits, runs = [j["wait"] for j in jobs], [j["run"] for j in jobs]
        print(
            f"SLURM, {len(jobs)} jobs (sacct, 1-s resolution): queue wait median "
            f"{statistics.median(waits):.0f} s (max {max(waits):.0f}), run time median "
            f"{statistics.median(runs):.0f} s; a job's run time includes importing torch, "
            "Lightning and MLflow in a fresh process\n",
            flush=True,
        )


def part_startup(repeats: int, env: dict[str, str]) -> None:
    print("## (4) start-up: time to report a mistake, and --help\n")
    cases = {
        "`python -m src.train loss=nope`": ["-m", "src.train", "loss=nope"],
        "`python -m src.train --help`": ["-m", "src.train", "--help"],
        "`python -c 'import torch, sklearn.datasets'` (the baseline's imports)": [
            "-c",
            "import torch, sklearn.datasets",
        ],
        "`python -c 'import src.experiment'` (the job's imports: torch, Lightning, sklearn)": [
            "-c",
            "import src.experiment",
        ],
    }
    rows = []
    for name, args in cases.items():
        times = [command([sys.executable, *args], env)[0] for _ in range(repeats)]
        rows.append((name, spread(times)))
    table(("command", "seconds min / median / max"), rows)


def part_scaling(store: Path, env: dict[str, str], rows_list: list[int], epochs: int) -> None:
    print(f"## (5) scaling: regression, {epochs} epochs, each side in a fresh process\n")
    out = []
    for rows in rows_list:
        for batch in (32, 1024):
            common = ["--rows", str(rows), "--epochs", str(epochs), "--batch", str(batch)]
            _, base = baseline_runs(["--losses", "mse", "--warm-up", *common], env)
            args = [sys.executable, "-m", "bench.run", "--child", str(store), *common]
            _, text = command(args, env, "losslab child")
            ours = json.loads(text.strip().splitlines()[-1])
            steps_rows = rows // 2 * epochs
            out.append(
                (
                    f"{rows:.0e}",
                    batch,
                    f"{base['fit_s']:.2f}",
                    f"{ours['fit_s']:.2f}",
                    f"{steps_rows / ours['fit_s']:,.0f}",
                    f"{base['fit_s'] / ours['fit_s']:.2f}",
                    f"{base['peak_mb']:.0f}",
                    f"{ours['peak_mb']:.0f}",
                )
            )
    table(
        (
            "rows",
            "batch",
            "baseline fit s",
            "losslab fit s",
            "losslab rows/s",
            "throughput vs baseline",
            "baseline peak MB",
            "losslab peak MB",
        ),
        out,
    )


def child(store: Path, rows: int, batch: int, epochs: int) -> None:
    """One losslab regression run in this fresh process; prints fit time and peak memory."""
    lab = Losslab(store)
    common = ["loss=mse", "trainer.enable_progress_bar=false", "logger.log_model=false"]
    lab.run([*common, "trainer.max_epochs=1"])  # warm-up: first-call costs, as the baseline's
    result = lab.run(
        [
            *common,
            f"dataset.generator.n_samples={rows}",
            f"dataset.batch_size={batch}",
            f"trainer.max_epochs={epochs}",
        ]
    )
    from bench.baseline import peak_mb

    print(json.dumps({"fit_s": result["fit"], "peak_mb": peak_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--repeats", type=int, default=None, help="default 5, quick 3")
    parser.add_argument("--quick", action="store_true", help="3 repeats, fewer epochs and rows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument(
        "--beside", type=int, default=0, help="run beside N CPU-bound processes (a busy machine)"
    )
    parser.add_argument(
        "--apart", action="store_true", help="--beside's processes in sessions of their own"
    )
    parser.add_argument(
        "--pause", type=float, default=0.0, help="part commands: idle seconds before each command"
    )
    parser.add_argument(
        "--commands",
        default=",".join(COMMANDS),
        help=f"part commands: which of {', '.join(COMMANDS)}",
    )
    parser.add_argument("--e2e", action="store_true", help="also the 50-run seed sweep via CLI")
    parser.add_argument(
        "--callbacks", default="default", help="part single: the callbacks preset (none: bare)"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The bench prints its tables. The runs it makes in this process would print Lightning's
    # warnings (the srun hint on a SLURM machine, a reused checkpoint folder), which the CLI
    # sends to each job's log file instead (src/train.py).
    warnings.filterwarnings("ignore", module=r"(lightning_fabric|pytorch_lightning)\.")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.rows, args.batch, args.epochs)
        return
    parts = args.only.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    commands = args.commands.split(",")
    if not set(commands) <= set(COMMANDS):
        parser.error(f"unknown commands in {commands}; choose from {list(COMMANDS)}")
    repeats = args.repeats or (3 if args.quick else 5)
    epochs = 20 if args.quick else None  # None: the study's 100 / 200
    rows_list = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    print(
        f"# losslab bench: torch threads={args.threads}, repeats={repeats}, "
        f"epochs={epochs or 'study'}, load average {os.getloadavg()[0]:.1f}, "
        f"beside {args.beside} busy process(es){' apart' if args.apart else ''}, "
        f"pause {args.pause:g} s\n"
    )
    with (
        tempfile.TemporaryDirectory(prefix="losslab-bench-") as folder,
        busy(args.beside, args.apart),
    ):
        store = Path(folder)
        env = child_env(store, args.threads)
        if "commands" in parts:
            part_commands(store, repeats, env, commands, args.pause)
        if {"single", "members", "lightning"} & set(parts):
            lab = Losslab(store)
            try:
                if "single" in parts:
                    part_single(lab, repeats, epochs, args.callbacks)
                    part_held(lab, repeats, epochs)
                if "members" in parts:
                    part_members(lab, repeats, epochs, args.members)
                if "lightning" in parts:
                    part_lightning(lab, repeats, epochs)
            finally:  # its last writes (a run stopped by Ctrl-C: KILLED) before the store goes
                lab.close()
        if "sweep" in parts:
            part_sweep(store, repeats, env, epochs)
        if "members" in parts and args.e2e:
            part_members_e2e(store, env, args.members, epochs)
        if "launchers" in parts:
            part_launchers(store, repeats, env, epochs)
        if "startup" in parts:
            part_startup(repeats, env)
        if "scaling" in parts:
            part_scaling(store, env, rows_list, 2)


if __name__ == "__main__":
    bench.command(main)
