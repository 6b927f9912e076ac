"""The real offline default: pretrained MiniLM-L6 (from its wheel) on Rotten Tomatoes sentences."""

import pytest

from lora_repro.config import validate
from lora_repro.trainer import run

from .conftest import compose_cfg


@pytest.mark.slow
def test_minilm_lora_learns_rotten_tomatoes(tmp_path):
    cfg = compose_cfg(
        "method=lora", "logger.wandb.mode=disabled", "save_checkpoint=false", "task.max_train_samples=480",
        "task.max_eval_samples=400", "task.max_length=40", "train.epochs=1", "train.batch_size=16",
        "train.lr=3e-3", "train.logging_steps=5",
    )
    record = run(cfg, validate(cfg), tmp_path / "run")
    assert record["params"]["adapted"] == 6 * 2 * 8 * (384 + 384)  # 6 layers x (query, value) x r=8
    assert record["params"]["total"] == 22_713_986 + 73_728
    # Chance is 0.5; 30 steps of LoRA on a pretrained encoder must do clearly better.
    assert record["metrics"]["accuracy"] > 0.62, record["metrics"]
