"""BitFit (Ben Zaken et al. 2021): train only the bias terms. Written here because peft has no
BitFit tuner; it is a freeze pattern, not a new layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..errors import ConfigError
from .base import Method, freeze_all


@dataclass
class BitFit(Method):
    name: str = "bitfit"
    family: ClassVar[str] = "bitfit"

    def analytic_params(self, dims: dict[str, int], model_cfg: Any = None) -> int:
        """A GPT-style block has 11 d bias entries (q|k|v 3d, attention out d, MLP 4d + d, two
        LayerNorm biases 2d); plus the final LayerNorm's bias."""
        return 11 * dims["d_model"] * dims["n_layers"] + dims["d_model"]

    def merged(self, model: nn.Module) -> nn.Module:
        return model  # the trained biases are the backbone's own

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        freeze_all(model)
        biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
        if not biases:
            raise ConfigError(f"BitFit needs bias terms, and model {model_cfg.name} has none")
        for p in biases:
            p.requires_grad_(True)
        return model
