"""Task kinds: what a task's labels are, and everything that follows from that (the model head, how
a raw label is read, how logits become predictions, what the constant predictor scores, which
checks its config needs). A task yaml names its kind (`kind: regression`); every module asks the
kind object instead of comparing the name, so a new kind is one class added to KINDS here plus
its runner in `lora_repro.tasks`. Imports no torch."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError, DataError


class TaskKind:
    name: ClassVar[str]
    runner: ClassVar[str]  # the key of the class in lora_repro.tasks.RUNNERS that trains and scores it
    classifier: ClassVar[bool] = False  # trained through a sequence-classification head

    def check(self, task_cfg: Any) -> None:
        """Config checks that only this kind needs (raise ConfigError)."""

    def head_kwargs(self, task_cfg: Any) -> dict[str, Any]:
        raise ConfigError(f"task {task_cfg.name} ({self.name}) has no classification head")

    def parse_label(self, raw: str, where: str, names: list[str] | None = None,
                    num_labels: int | None = None) -> int | float:
        raise DataError(f"{where}: a {self.name} task reads no labels from a table")

    def label_count(self, task_cfg: Any, names: list[str] | None) -> int | None:
        """The number of classes a class-id label must stay below (None: no bound to check)."""
        return None

    def cast_labels(self, ds: Any) -> Any:
        return ds

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def constant_predictions(self, labels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ClassLabels(TaskKind):
    """One class id per example: a classifier head with `num_labels` outputs, argmax predictions,
    the majority class as the constant predictor."""
    name = "classification"
    runner = "sequence_classifier"
    classifier = True

    def check(self, task_cfg: Any) -> None:
        from .metrics import check_metric_names

        check_metric_names(task_cfg)

    def head_kwargs(self, task_cfg: Any) -> dict[str, Any]:
        return {"num_labels": int(task_cfg.num_labels), "problem_type": "single_label_classification"}

    def parse_label(self, raw: str, where: str, names: list[str] | None = None,
                    num_labels: int | None = None) -> int:
        raw = raw.strip()
        if names:
            try:
                return list(names).index(raw)
            except ValueError:
                raise DataError(f"{where}: label {raw!r} is not one of {list(names)}") from None
        try:
            label = int(raw)
        except ValueError:
            raise DataError(f"{where}: label {raw!r} is not an integer class id") from None
        if num_labels is not None and not 0 <= label < num_labels:
            raise DataError(f"{where}: label {label} is outside the task's classes 0..{num_labels - 1}")
        return label

    def label_count(self, task_cfg: Any, names: list[str] | None) -> int | None:
        return None if names else int(task_cfg.num_labels)  # named labels are bounded by their list

    def cast_labels(self, ds: Any) -> Any:
        from datasets import Value

        return ds.cast_column("label", Value("int64"))

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits).argmax(axis=-1)

    def constant_predictions(self, labels: np.ndarray) -> np.ndarray:
        values, counts = np.unique(labels, return_counts=True)
        return np.full(labels.shape, values[counts.argmax()])


class RealLabels(ClassLabels):
    """One real number per example (STS-B): a one-output regression head, the mean as the constant
    predictor (whose correlations are undefined and count as 0)."""
    name = "regression"

    def head_kwargs(self, task_cfg: Any) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def parse_label(self, raw: str, where: str, names: list[str] | None = None,
                    num_labels: int | None = None) -> float:
        raw = raw.strip()
        try:
            value = float(raw)
        except ValueError:
            raise DataError(f"{where}: label {raw!r} is not a number (regression task)") from None
        if not math.isfinite(value):
            raise DataError(f"{where}: label {raw!r} is not a finite number")
        return value

    def label_count(self, task_cfg: Any, names: list[str] | None) -> int | None:
        return None

    def cast_labels(self, ds: Any) -> Any:
        return ds

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits, dtype=np.float64).reshape(-1)

    def constant_predictions(self, labels: np.ndarray) -> np.ndarray:
        return np.full(labels.shape, float(labels.mean()))


class TextTargets(TaskKind):
    """A target text per example (E2E NLG): a causal LM, decoded and scored after training."""
    name = "generation"
    runner = "causal_lm"

    def check(self, task_cfg: Any) -> None:
        from .generation import check_generation_config

        check_generation_config(task_cfg)


KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (ClassLabels(), RealLabels(), TextTargets())}


def kind_of(task_cfg: Any) -> TaskKind:
    try:
        return KINDS[task_cfg.kind]
    except KeyError:
        raise ConfigError(f"task.kind={task_cfg.kind!r}; valid: {', '.join(KINDS)}") from None
