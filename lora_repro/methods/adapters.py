"""Bottleneck adapters with the LoRA paper's definitions (Section 5.1), written here because peft
has no bottleneck adapters and the `adapters` package pins an old transformers.

An adapter is  h -> h + W_up f(W_down LN(h))  (LN only where the variant has one), inserted after a
projection inside a transformer block. Counting one adapter: W_down d x r + r, W_up r x d + d, and a
LayerNorm 2d when present, so |Theta| = L_adpt (2 d r + r + d) + 2 L_LN d.

  adapter_h  Houlsby et al. 2019: after the attention output projection and after the MLP (two per block)
  adapter_l  Lin et al. 2020: after the MLP only, the adapter preceded by its own trainable LayerNorm
  adapter_p  Pfeiffer et al. 2021: after the MLP only
  adapter_d  AdapterDrop (Rueckle et al. 2021): adapter_p with the lowest `drop_lowest` blocks left bare

W_up starts at zero, so an adapted model starts as exactly the pretrained function."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..backbone import find_blocks, hidden_size
from ..errors import ConfigError
from .base import Method, freeze_all, require_positive

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
# Where each site is inside one transformer block, per model family (transformers' model_type):
# `attention` = the attention output projection, `ffn` = the MLP's output projection.
_ENCODER_SITES = {"attention": "attention.output.dense", "ffn": "output.dense"}
SITES_BY_MODEL_TYPE = {
    "bert": _ENCODER_SITES,
    "roberta": _ENCODER_SITES,
    "deberta-v2": _ENCODER_SITES,
    "gpt2": {"attention": "attn.c_proj", "ffn": "mlp.c_proj"},
    "llama": {"attention": "self_attn.o_proj", "ffn": "mlp.down_proj"},
}


class BottleneckAdapter(nn.Module):
    def __init__(self, d_model: int, r: int, activation: str = "relu", layer_norm: bool = False):
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_model) if layer_norm else None
        self.down = nn.Linear(d_model, r)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(r, d_model)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        x = self.layer_norm(h) if self.layer_norm is not None else h
        return h + self.up(self.act(self.down(x)))


class AdaptedProjection(nn.Module):
    """A block's projection followed by an adapter; replaces the projection in place."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.base_layer(*args, **kwargs))


@dataclass
class BottleneckAdapters(Method):
    name: str = "adapter_p"
    r: int = 16
    sites: list[str] = field(default_factory=lambda: ["ffn"])   # keys of SITES_BY_MODEL_TYPE[...]
    layer_norm: bool = False          # an extra trainable LayerNorm in front of each adapter (AdapterL)
    drop_lowest: int = 0              # AdapterDrop: no adapters in the lowest k blocks
    activation: str = "relu"
    train_layer_norms: bool = False   # also train the backbone's LayerNorms (the Houlsby recipe)

    family: ClassVar[str] = "adapter"
    rank_key: ClassVar[str | None] = "r"
    paper_setting: ClassVar[str] = "houlsby"   # Table 2's adapter rows ran in Houlsby et al.'s setup

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int):
            raise ConfigError(f"method.r must be a positive integer, got {self.r!r}")
        require_positive("method", r=self.r)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"method.activation={self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if not self.sites:
            raise ConfigError("method.sites is empty")
        if not isinstance(self.drop_lowest, int) or self.drop_lowest < 0:
            raise ConfigError(f"method.drop_lowest must be an integer >= 0, got {self.drop_lowest!r}")
        self.sites = [str(s) for s in self.sites]

    def check(self, model_cfg: Any, task_cfg: Any) -> None:
        known = adapter_sites(model_cfg)
        missing = [s for s in self.sites if s not in known]
        if missing:
            raise ConfigError(f"{self.name}: model {model_cfg.name} has no adapter site {missing}; it has {sorted(known)}")
        layers = n_layers(model_cfg)
        if layers is not None and self.drop_lowest >= layers:
            raise ConfigError(f"method.drop_lowest={self.drop_lowest} removes every adapter ({model_cfg.name} has {layers} blocks)")

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        freeze_all(model)
        d = hidden_size(model)
        blocks = find_blocks(model)
        sites = adapter_sites(model_cfg)
        for index, block in enumerate(blocks):
            if index < self.drop_lowest:
                continue
            for site in self.sites:
                path = sites[site]
                parent_path, _, leaf = path.rpartition(".")
                parent = block.get_submodule(parent_path) if parent_path else block
                adapter = BottleneckAdapter(d, self.r, self.activation, self.layer_norm)
                setattr(parent, leaf, AdaptedProjection(getattr(parent, leaf), adapter))
        if self.train_layer_norms:
            for block in blocks:
                for module in block.modules():
                    if isinstance(module, nn.LayerNorm):
                        module.requires_grad_(True)
        # New modules are created with requires_grad=True; the frozen backbone stays frozen.
        return model

    def formula_params(self, d_model: int, n_layers: int, model_cfg: Any = None) -> int:
        adapters = (n_layers - self.drop_lowest) * len(self.sites)
        layer_norms = adapters if self.layer_norm else 0
        if self.train_layer_norms:
            layer_norms += 2 * n_layers  # the two LayerNorms of each block
        return adapters * (2 * d_model * self.r + self.r + d_model) + 2 * layer_norms * d_model


def adapter_sites(model_cfg: Any) -> dict[str, str]:
    kind = str((model_cfg.get("arch") or {}).get("model_type", ""))
    if kind not in SITES_BY_MODEL_TYPE:
        raise ConfigError(f"adapters know no sites for model type {kind!r} ({model_cfg.name}); "
                          f"known: {', '.join(SITES_BY_MODEL_TYPE)} (add it to SITES_BY_MODEL_TYPE)")
    return SITES_BY_MODEL_TYPE[kind]


def n_layers(model_cfg: Any) -> int | None:
    arch = model_cfg.get("arch") or {}
    return arch.get("num_hidden_layers", arch.get("n_layer"))
