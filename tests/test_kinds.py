"""Task kinds are objects (lora_repro.kinds), not strings compared across modules."""

import re

import numpy as np
import pytest
from omegaconf import OmegaConf

from lora_repro import PROJECT_ROOT
from lora_repro.errors import ConfigError, DataError
from lora_repro.kinds import KINDS, kind_of
from lora_repro.metrics import constant_metrics


def task(kind, **extra):
    return OmegaConf.create({"name": "t", "kind": kind, "num_labels": 3, **extra})


def test_each_kind_reads_labels_and_builds_its_head():
    cls, reg = KINDS["classification"], KINDS["regression"]
    assert cls.parse_label(" 2 ", "f:1", None, 3) == 2
    assert cls.parse_label("entailment", "f:1", ["entailment", "neutral"]) == 0
    with pytest.raises(DataError, match="f:1: label 3 is outside the task's classes 0..2"):
        cls.parse_label("3", "f:1", None, 3)
    assert reg.parse_label("3.8", "f:1") == 3.8
    with pytest.raises(DataError, match="not a finite number"):
        reg.parse_label("nan", "f:1")
    assert cls.head_kwargs(task("classification")) == {"num_labels": 3, "problem_type": "single_label_classification"}
    assert reg.head_kwargs(task("regression")) == {"num_labels": 1, "problem_type": "regression"}
    assert cls.label_count(task("classification"), None) == 3 and cls.label_count(task("classification"), ["a"]) is None
    assert reg.label_count(task("regression"), None) is None
    assert cls.classifier and reg.classifier and not KINDS["generation"].classifier


def test_constant_predictor_per_kind():
    labels = np.array([1, 1, 0, 1])
    assert constant_metrics(["accuracy"], labels, task("classification")) == {"accuracy": 0.75}
    scores = np.array([1.0, 2.0, 6.0])
    assert KINDS["regression"].constant_predictions(scores).tolist() == [3.0, 3.0, 3.0]
    assert constant_metrics(["pearson"], scores, task("regression")) == {"pearson": 0.0}
    assert KINDS["classification"].predictions(np.array([[0.2, 0.8], [3.0, 1.0]])).tolist() == [1, 0]
    assert KINDS["regression"].predictions(np.array([[0.5], [4.25]])).tolist() == [0.5, 4.25]


def test_an_unknown_kind_is_one_error_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=r"task.kind='ranking'; valid: classification, regression, generation"):
        kind_of(task("ranking"))


def test_every_kind_has_a_runner():
    from lora_repro.tasks import RUNNERS

    assert {kind.runner for kind in KINDS.values()} <= set(RUNNERS)


def test_no_module_compares_a_task_kind_by_name():
    """A new kind is a class in lora_repro/kinds.py, not one more branch in data, metrics, backbone..."""
    offenders = []
    for path in sorted((PROJECT_ROOT / "lora_repro").rglob("*.py")) + sorted((PROJECT_ROOT / "analysis").rglob("*.py")):
        if path.name == "kinds.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(task|task_cfg)\.kind\s*(==|!=|in\b)|[\"'](regression|classification)[\"']", line):
                offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_analysis_names_no_task_model_or_method():
    """Which runs a table reads, its baseline and reference rows are data (analysis/paper/tables.yaml,
    the published CSVs, the records' own config), so a new task, model or method needs no analysis edit."""
    names = {p.stem for group in ("task", "model", "method") for p in (PROJECT_ROOT / "conf" / group).glob("*.yaml")
             if not p.stem.startswith("_")}
    offenders = []
    for path in sorted((PROJECT_ROOT / "analysis").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            quoted = set(re.findall(r"[\"']([a-z0-9_]+)[\"']", line))
            if quoted & names:
                offenders.append(f"{path.name}:{n}: {sorted(quoted & names)}")
    assert offenders == []
