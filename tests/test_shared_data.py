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
