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
