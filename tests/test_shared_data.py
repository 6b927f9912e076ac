"""Checks on the real GLUE SST-2 files in ../shared/data (present on CI and developer machines, not
on a fresh user's). `make test` skips them; `make check-shared` runs them."""

import os
from pathlib import Path

import pytest

from lora_repro.config import validate
from lora_repro.data import load_task
from lora_repro.trainer import run

from .conftest import compose_cfg

SHARED = Path(os.environ.get("LORA_REPRO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SST2 = SHARED / "glue" / "SST-2"

pytestmark = [pytest.mark.shared, pytest.mark.skipif(not SST2.is_dir(), reason=f"{SST2} not present")]


def test_official_sst2_tsvs_parse_completely():
    data = load_task(compose_cfg("task=sst2", f"task.data_dir={SST2}").task)
    assert len(data.train) == 67_349
    assert len(data.evals["validation"]) == 872
    assert set(data.train["label"]) == {0, 1}


@pytest.mark.parametrize("task,folder,train,dev,labels", [
    ("rte", "RTE", 2_490, 277, {0, 1}),
    ("mrpc", "MRPC", 3_668, 408, {0, 1}),      # its header starts with a UTF-8 byte-order mark
    ("cola", "CoLA", 8_551, 1_043, {0, 1}),    # no header; dev.tsv has no final newline
    ("stsb", "STS-B", 5_749, 1_500, None),     # float scores in [0, 5]
])
def test_official_glue_tsvs_parse_completely(task, folder, train, dev, labels):
    path = SHARED / "glue" / folder
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    data = load_task(compose_cfg(f"task={task}", f"task.data_dir={path}").task)
    assert (len(data.train), len(data.evals["validation"])) == (train, dev)
    if labels is None:
        assert 0.0 <= min(data.train["label"]) and max(data.train["label"]) <= 5.0
    else:
        assert set(data.train["label"]) == labels


def test_minilm_lora_on_official_sst2(tmp_path):
    cfg = compose_cfg(
        "task=sst2", f"task.data_dir={SST2}", "method=lora", "logger.wandb.mode=disabled",
        "task.max_train_samples=2000", "task.max_length=64", "train.epochs=1", "train.batch_size=32",
        "train.lr=2e-3",
    )
    record = run(cfg, validate(cfg), tmp_path / "run")
    print(f"SST-2 dev accuracy (MiniLM-L6 + LoRA r=8, 2000 train rows, 1 epoch): {record['metrics']['accuracy']:.4f}")
    assert record["status"] == "ok"
    assert record["metrics"]["accuracy"] > 0.75


@pytest.mark.parametrize("task,folder,paper_metrics", [
    ("rte", "RTE", {"accuracy"}),
    ("mrpc", "MRPC", {"accuracy", "f1"}),
    ("cola", "CoLA", {"mcc"}),
    ("stsb", "STS-B", {"pearson", "spearman"}),
])
def test_short_real_run_on_each_glue_task_records_its_paper_metric(tmp_path, task, folder, paper_metrics):
    """MiniLM-L6 + LoRA, 600 training rows, one epoch, the full dev set: a check that each task runs
    end to end and is scored with the metric Table 2 reports, not a reproduction of its number."""
    path = SHARED / "glue" / folder
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    cfg = compose_cfg(f"task={task}", f"task.data_dir={path}", "method=lora", "logger.wandb.mode=disabled",
                      "task.max_train_samples=600", "task.max_length=64", "train.epochs=1", "train.batch_size=32",
                      "train.lr=2e-3", "save_checkpoint=false", "train.checkpoint_every=0")
    record = run(cfg, validate(cfg), tmp_path / "run")
    metrics = record["metrics"]
    print(f"{task} dev (MiniLM-L6 + LoRA r=8, 600 train rows, 1 epoch): "
          + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    assert record["status"] == "ok" and paper_metrics <= set(metrics)
    for name, value in metrics.items():
        low = -1.0 if name in ("mcc", "pearson", "spearman") else 0.0
        assert low <= value <= 1.0, (name, value)
    # No learning threshold: 19 steps do not teach CoLA or STS-B (measured: MCC ~0, Pearson ~0.1);
    # SST-2 above is the learning check, and #13's protocol the place for real budgets.
