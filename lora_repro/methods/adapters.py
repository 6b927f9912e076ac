"""Bottleneck adapters with the LoRA paper's definitions (Section 5.1), written here because peft
has no bottleneck adapters and the `adapters` package pins an old transformers.

An adapter is  h -> h + W_up f(W_down LN(h))  (LN only where the variant has one), inserted after a
projection inside a transformer block. Counting one adapter: W_down d x r + r, W_up r x d + d, and a
LayerNorm 2d when present, so |Theta| = L_adpt (2 d r + r + d) + 2 L_LN d.

  adapter_h  Houlsby et al. 2019: after the attention output projection and after the MLP (two per block)
  adapter_l  Lin et al. 2020: after the MLP only, the adapter preceded by its own trainable LayerNorm
  adapter_p  Pfeiffer et al. 2021: after the MLP only
  adapter_d  AdapterDrop (Rueckle et al. 2021): adapter_p with the lowest `drop_lowest` blocks left bare

By default W_up starts at zero, so an adapted model starts as exactly the pretrained function.
AdapterHub's choices (swish, dropout before the adapter, N(0, 0.02) init, Pfeiffer's post-LN
placement) are config values: `activation`, `placement`, `init` (see conf/method/adapter_*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..arch import arch_of
from ..backbone import find_blocks, hidden_size
from ..errors import ConfigError
from .base import Method, freeze_all, require_positive

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "swish": nn.SiLU}
INITS = ("identity", "bert", "houlsby")
PLACEMENTS = ("projection", "after_dropout", "post_ln")


@dataclass(frozen=True)
class Site:
    """Where an adapter site is inside one transformer block (paths relative to the block)."""

    projection: str            # the output projection (attention's W_o, the MLP's second matrix)
    dropout: str | None        # the dropout applied to that projection's output, where the family has one
    output: str | None         # a post-LN output module: forward(hidden, residual) = LN(dropout(dense(hidden)) + residual)


def _encoder(prefix: str) -> Site:
    return Site(f"{prefix}dense", f"{prefix}dropout", prefix.rstrip("."))


# Per model family (transformers' model_type), as peft keys its tables: `attention` = after the
# attention output projection, `ffn` = after the MLP.
_ENCODER_SITES = {"attention": _encoder("attention.output."), "ffn": _encoder("output.")}
SITES_BY_MODEL_TYPE = {
    "bert": _ENCODER_SITES,
    "roberta": _ENCODER_SITES,
    "deberta-v2": _ENCODER_SITES,
    "gpt2": {"attention": Site("attn.c_proj", "attn.resid_dropout", None), "ffn": Site("mlp.c_proj", "mlp.dropout", None)},
    "llama": {"attention": Site("self_attn.o_proj", None, None), "ffn": Site("mlp.down_proj", None, None)},
    # MPNet: the attention's residual LayerNorm is applied inline (no output module), the MLP's as BERT's.
    "mpnet": {"attention": Site("attention.attn.o", "attention.dropout", None), "ffn": _encoder("output.")},
}


class BottleneckAdapter(nn.Module):
    """W_up f(W_down LN(x)) (the LayerNorm only for AdapterL), added to the stream it reads."""

    def __init__(self, d_model: int, r: int, activation: str = "relu", layer_norm: bool = False,
                 init: str = "identity"):
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_model) if layer_norm else None
        self.down = nn.Linear(d_model, r)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(r, d_model)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)
        if init == "identity":    # W_up = 0: the adapted model starts as exactly the pretrained one
            nn.init.normal_(self.down.weight, std=1e-2)
            nn.init.zeros_(self.up.weight)
        elif init == "bert":      # AdapterHub's default (init_weights="bert"): N(0, 0.02) for both
            nn.init.normal_(self.down.weight, std=0.02)
            nn.init.normal_(self.up.weight, std=0.02)
        else:                     # Houlsby et al.: near-identity, truncated N(0, 1e-2) within 2 std
            for layer in (self.down, self.up):
                nn.init.trunc_normal_(layer.weight, std=1e-2, a=-2e-2, b=2e-2)

    def delta(self, x):
        x = self.layer_norm(x) if self.layer_norm is not None else x
        return self.up(self.act(self.down(x)))

    def forward(self, h):
        return h + self.delta(h)


class AdaptedProjection(nn.Module):
    """A block's projection (or its dropout) followed by an adapter; replaces that module in place."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.base_layer(*args, **kwargs))


class PostLNAdaptedOutput(nn.Module):
    """AdapterHub's sequential bottleneck placement (Pfeiffer; SeqBnConfig: original_ln_before,
    residual_before_ln, original_ln_after) around a post-LN block's output module:

        h = dropout(W x);  a = LN(h + residual);  out = LN(h + adapter(a) + residual)

    The adapter reads the block's output after the residual and the LayerNorm, as the LoRA paper
    describes AdapterP; the block's own LayerNorm (frozen) is applied both times."""

    def __init__(self, output: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base_layer = output
        self.adapter = adapter

    def forward(self, hidden_states, input_tensor):
        out = self.base_layer
        h = out.dropout(out.dense(hidden_states))
        adapted = h + self.adapter.delta(out.LayerNorm(h + input_tensor))
        return out.LayerNorm(adapted + input_tensor)


@dataclass
class BottleneckAdapters(Method):
    name: str = "adapter_p"
    r: int = 16
    sites: list[str] = field(default_factory=lambda: ["ffn"])   # keys of SITES_BY_MODEL_TYPE[...]
    layer_norm: bool = False          # an extra trainable LayerNorm in front of each adapter (AdapterL)
    drop_lowest: int = 0              # AdapterDrop: no adapters in the lowest k blocks
    activation: str = "relu"          # relu | gelu | tanh | swish (AdapterHub's Houlsby default)
    train_layer_norms: bool = False   # also train the backbone's LayerNorms (the Houlsby recipe)
    # Where the adapter reads and writes (see the yaml files): projection = right after the output
    # projection; after_dropout = after that projection's dropout (AdapterHub); post_ln = AdapterHub's
    # Pfeiffer placement, reading the block output after the residual and the LayerNorm.
    placement: str = "projection"
    init: str = "identity"            # identity (W_up = 0) | bert (AdapterHub) | houlsby (Houlsby et al.)

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
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"method.placement={self.placement!r}; valid: {', '.join(PLACEMENTS)}")
        if self.init not in INITS:
            raise ConfigError(f"method.init={self.init!r}; valid: {', '.join(INITS)}")
        if not isinstance(self.drop_lowest, int) or self.drop_lowest < 0:
            raise ConfigError(f"method.drop_lowest must be an integer >= 0, got {self.drop_lowest!r}")
        self.sites = [str(s) for s in self.sites]

    def check(self, model_cfg: Any, task_cfg: Any) -> None:
        known = adapter_sites(model_cfg)
        missing = [s for s in self.sites if s not in known]
        if missing:
            raise ConfigError(f"{self.name}: model {model_cfg.name} has no adapter site {missing}; it has {sorted(known)}")
        for site in self.sites:
            if self.placement == "post_ln" and known[site].output is None:
                raise ConfigError(f"{self.name}: placement post_ln (AdapterHub's Pfeiffer adapter) needs a post-LN block "
                                  f"output (BERT, RoBERTa, DeBERTa-v2); {model_cfg.name} has none: use "
                                  f"method.placement=projection")
            if self.placement == "after_dropout" and known[site].dropout is None:
                raise ConfigError(f"{self.name}: {model_cfg.name} has no dropout after its {site} projection; "
                                  f"use method.placement=projection")
        layers = n_layers(model_cfg)
        if layers is not None and self.drop_lowest >= layers:
            raise ConfigError(f"method.drop_lowest={self.drop_lowest} removes every adapter ({model_cfg.name} has {layers} blocks)")

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        self.check(model_cfg, None)
        freeze_all(model)
        d = hidden_size(model)
        blocks = find_blocks(model)
        sites = adapter_sites(model_cfg)
        for index, block in enumerate(blocks):
            if index < self.drop_lowest:
                continue
            for site in self.sites:
                adapter = BottleneckAdapter(d, self.r, self.activation, self.layer_norm, self.init)
                where = sites[site]
                path = {"projection": where.projection, "after_dropout": where.dropout, "post_ln": where.output}[self.placement]
                wrapper = PostLNAdaptedOutput if self.placement == "post_ln" else AdaptedProjection
                parent_path, _, leaf = path.rpartition(".")
                parent = block.get_submodule(parent_path) if parent_path else block
                setattr(parent, leaf, wrapper(getattr(parent, leaf), adapter))
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
    return arch_of(model_cfg).n_layers
