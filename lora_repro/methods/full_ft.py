"""Full fine-tuning: every weight of the backbone is trained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .base import Method


@dataclass
class FullFineTuning(Method):
    name: str = "full_ft"

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
