"""Shared fixtures: compose the project's real Hydra config, and write small GLUE-layout data sets
whose labels a tiny model can learn in a few steps."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

# `make test` runs the suite on two pytest-xdist workers (one per core of the CI machine): each
# worker, and every process a test starts, then uses one thread, so the two never fight over cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
from lora_repro.config import compose_config

POSITIVE = ["good", "great", "fine", "superb", "lovely", "wonderful"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "terrible"]
FILLER = ["the", "movie", "film", "plot", "was", "really", "quite", "acting", "story", "a"]


def compose_cfg(*overrides: str):
    return compose_config(list(overrides))


@pytest.fixture
def cfg_factory():
    return compose_cfg


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Sentences whose label is whether they contain a positive or a negative word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 5) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_sst2_dir(root: Path, n_train: int = 256, n_dev: int = 64) -> Path:
    """A folder in the GLUE SST-2 layout (train.tsv, dev.tsv with a sentence/label header)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train.tsv", n_train, 0), ("dev.tsv", n_dev, 1)):
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in sentiment_rows(n, seed)]
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def sst2_dir(tmp_path: Path) -> Path:
    return write_sst2_dir(tmp_path / "SST-2")


# Settings for runs of the tiny model: quick, no wandb, no checkpoint files unless a test asks.
TINY = [
    "model=tiny_bert", "task=sst2", "logger.wandb.mode=disabled", "train.batch_size=16",
    "train.eval_batch_size=64", "train.logging_steps=4", "task.max_length=16", "train.warmup_ratio=0.0",
]


def run_train(monkeypatch, *argv: str) -> None:
    """`python -m lora_repro.train ARGV` in this process (no interpreter start-up and imports: the
    entry point's own code path, as a subprocess would run it; a one-line error is SystemExit's code)."""
    import sys

    import lora_repro.train as train

    monkeypatch.setattr(sys, "argv", ["lora_repro.train", *argv])
    train.main()


def run_study(monkeypatch, capsys, experiments: Path, *argv: str) -> tuple[int, str, str]:
    """`python -m lora_repro.study ARGV` with LORA_REPRO_EXPERIMENTS=experiments, in this process:
    (exit code, stdout, stderr). For the launcher's answers that train nothing (--dry-run, refusals):
    each saves an interpreter start-up and its torch import (about 5 s on a 2-core machine)."""
    from lora_repro import studyspec
    from lora_repro.study import main

    monkeypatch.setattr(studyspec, "EXPERIMENTS_DIR", Path(experiments))
    capsys.readouterr()  # what the test printed before is not the launcher's
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
