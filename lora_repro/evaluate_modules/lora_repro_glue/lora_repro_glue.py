"""GLUE metrics as lora-repro records them (an `evaluate` module; config name = the task): each
task's metrics from conf/task/<task>.yaml, computed by lora_repro.metrics (scikit-learn, scipy)."""

import datasets
import evaluate
import numpy as np
from omegaconf import OmegaConf

from lora_repro import CONF_DIR
from lora_repro.metrics import compute_metrics

TASKS = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb")

_DESCRIPTION = "The paper's GLUE metric per task (accuracy; +F1 for MRPC/QQP; MCC for CoLA; Pearson/Spearman for STS-B)."
_KWARGS = """
Args:
    predictions: class ids (a float score for stsb)
    references: gold class ids (a float score for stsb)
Returns: a dict of the task's metrics, e.g. {"accuracy": 0.9, "f1": 0.93} for mrpc
"""
_CITATION = "Wang et al. 2019, GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding."


class LoraReproGlue(evaluate.Metric):
    def _info(self):
        if self.config_name not in TASKS:
            raise KeyError(f"config name {self.config_name!r} is not a GLUE task; one of {', '.join(TASKS)}")
        dtype = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
        )

    def _compute(self, predictions, references):
        names = list(OmegaConf.load(CONF_DIR / "task" / f"{self.config_name}.yaml").metrics)
        return compute_metrics(names, np.asarray(predictions), np.asarray(references))
