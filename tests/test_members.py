"""K seeds as one model: member k is the run with seed k, seed sweeps are batched, and the fast
SGD update is torch.optim.SGD's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hydra_plugins.losslab.sweeper import batch_seeds
from src.optim import updater
from tests.conftest import ROOT, cli_env, compose_cfg, hang, results, runs_of

TOLERANCE = 1e-5


def test_consecutive_seeds_become_one_job_per_configuration() -> None:
    jobs = [[f"loss={loss}", f"seed={seed}"] for loss in ("mse", "bce") for seed in (0, 1, 2)]
    assert batch_seeds(jobs) == [
        ["loss=mse", "seed=0", "members=3"],
        ["loss=bce", "seed=0", "members=3"],
    ]


def test_gaps_explicit_members_and_seedless_jobs_are_kept_apart() -> None:
    gaps = [["seed=0"], ["seed=1"], ["seed=5"], ["seed=6"], ["seed=9"]]
    assert batch_seeds(gaps) == [["seed=0", "members=2"], ["seed=5", "members=2"], ["seed=9"]]
    explicit = [["seed=0", "members=2"], ["seed=1", "members=2"]]
    assert batch_seeds(explicit) == explicit
    assert batch_seeds([["loss=mse"], ["loss=bce"]]) == [["loss=mse"], ["loss=bce"]]


def test_the_coupling_check_sees_the_job_as_launched_and_a_refused_one_is_split() -> None:
    """``independent`` is asked about the batched job itself (a launcher in the same process
    then reuses that composition: 5 compositions for a 50-run sweep, not 6); a job it refuses
    goes out as one job per seed."""
    asked: list[list[str]] = []

    def refuse_bce(job: list[str]) -> bool:
        asked.append(job)
        return "loss=bce" not in job

    jobs = [[f"loss={loss}", f"seed={seed}"] for loss in ("mse", "bce") for seed in (0, 1)]
    assert batch_seeds(jobs, refuse_bce) == [
        ["loss=mse", "seed=0", "members=2"],
        ["loss=bce", "seed=0"],
        ["loss=bce", "seed=1"],
    ]
    assert asked == [["loss=mse", "seed=0", "members=2"], ["loss=bce", "seed=0", "members=2"]]


def _train(optimizer_cls: type, steps: int = 5, **options: float) -> list[torch.Tensor]:
    """A few updates of a small model through ``updater``, or through the plain torch path."""
    torch.manual_seed(0)
    weights = [torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    optimizer = optimizer_cls(weights, lr=0.1, **options)
    step = updater(optimizer)
    x = torch.randn(8, 3)
    for _ in range(steps):
        step(((x @ weights[0] + weights[1]) ** 2).mean())
    return [w.detach().clone() for w in weights]


def _reference(optimizer_cls: type, steps: int = 5, **options: float) -> list[torch.Tensor]:
    torch.manual_seed(0)
    weights = [torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    optimizer = optimizer_cls(weights, lr=0.1, **options)
    x = torch.randn(8, 3)
    for _ in range(steps):
        optimizer.zero_grad()
        ((x @ weights[0] + weights[1]) ** 2).mean().backward()
        optimizer.step()
    return [w.detach().clone() for w in weights]


@pytest.mark.parametrize(
    ("optimizer_cls", "options"),
    [
        (torch.optim.SGD, {"momentum": 0.9}),
        (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        (torch.optim.SGD, {"momentum": 0.5, "dampening": 0.1, "maximize": True}),
        (torch.optim.SGD, {}),
        (torch.optim.Adam, {}),  # any torch.optim class: the ordinary path
    ],
)
def test_update_is_exactly_the_torch_optimizer(optimizer_cls: type, options: dict) -> None:
    ours, theirs = _train(optimizer_cls, **options), _reference(optimizer_cls, **options)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_momentum_buffers_live_in_the_optimizer_state() -> None:
    weight = torch.ones(2, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    updater(optimizer)((weight * torch.tensor([1.0, 2.0])).sum())
    # a checkpoint saves optimizer.state_dict(): the buffer must be there, as step() leaves it
    assert optimizer.state[weight]["momentum_buffer"].tolist() == [1.0, 2.0]


def _by_seed(runs: list, members: str) -> dict[tuple[str, str], object]:
    return {
        (r.data.tags["loss"], r.data.tags["seed"]): r
        for r in runs
        if r.data.tags.get("members") == members
    }


def _curve(client, run_id: str, name: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]


@pytest.mark.slow
def test_a_seed_sweep_is_batched_and_each_member_is_its_seeds_run(
    run_cli, client, tmp_path
) -> None:
    every = "callbacks.model_checkpoint.every_n_epochs=3"  # a checkpoint at the last epoch
    common = ("trainer.max_epochs=3", "logger.log_model=false", every)
    batched = run_cli("-m", "loss=mse,hinge", "seed=0,1,2", *common)
    assert batched.returncode == 0, batched.stderr
    assert "6 runs launched as 2 jobs" in batched.stdout
    separate = run_cli(
        "-m", "loss=mse,hinge", "seed=1,2", "hydra.sweeper.batch_seeds=false", *common
    )
    assert separate.returncode == 0, separate.stderr

    runs = runs_of(client)
    together, alone = _by_seed(runs, "3"), _by_seed(runs, "1")
    # two jobs of three members: one child run per seed, with its own seed tag
    assert sorted(together) == sorted((loss, s) for loss in ("mse", "hinge") for s in "012")
    assert len({r.data.tags["output_dir"] for r in together.values()}) == 2
    assert {r.data.tags["member"] for r in together.values()} == {"0", "1", "2"}
    assert len(alone) == 4 and len({r.data.tags["output_dir"] for r in alone.values()}) == 4

    # the job's checkpoint is stored once, in member 0's run; every member's run points there
    for loss in ("mse", "hinge"):
        first = together[(loss, "0")].info.run_id
        for seed in "012":
            run = together[(loss, seed)]
            stored = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
            assert stored == (["checkpoints/last.ckpt"] if seed == "0" else []), stored
            tags = run.data.tags
            assert tags["checkpoint"] == f"runs:/{first}/checkpoints/last.ckpt"
            assert tags["checkpoint.members"] == "3"
        # one learning-curve figure per job (every seed's curves), the same in each member's run
        figures = {
            client.download_artifacts(
                together[(loss, seed)].info.run_id, "learning_curves.png", str(tmp_path / seed)
            )
            for seed in "012"
        }
        assert len({Path(f).read_bytes() for f in figures}) == 1
        single = client.download_artifacts(
            alone[(loss, "1")].info.run_id, "learning_curves.png", str(tmp_path / "alone")
        )
        assert Path(single).read_bytes() != Path(figures.pop()).read_bytes()
        # the job's config files, sent once, are in every member's run: the job's config
        configs = {
            Path(
                client.download_artifacts(
                    together[(loss, seed)].info.run_id, "config", str(tmp_path / loss / seed)
                )
            )
            for seed in "012"
        }
        assert {tuple(sorted(p.name for p in c.iterdir())) for c in configs} == {
            ("config.yaml", "overrides.txt")
        }
        texts = {(c / "config.yaml").read_text() for c in configs}
        assert len(texts) == 1 and "members: 3" in texts.pop()
        # each member's run says how long its job took, the same for all three
        seconds = {together[(loss, seed)].data.metrics["job_seconds"] for seed in "012"}
        assert len(seconds) == 1 and 0 < seconds.pop() < 600

    for key, single in alone.items():
        member = together[key]
        assert member.data.tags["member"] == str(int(key[1]))  # seed 0 + member k = seed k
        assert set(member.data.metrics) == set(single.data.metrics)
        for name, value in results(single).items():
            assert member.data.metrics[name] == pytest.approx(value, abs=TOLERANCE), name
            if name.startswith(("train/", "test/")):
                curve = _curve(client, single.info.run_id, name)
                ours = _curve(client, member.info.run_id, name)
                assert len(curve) == 3
                assert ours == pytest.approx(curve, abs=TOLERANCE), name


def test_checkpoint_keeps_history_and_generators(tmp_path) -> None:
    """Saving and loading through Lightning's hooks restores what a resumed run needs."""
    from src import config, experiment

    cfg = compose_cfg("loss=mse", "members=2")
    typed = config.validate(cfg)

    def module():
        return experiment.build(cfg, typed, [0, 1])[1]

    first = module()
    first.history = [{"train/loss": torch.tensor([float(e), e + 0.5])} for e in range(3)]
    first.generators[1].manual_seed(7)
    checkpoint: dict = {}
    first.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "c.ckpt")
    second = module()
    second.on_load_checkpoint(torch.load(tmp_path / "c.ckpt", weights_only=False))
    assert [row["train/loss"].tolist() for row in second.history] == [
        [0.0, 0.5],
        [1.0, 1.5],
        [2.0, 2.5],
    ]
    assert torch.equal(second.generators[1].get_state(), first.generators[1].get_state())


def _planned(*overrides: str, losses: bool = True) -> list[list[str]]:
    """A grid's jobs as losslab's sweeper launches them, composed by Hydra's own loader."""
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from hydra_plugins.losslab.sweeper import plan_jobs
    from src import config

    config.register()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", list(overrides), RunMode.MULTIRUN)
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        return plan_jobs(jobs, loader, master, seeds=True, losses=losses)


def test_losses_of_one_task_train_as_one_job_and_other_tasks_apart() -> None:
    """mse, msle and mae share the model's data and last layer: one job, the others' losses
    added as member_losses; so do bce and hinge, though each reads the output its own way
    (sigmoid against {0, 1}, tanh against {-1, 1}); and cce with sparse_cce (one-hot rows
    against class indices). Losses of different tasks stay apart."""
    merged = ["+loss@member_losses.msle=msle", "+loss@member_losses.mae=mae"]
    assert _planned("loss=mse,bce,msle,hinge,mae", "seed=0,1") == [
        ["loss=mse", "seed=0", "members=2", *merged],
        ["loss=bce", "seed=0", "members=2", "+loss@member_losses.hinge=hinge"],
    ]
    assert _planned("loss=cce,sparse_cce") == [
        ["loss=cce", "+loss@member_losses.sparse_cce=sparse_cce"]
    ]
    assert _planned("loss=mse,msle", losses=False) == [["loss=mse"], ["loss=msle"]]


def test_a_sweep_is_planned_once_and_the_plan_handed_out_as_copies() -> None:
    """The sweep's up-front check plans its jobs (in a forked copy, which sends the plan
    back); the sweeper then takes that plan for the same master config and grid: no job is
    composed again, and changing a job handed out changes no kept plan."""
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from hydra_plugins.losslab.sweeper import PLANS, plan_jobs
    from src import config

    config.register()
    overrides = ["loss=mse,msle,bce", "seed=0,1"]
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides, RunMode.MULTIRUN)
        parsed = OverridesParser.create().parse_overrides(overrides)
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        composed = []
        compose = loader.load_sweep_config
        loader.load_sweep_config = lambda m, o: composed.append(o) or compose(m, o)
        first = plan_jobs(jobs, loader, master, seeds=True, losses=True)
        made = len(composed)
        first[0].append("seed=7")
        again = plan_jobs(jobs, loader, master, seeds=True, losses=True)
    assert made >= 3 and len(composed) == made  # nothing composed the second time
    assert again == [
        ["loss=mse", "seed=0", "members=2", "+loss@member_losses.msle=msle"],
        ["loss=bce", "seed=0", "members=2"],
    ]
    PLANS.clear()


def test_losses_are_merged_only_where_the_merged_job_is_each_losss_own() -> None:
    """An override of the loss node reaches the job's own loss, not the ones added beside it:
    with per-epoch mse curves asked of every loss, the merged job would differ from msle's,
    so they stay apart; so do jobs whose members steer each other (early stopping)."""
    assert _planned("loss=mse,msle", "loss.metrics=[mse]") == [
        ["loss=mse", "loss.metrics=[mse]"],
        ["loss=msle", "loss.metrics=[mse]"],
    ]
    stops = "callbacks=[default,early_stopping]"
    assert _planned("loss=mse,msle", stops) == [["loss=mse", stops], ["loss=msle", stops]]


@pytest.mark.slow
def test_a_merged_jobs_members_are_each_losss_own_runs(
    run_cli, client, store_uri, tmp_path
) -> None:
    """mse with msle, and bce with hinge, each trained as one model: each member's run has
    the numbers and curves, name, tags, params, metrics and figure of the same loss and seed
    trained on its own (hinge's rounded accuracy in hinge's runs only), its model predicts
    as its own loss reads outputs, and the report ranks the losses as if they had been apart."""
    losses = ("mse", "msle", "bce", "hinge")
    common = ("trainer.max_epochs=3",)
    merged = run_cli("-m", f"loss={','.join(losses)}", "seed=0,1", *common)
    assert merged.returncode == 0, merged.stderr
    assert "8 runs launched as 2 jobs" in merged.stdout
    report = (tmp_path / "multirun" / "report.md").read_text()  # before the next sweep's
    assert "member_losses" not in report and "|  | mse | msle |" in report
    assert "|  | bce | hinge |" in report
    apart = run_cli(
        "-m", f"loss={','.join(losses)}", "seed=0,1", "hydra.sweeper.batch_losses=false", *common
    )
    assert apart.returncode == 0, apart.stderr
    assert "8 runs launched as 4 jobs" in apart.stdout

    runs = runs_of(client)
    together, alone = _by_seed(runs, "4"), _by_seed(runs, "2")
    expected = [(loss, seed) for loss in losses for seed in "01"]
    assert sorted(together) == sorted(expected) and sorted(alone) == sorted(expected)
    assert len({r.data.tags["output_dir"] for r in together.values()}) == 2
    for key in expected:
        mine, theirs = together[key], alone[key]
        name = f"{key[0]} trainer.max_epochs=3 seed={key[1]}"
        assert mine.info.run_name == theirs.info.run_name == name
        assert mine.data.params["loss.fn._target_"] == theirs.data.params["loss.fn._target_"]
        assert mine.data.params["loss.name"] == key[0]
        ours, reference = results(mine), results(theirs)
        assert ours.keys() == reference.keys()
        assert ("test/rounded_accuracy" in ours) == (key[0] == "hinge")
        for name, value in reference.items():
            assert ours[name] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), name
        for curve in ("train/loss", "test/loss"):
            assert _curve(client, mine.info.run_id, curve) == pytest.approx(
                _curve(client, theirs.info.run_id, curve), rel=TOLERANCE, abs=TOLERANCE
            )
        assert mine.data.tags["outcome"] == theirs.data.tags["outcome"]
        assert mine.data.tags["trivial_test_score"] == theirs.data.tags["trivial_test_score"]
        artifacts = {a.path for a in client.list_artifacts(mine.info.run_id)}
        assert {"learning_curves.png", "dataset.png", "config"} <= artifacts

    # hinge's model, from a job whose config.yaml names bce first: tanh outputs, and its test
    # split rebuilt with hinge's {-1, 1} targets scores what the run logged
    hinge = together[("hinge", "0")]
    scored = subprocess.run(
        [
            *(sys.executable, "-m", "src.predict", f"run_id={hinge.info.run_id}", "split=test"),
            f"output={tmp_path / 'hinge.csv'}",
        ],
        cwd=ROOT,
        env=cli_env(store_uri),
        capture_output=True,
        text=True,
        timeout=hang(240),
        check=False,
    )
    assert scored.returncode == 0, scored.stderr
    logged = hinge.data.metrics["final_test_rounded_accuracy"]
    assert f"test rounded_accuracy: {logged:.6f} (logged" in scored.stdout
    predictions = np.loadtxt(tmp_path / "hinge.csv", delimiter=",", skiprows=1)
    assert predictions[:, -1].min() >= -1 and predictions[:, -1].min() < 0  # tanh, not sigmoid
