"""One run's pipeline, after its config is composed: `prepare` validates it once and names its
folder and its recipe; `execute` makes the folder, locks it, logs into it and trains. Both entry
points call them: `python -m lora_repro.train` for a run or a local sweep (one composition per
job), and the job function Hydra's launchers (submitit on SLURM) start with the config they composed.
Nothing here makes a folder before the config is known to be valid."""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from .config import compose_config, searchpath_override, validate
from .data import check_hub_answers, check_hub_reachable
from .evidence import flat
from .methods import Method
from .paper_rows import paper_fit
from .rundir import (RunDirLock, check_run_dir_writable, check_writable, finished_record, is_main_process,
                     lacks_weights, recipe_part, run_dir, without_not_recipe)

log = logging.getLogger("lora_repro")

# The console and train.log lines (Hydra's default job format, so a run reads the same however it started).
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
LOG_NAME = "train.log"


@dataclass
class Job:
    cfg: DictConfig
    method: Method
    run_dir: Path
    experiment: str | None  # the conf/experiment file, if any
    recipe: str  # how the recipe differs from its named defaults, e.g. "method.r=4 train.lr=0.001"


def prepare(cfg: DictConfig, choices: dict[str, str], overrides: list[str]) -> Job:
    """Validate once (a ConfigError names the key and the valid values) and name the run."""
    method = validate(cfg)
    fit = paper_fit(cfg)
    if fit and fit != "exact":
        log.warning("%s: not a published setting (the record's paper_fit says so)", fit)
    return Job(cfg, method, run_dir(cfg), choices.get("experiment"), recipe_variant(cfg, choices, overrides))


def preflight(cfg: DictConfig, probed: set[str]) -> None:
    """What the config shows about the machine before any job of a sweep starts: runs can be
    written, an offline hub task is cached, an online hub answers (asked once per process)."""
    check_writable(str(cfg.output_root))
    if cfg.task.data_dir is None:
        check_hub_reachable(cfg.task)  # offline, a hub task not in the cache: before any model loads
    hub = hub_needs(cfg)
    if hub and hub not in probed:
        check_hub_answers(hub)
        probed.add(hub)


def hub_needs(cfg: DictConfig) -> str:
    """What this job would fetch from the hub while online ('' for nothing): pretrained weights
    named only by a hub id, a task read by a hub loader."""
    import huggingface_hub.constants

    from .data import hub_dataset

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return ""
    model = cfg.model
    if model.get("init", "pretrained") == "pretrained" and not model.get("path") and not model.get("package") \
            and model.get("hf_id"):
        return f"model {model.name} ({model.hf_id})"
    if cfg.task.data_dir is None and hub_dataset(cfg.task):
        return f"task {cfg.task.name} ({hub_dataset(cfg.task)})"
    return ""


def is_done(job: Job) -> dict | None:
    """The folder's finished record when the run need not run again (overwrite=false, and the
    weights are there when save_checkpoint asks for them)."""
    done = finished_record(job.run_dir)
    if done and not job.cfg.overwrite and not lacks_weights(job.cfg, job.run_dir):
        return done
    if done and not job.cfg.overwrite:
        log.info("finished without saved weights, and save_checkpoint=true asks for them: training it again: %s",
                 job.run_dir)
    return None


def execute(job: Job) -> dict:
    """The run's record: the finished one when the folder holds it (nothing there is written, so a
    read-only archive can be re-run over), else a new one. The folder is made here, locked (one line
    naming the holder when a live job has it), and its train.log written by this process only."""
    done = is_done(job)
    if done:
        log.info("already done (status ok), skipping: %s  [overwrite=true re-runs it]", job.run_dir)
        return done
    check_run_dir_writable(job.run_dir)
    from .trainer import run  # heavy imports after the cheap checks

    if not is_main_process():  # under torchrun only rank 0 holds the folder and writes its log
        return run(job.cfg, job.method, job.run_dir, job.experiment, job.recipe)
    with RunDirLock(job.run_dir), log_into(job.run_dir / LOG_NAME):
        return run(job.cfg, job.method, job.run_dir, job.experiment, job.recipe)


def setup_logging() -> None:
    """One console handler on stdout, in LOG_FORMAT (inside Hydra's app it replaces the console
    handler Hydra set up for its own messages, so no line is printed twice)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)


@contextlib.contextmanager
def log_into(path: Path) -> Iterator[None]:
    """Every log line of the run also goes to its folder's train.log (appended: a resumed run keeps
    the earlier part)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


_BASES: dict[tuple[str, ...], DictConfig] = {}


def compose_base(overrides: list[str]) -> DictConfig:
    """The named defaults alone, composed once per set of them in a process (a sweep over seeds
    or values shares one). Inside a Hydra app (a launcher's job) Hydra is already initialised."""
    key = tuple(overrides)
    if key not in _BASES:
        from hydra.core.global_hydra import GlobalHydra

        if GlobalHydra.instance().is_initialized():
            from hydra import compose

            _BASES[key] = compose(config_name="config", overrides=[*overrides, *searchpath_override()])
        else:
            _BASES[key] = compose_config(list(overrides))
    return _BASES[key].copy()


def recipe_variant(cfg: DictConfig, choices: dict[str, str], overrides: list[str]) -> str:
    """How this run's recipe differs from its named defaults (the experiment file and the chosen
    model/method/task/train configs), e.g. `method.r=4 train.lr=0.001`: the resolved configs are
    compared, so the same recipe gets the same label however it was typed, and the analysis never
    pools runs of different hyper-parameters into one median. Data location is not a recipe."""
    base_overrides = [f"{group}={choices[group]}" for group in ("model", "method", "task", "train", "experiment")
                      if choices.get(group)]
    # An experiment may only know where a task's data is when told.
    base_overrides += [o for o in overrides if o.lstrip("+").startswith("task.data_dir=")]
    base = compose_base(base_overrides)
    base.seed = cfg.seed  # values that interpolate ${seed} (task.train_sample_seed) resolve as the job's
    # Settings that never change a result (logging, checkpoint cadence, eval batch) are no part of it.
    ours, theirs = flat(without_not_recipe(recipe_part(cfg))), flat(without_not_recipe(recipe_part(base)))
    changed = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k) and k != "task.data_dir"]
    # A source run named per seed (a study's init_from=runs/..._seed${seed}) is one recipe for all seeds.
    shown = {k: (str(v).replace(f"_seed{cfg.seed}", "_seed${seed}") if k == "init_from" else v) for k, v in ours.items()}
    return " ".join(f"{k}={shown.get(k)}" for k in changed)


def main_metric(cfg: DictConfig, record: dict) -> float | None:
    return (record.get("metrics") or {}).get(cfg.task.main_metric)

