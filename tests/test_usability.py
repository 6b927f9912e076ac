"""What a new user meets first: `make` lists the targets instead of re-running set-up, and names
from transformers or peft are answered with the setting that means them here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lora_repro import PROJECT_ROOT
from lora_repro.config import compose_job
from lora_repro.errors import ConfigError


def test_make_alone_lists_every_target_with_one_line():
    out = subprocess.run(["make", "-s"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "make setup, then make demo" in out.stdout
    listed = {line.split()[0] for line in out.stdout.splitlines()[1:] if line.startswith("  ")}
    phony = next(line for line in (PROJECT_ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    assert listed == set(phony.split()[1:]) - {"help"}, "every target needs a `## ` line above it"
    assert ".venv" not in out.stdout.split("Targets:")[0]  # nothing was installed


@pytest.mark.parametrize("override, expected", [
    ("train.learning_rate=1e-3", "train.learning_rate is not a setting; did you mean train.lr? train has: "),
    ("train.num_train_epochs=3", "did you mean train.epochs?"),
    ("per_device_train_batch_size=8", "did you mean train.batch_size?"),
    ("fp16=true", "did you mean train.precision=fp16?"),
    ("train.lrr=1e-3", "did you mean train.lr?"),
])
def test_foreign_or_misspelt_names_get_the_setting_that_means_them(override, expected):
    with pytest.raises(ConfigError, match="^" + expected.split(";")[0] if expected.startswith("train.learning") else None) as err:
        compose_job([override])
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_the_entry_point_says_it_in_one_line_before_loading_anything(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lora_repro.train", "train.learning_rate=1e-3", f"output_root={tmp_path}"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
        "error: train.learning_rate is not a setting; did you mean train.lr?")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, first_line", [
    (["--cfg", "job"], "model:"),                      # the two-word form Hydra documents
    (["--cfg=job"], "model:"),
    (["--help"], "train is powered by Hydra."),
    # a recipe whose init_from needs an MNLI run prints before that run exists
    (["experiment=paper_roberta_base_lora", "task=mrpc", "--cfg", "job", "--resolve"], "model:"),
])
def test_hydra_flags_work_as_hydra_documents_them(args, first_line):
    out = subprocess.run([sys.executable, "-m", "lora_repro.train", *args], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=120, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.splitlines()[0] == first_line


def test_a_multirun_config_print_is_one_line():
    out = subprocess.run([sys.executable, "-m", "lora_repro.train", "-m", "--cfg", "job", "method=lora,bitfit"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        "error: Hydra prints the config, help or info of one job: drop -m and give one value per key "
        "(e.g. --cfg job method=lora)"]


def test_a_sweep_expands_without_hydra_internals():
    from lora_repro.train import job_overrides

    assert job_overrides(["-m", "method=lora,bitfit", "seed=1,2", "train.lr=1e-3"]) == (True, [
        ["method=lora", "seed=1", "train.lr=1e-3"], ["method=lora", "seed=2", "train.lr=1e-3"],
        ["method=bitfit", "seed=1", "train.lr=1e-3"], ["method=bitfit", "seed=2", "train.lr=1e-3"]])
    assert job_overrides(["--cfg", "job", "method=lora"]) == (False, [["method=lora"]])
    assert "_internal" not in (PROJECT_ROOT / "lora_repro" / "train.py").read_text()


def test_world_size_is_part_of_a_runs_identity_and_one_process_changes_no_folder(monkeypatch):
    """Issue #21 item 8: after a 2-process torchrun, the 1-process run of the same config is another
    recipe (its effective batch differs), not 'already done'."""
    from lora_repro.config import compose_config
    from lora_repro.rundir import run_subdir

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    one = run_subdir(compose_config(["experiment=mini", "seed=1"]))
    assert one == "runs/rotten_tomatoes/minilm_l6/lora/599b9d29_seed1"  # the hash every earlier run has
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run_subdir(compose_config(["experiment=mini", "seed=1"])) == one
    monkeypatch.setenv("WORLD_SIZE", "2")
    two = compose_config(["experiment=mini", "seed=1"])
    assert two.train.world_size == 2 and run_subdir(two) != one


def test_make_runs_lists_each_folder_with_its_status_and_main_metric(tmp_path, capsys):
    from analysis.runs import main as runs
    from lora_repro.record import new_record, write_record

    write_record(tmp_path / "runs" / "sst2" / "m" / "lora" / "aaaa_seed1", new_record(
        status="ok", study="demo", task="sst2", model="m", method="lora", seed=1, overrides="train.lr=0.002",
        metrics={"accuracy": 0.8125}, wall_s=12.3, config={"task": {"main_metric": "accuracy"}}))
    write_record(tmp_path / "runs" / "sst2" / "m" / "bitfit" / "bbbb_seed1", new_record(
        status="failed", error="training loss is nan at step 3", study="other", task="sst2", model="m",
        method="bitfit", seed=1, overrides=""))
    assert runs([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| runs/sst2/m/lora/aaaa_seed1 | demo | train.lr=0.002 | ok | accuracy 0.8125 | 12 |" in out
    assert "failed: training loss is nan at step 3" in out and "2 runs under" in out
    assert runs([str(tmp_path), "--study", "demo"]) == 0
    assert "1 runs under" in capsys.readouterr().out


@pytest.mark.parametrize("recipe, task, dropout", [
    ("paper_roberta_base_lora", "sst2", 0.0), ("paper_roberta_large_lora", "sst2", 0.0),
    ("paper_roberta_large_lora_houlsby", "sst2", 0.0), ("paper_deberta_xxl_lora", "sst2", 0.0),
    ("paper_gpt2_lora", "e2e", 0.1),  # Table 11
])
def test_paper_lora_recipes_use_the_authors_dropout(recipe, task, dropout):
    """Issue #21 item 9: the GLUE runs of the authors' code use loralib's default lora_dropout 0; the
    E2E runs Table 11's 0.1. (conf/method/lora.yaml's 0.1 must not leak into the GLUE rows.)"""
    assert compose_job([f"experiment={recipe}", f"task={task}"]).method.dropout == dropout


def test_offline_a_hub_task_without_its_files_stops_before_loading_a_model(tmp_path):
    """Issue #21 item 5: `make train ARGS=task=cola` offline loaded the model, then failed on the hub."""
    import os

    out = subprocess.run([sys.executable, "-m", "lora_repro.train", "task=cola", f"output_root={tmp_path}"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 1 and "Loading weights" not in out.stderr + out.stdout
    assert out.stderr.strip().splitlines()[-1].startswith(
        "error: task cola reads nyu-mll/glue from the hub, which is offline here (HF_HUB_OFFLINE=1)")
    assert "task.data_dir=DIR" in out.stderr and not (tmp_path / "runs").exists()


def test_the_readme_lists_every_config_of_every_group():
    """The README's Configs table is hand-written: a new yaml that it does not name (literally, or
    by a `paper_gpt2_*` / `adapter_{p_3m,h_6m}` pattern) fails here instead of going unmentioned."""
    import fnmatch
    import itertools
    import re

    from lora_repro import CONF_DIR, PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text()
    configs = readme[readme.index("## Configs"):readme.index("### Methods")]
    patterns = set()
    for name in re.findall(r"`([a-z0-9_*{},]+)`", configs):
        parts = re.split(r"\{([^}]*)\}", name)  # brace groups expand as a shell would
        choices = [part.split(",") if i % 2 else [part] for i, part in enumerate(parts)]
        patterns.update("".join(c) for c in itertools.product(*choices))
    missing = [f"{group}/{path.stem}" for group in ("model", "method", "task", "train", "experiment")
               for path in sorted((CONF_DIR / group).glob("*.yaml"))
               if not path.stem.startswith("_") and not any(fnmatch.fnmatch(path.stem, p) for p in patterns)]
    assert missing == []


def test_costs_quoted_in_readme_and_makefile_are_the_study_yaml_s():
    """A study's cost is written once, in its study.yaml; the README's study table and `make help`
    quote it, and every figure they quote must be one the study.yaml states."""
    import re

    from omegaconf import OmegaConf

    from lora_repro import PROJECT_ROOT

    numbers = lambda text: set(re.findall(r"\d+(?:\.\d+)?", text))  # noqa: E731
    cost = {p.parent.name: str(OmegaConf.load(p).get("cost") or "")
            for p in (PROJECT_ROOT / "experiments").glob("*/study.yaml")}
    readme = (PROJECT_ROOT / "README.md").read_text()
    disagree = []
    for name, cell in re.findall(r"^\| `([a-z0-9_]+)` \|.*\| ([^|]*) \|$", readme, flags=re.M):
        if name in cost and not numbers(cell) <= numbers(cost[name]):
            disagree.append(f"README {name}: {cell.strip()!r} vs study.yaml {cost[name]!r}")
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    for doc, body in re.findall(r"^## (.*)\n[a-z][a-z0-9-]*:\n((?:\t.*\n)+)", makefile, flags=re.M):
        study = re.search(r"lora_repro\.study (\w+)", body)
        quoted = re.findall(r"~([\d-]+) min", doc)
        if study and quoted and study.group(1) in cost and not numbers(quoted[0]) <= numbers(cost[study.group(1)]):
            disagree.append(f"Makefile {study.group(1)}: {doc!r} vs study.yaml {cost[study.group(1)]!r}")
    assert disagree == []
