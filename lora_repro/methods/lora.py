"""LoRA (Hu et al. 2021): h = W0 x + (alpha / r) * B A x on the target projections, W0 frozen; bias
terms stay frozen, as in the paper. Separate projections (BERT, RoBERTa, DeBERTa-v2) go through
peft. GPT-2's fused q|k|v projection (`c_attn`) gets the paper's own layer, FusedQKVLoRA below:
peft's LoRA on c_attn would share one A across q, k and v and adapt k too (peft issue #706), which is
a different model from loralib's MergedLinear that the paper used."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from ..errors import ConfigError
from .base import Method, freeze_all, peft_merged_deltas, require_positive

INITS = ("a_random", "b_random")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Leaf names of the layers peft's LoRA can wrap (nn.Linear, and GPT-2's Conv1D)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


# The model families whose q, k, v come from one fused projection, and the slices the paper adapts
# in it (GPT-2's c_attn = [q | k | v]; loralib's MergedLinear with enable_lora=[True, False, True]).
FUSED_QKV_MODEL_TYPES = {"gpt2"}
# What of peft's LoraConfig the paper's own fused layer also honours (the rest is refused there).
FUSED_PEFT_OPTIONS = {"use_rslora"}


def lora_scaling(alpha: float, r: int, rslora: bool = False) -> float:
    """LoRA's scale on B A: alpha / r (Hu et al.), or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023),
    as peft computes it; FusedQKVLoRA uses the same, so a LoRA variant yaml means one thing everywhere."""
    return alpha / math.sqrt(r) if rslora else alpha / r
# LoraConfig fields this class sets itself; the rest pass through from the yaml's `peft_config`.
OWN_LORA_FIELDS = {"r", "lora_alpha", "lora_dropout", "target_modules", "bias"}


def model_type(model_cfg: Any) -> str:
    """transformers' model_type of a model yaml (its `arch` block), the key of the family tables."""
    return str((model_cfg.get("arch") or {}).get("model_type", ""))


# W_q and W_v of families peft's table does not list (MPNet's attention is attn.q/k/v/o).
EXTRA_TARGETS = {"mpnet": ["q", "v"]}


def default_targets(model_cfg: Any) -> list[str]:
    """W_q and W_v of the model's family, from peft's own table (the paper adapts W_q, W_v)."""
    targets = (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type(model_cfg))
               or EXTRA_TARGETS.get(model_type(model_cfg)))
    if not targets:
        raise ConfigError(f"LoRA has no default target modules for model type {model_type(model_cfg)!r} "
                          f"({model_cfg.name}); set method.target_modules=[...]")
    return list(targets)


@dataclass
class LoRA(Method):
    name: str = "lora"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.1
    target_modules: list[str] | None = None   # None: the family's W_q, W_v (peft's table)
    init: str = "a_random"
    # Any further peft.LoraConfig argument (use_rslora, use_dora, init_lora_weights, ...), so a LoRA
    # variant is one yaml file. Checked against LoraConfig's fields before anything is loaded.
    peft_config: dict[str, Any] = field(default_factory=dict)

    family: ClassVar[str] = "lora"
    rank_key: ClassVar[str | None] = "r"

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int):
            raise ConfigError(f"method.r must be a positive integer, got {self.r!r}")
        require_positive("method", r=self.r, alpha=self.alpha)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"method.dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):  # `method.target_modules=query`: one name, not its letters
                self.target_modules = [self.target_modules]
            if not self.target_modules:
                raise ConfigError("method.target_modules is empty")
            self.target_modules = [str(t) for t in self.target_modules]
        if self.init not in INITS:
            raise ConfigError(f"method.init={self.init!r}; valid: {', '.join(INITS)}")
        self.peft_config = dict(self.peft_config or {})
        known = set(LoraConfig.__dataclass_fields__) - OWN_LORA_FIELDS
        unknown = sorted(set(self.peft_config) - known)
        if unknown:
            raise ConfigError(f"method.peft_config: {unknown} {'is' if len(unknown) == 1 else 'are'} not a peft "
                              f"LoraConfig argument this method passes through (r, alpha, dropout, target_modules "
                              f"have their own keys); see peft.LoraConfig")
        if self.init == "b_random" and "init_lora_weights" in self.peft_config:
            raise ConfigError("method.init=b_random and method.peft_config.init_lora_weights both set the "
                              "initialisation; keep one")

    def targets(self, model_cfg: Any) -> list[str]:
        return self.target_modules or default_targets(model_cfg)

    def check(self, model_cfg: Any, task_cfg: Any) -> None:
        foreign = sorted(set(self.peft_config) - FUSED_PEFT_OPTIONS)
        if model_type(model_cfg) in FUSED_QKV_MODEL_TYPES and foreign:
            raise ConfigError(f"{self.name}: {foreign} cannot be applied to {model_cfg.name}: its q, k, v "
                              f"share one fused projection, adapted here with separate q/v factors as the paper "
                              f"(FusedQKVLoRA), which peft's options do not reach; use a model with separate projections")

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        targets = self.targets(model_cfg)
        if model_type(model_cfg) in FUSED_QKV_MODEL_TYPES:
            return apply_fused_qkv_lora(model, self, targets)
        available = linear_layer_names(model)
        # peft's rule: a target matches a module whose dotted name is it or ends with "." + it, so
        # "attention.output.dense" (BERT's W_o) selects that projection and not the MLP's "dense".
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear)]
        if missing:
            raise ConfigError(
                f"LoRA target module(s) {missing} not found in {model_cfg.name}; its linear layers are: "
                + ", ".join(available)
            )
        # A Kaiming-uniform, B = 0 (loralib's init), unless peft_config names another (pissa, olora, ...).
        options = {"init_lora_weights": True, **self.peft_config}
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=float(self.dropout),
                            target_modules=targets, bias="none", **options)
        model = get_peft_model(model, config)
        if self.init == "b_random":
            swap_init_to_b_random(model)
        return model

    def merged(self, model: nn.Module) -> nn.Module:
        return merge_lora(model)  # peft's merge_and_unload, or FusedQKVLoRA's own merge (GPT-2)

    def delta_weights(self, model: nn.Module, pretrained: dict) -> dict:
        fused = {name: module for name, module in model.named_modules() if isinstance(module, FusedQKVLoRA)}
        if not fused:
            return peft_merged_deltas(model, pretrained)
        # GPT-2's fused c_attn: one dW per adapted slice ("<module>:q", "<module>:v"), out x in.
        return {f"{name}:{slot}": update.t() for name, module in fused.items() for slot, update in module.updates().items()}

    def formula_params(self, d_model: int, n_layers: int, model_cfg: Any = None) -> int:
        """Section 5.1: 2 x L_LoRA x d_model x r, L_LoRA the number of adapted d x d matrices (a
        fused c_attn counts its q and v)."""
        if model_cfg is not None and model_type(model_cfg) in FUSED_QKV_MODEL_TYPES:
            per_layer = sum(FusedQKVLoRA.PAPER_SLICES)
        else:
            per_layer = len(self.target_modules or (default_targets(model_cfg) if model_cfg is not None else ["q", "v"]))
        return 2 * n_layers * per_layer * d_model * self.r


def swap_init_to_b_random(model: nn.Module) -> None:
    """LoRA+ Init[2]: A = 0 and B ~ N(0, 1/n), n the layer's output width (the paper's
    sigma_B^2 = Theta(1/n)). peft offers no such option, so we re-initialise after injection."""
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A:
                a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                nn.init.zeros_(a)
                nn.init.normal_(b, std=1.0 / math.sqrt(b.shape[0]))


class FusedQKVLoRA(nn.Module):
    """GPT-2's c_attn (a Conv1D mapping d -> [q | k | v], 3d) with LoRA on the enabled slices, each
    with its own A (r x d) and B (width x r): loralib's MergedLinear(enable_lora=[True, False, True])
    by default (q and v; the paper). Written here because peft's LoRA on a fused projection shares
    one A across q, k, v (peft issue #706). `widths` are the q, k, v output widths (equal thirds for
    GPT-2; a grouped-query fused projection has narrower k and v); the scale is lora_scaling's, so
    rsLoRA (use_rslora) reaches GPT-2 too. A disabled slice's output is exactly the frozen one's."""

    NAMES = ("q", "k", "v")
    PAPER_SLICES = (True, False, True)   # loralib's enable_lora for the paper's W_q, W_v

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float, init: str,
                 enable_lora: tuple[bool, bool, bool] = PAPER_SLICES,
                 widths: tuple[int, int, int] | None = None, rslora: bool = False):
        super().__init__()
        self.base_layer = base_layer
        d_in, d_out = base_layer.weight.shape  # Conv1D stores (in, out)
        self.widths = tuple(widths) if widths is not None else (d_out // 3,) * 3
        if sum(self.widths) != d_out or len(enable_lora) != 3:
            raise ConfigError(f"fused q|k|v widths {self.widths} do not add up to the projection's {d_out} outputs")
        self.offsets = {name: sum(self.widths[:i]) for i, name in enumerate(self.NAMES)}
        self.slices = {name: i for i, name in enumerate(self.NAMES) if enable_lora[i]}
        self.scaling = lora_scaling(alpha, r, rslora)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device = base_layer.weight.device
        self.lora_A = nn.ParameterDict({s: nn.Parameter(torch.empty(r, d_in, device=device)) for s in self.slices})
        self.lora_B = nn.ParameterDict({s: nn.Parameter(torch.empty(self.widths[i], r, device=device))
                                        for s, i in self.slices.items()})
        for s, i in self.slices.items():
            if init == "b_random":
                nn.init.zeros_(self.lora_A[s])
                nn.init.normal_(self.lora_B[s], std=1.0 / math.sqrt(self.widths[i]))
            else:
                nn.init.kaiming_uniform_(self.lora_A[s], a=math.sqrt(5))
                nn.init.zeros_(self.lora_B[s])
        self.merged = False

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(x)
        parts = [torch.zeros(*x.shape[:-1], w, dtype=x.dtype, device=x.device) for w in self.widths]
        for s, index in self.slices.items():
            parts[index] = (h @ self.lora_A[s].t().to(x.dtype)) @ self.lora_B[s].t().to(x.dtype) * self.scaling
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        return out if self.merged else out + self.delta(x)

    @torch.no_grad()
    def updates(self) -> dict[str, torch.Tensor]:
        """Each adapted slice's update in the Conv1D's own layout (d_in, width): s (B A)^T."""
        return {s: (self.lora_B[s].double() @ self.lora_A[s].double()).t() * self.scaling for s in self.slices}

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Fold B A into the frozen weight (no inference latency); returns the plain Conv1D."""
        for s, update in self.updates().items():
            cols = slice(self.offsets[s], self.offsets[s] + self.widths[self.slices[s]])
            self.base_layer.weight[:, cols] += update.to(self.base_layer.weight.dtype)
        self.merged = True
        return self.base_layer


def apply_fused_qkv_lora(model: nn.Module, method: "LoRA", target_modules: list[str]) -> nn.Module:
    freeze_all(model)
    targets = set(target_modules)
    replaced = 0
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in targets and type(module).__name__ == "Conv1D":
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, leaf, FusedQKVLoRA(module, method.r, method.alpha, float(method.dropout), method.init,
                                               rslora=bool(method.peft_config.get("use_rslora"))))
            replaced += 1
    if not replaced:
        raise ConfigError(f"no fused qkv projection named {sorted(targets)} in {type(model).__name__}; "
                          f"its linear layers are: {', '.join(linear_layer_names(model))}")
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA update into its frozen weight (peft's merge_and_unload for peft models)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    for name, module in list(model.named_modules()):
        if isinstance(module, FusedQKVLoRA):
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, leaf, module.merge())
    return model


@torch.no_grad()
def fused_to_peft(model: nn.Module) -> nn.Module:
    """The model with each FusedQKVLoRA turned into peft's own LoRA on the fused projection (for
    `predict --export`: files that PeftModel.from_pretrained loads). Exact: peft's layer computes
    s' B' A' x on c_attn, so A' stacks the slices' A (rank R = r x slices), B' places each slice's B in
    its rows and columns (zeros elsewhere: k stays frozen), and lora_alpha = s R gives s' = s."""
    import copy

    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model
    fused = {name: m for name, m in model.named_modules() if isinstance(m, FusedQKVLoRA)}
    if not fused:
        raise ConfigError("the model has no peft adapter and no fused q|k|v LoRA to convert")
    first = next(iter(fused.values()))
    r = next(iter(first.lora_A.values())).shape[0]
    rank = r * len(first.slices)
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    plain = copy.deepcopy(model)
    for name in fused:
        parent_name, _, leaf = name.rpartition(".")
        parent = plain.get_submodule(parent_name) if parent_name else plain
        setattr(parent, leaf, getattr(parent, leaf).base_layer)
    leaves = sorted({name.rsplit(".", 1)[-1] for name in fused})
    config = LoraConfig(r=rank, lora_alpha=first.scaling * rank, lora_dropout=dropout, target_modules=leaves,
                        fan_in_fan_out=True, bias="none")
    peft_model = get_peft_model(plain, config)
    for name, layer in fused.items():
        target = peft_model.base_model.model.get_submodule(name)
        a, b = target.lora_A["default"].weight, target.lora_B["default"].weight
        a.zero_()
        b.zero_()
        for k, (s, index) in enumerate(layer.slices.items()):
            rows = slice(layer.offsets[s], layer.offsets[s] + layer.widths[index])
            a[k * r:(k + 1) * r] = layer.lora_A[s]
            b[rows, k * r:(k + 1) * r] = layer.lora_B[s]
    return peft_model
