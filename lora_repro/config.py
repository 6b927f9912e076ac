"""Checks on the composed config, run before any model or data is loaded, so a typo costs seconds,
not hours. Each failure is a ConfigError with one line naming the key and the valid values."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from . import CONF_DIR
from .arch import arch_of
from .backbone import check_model_config
from .data import check_task_config
from .errors import ConfigError
from .kinds import kind_of
from .methods import Method
from .rundir import resolve_init_from

GROUPS = ("model", "method", "task", "train", "logger", "experiment")
PRECISIONS = ("fp32", "bf16", "fp16")
WANDB_MODES = ("online", "offline", "disabled")


# Config folders of the user's own that extend conf/: $LORA_REPRO_CONF_DIRS (os.pathsep-separated;
# studies pass it on to every run) and Hydra's `--config-dir DIR` flag (the entry point adds it
# here). A task, model, method or experiment yaml there is an option like the project's own, in the
# pre-flight checks as in the run.
EXTRA_CONF_DIRS: list[str] = [d for d in os.environ.get("LORA_REPRO_CONF_DIRS", "").split(os.pathsep) if d]


def searchpath_override() -> list[str]:
    return [f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in EXTRA_CONF_DIRS)}]"] if EXTRA_CONF_DIRS else []


def compose_config(overrides: list[str], conf_dir: str | None = None) -> DictConfig:
    """The project's config composed outside a Hydra app (tools, tests): the same files and
    override syntax as `python -m lora_repro.train` (`conf_dir`: another copy of conf/; folders in
    EXTRA_CONF_DIRS are searched too)."""
    return compose_with_choices(overrides, conf_dir)[0]


def compose_with_choices(overrides: list[str], conf_dir: str | None = None) -> tuple[DictConfig, dict[str, str]]:
    """The config and the option chosen in each group ({"model": "minilm_l6", "experiment": ...}),
    from one composition: a run's recipe label is its difference from those named defaults."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .rundir import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir or CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides) + searchpath_override(),
                      return_hydra_config=True)
    choices = group_choices(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]  # Hydra's own settings are no part of a run (and resolve only inside a Hydra app)
    return cfg, choices


def group_choices(runtime_choices: Any) -> dict[str, str]:
    """Hydra's runtime.choices without its own groups (hydra/launcher, ...): the project's groups."""
    return {k: v for k, v in OmegaConf.to_container(runtime_choices).items() if not k.startswith("hydra/")}


# Mappings whose keys are passed on as they are (peft's LoraConfig, transformers' model config), so
# `+method.peft_config.use_rslora=true` adds a real setting; anywhere else an added key is read by
# nothing, and is refused.
FREE_FORM = ("method.peft_config", "model.arch")


def check_added_keys(overrides: list[str], cfg: DictConfig) -> None:
    """`+train.learning_rate=1e-3` (Hydra's advice after a typo) adds a key that nothing reads: the
    run would train at the default while its record claimed the new value."""
    for item in overrides:
        if not item.startswith("+") or item.startswith("++") or "=" not in item:
            continue
        key = item[1:].split("=", 1)[0]
        if key in GROUPS or "/" in key:
            continue  # a config group (+experiment=...)
        parent = key.rpartition(".")[0]
        if parent in FREE_FORM or parent.startswith(tuple(f"{f}." for f in FREE_FORM)):
            continue
        node = OmegaConf.select(cfg, parent) if parent else cfg
        valid = sorted(k for k in (node.keys() if isinstance(node, DictConfig) else []) if k != key.rpartition(".")[2])
        raise ConfigError(f"{item}: {key} is not a setting of this config, so nothing would read it"
                          + (f"; {parent or 'the root'} has: {', '.join(valid)}" if valid else ""))


# What people type from transformers' TrainingArguments, peft's LoraConfig and run_glue.py, and the
# setting that means it here.
FOREIGN_NAMES = {
    "learning_rate": "train.lr", "num_train_epochs": "train.epochs", "per_device_train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.eval_batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "fp16": "train.precision=fp16", "bf16": "train.precision=bf16", "lr_scheduler_type": "train.schedule",
    "warmup_steps": "train.warmup_steps", "warmup_ratio": "train.warmup_ratio", "eval_steps": "train.eval_every",
    "eval_strategy": "train.eval_every", "save_steps": "train.checkpoint_every", "max_steps": "train.max_steps",
    "weight_decay": "train.weight_decay", "max_grad_norm": "train.max_grad_norm", "output_dir": "output_root",
    "lora_r": "method.r", "lora_alpha": "method.alpha", "lora_dropout": "method.dropout",
    "target_modules": "method.target_modules", "max_seq_length": "task.max_length", "max_length": "task.max_length",
    "model_name_or_path": "model=<a name in conf/model/>", "task_name": "task=<a name in conf/task/>",
    "dataloader_num_workers": "train.num_workers", "logging_steps": "train.logging_steps", "seed": "seed",
}


def unknown_key_hint(overrides: list[str]) -> str:
    """For an override naming no setting: '; did you mean train.lr? train has: ...' (from
    FOREIGN_NAMES, else the closest names of its group); '' when every key exists."""
    import difflib

    base = compose_config([o for o in overrides if o.split("=", 1)[0].lstrip("+~") in GROUPS])
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item or key in GROUPS or "/" in key or key.startswith("hydra"):
            continue
        if OmegaConf.select(base, key, default="<missing>") != "<missing>":
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        names = sorted(node.keys()) if isinstance(node, DictConfig) else []
        guess = FOREIGN_NAMES.get(leaf) or next(iter(difflib.get_close_matches(leaf, names, n=1)), None)
        if guess and "." not in guess and "=" not in guess and parent:
            guess = f"{parent}.{guess}"
        return (f"{key} is not a setting" + (f"; did you mean {guess}?" if guess else "")
                + (f" {parent or 'the root'} has: {', '.join(str(n) for n in names)}" if names else ""))
    return ""


def compose_job(overrides: list[str]) -> DictConfig:
    """The job's config, resolved, or one ConfigError line (an experiment without an entry for
    the chosen task, a key that does not exist, a value of the wrong type)."""
    return compose_job_with_choices(overrides)[0]


def compose_job_with_choices(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """compose_job, and the option chosen in each config group."""
    try:
        cfg, choices = compose_with_choices(overrides)
        OmegaConf.to_container(cfg, resolve=True)
    except ConfigError:
        raise
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:  # a resolver's own message (${paper:...}) names the problem already
            raise cause from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        try:
            hint = unknown_key_hint(overrides)
        except Exception:  # the hint is a courtesy; the error below stands without it
            hint = ""
        if hint:
            raise ConfigError(hint) from None
        if "LexerNoViableAlt" in first or "mismatched input" in first or "token recognition error" in first:
            raise ConfigError(f"{first}: a value with spaces, non-ASCII letters, parentheses or other symbols "
                              f"must be quoted, e.g. output_root='/data/run (1)'") from None
        raise ConfigError(f"{first} (the experiment or task you chose does not cover this combination, or a "
                          f"key is misspelt)") from None
    check_added_keys(overrides, cfg)
    return cfg, choices


def group_options(group: str) -> list[str]:
    """The options of a config group: its yaml files in conf/ and in EXTRA_CONF_DIRS (a file whose
    name starts with _ is a shared base, not an option)."""
    folders = [CONF_DIR / group, *(Path(d) / group for d in EXTRA_CONF_DIRS)]
    return sorted({p.stem for folder in folders for p in folder.glob("*.yaml") if not p.stem.startswith("_")})


def check_group_overrides(overrides: list[str]) -> None:
    """Reject `method=nonsense` with the list of valid names before Hydra composes anything.
    Multirun values (`method=lora,bitfit`) are checked one by one."""
    for item in overrides:
        if "=" not in item:
            continue
        key, value = item.split("=", 1)
        key = key.lstrip("+~")
        if key not in GROUPS or value in ("", "null"):
            continue
        options = group_options(key)
        for choice in value.split(","):
            if choice not in options:
                raise ConfigError(f"unknown {key} {choice!r}; valid: {', '.join(options)}")


# Keys of a method yaml that recipes read (never the method itself): `short_run_lr`, the learning
# rate that trains the method in short runs on small encoders (conf/experiment/mini.yaml reads it).
METHOD_FACTS = ("short_run_lr",)


def instantiate_method(method_cfg: DictConfig) -> Method:
    if any(key in method_cfg for key in METHOD_FACTS):
        method_cfg = OmegaConf.create({k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True).items()
                                       if k not in METHOD_FACTS})
    try:
        method = hydra.utils.instantiate(method_cfg, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, TypeError):  # an unknown key in the method yaml or an override
            raise ConfigError(f"method {method_cfg.get('name')}: {cause}") from None
        raise ConfigError(f"method {method_cfg.get('name')}: {' '.join(str(exc).split())}") from None
    if not isinstance(method, Method):
        raise ConfigError(f"method._target_ {method_cfg._target_} is not a lora_repro Method")
    return method


def number(section: str, node: Any, key: str, low: float | None = None, high: float | None = None, *,
           integer: bool = False, low_open: bool = False, high_open: bool = True) -> None:
    """node[key] must be a finite number (an integer with `integer`) in the stated range; else one
    line naming the key, the range and the value (never a TypeError from comparing a string)."""
    value = node[key]
    is_number = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not is_number or (isinstance(value, float) and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{section}.{key} must be {kind}, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        bounds = (f"{'>' if low_open else '>='} {low}" if low is not None else "") + \
                 (" and " if low is not None and high is not None else "") + \
                 (f"{'<' if high_open else '<='} {high}" if high is not None else "")
        raise ConfigError(f"{section}.{key} must be {bounds}, got {value!r}")


def check_early_stopping(spec: Any) -> None:
    if not spec:
        return
    keys = set(spec) if isinstance(spec, (dict, DictConfig)) else set()
    by = spec.get("above_constant_by") if keys else None
    ok = (keys and not keys - {"metric", "patience", "min_evals", "mode", "above_constant", "above_constant_by"}
          and spec.get("metric") and spec.get("mode", "max") in ("max", "min")
          and isinstance(spec.get("above_constant", False), bool)
          and (by is None or (isinstance(by, (int, float)) and not isinstance(by, bool) and by >= 0
                              and spec.get("above_constant")))
          and all(isinstance(spec.get(k, 1), int) and spec.get(k, 1) >= 1 for k in ("patience", "min_evals")))
    if not ok:
        raise ConfigError("train.early_stopping must be {metric: <split>_<metric> as record.json names it (e.g. "
                          "heldout_accuracy), patience: N >= 1, min_evals: N >= 1, mode: max|min, above_constant: true|false, "
                          "above_constant_by: a number >= 0 in the metric's units (with above_constant: true)}; got "
                          f"{OmegaConf.to_container(spec) if isinstance(spec, DictConfig) else spec!r}")


def check_watch(train: Any, task: Any) -> None:
    """train.watch: a list of split names; `heldout` exists only with task.heldout_rows."""
    watch = train.get("watch")
    if watch is None:
        return
    if not isinstance(watch, (list, ListConfig)) or not watch or not all(isinstance(w, str) for w in watch):
        raise ConfigError(f"train.watch must be a non-empty list of split names (e.g. [heldout]) or null, got {watch!r}")
    if "heldout" in watch and not task.get("heldout_rows"):
        raise ConfigError("train.watch names the heldout split but task.heldout_rows is not set: set "
                          "task.heldout_rows=N (training rows held out for choosing), or watch another split")
    unknown = [w for w in watch if w not in evaluated_splits(task)]
    if unknown:
        raise ConfigError(f"train.watch={list(watch)}: no split named {', '.join(unknown)} (this task evaluates "
                          f"{', '.join(evaluated_splits(task))})")


def evaluated_splits(task: Any) -> list[str]:
    """The splits a run of this task evaluates: every active split but train, and the held-out slice
    of the training rows when task.heldout_rows is set."""
    from .data import HELDOUT_SPLIT, active_splits

    return [s for s in active_splits(task) if s != "train"] + ([HELDOUT_SPLIT] if task.get("heldout_rows") else [])


def check_stopping_metric(train: Any, task: Any) -> None:
    """train.early_stopping.metric must be a metric the Trainer reports during training, named as
    the record names it: one that is not (a typo, a split the task lacks) would never stop the run
    and never select a step, silently (a probe of our own). Classification and regression only:
    causal-LM runs report losses."""
    spec = train.get("early_stopping")
    if not spec or not kind_of(task).classifier:
        return
    from .metrics import metric_keys

    valid = metric_keys(list(task.metrics), evaluated_splits(task))
    if spec.get("metric") not in valid:
        raise ConfigError(f"train.early_stopping.metric={spec.get('metric')!r} is not a metric this run reports "
                          f"during training; valid: {', '.join(valid)}")


def check_sample_seed(task: Any) -> None:
    seed = task.get("train_sample_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise ConfigError(f"task.train_sample_seed must be an integer in [0, 2**32) or null, got {seed!r}")


def check_train_config(train: Any) -> None:
    def positive(key: str, integer: bool = False) -> None:
        value = train[key]
        if integer and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"train.{key} must be a positive integer, got {value!r}")
        number("train", train, key, 0, integer=integer, low_open=True)

    positive("lr")
    positive("batch_size", integer=True)
    positive("eval_batch_size", integer=True)
    positive("grad_accum", integer=True)
    positive("logging_steps", integer=True)
    positive("adam_epsilon")
    number("train", train, "max_steps", -1, integer=True)
    number("train", train, "warmup_steps", 0, integer=True)
    number("train", train, "weight_decay", 0)
    number("train", train, "warmup_ratio", 0, 1)
    number("train", train, "adam_beta1", 0, 1)
    number("train", train, "adam_beta2", 0, 1)
    number("train", train, "max_grad_norm", 0)
    number("train", train, "num_workers", 0, integer=True)
    every = train.checkpoint_every
    if every != "epoch" and not (isinstance(every, int) and not isinstance(every, bool) and every >= 0):
        raise ConfigError(f"train.checkpoint_every must be 'epoch', a positive number of steps, or 0 for none; got {every!r}")
    check_early_stopping(train.get("early_stopping"))
    for key in ("tf32", "compile", "ddp_find_unused_parameters"):
        if train.get(key) not in (None, True, False):
            raise ConfigError(f"train.{key} must be true, false or null, got {train.get(key)!r}")
    if train.get("pad_to_multiple_of") is not None:
        number("train", train, "pad_to_multiple_of", 1, integer=True)
    if train.optimizer != "adamw":
        raise ConfigError(f"train.optimizer={train.optimizer!r}; valid: adamw (methods may build their own groups)")
    if not train.max_steps > 0:
        if not isinstance(train.epochs, (int, float)) or isinstance(train.epochs, bool) or not train.epochs > 0:
            raise ConfigError(f"train.epochs must be > 0 when train.max_steps is unset, got {train.epochs!r}")
    if train.precision not in PRECISIONS:
        raise ConfigError(f"train.precision={train.precision!r}; valid: {', '.join(PRECISIONS)}")
    if train.precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    from transformers.trainer_utils import SchedulerType

    schedules = [s.value for s in SchedulerType]
    if train.schedule not in schedules:
        raise ConfigError(f"train.schedule={train.schedule!r}; valid: {', '.join(schedules)}")
    every = train.eval_every
    if every != "epoch" and not (isinstance(every, int) and not isinstance(every, bool) and every > 0):
        raise ConfigError(f"train.eval_every must be 'epoch' or a positive number of steps, got {every!r}")


def max_positions(model_cfg: Any) -> int | None:
    """How many tokens the model's position embeddings cover (RoBERTa keeps 2 of its rows for the
    padding offset): lora_repro.arch."""
    return arch_of(model_cfg).positions


def check_positions(model_cfg: Any, task_cfg: Any) -> None:
    """task.max_length beyond the model's positions would crash on the first long row, hours in."""
    limit = max_positions(model_cfg)
    if limit is not None and int(task_cfg.max_length) > limit:
        raise ConfigError(f"task.max_length={task_cfg.max_length} exceeds {model_cfg.name}'s {limit} positions")


def validate(cfg: DictConfig) -> Method:
    """Check the whole composed config; return the instantiated method. Loads nothing heavy."""
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {cfg.seed!r}")
    check_train_config(cfg.train)
    check_task_config(cfg.task)
    check_watch(cfg.train, cfg.task)
    check_stopping_metric(cfg.train, cfg.task)
    check_sample_seed(cfg.task)
    if cfg.train.get("keep_predictions") is not None and not isinstance(cfg.train.keep_predictions, bool):
        raise ConfigError(f"train.keep_predictions must be true or false, got {cfg.train.keep_predictions!r}")
    kind_of(cfg.task).check(cfg.task)
    check_model_config(cfg.model)
    check_positions(cfg.model, cfg.task)
    mode = cfg.logger.wandb.mode
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r}; valid: {', '.join(WANDB_MODES)}")
    method = instantiate_method(cfg.method)
    method.check(cfg.model, cfg.task)
    resolve_init_from(cfg)  # a missing source fails now, not after the model is loaded
    return method
