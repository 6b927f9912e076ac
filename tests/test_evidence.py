"""A study's evidence is committed: its manifest (runs.csv), recipes and slimmed records travel with
the repository, so a study continues on another machine, results rebuild from them alone (no torch),
recipe drift is named before anything runs, and records from uncommitted code stay out of results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lora_repro import PROJECT_ROOT, studyspec
from lora_repro.errors import ConfigError
from lora_repro.evidence import (ManifestRow, committed_path, find_drift, read_manifest, recipe_changes, released,
                                 slim_record, sync, write_manifest)
from lora_repro.record import new_record, write_record

from .conftest import TINY, run_study, write_sst2_dir


def row(key: str, run: str, hash_: str, **kw) -> ManifestRow:
    base = dict(key=key, params="", extra="", arm="", grid="", role="run", tuned="", seed=1, run=run, hash=hash_,
                recipe="", paper_setting="paper", planned_at="abc")
    return ManifestRow(**{**base, **kw})


def ok_record(**kw):
    base = dict(status="ok", task="sst2", model="m", method="lora", seed=1, overrides="", git_commit="a" * 40,
                git_branch="main", metrics={"accuracy": 0.8}, best_metrics={"accuracy": 0.8},
                params={"adapted": 10, "trainable": 20, "total": 100})
    return new_record(**{**base, **kw})


# ------------------------------------------------------------------------------- pure evidence
def test_the_committed_record_thins_the_loss_curve_and_quotes_decoded_lines(tmp_path):
    (tmp_path / "outputs.txt").write_text("a\nb\nc\nd\n")
    (tmp_path / "mrs.txt").write_text("m1\nm2\nm3\nm4\n")
    record = ok_record(train_loss_curve=[[i, 1.0 / (i + 1)] for i in range(1, 101)],
                       decoding={"test": {"BLEU": 0.5, "outputs": "outputs.txt", "mrs": "mrs.txt"}})
    slim = slim_record(record, tmp_path)
    assert len(slim["train_loss_curve"]) == 25
    assert slim["train_loss_curve"][0] == [1, 0.5] and slim["train_loss_curve"][-1] == [100, 1.0 / 101]
    assert slim["decoding"]["test"]["first_outputs"] == [["m1", "a"], ["m2", "b"], ["m3", "c"]]
    assert slim["decoding"]["test"]["BLEU"] == 0.5 and record["train_loss_curve"] != slim["train_loss_curve"]


def test_sync_copies_finished_records_and_restores_committed_ones_on_another_machine(tmp_path):
    study, here, there = tmp_path / "study", tmp_path / "a", tmp_path / "b"
    rows = [row("seed=1", "runs/t/m/lora/h1_seed1", "h1"), row("seed=2", "runs/t/m/lora/h1_seed2", "h1", seed=2)]
    write_record(here / rows[0].run, ok_record())
    write_record(here / rows[1].run, {**ok_record(seed=2), "status": "running"})  # not finished: not copied
    assert sync(study, here, rows).copied == 1
    assert committed_path(study, rows[0].run) == study / "records" / "t" / "m" / "lora" / "h1_seed1.json"
    assert not committed_path(study, rows[1].run).exists()
    assert sync(study, here, rows).copied == 0  # unchanged: nothing rewritten
    report = sync(study, there, rows)  # a fresh machine: the committed record is written back as done
    restored = json.loads((there / rows[0].run / "record.json").read_text())
    assert report.restored == 1 and restored["status"] == "ok" and restored["restored_from"].endswith("h1_seed1.json")
    assert sync(study, there, rows).copied == 0  # a restored record is never copied back


def test_released_means_committed_code_on_main():
    assert released(ok_record())
    assert released(ok_record(git_branch="HEAD"))  # a worktree at a commit of main
    assert not released(ok_record(git_commit="a" * 40 + "-dirty"))
    assert not released(ok_record(git_branch="my-experiment"))
    assert not released(ok_record(git_commit=None))


def test_drift_is_named_key_by_key_and_only_counts_runs_with_records(tmp_path):
    old = [row("seed=1", "runs/t/m/lora/h1_seed1", "h1"), row("seed=2", "runs/t/m/lora/h1_seed2", "h1", seed=2)]
    write_manifest(tmp_path, old, {"h1": {"train": {"lr": 0.001}}})
    (committed_path(tmp_path, old[0].run)).parent.mkdir(parents=True)
    committed_path(tmp_path, old[0].run).write_text(json.dumps(ok_record()))
    new = [row("seed=1", "runs/t/m/lora/h2_seed1", "h2"), row("seed=2", "runs/t/m/lora/h2_seed2", "h2", seed=2)]
    drift = find_drift(tmp_path, old, new, {"h2": {"train": {"lr": 0.002, "label_smoothing": 0.0}}})
    assert drift.lines() == [
        "1 runs changed recipe since their records were committed: train.label_smoothing added, train.lr 0.001 -> 0.002",
        "1 planned runs not yet run changed recipe: train.label_smoothing added, train.lr 0.001 -> 0.002"]
    assert recipe_changes({"a": 1, "b": {"c": 2}}, {"b": {"c": 2}}) == "a removed"
    assert not find_drift(tmp_path, old, old, {})


# ------------------------------------------------------------------------------- studies end to end
def tiny_study(root: Path, seeds: list[int], extra_common: list[str] = ()) -> Path:
    experiments = root / "experiments"
    (experiments / "tiny").mkdir(parents=True, exist_ok=True)
    data = write_sst2_dir(root / "SST-2", n_train=64, n_dev=32)
    (experiments / "tiny" / "study.yaml").write_text(json.dumps({
        "description": "LoRA on the tiny model", "cost": "seconds",
        "common": [*TINY, f"task.data_dir={data}", "train.max_steps=2", "save_checkpoint=false", *extra_common],
        "variants": {"lora": ["method=lora"]}, "seeds": seeds, "results": ["method_table", "table2"]}))
    return experiments


def study_cmd(experiments: Path, outputs: Path, *args: str):
    env = {"LORA_REPRO_EXPERIMENTS": str(experiments), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(outputs.parent)}
    return subprocess.run([sys.executable, "-m", "lora_repro.study", "tiny", *args, f"output_root={outputs}"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)


def as_released(experiments: Path) -> None:
    """The suite may run in a checkout with uncommitted changes: label the committed records as
    made at a commit of main (the release rule has its own test above)."""
    for path in (experiments / "tiny" / "records").rglob("*.json"):
        record = json.loads(path.read_text())
        record["git_commit"], record["git_branch"] = "c" * 40, "main"
        path.write_text(json.dumps(record, indent=2) + "\n")


@pytest.mark.slow
def test_a_study_half_run_on_one_machine_finishes_on_another_from_committed_records(tmp_path, monkeypatch, capsys):
    machine_a = tmp_path / "a"
    experiments = tiny_study(machine_a, seeds=[1])
    first = study_cmd(experiments, machine_a / "outputs", "--no-results")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "1 finished run record(s) copied into experiments/tiny/records/" in first.stdout
    as_released(experiments)

    # "Commit, clone elsewhere": only the study folder travels; the other machine has no outputs/.
    machine_b = tmp_path / "b"
    shutil.copytree(experiments, machine_b / "experiments")
    clone = tiny_study(machine_b, seeds=[1, 2])  # the study grows by one seed; same data path layout
    spec = json.loads((clone / "tiny" / "study.yaml").read_text())
    spec["common"] = [o.replace(str(machine_b), str(machine_a)) for o in spec["common"]]  # same recipe
    (clone / "tiny" / "study.yaml").write_text(json.dumps(spec))
    code, dry, err = run_study(monkeypatch, capsys, clone, "tiny", "--dry-run", f"output_root={machine_b / 'outputs'}")
    assert code == 0, err[-2000:]
    assert "2 runs planned (2 distinct run folders): 1 already done (skipped), 1 to run." in dry
    assert f"Done runs come from code {'c' * 10} (1)." in dry
    second = study_cmd(clone, machine_b / "outputs", "--no-results")
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("$ python -m lora_repro.train") == 1 and "seed=2" in second.stdout
    assert "seed=1" not in second.stdout.split("$ python -m lora_repro.train")[1].split("\n")[0]
    as_released(clone)
    rows = read_manifest(clone / "tiny")
    assert [r.seed for r in rows] == [1, 2] and all(committed_path(clone / "tiny", r.run).is_file() for r in rows)

    monkeypatch.setattr(studyspec, "EXPERIMENTS_DIR", clone)
    from analysis.study import build, check

    build("tiny", [])
    summary = json.loads((clone / "tiny" / "results" / "summary.json").read_text())
    assert summary["runs"] == {"ok": 2, "failed": 0, "unreadable": 0, "missing": 0, "unreleased": 0}
    assert summary["code_versions"] == ["c" * 40] and summary["devices"][0].startswith("cpu: ")
    assert check("tiny") == []
    (clone / "tiny" / "results" / "methods.md").write_text("edited by hand\n")
    assert check("tiny") == ["tiny: results/methods.md differs from what the committed records give (`make results`)"]


@pytest.mark.slow
def test_recipe_drift_stops_the_study_until_the_user_keeps_or_reruns(tmp_path, monkeypatch, capsys):
    experiments = tiny_study(tmp_path, seeds=[1])
    outputs = tmp_path / "outputs"
    assert study_cmd(experiments, outputs, "--no-results").returncode == 0
    before = read_manifest(experiments / "tiny")
    spec = json.loads((experiments / "tiny" / "study.yaml").read_text())
    spec["common"].append("train.weight_decay=0.01")
    (experiments / "tiny" / "study.yaml").write_text(json.dumps(spec))

    # The launcher's refusal and --keep train nothing: asked in this process (no interpreter start-up).
    code, out, err = run_study(monkeypatch, capsys, experiments, "tiny", "--no-results", f"output_root={outputs}")
    assert code == 2 and "lora_repro.train" not in out
    assert "1 runs changed recipe since their records were committed: train.weight_decay 0.0 -> 0.01" in out
    assert "--keep" in err and "--rerun" in err
    assert read_manifest(experiments / "tiny") == before  # nothing written

    code, out, err = run_study(monkeypatch, capsys, experiments, "tiny", "--no-results", "--keep", f"output_root={outputs}")
    assert code == 0 and "lora_repro.train" not in out, err[-2000:]
    assert [r.hash for r in read_manifest(experiments / "tiny")] == [before[0].hash]

    rerun = study_cmd(experiments, outputs, "--no-results", "--rerun")
    assert rerun.returncode == 0 and rerun.stdout.count("$ python -m lora_repro.train") == 1
    after = read_manifest(experiments / "tiny")
    assert after[0].hash != before[0].hash and committed_path(experiments / "tiny", after[0].run).is_file()
    assert not committed_path(experiments / "tiny", before[0].run).exists()  # the old record left the manifest


def test_unreleased_records_stay_out_of_results_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(studyspec, "EXPERIMENTS_DIR", tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.yaml").write_text(json.dumps({"description": "d", "results": ["method_table"]}))
    rows = [row("seed=1", "runs/sst2/m/lora/h_seed1", "h"), row("seed=2", "runs/sst2/m/lora/h_seed2", "h", seed=2)]
    write_manifest(tmp_path / "s", rows, {})
    for r, commit in zip(rows, ("a" * 40, "b" * 40 + "-dirty")):
        path = committed_path(tmp_path / "s", r.run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ok_record(seed=r.seed, git_commit=commit, wall_s=1.0, peak_memory_bytes=1,
                                             throughput={"train_tokens_per_s": 1.0})))
    from analysis.records import load_study_records
    from analysis.study import build

    records = load_study_records("s")
    assert [(p["role"], p["arm"]) for p in records.planned] == [("run", ""), ("run", "")]  # every planned row
    assert len(records.ok) == 1 and records.unreleased == [(str(committed_path(tmp_path / "s", rows[1].run)), "b" * 40 + "-dirty")]
    build("s", [])
    assert json.loads((tmp_path / "s" / "results" / "summary.json").read_text())["runs"]["unreleased"] == 1
    build("s", [], allow_unreleased=True)
    assert json.loads((tmp_path / "s" / "results" / "unreleased" / "summary.json").read_text())["runs"]["ok"] == 2
    assert json.loads((tmp_path / "s" / "results" / "summary.json").read_text())["runs"]["ok"] == 1  # untouched


def test_a_study_with_no_runs_says_so_instead_of_empty_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(studyspec, "EXPERIMENTS_DIR", tmp_path)
    (tmp_path / "s" / "results").mkdir(parents=True)
    (tmp_path / "s" / "study.yaml").write_text(json.dumps({"description": "d", "results": ["table2"]}))
    (tmp_path / "s" / "results" / "table2.md").write_text("a stale table\n")
    from analysis.study import build

    build("s", [])
    assert sorted(p.name for p in (tmp_path / "s" / "results").iterdir()) == ["NO_RUNS.md", "summary.json"]
    assert "not planned yet" in (tmp_path / "s" / "results" / "NO_RUNS.md").read_text()
    write_manifest(tmp_path / "s", [row("seed=1", "runs/sst2/m/lora/h_seed1", "h")], {})
    build("s", [])
    assert "1 runs are planned" in (tmp_path / "s" / "results" / "NO_RUNS.md").read_text()


# ------------------------------------------------------------------------------- the committed studies
def test_every_committed_results_folder_is_what_its_committed_records_give_and_needs_no_torch():
    """What `make results` promises on a fresh clone: rebuilt from runs.csv + records/ alone,
    byte-identical, without importing torch."""
    code = ("import sys, analysis.study as s; rc = s.main(['--all', '--check']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert out.stdout.strip().endswith("NO-TORCH")


def test_the_record_and_evidence_modules_import_no_torch():
    code = ("import sys, lora_repro.record, lora_repro.evidence, lora_repro.studyspec, analysis.records; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


# ------------------------------------------------------------------------------- provenance and specs
def test_study_results_and_records_do_not_make_the_code_dirty(tmp_path, monkeypatch):
    import lora_repro.provenance as provenance

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "experiments" / "s" / "results").mkdir(parents=True)
    (tmp_path / "experiments" / "s" / "results" / "methods.md").write_text("a\n")
    (tmp_path / "experiments" / "s" / "study.yaml").write_text("description: d\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "c")
    monkeypatch.setattr(provenance, "PROJECT_ROOT", tmp_path)
    assert not provenance.git_commit().endswith("-dirty") and provenance.git_branch() == "main"
    (tmp_path / "experiments" / "s" / "results" / "methods.md").write_text("this machine's timings\n")
    assert not provenance.git_commit().endswith("-dirty")
    (tmp_path / "experiments" / "s" / "study.yaml").write_text("description: changed\n")  # a recipe is code
    assert provenance.git_commit().endswith("-dirty")


@pytest.mark.parametrize("spec, message", [
    ({"description": "d", "results": ["table9"]}, r"results \['table9'\] are not known; known: claims"),
    ({}, r"a study.yaml is a mapping with at least `description:`.*this one is empty"),
    ({"description": "d", "seeds": [1, 1]}, r"seeds lists 1 more than once; each value is one run"),       # probe C5
    ({"description": "d", "grid": {"method.r": [4, 4]}}, r"grid.method.r lists 4 more than once"),
    ({"description": "d", "grid": {"method.r": [4, 8]}, "first": ["task=mnli"]},                       # probe C10
     r"first: task=mnli is not a grid value \(task takes no grid values: it is not in grid\)"),
    ({"description": "d", "grid": {"task": ["sst2"]}, "first": ["task=mnli"]}, r"first: task=mnli is not a grid value \(task takes sst2\)"),
])
def test_a_study_yaml_mistake_is_refused_when_read_before_any_run(tmp_path, monkeypatch, spec, message):
    monkeypatch.setattr(studyspec, "EXPERIMENTS_DIR", tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.yaml").write_text(json.dumps(spec) if spec else "")
    with pytest.raises(ConfigError, match=message):
        studyspec.load_study("s")


def test_an_extra_seed_for_a_study_is_refused():
    with pytest.raises(ConfigError, match=r"seed=9: a study runs the seeds its study.yaml lists"):
        studyspec.split_args("demo", ["seed=9"])


def test_a_record_that_is_json_but_not_an_object_is_unreadable_not_a_crash(tmp_path):
    from lora_repro.rundir import existing_record, finished_record

    (tmp_path / "record.json").write_text("[1]")
    assert existing_record(tmp_path) == {"status": "unreadable"} and finished_record(tmp_path) is None


def test_the_tensor_profiler_stops_at_the_last_step_of_a_short_run():
    """A run shorter than the profiler's window must not evaluate or decode under it."""
    import torch
    from transformers import TrainerControl, TrainerState

    from lora_repro.trainer import TensorMemory

    model = torch.nn.Linear(4, 4)
    callback = TensorMemory(model, steps=3)
    state = TrainerState()
    state.global_step, state.max_steps = 0, 2
    callback.on_train_begin(None, state, TrainerControl())
    active = torch.utils._python_dispatch._get_current_dispatch_mode()
    assert active is callback.mode or torch.cuda.is_available()
    state.global_step = 1
    callback.on_step_end(None, state, TrainerControl())
    assert callback.mode is not None or torch.cuda.is_available()
    state.global_step = 2
    callback.on_step_end(None, state, TrainerControl())
    assert callback.mode is None and torch.utils._python_dispatch._get_current_dispatch_mode() is None
    assert torch.cuda.is_available() or callback.peak >= 4 * 4 * 4
