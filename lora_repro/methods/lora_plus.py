"""LoRA+ (Hayou et al. 2024): LoRA whose B matrices learn `loraplus_lr_ratio` times faster than A.
The optimizer comes from peft.optimizers.create_loraplus_optimizer. As in the LoRA+ authors' code,
every 1-D trainable parameter (biases, LayerNorm weights, head biases) lands in the lr x ratio group;
other non-LoRA weights (the task head) get lr. The record lists each group's size and lr."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from peft.optimizers import create_loraplus_optimizer
from torch import nn

from ..errors import ConfigError
from .base import ParamGroup, describe_groups
from .lora import LoRA

# The groups create_loraplus_optimizer builds, in its order.
LORAPLUS_GROUPS = ["A_and_other_weights", "embedding", "B_and_1d_decay", "B_and_1d_no_decay"]


@dataclass
class LoRAPlus(LoRA):
    name: str = "lora_plus"
    loraplus_lr_ratio: float = 16.0

    lr_ratio_key: ClassVar[str | None] = "loraplus_lr_ratio"

    def __post_init__(self) -> None:
        super().__post_init__()
        ratio = self.loraplus_lr_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
            raise ConfigError(f"method.loraplus_lr_ratio must be > 0, got {ratio!r}")
        self.loraplus_lr_ratio = float(ratio)

    def create_optimizer(self, model: nn.Module, train_cfg: Any) -> tuple[torch.optim.Optimizer, list[ParamGroup]]:
        optimizer = create_loraplus_optimizer(
            model,
            torch.optim.AdamW,
            lr=float(train_cfg.lr),
            loraplus_lr_ratio=self.loraplus_lr_ratio,
            # A plain `weight_decay` kwarg is silently overridden inside peft: only this one counts.
            loraplus_weight_decay=float(train_cfg.weight_decay),
            betas=(float(train_cfg.adam_beta1), float(train_cfg.adam_beta2)),
            eps=float(train_cfg.adam_epsilon),
        )
        return optimizer, describe_groups(optimizer, LORAPLUS_GROUPS)
