"""The interface every fine-tuning method implements, and the default optimizer."""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

from ..errors import ConfigError


@dataclass
class ParamGroup:
    """One optimizer group, as recorded in record.json."""

    name: str
    params: int
    lr: float
    weight_decay: float


@dataclass
class Method:
    """Base class. Subclasses are dataclasses: Hydra instantiates them from `conf/method/*.yaml`,
    so `__post_init__` validates hyper-parameters before any model is loaded.

    A method also declares what it is, so that nothing downstream (params, tables, plots) needs its
    name: `family` groups variants of one idea (lora, adapter, prefix, ...), `rank_key` names the
    hyper-parameter that is its rank (the rank plot draws methods that have one), `lr_ratio_key` the
    one that scales a second learning rate (the LoRA+ heatmap), and `paper_setting` the training
    setup its Table 2 rows used ("paper", or "houlsby" for the rows run in Houlsby et al.'s setup)."""

    name: str

    family: ClassVar[str] = "other"
    rank_key: ClassVar[str | None] = None
    lr_ratio_key: ClassVar[str | None] = None
    paper_setting: ClassVar[str] = "paper"

    def check(self, model_cfg: Any, task_cfg: Any) -> None:
        """Config-time checks against the model and task (no weights loaded). Raise ConfigError."""

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        """Freeze/wrap the backbone; return the module to train. The task head is made trainable
        by the trainer afterwards, for every method."""
        raise NotImplementedError

    def finalize(self, model: nn.Module, model_cfg: Any) -> None:
        """Last word on what trains, after the task head has been made trainable (a recipe that
        keeps part of the head frozen). Nothing by default."""

    def create_optimizer(self, model: nn.Module, train_cfg: Any) -> tuple[torch.optim.Optimizer, list[ParamGroup]]:
        """AdamW over the trainable parameters, without weight decay on biases and LayerNorms (the
        transformers convention)."""
        decay = set(n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            ("decay", [p for n, p in named if n in decay], float(train_cfg.weight_decay)),
            ("no_decay", [p for n, p in named if n not in decay], 0.0),
        ]
        torch_groups = [{"params": ps, "weight_decay": wd, "lr": float(train_cfg.lr)} for _, ps, wd in groups if ps]
        optimizer = adamw(torch_groups, train_cfg)
        return optimizer, describe_groups(optimizer, [g for g, ps, _ in groups if ps])

    def formula_params(self, d_model: int, n_layers: int, model_cfg: Any = None) -> int | None:
        """The LoRA paper's Section 5.1 count for this method, or None where it gives no formula."""
        return None

    def analytic_params(self, dims: dict[str, int], model_cfg: Any = None) -> int | None:
        """What the method trains in a GPT-style model too large to build (GPT-3 175B): `dims` has
        d_model, n_layers, vocab and positions. The Section 5.1 formula unless a method knows better."""
        return self.formula_params(dims["d_model"], dims["n_layers"], model_cfg)

    def delta_weights(self, model: nn.Module, pretrained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What training added to each pretrained weight matrix: module path -> dW (out x in), the
        trained model's effective weight minus `pretrained` (the backbone's state dict before the
        method was applied). {} for a method that adds modules instead (adapters, prefixes).
        `make weights` (analysis/weights.py) reads these, so each method's own maths decides:
        DoRA's magnitude, PiSSA's and OLoRA's residual base are not s B A."""
        return {}

    def merged(self, model: nn.Module) -> nn.Module:
        """The trained model as the backbone's own architecture, the method's weights folded in (for
        `predict --merge`: a plain transformers model, no method code needed to load it). A method
        that adds modules (adapters, prefixes) cannot be folded in and says so."""
        from ..errors import ConfigError

        raise ConfigError(f"method {self.name} adds modules to the network, so its weights cannot be folded into the "
                          f"backbone; use `--export` (peft methods) or load_run(run_dir)")

    def info(self) -> dict[str, Any]:
        """What the method is, for the run record and the analysis (see the class docstring)."""
        return {"family": self.family, "rank_key": self.rank_key, "lr_ratio_key": self.lr_ratio_key,
                "paper_setting": self.paper_setting}

    def hparams(self) -> dict[str, Any]:
        """The method's own settings, for the run record."""
        return {k: v for k, v in asdict(self).items() if k != "name"}


@torch.no_grad()
def changed_matrices(model: nn.Module, pretrained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """dW = W_trained - W_0 for every trainable 2-D weight (embeddings left out; the task head's
    matrices are in, against the head the run started from): full fine-tuning's update, by difference."""
    return {name[:-len(".weight")]: p.detach().double() - pretrained[name].double()
            for name, p in model.named_parameters()
            if p.requires_grad and p.dim() == 2 and name.endswith(".weight") and "embed" not in name
            and name in pretrained and pretrained[name].shape == p.shape}


@torch.no_grad()
def peft_merged_deltas(model: nn.Module, pretrained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """dW of every module a peft tuner adapted, from peft's own merge (merge_and_unload on a copy):
    the merged weight minus the pretrained one. Right for every tuner peft can merge: LoRA and
    rsLoRA (s B A), DoRA (the magnitude-rescaled W + s B A), PiSSA/OLoRA (whose frozen base is a
    residual, not W_0), IA3, VeRA, LoHa."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    prefix = "base_model.model."
    out, rest = {}, []
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        name = name[len(prefix):] if name.startswith(prefix) else name
        key = f"{name}.weight"
        adapters = list(getattr(module, "lora_A", {}) or {})
        plain_lora = (len(adapters) == 1 and not (getattr(module, "use_dora", {}) or {}).get(adapters[0])
                      and not getattr(module, "fan_in_fan_out", False) and key in pretrained)
        if plain_lora:
            # LoRA, rsLoRA, PiSSA, OLoRA: (W_base - W_0) + s B A in float64, exact where a float32
            # merge would leave rounding noise in the trailing singular values (PiSSA's and OLoRA's
            # W_base is their residual; plain LoRA's equals W_0).
            a, b = module.lora_A[adapters[0]].weight.double(), module.lora_B[adapters[0]].weight.double()
            base = module.get_base_layer().weight.double()
            out[name] = (base - pretrained[key].double()) + module.scaling[adapters[0]] * (b @ a)
        else:
            rest.append(name)
    if rest:  # DoRA's magnitude and the other tuners: peft's own merge on a copy
        merged = copy.deepcopy(model).merge_and_unload().state_dict()
        for name in rest:
            key = f"{name}.weight"
            if key in merged and key in pretrained and merged[key].dim() == 2:
                out[name] = merged[key].double() - pretrained[key].double()
    return out


def adamw(param_groups: list[dict], train_cfg: Any) -> torch.optim.AdamW:
    # On CUDA the fused kernel (one launch for all parameters; the same update rule) when every
    # parameter is on the GPU; the for-each implementation elsewhere.
    on_cuda = torch.cuda.is_available() and all(p.is_cuda for g in param_groups for p in g["params"])
    return torch.optim.AdamW(
        param_groups,
        lr=float(train_cfg.lr),
        betas=(float(train_cfg.adam_beta1), float(train_cfg.adam_beta2)),
        eps=float(train_cfg.adam_epsilon),
        fused=on_cuda or None,
    )


def describe_groups(optimizer: torch.optim.Optimizer, names: list[str]) -> list[ParamGroup]:
    return [
        ParamGroup(name, sum(p.numel() for p in g["params"]), float(g["lr"]), float(g["weight_decay"]))
        for name, g in zip(names, optimizer.param_groups)
    ]


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def require_positive(owner: str, **values: float) -> None:
    for key, value in values.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number:
            raise ConfigError(f"{owner}.{key} must be a finite number, got {value!r}")
        if not value > 0:
            raise ConfigError(f"{owner}.{key} must be > 0, got {value}")
