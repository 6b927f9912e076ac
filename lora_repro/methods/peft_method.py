"""Any peft tuner from its own configuration (peft's method_comparison does the same with one
adapter_config.json per experiment): `peft_type` names it (IA3, VERA, LOHA, LOKR, ADALORA, BOFT,
...) and `peft_config` holds its arguments, passed to peft's config class unchanged. Target modules
come from peft's own per-model_type tables unless `peft_config` names them, so a peft tuner is one
yaml file here. LoRA keeps its own module (methods/lora.py): GPT-2's fused q,v projection and the
LoRA+ initialisation are not in peft."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from torch import nn

from ..errors import ConfigError
from .base import Method, freeze_all, peft_merged_deltas


def peft_config_classes() -> dict[str, Any]:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(getattr(k, "value", k)): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


@dataclass
class PeftMethod(Method):
    peft_type: str = "IA3"
    peft_config: dict[str, Any] = field(default_factory=dict)

    family: ClassVar[str] = "peft"

    def __post_init__(self) -> None:
        classes = peft_config_classes()
        self.peft_type = str(self.peft_type).upper()
        if self.peft_type not in classes:
            raise ConfigError(f"method.peft_type={self.peft_type!r} is not a peft tuner; peft knows: "
                              f"{', '.join(sorted(classes))}")
        self.peft_config = dict(self.peft_config or {})
        known = {f.name for f in fields(classes[self.peft_type])}
        unknown = sorted(set(self.peft_config) - known)
        if unknown:
            raise ConfigError(f"method.peft_config: {unknown} {'is' if len(unknown) == 1 else 'are'} not an argument of "
                              f"peft's {classes[self.peft_type].__name__}; see its documentation")

    def merged(self, model: nn.Module) -> nn.Module:
        try:
            return model.merge_and_unload()
        except Exception as exc:  # a peft tuner without a merge (e.g. prompt learning)
            raise ConfigError(f"method {self.name}: peft cannot merge {self.peft_type} ({' '.join(str(exc).split())[:160]}); "
                              f"use --export") from None

    def delta_weights(self, model: nn.Module, pretrained: dict) -> dict:
        return peft_merged_deltas(model, pretrained)

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        from peft import get_peft_config, get_peft_model

        freeze_all(model)
        config = get_peft_config({"peft_type": self.peft_type, **self.peft_config})
        try:
            return get_peft_model(model, config)
        except ValueError as exc:  # peft has no default targets for this model_type, or they do not fit
            raise ConfigError(f"{self.name} ({self.peft_type}) on {model_cfg.name}: {' '.join(str(exc).split())[:300]}; "
                              f"set method.peft_config.target_modules (and what else peft asks for)") from None
