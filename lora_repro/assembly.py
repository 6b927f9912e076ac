"""The one assembly step: config -> backbone + method + trainable task head.

The task decides, once, whether the backbone is a sequence classifier (GLUE, Rotten Tomatoes) or a
causal language model (E2E); the method then freezes or wraps it; the task head, where the task has
one, trains with every method. The trainer, the benchmark, the parameter counts and the tests all
build their models here, so they all count, train and time the same thing."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from torch import nn

from .backbone import count_parameters, set_trainable
from .errors import ConfigError
from .methods import Method
from .tasks import ClassificationTask, GenerationTask, task_runner


@dataclass
class Built:
    model: nn.Module
    method: Method
    head: list[str]                                   # task-head module names (trained with every method)
    task: ClassificationTask | GenerationTask         # data, collator, metrics and results of the task kind

    def params(self) -> dict[str, int]:
        """adapted (the papers' "# Trainable Parameters", head excluded), trainable, total."""
        return count_parameters(self.model, self.head)


def build(cfg: DictConfig, method: Method | None = None) -> Built:
    """Build the model a run trains. `method` defaults to the one the config names (pass the
    instance `config.validate` returned to skip instantiating it twice). Works under
    `torch.device("meta")` for counting parameters without weights."""
    from .config import instantiate_method

    method = method if method is not None else instantiate_method(cfg.method)
    task = task_runner(cfg)
    model = method.apply(task.build_model(), cfg.model)
    head = task.head_modules()
    if head and set_trainable(model, head) == 0:
        raise ConfigError(f"model.head_modules {head} match no module of {cfg.model.name}")
    method.finalize(model, cfg.model)
    return Built(model, method, head, task)
