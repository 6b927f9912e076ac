"""One run pipeline (issue #18 item 6): every job is composed once and validated once, Hydra makes no
run folder, and only a validated job gets one."""

from __future__ import annotations

import sys

import pytest

import lora_repro.config as config
import lora_repro.job as job
import lora_repro.train as train

from .conftest import TINY, compose_cfg


def count_calls(monkeypatch, module, name: str, counts: dict[str, int]) -> None:
    real = getattr(module, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def run_main(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["lora_repro.train", *argv])
    train.main()


def test_a_sweep_composes_each_job_once_and_validates_it_once(monkeypatch, tmp_path, sst2_dir):
    counts: dict[str, int] = {}
    count_calls(monkeypatch, config, "compose_with_choices", counts)  # every composition goes through it
    count_calls(monkeypatch, job, "validate", counts)
    executed = []
    monkeypatch.setattr(train, "execute", lambda j: executed.append(j) or {"metrics": {"accuracy": 0.5}})
    monkeypatch.setattr(job, "_BASES", {})
    run_main(monkeypatch, "-m", *TINY, "seed=1,2,3", f"task.data_dir={sst2_dir}", f"output_root={tmp_path / 'out'}")
    # 3 jobs, and the named defaults once for the three recipe labels.
    assert counts == {"compose_with_choices": 3 + 1, "validate": 3}
    assert [j.cfg.seed for j in executed] == [1, 2, 3]
    assert [j.run_dir.name[-6:] for j in executed] == ["_seed1", "_seed2", "_seed3"]
    # One recipe for the three seeds; what never changes a result (wandb mode, eval batch, logging) is no part of it.
    assert {j.recipe for j in executed} == {"task.max_length=16 train.warmup_ratio=0.0"}
    assert not (tmp_path / "out").exists()  # nothing but execute makes a folder; Hydra writes nothing there


def test_the_recipe_label_is_the_difference_from_the_named_defaults(monkeypatch):
    monkeypatch.setattr(job, "_BASES", {})
    overrides = ["model=tiny_bert", "task=sst2", "method.r=4", "train.lr=1e-3", "train.logging_steps=7"]
    cfg, choices = config.compose_job_with_choices(overrides)
    prepared = job.prepare(cfg, choices, overrides)
    # The same recipe typed differently gets the same label; logging cadence is no part of a recipe.
    assert prepared.recipe == "method.r=4 train.lr=0.001"
    assert prepared.experiment is None and prepared.run_dir.name.endswith("_seed42")
    cfg, choices = config.compose_job_with_choices(["experiment=mini", "seed=3"])
    assert job.prepare(cfg, choices, ["experiment=mini", "seed=3"]).recipe == ""
    assert choices["experiment"] == "mini"


def test_an_invalid_sweep_job_is_recorded_without_running_and_the_sweep_goes_on(monkeypatch, tmp_path, sst2_dir):
    executed = []
    monkeypatch.setattr(train, "execute", lambda j: executed.append(j) or {"metrics": {}})
    run_main(monkeypatch, "-m", *TINY, "method.r=0,2", f"task.data_dir={sst2_dir}", f"output_root={tmp_path}")
    assert [j.cfg.method.r for j in executed] == [2]
    failed = list(tmp_path.rglob("record.json"))
    assert len(failed) == 1 and '"config: method.r must be > 0, got 0"' in failed[0].read_text()


def test_a_single_runs_config_error_is_one_line_and_makes_no_folder(monkeypatch, tmp_path, sst2_dir):
    with pytest.raises(SystemExit) as exc:
        run_main(monkeypatch, *TINY, "method.r=0", f"task.data_dir={sst2_dir}", f"output_root={tmp_path / 'out'}")
    assert exc.value.code == "error: method.r must be > 0, got 0"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, through_hydra", [
    (["-m", "seed=1,2"], False),
    (["method=lora"], False),
    (["--config-dir", "/mine", "method=lora"], False),
    (["-m", "hydra/launcher=slurm", "seed=1,2"], True),  # submitit starts the jobs
    (["-m", "hydra.launcher.partition=gpu", "seed=1,2"], True),
    (["--config-name", "other"], True),  # a flag this entry point does not follow itself
])
def test_hydra_runs_what_only_hydra_can(argv, through_hydra):
    flags, overrides = train.hydra_flags(argv)
    assert train.hydra_decides(flags, overrides) is through_hydra


def test_a_finished_run_is_returned_without_writing_its_folder(tmp_path):
    """execute() on a folder that holds the finished run opens nothing there for writing."""
    from lora_repro.record import new_record, write_record

    cfg = compose_cfg(*TINY, f"output_root={tmp_path}", "save_checkpoint=false")
    prepared = job.prepare(cfg, {"model": "tiny_bert"}, [])
    write_record(prepared.run_dir, new_record(status="ok", metrics={"accuracy": 0.75}))
    before = {p: p.stat().st_mtime_ns for p in prepared.run_dir.rglob("*")}
    assert job.execute(prepared)["metrics"] == {"accuracy": 0.75}
    assert {p: p.stat().st_mtime_ns for p in prepared.run_dir.rglob("*")} == before


@pytest.mark.slow
def test_a_sweep_through_hydras_submitit_launcher_runs_the_same_jobs(tmp_path, sst2_dir):
    """The SLURM path's mechanics without SLURM: Hydra's submitit launcher (its local executor)
    pickles the job function and runs each job in a process of its own; the jobs land in the same
    canonical folders, with the same recipe label, as the local loop's."""
    import json
    import os
    import subprocess

    args = [*TINY, f"task.data_dir={sst2_dir}", "train.max_steps=2", "save_checkpoint=false",
            f"output_root={tmp_path / 'out'}", "seed=1,2"]
    proc = subprocess.run([sys.executable, "-m", "lora_repro.train", "-m", "hydra/launcher=submitit_local",
                           "hydra.launcher.timeout_min=10", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = {json.loads(p.read_text())["seed"]: p for p in (tmp_path / "out").rglob("record.json")}
    assert sorted(records) == [1, 2]
    expected = job.run_dir(compose_cfg(*[a for a in args if not a.startswith("seed=")], "seed=1"))
    assert records[1].parent == expected and not (expected / ".hydra").exists()
    record = json.loads(records[2].read_text())
    assert record["status"] == "ok" and record["overrides"] == "task.max_length=16 train.max_steps=2 train.warmup_ratio=0.0"
    assert (records[2].parent / "train.log").stat().st_size > 0
