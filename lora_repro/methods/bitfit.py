"""BitFit (Ben Zaken et al. 2021): train only the bias terms. Written here because peft has no
BitFit tuner; it is a freeze pattern, not a new layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError
from .base import Method, freeze_all


@dataclass
class BitFit(Method):
    name: str = "bitfit"

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        freeze_all(model)
        biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
        if not biases:
            raise ConfigError(f"BitFit needs bias terms, and model {model_cfg.name} has none")
        for p in biases:
            p.requires_grad_(True)
        return model
