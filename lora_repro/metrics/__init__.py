"""The paper's GLUE metrics, computed with scikit-learn and scipy (`evaluate.load` fetches metric
code from the hub at run time, which fails offline)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

# scipy.stats and sklearn.metrics are imported where a metric is computed, not here: together they
# cost every process that imports the config (each run, each study) about a second of start-up.


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y, p))


def _f1(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, p))  # binary F1 of class 1, as GLUE reports for MRPC/QQP


def _mcc(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(y, p))


def _pearson(p: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(p, y)[0])


def _spearman(p: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(p, y)[0])


# name -> fn(predictions, labels). Predictions are class ids (classification) or floats (regression).
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy, "f1": _f1, "mcc": _mcc, "pearson": _pearson, "spearman": _spearman,
}


def predictions_from_logits(logits: np.ndarray, task_cfg: Any) -> np.ndarray:
    from ..kinds import kind_of

    return kind_of(task_cfg).predictions(logits)


def compute_metrics(names: list[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: METRICS[name](predictions, labels) for name in names}


def constant_metrics(names: list[str], labels: np.ndarray, task_cfg: Any) -> dict[str, float]:
    """What a model that always predicts the same thing scores on these labels: the majority class
    (the best constant) for classification, the mean for regression, whose correlations are
    undefined and count as 0. A run that does not beat this has learned nothing."""
    from ..kinds import kind_of

    labels = np.asarray(labels)
    constant = kind_of(task_cfg).constant_predictions(labels)
    out = {}
    for name in names:
        if name in ("pearson", "spearman"):
            out[name] = 0.0
        else:
            out[name] = METRICS[name](constant, labels)
    return out


def make_compute_metrics(task_cfg: Any) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for transformers.Trainer (takes an EvalPrediction)."""
    names = list(task_cfg.metrics)

    def _compute(eval_pred: Any) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return compute_metrics(names, predictions_from_logits(logits, task_cfg), np.asarray(eval_pred.label_ids))

    return _compute


def check_metric_names(task_cfg: Any) -> None:
    from ..errors import ConfigError

    unknown = [m for m in task_cfg.metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"task.metrics has unknown metric(s) {unknown}; valid: {sorted(METRICS)}")
    from ..data import active_splits

    eval_splits = [s for s in active_splits(task_cfg) if s != "train"]
    if not eval_splits:
        raise ConfigError(f"task {task_cfg.name} has no evaluation split left (every split but train is null); "
                          f"a {task_cfg.kind} run needs one to measure {task_cfg.main_metric}")
    valid_main = metric_keys(list(task_cfg.metrics), eval_splits)
    if task_cfg.main_metric not in valid_main:
        raise ConfigError(f"task.main_metric={task_cfg.main_metric!r} is not one of {valid_main}")


def split_metric(task_cfg: Any, split: str) -> str:
    """The task's main metric on another split, as the Trainer and the record name it: `heldout_mcc`
    for CoLA; for MNLI, whose main metric names its own split (`matched_accuracy`), `heldout_accuracy`."""
    main = str(task_cfg["main_metric"])
    for name in task_cfg["splits"]:
        if main.startswith(f"{name}_"):
            main = main[len(name) + 1:]
    return f"{split}_{main}"


def metric_keys(names: list[str], eval_splits: list[str]) -> list[str]:
    """Record keys: plain metric names for one eval split, `<split>_<metric>` for several (MNLI)."""
    if len(eval_splits) == 1:
        return list(names)
    return [f"{split}_{name}" for split in eval_splits for name in names]
