"""The project's metrics as local `evaluate` modules: loaded offline from the package, they give the
same numbers as the harness's own metric code on the same inputs."""

import evaluate
import numpy as np
import pytest

from lora_repro.config import compose_config
from lora_repro.evaluate_modules import module_path
from lora_repro.metrics import compute_metrics
from lora_repro.metrics.e2e import e2e_scores

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("task", ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"])
def test_glue_module_equals_the_harness(task, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_config([f"task={task}"]).task
    if task == "stsb":
        refs = RNG.uniform(0, 5, 40).round(2)
        preds = refs + RNG.normal(0, 1, 40)
    else:
        refs = RNG.integers(0, int(cfg.num_labels), 40)
        preds = np.where(RNG.random(40) < 0.7, refs, RNG.integers(0, int(cfg.num_labels), 40))
    module = evaluate.load(module_path("glue"), task)
    got = module.compute(predictions=preds.tolist(), references=refs.tolist())
    expected = compute_metrics(list(cfg.metrics), preds, refs)
    assert set(got) == set(expected) == set(cfg.metrics)
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=1e-6)


def test_glue_module_rejects_a_task_it_does_not_know():
    with pytest.raises(KeyError, match="not a GLUE task"):
        evaluate.load(module_path("glue"), "rotten")


def test_e2e_module_equals_the_harness(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    outputs = ["the vaults is a cheap pub near the river", "the eagle serves french food in the city centre"]
    refs = [["The Vaults is a cheap pub by the river.", "A cheap pub near the river is The Vaults."],
            ["The Eagle serves French food in the centre of the city."]]
    got = evaluate.load(module_path("e2e")).compute(predictions=outputs, references=refs)
    expected = e2e_scores(refs, outputs)
    assert got == pytest.approx(expected)
    assert 0 < got["BLEU"] < 1 and got["NIST"] > 0
