"""LoRA (Hu et al. 2021) through peft: h = W0 x + (alpha / r) * B A x on the target projections,
W0 frozen. Bias terms stay frozen, as in the paper."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..errors import ConfigError
from .base import Method, require_positive

INITS = ("a_random", "b_random")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Leaf names of the layers peft's LoRA can wrap (nn.Linear, and GPT-2's Conv1D)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


@dataclass
class LoRA(Method):
    name: str = "lora"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    init: str = "a_random"

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int):
            raise ConfigError(f"method.r must be a positive integer, got {self.r!r}")
        require_positive("method", r=self.r, alpha=self.alpha)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"method.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("method.target_modules is empty")
        self.target_modules = [str(t) for t in self.target_modules]
        if self.init not in INITS:
            raise ConfigError(f"method.init={self.init!r}; valid: {', '.join(INITS)}")

    def check(self, model_cfg: Any, task_cfg: Any) -> None:
        if model_cfg.get("fused_qkv"):
            # peft's LoRA on GPT-2's fused c_attn shares one A across q, k and v (peft issue #706),
            # which is not the paper's model; the paper's q,v-only layer comes with the E2E issue.
            raise ConfigError(
                f"{self.name} on {model_cfg.name}: GPT-2's fused c_attn needs the paper's q,v-only "
                "LoRA layer, which is not implemented yet"
            )

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        available = linear_layer_names(model)
        missing = [t for t in self.target_modules if t not in available]
        if missing:
            raise ConfigError(
                f"LoRA target module(s) {missing} not found in {model_cfg.name}; its linear layers are: "
                + ", ".join(available)
            )
        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=float(self.dropout),
            target_modules=list(self.target_modules),
            bias="none",
            init_lora_weights=True,  # A Kaiming-uniform, B = 0 (loralib's init)
        )
        model = get_peft_model(model, config)
        if self.init == "b_random":
            swap_init_to_b_random(model)
        return model


def swap_init_to_b_random(model: nn.Module) -> None:
    """LoRA+ Init[2]: A = 0 and B ~ N(0, 1/n), n the layer's output width (the paper's
    sigma_B^2 = Theta(1/n)). peft offers no such option, so we re-initialise after injection."""
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A:
                a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                nn.init.zeros_(a)
                nn.init.normal_(b, std=1.0 / math.sqrt(b.shape[0]))
