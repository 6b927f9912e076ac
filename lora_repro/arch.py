"""Architecture facts of a model yaml (its `arch` block), read once through transformers' own config
class for the model_type, so GPT-2's n_embd / n_layer / n_head / n_positions and every other
family's names map to one set of facts (transformers' attribute_map does the translating; no
module keeps its own copy of the field fallbacks)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# Rows of the position table a family keeps for its padding offset (positions start at pad + 1).
POSITION_OFFSET = {"roberta": 2, "mpnet": 2}


@dataclass(frozen=True)
class Arch:
    model_type: str
    d_model: int | None
    n_layers: int | None
    n_heads: int | None
    positions: int | None   # tokens the position table covers (RoBERTa's padding offset taken off)
    decoder: bool


@lru_cache(maxsize=64)
def _facts(arch_json: str) -> tuple:
    from transformers import AutoConfig

    fields = json.loads(arch_json)
    model_type = str(fields.pop("model_type", "") or "")
    try:
        config = AutoConfig.for_model(model_type, **fields)
    except Exception:  # not a model_type this transformers knows, or a field it refuses: the raw names
        config = None

    aliases = dict(getattr(config, "attribute_map", {}) or {})   # e.g. GPT-2: hidden_size -> n_embd

    def read(name: str) -> int | None:
        # Only what the yaml gives (under either name): a transformers default is not this model's fact.
        given = name if name in fields else aliases.get(name) if aliases.get(name) in fields else None
        if given is None:
            return None
        value = getattr(config, name, None) if config is not None else fields.get(given)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    positions = read("max_position_embeddings")
    if positions is not None:
        positions -= POSITION_OFFSET.get(model_type, 0)
    return model_type, read("hidden_size"), read("num_hidden_layers"), read("num_attention_heads"), positions


def arch_of(model_cfg: Any) -> Arch:
    """The facts of a model yaml's `arch` block (None where the block does not give one)."""
    from omegaconf import DictConfig, OmegaConf

    arch = model_cfg.get("arch") or {}
    plain = OmegaConf.to_container(arch, resolve=True) if isinstance(arch, DictConfig) else dict(arch)
    model_type, d_model, n_layers, n_heads, positions = _facts(json.dumps(plain, sort_keys=True, default=str))
    return Arch(model_type, d_model, n_layers, n_heads, positions, bool(model_cfg.get("decoder")))
