import numpy as np
import pytest
from omegaconf import OmegaConf

from lora_repro.metrics import compute_metrics, metric_keys, predictions_from_logits
from lora_repro.tasks import evaluations, strip_eval_prefix


def test_mcc_on_hand_counted_confusion_matrix():
    # TP=1 FP=1 TN=2 FN=0 -> (1*2 - 1*0) / sqrt(2*1*3*2) = 2/sqrt(12)
    out = compute_metrics(["mcc", "accuracy"], np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    assert out["mcc"] == pytest.approx(2 / np.sqrt(12))
    assert out["accuracy"] == pytest.approx(0.75)


def test_f1_is_binary_f1_of_the_positive_class():
    # TP=2 FP=1 FN=1 -> precision 2/3, recall 2/3, F1 2/3
    out = compute_metrics(["f1"], np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0]))
    assert out["f1"] == pytest.approx(2 / 3)


def test_pearson_and_spearman_by_hand():
    # x = 1,2,3 ; y = 1,2,4: cov 3, |dx| = sqrt 2, |dy| = sqrt(42)/3 -> r = 9/sqrt(84)
    out = compute_metrics(["pearson", "spearman"], np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert out["pearson"] == pytest.approx(9 / np.sqrt(84))
    assert out["spearman"] == pytest.approx(1.0)


def test_regression_predictions_are_the_single_logit():
    logits = np.array([[0.5], [4.25]])
    assert predictions_from_logits(logits, OmegaConf.create({"kind": "regression"})).tolist() == [0.5, 4.25]
    assert predictions_from_logits(np.array([[0.1, 0.9], [2.0, -1.0]]), OmegaConf.create({"kind": "classification"})).tolist() == [1, 0]


def test_mnli_matched_and_mismatched_are_both_recorded():
    assert metric_keys(["accuracy"], ["matched", "mismatched"]) == ["matched_accuracy", "mismatched_accuracy"]
    assert metric_keys(["accuracy", "f1"], ["validation"]) == ["accuracy", "f1"]
    # The Trainer logs one entry per eval set at the same step; they merge into one evaluation.
    history = [
        {"loss": 1.0, "step": 10, "epoch": 1.0},
        {"eval_matched_loss": 0.9, "eval_matched_accuracy": 0.8, "eval_matched_runtime": 1.0, "step": 10, "epoch": 1.0},
        {"eval_mismatched_loss": 0.9, "eval_mismatched_accuracy": 0.7, "step": 10, "epoch": 1.0},
        {"eval_matched_accuracy": 0.85, "step": 20, "epoch": 2.0},
        {"eval_mismatched_accuracy": 0.75, "step": 20, "epoch": 2.0},
    ]
    evals = evaluations(history, "eval_matched_accuracy")
    assert [e["step"] for e in evals] == [10, 20]
    assert strip_eval_prefix(evals[0]) == {"matched_accuracy": 0.8, "mismatched_accuracy": 0.7}
