"""Full fine-tuning: every weight of the backbone is trained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from .base import Method, changed_matrices


@dataclass
class FullFineTuning(Method):
    name: str = "full_ft"
    family: ClassVar[str] = "full_ft"

    def analytic_params(self, dims: dict[str, int], model_cfg: Any = None) -> int:
        """A GPT-style model: 12 L d^2 + 13 L d weights and biases in the blocks, token and position
        embeddings, and the final LayerNorm."""
        d, L = dims["d_model"], dims["n_layers"]
        return 12 * L * d * d + 13 * L * d + (dims["vocab"] + dims["positions"]) * d + 2 * d

    def merged(self, model: nn.Module) -> nn.Module:
        return model  # the trained weights are the backbone's own

    def delta_weights(self, model: nn.Module, pretrained: dict) -> dict:
        return changed_matrices(model, pretrained)

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
