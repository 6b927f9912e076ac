"""FT^Top2 (Li & Liang 2021): only the last `top_k` transformer blocks are trained (+ the task head;
top_k = 0 trains the head alone: conf/method/head_only.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..backbone import find_blocks
from ..errors import ConfigError
from .base import Method, changed_matrices, freeze_all


@dataclass
class FineTuneTopBlocks(Method):
    name: str = "ft_top2"
    family: ClassVar[str] = "full_ft"
    top_k: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"method.top_k must be an integer >= 0 (0: the task head alone), got {self.top_k!r}")

    def merged(self, model: nn.Module) -> nn.Module:
        return model  # the trained weights are the backbone's own

    def delta_weights(self, model: nn.Module, pretrained: dict) -> dict:
        return changed_matrices(model, pretrained)

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        freeze_all(model)
        blocks = find_blocks(model)
        if self.top_k > len(blocks):
            raise ConfigError(f"method.top_k={self.top_k} but {model_cfg.name} has {len(blocks)} blocks")
        for block in list(blocks)[len(blocks) - self.top_k:]:
            block.requires_grad_(True)
        return model
