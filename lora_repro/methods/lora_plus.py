"""LoRA+ (Hayou et al. 2024): LoRA whose B matrices learn `loraplus_lr_ratio` times faster than A.
The optimizer comes from peft.optimizers.create_loraplus_optimizer. As in the LoRA+ authors' code,
every 1-D trainable parameter (biases, LayerNorm weights, head biases) lands in the lr x ratio group;
other non-LoRA weights (the task head) get lr. The record lists each group's size and lr."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from peft.optimizers import create_loraplus_optimizer
from torch import nn

from ..backbone import module_matches
from ..errors import ConfigError
from .base import ParamGroup, describe_groups
from .lora import LoRA

# The groups create_loraplus_optimizer builds, in its order.
LORAPLUS_GROUPS = ["A_and_other_weights", "embedding", "B_and_1d_decay", "B_and_1d_no_decay"]


@dataclass
class LoRAPlus(LoRA):
    name: str = "lora_plus"
    loraplus_lr_ratio: float = 16.0
    # The weight decay of every group: null = train.weight_decay (this harness); the LoRA+ authors'
    # GLUE script passes none (0.0, conf/method/lora_plus_authors.yaml).
    loraplus_weight_decay: float | None = None
    # Task-head modules kept frozen: the LoRA+ authors' GLUE script freezes RoBERTa's classifier.dense.
    freeze_head_modules: list[str] = field(default_factory=list)

    lr_ratio_key: ClassVar[str | None] = "loraplus_lr_ratio"

    def __post_init__(self) -> None:
        super().__post_init__()
        ratio = self.loraplus_lr_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
            raise ConfigError(f"method.loraplus_lr_ratio must be a finite number, got {ratio!r}")
        if not ratio > 0:
            raise ConfigError(f"method.loraplus_lr_ratio must be > 0, got {ratio!r}")
        self.loraplus_lr_ratio = float(ratio)
        decay = self.loraplus_weight_decay
        if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float)) or decay < 0):
            raise ConfigError(f"method.loraplus_weight_decay must be >= 0 or null (train.weight_decay), got {decay!r}")
        self.freeze_head_modules = [str(m) for m in self.freeze_head_modules or []]

    def finalize(self, model: nn.Module, model_cfg: Any) -> None:
        if not self.freeze_head_modules:
            return
        frozen = 0
        for name, module in model.named_modules():
            if module_matches(name, self.freeze_head_modules):
                module.requires_grad_(False)
                frozen += 1
        if not frozen:
            raise ConfigError(f"method.freeze_head_modules {self.freeze_head_modules} match no module of {model_cfg.name} "
                              f"(the LoRA+ authors freeze RoBERTa's classifier.dense)")

    def create_optimizer(self, model: nn.Module, train_cfg: Any) -> tuple[torch.optim.Optimizer, list[ParamGroup]]:
        optimizer = create_loraplus_optimizer(
            model,
            torch.optim.AdamW,
            lr=float(train_cfg.lr),
            loraplus_lr_ratio=self.loraplus_lr_ratio,
            # A plain `weight_decay` kwarg is silently overridden inside peft: only this one counts.
            loraplus_weight_decay=float(train_cfg.weight_decay if self.loraplus_weight_decay is None
                                        else self.loraplus_weight_decay),
            betas=(float(train_cfg.adam_beta1), float(train_cfg.adam_beta2)),
            eps=float(train_cfg.adam_epsilon),
        )
        return optimizer, describe_groups(optimizer, LORAPLUS_GROUPS)
