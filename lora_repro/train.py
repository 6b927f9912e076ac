"""Hydra entry point: `python -m lora_repro.train model=roberta_base method=lora task=sst2 [...]`.

Add `-m` (Hydra multirun) to sweep, e.g. `-m method=full_ft,bitfit,lora seed=1,2,3`. Each (config,
seed) has one folder: a finished one is skipped (overwrite=true re-runs it), an interrupted one
resumes from its last checkpoint (resume=false starts over). In a multirun a failed job is recorded
(status "failed") and the sweep goes on; a single run exits 1."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import CONF_DIR
from .config import EXTRA_CONF_DIRS, check_group_overrides, compose_job, searchpath_override, validate
from .data import check_hub_answers, check_hub_reachable
from .errors import ConfigError, FolderInUse, RecordNotWritten, one_line
from .record import RECORD_NAME
from .paper_rows import paper_fit
from .rundir import (RunDirLock, check_run_dir_writable, check_writable, finished_record, lacks_weights,
                     register_resolvers)

log = logging.getLogger("lora_repro")
register_resolvers()


def fail(message: str) -> None:
    """One line to stderr; in a multirun the sweep goes on, a single run exits non-zero."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        log.error(message)
        return None
    sys.exit(message)


def is_scaffolding(run_dir: Path) -> bool:
    """A folder Hydra made for a job that never started: only .hydra/ and an empty train.log."""
    if not run_dir.is_dir() or (run_dir / RECORD_NAME).exists():
        return False
    names = {p.name for p in run_dir.iterdir()}
    log_file = run_dir / "train.log"
    return names <= {".hydra", "train.log"} and (not log_file.exists() or log_file.stat().st_size == 0)


def config_failure(cfg: DictConfig, run_dir: Path, exc: ConfigError) -> None:
    """A job whose config is invalid. In a multirun the sweep goes on and the job is recorded as
    failed (a re-run retries it); a single run exits with the one line and leaves no folder."""
    message = f"error: {exc}"
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        from .record import new_record, write_record

        try:
            config = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # the line above is what matters
            config = None
        write_record(run_dir, new_record(status="failed", error=f"config: {exc}", study=cfg.get("study"),
                                         task=cfg.task.name, model=cfg.model.name, method=cfg.method.name,
                                         seed=cfg.seed, config=config))
        log.error("%s (recorded in %s/record.json; the sweep goes on)", message, run_dir)
        return None
    if is_scaffolding(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
    sys.exit(message)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    from .trainer import is_main_process, run  # heavy imports after the cheap checks

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        method = validate(cfg)
    except ConfigError as exc:
        return config_failure(cfg, run_dir, exc)
    done = finished_record(run_dir)
    if done and not cfg.overwrite and not lacks_weights(cfg, run_dir):
        log.info("already done (status ok), skipping: %s  [overwrite=true re-runs it]", run_dir)
        return (done.get("metrics") or {}).get(cfg.task.main_metric)
    if done and not cfg.overwrite:
        log.info("finished without saved weights, and save_checkpoint=true asks for them: training it again: %s",
                 run_dir)
    experiment = HydraConfig.get().runtime.choices.get("experiment")
    fit = paper_fit(cfg)
    if fit and fit != "exact":
        log.warning("%s: not a published setting (the record's paper_fit says so)", fit)
    recipe = recipe_variant(cfg)
    try:
        if is_main_process():
            with RunDirLock(run_dir):
                record = run(cfg, method, run_dir, experiment, recipe)
        else:
            record = run(cfg, method, run_dir, experiment, recipe)
    except FolderInUse as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # another launcher of the same study runs it: normal (probe C14)
            log.info("skipped, another job is running it: %s", one_line(exc))
            return None
        return fail(f"error: {one_line(exc)}")
    except Exception as exc:
        recorded = (getattr(exc, "record_written", True) and not isinstance(exc, RecordNotWritten)
                    and (run_dir / RECORD_NAME).is_file())
        return fail(f"error: {one_line(exc)}" + (f" (recorded in {run_dir}/record.json)" if recorded else ""))
    main = (record["metrics"] or {}).get(cfg.task.main_metric)
    log.info("%s %s %s seed=%s: %s=%s -> %s", cfg.task.name, cfg.model.name, cfg.method.name, cfg.seed,
             cfg.task.main_metric, "-" if main is None else f"{main:.4f}", run_dir)
    return main


def flat(node: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_BASES: dict[tuple[str, ...], DictConfig] = {}


def recipe_variant(cfg: DictConfig) -> str:
    """How this run's recipe differs from its named defaults (the experiment file and the chosen
    model/method/task/train configs), e.g. `method.r=4 train.lr=0.001`: the resolved configs are
    compared, so the same recipe gets the same label however it was typed, and the analysis never
    pools runs of different hyper-parameters into one median. Data location is not a recipe."""
    from hydra import compose

    from .rundir import recipe_part, without_not_recipe

    choices = HydraConfig.get().runtime.choices
    # output_root is no part of a recipe (and a path with spaces or emoji would need quoting here).
    base_overrides = [f"{group}={choices[group]}" for group in ("model", "method", "task", "train", "experiment")
                      if choices.get(group)]
    # Data location is not a recipe, and an experiment may only know where a task's data is when told.
    base_overrides += [o for o in HydraConfig.get().overrides.task if o.lstrip("+").startswith("task.data_dir=")]
    key = tuple(base_overrides + searchpath_override())
    if key not in _BASES:  # once per set of named defaults in a multirun, not once per job
        _BASES[key] = compose(config_name="config", overrides=list(key))
    base = _BASES[key].copy()
    base.seed = cfg.seed  # values that interpolate ${seed} (task.train_sample_seed) resolve as the job's
    # Settings that never change a result (logging, checkpoint cadence, eval batch) are no part of it.
    ours, theirs = flat(without_not_recipe(recipe_part(cfg))), flat(without_not_recipe(recipe_part(base)))
    changed = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k) and k != "task.data_dir"]
    # A source run named per seed (a study's init_from=runs/..._seed${seed}) is one recipe for all seeds.
    shown = {k: (str(v).replace(f"_seed{cfg.seed}", "_seed${seed}") if k == "init_from" else v) for k, v in ours.items()}
    return " ".join(f"{k}={shown.get(k)}" for k in changed)


# Hydra's own command-line flags: those that take a value, and those after which Hydra only prints
# (the config, help, info) and runs nothing, so our checks step aside and Hydra answers as documented.
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--info", "-i", "--experimental-rerun", "--shell-completion", "-sc"}
HYDRA_PRINT_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc"}


def hydra_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, the overrides): `--cfg job` is a flag and its value, not an
    override `job`."""
    flags, overrides, take = [], [], False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if take:
            flags.append(arg)
            take = False
        elif arg.startswith("-"):
            flags.append(arg)
            take = name in HYDRA_VALUE_FLAGS and "=" not in arg and name not in ("--info", "-i")
        else:
            overrides.append(arg)
    return flags, overrides


def config_dirs(flags: list[str]) -> list[str]:
    """The folders given with Hydra's --config-dir / -cd (as `-cd DIR` or `--config-dir=DIR`)."""
    dirs = []
    for i, flag in enumerate(flags):
        name, _, value = flag.partition("=")
        if name in ("--config-dir", "-cd"):
            value = value or (flags[i + 1] if i + 1 < len(flags) else "")
            if value:
                dirs.append(value)
    return dirs


def job_overrides(argv: list[str]) -> tuple[bool, list[list[str]]]:
    """Whether this is a multirun, and each job's overrides (a sweep expanded as Hydra expands it).
    Hydra's own settings (hydra.*, hydra/...) are left out: they do not change a job's config."""
    flags, rest = hydra_flags(argv)
    multirun = any(a in ("-m", "--multirun") for a in flags)
    overrides = [a for a in rest if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    if not multirun:
        return False, [overrides]
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    # The cartesian product of the sweeps, in the order Hydra's basic sweeper launches them; a plain
    # override is kept as typed.
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in OverridesParser.create().parse_overrides(overrides)]
    return True, [list(job) for job in itertools.product(*choices)]


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


def precheck(argv: list[str]) -> bool:
    """Everything the config alone shows, before Hydra makes a folder or starts a job: every job of
    a sweep must compose; a single run is also validated, and skipped here when it is already done
    (so a read-only archive of finished runs can be re-run over). Returns False when nothing is
    left to do."""
    from .rundir import run_dir

    multirun, jobs = job_overrides(argv)
    probed: set[str] = set()
    for job in jobs:
        try:
            cfg = compose_job(job)
        except ConfigError as exc:
            if multirun:  # no folder can be named for a config that does not compose: stop before any job
                raise ConfigError(f"sweep job [{' '.join(job)}]: {exc}; nothing was run") from None
            raise
        check_writable(str(cfg.output_root))
        if cfg.task.data_dir is None:
            check_hub_reachable(cfg.task)  # offline, a hub task not in the cache: before any model loads
        hub = hub_needs(cfg)
        if hub and hub not in probed:  # online: does the hub answer at all (once per process)?
            check_hub_answers(hub)
            probed.add(hub)
        if multirun:
            continue  # a job that fails validation is recorded as failed and the sweep goes on
        validate(cfg)
        folder = run_dir(cfg)
        if finished_record(folder) and not cfg.overwrite and not lacks_weights(cfg, folder):
            print(f"already done (status ok), skipping: {folder}  [overwrite=true re-runs it]")
            return False
        check_run_dir_writable(folder)
        if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 locks the folder (and checks it)
            RunDirLock(folder).check_free()  # before Hydra writes .hydra/ into a folder a live job holds
    return True


def main() -> None:
    import datasets

    # A full disk also breaks writing train.log: say the real error once, not four chained
    # "--- Logging error ---" tracebacks (probe D5).
    logging.raiseExceptions = False

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    flags, overrides = hydra_flags(sys.argv[1:])
    missing = [d for d in EXTRA_CONF_DIRS if not Path(d).expanduser().is_dir()]
    if missing:  # a typo there would silently compose without the user's own files
        sys.exit(f"error: LORA_REPRO_CONF_DIRS names {', '.join(missing)}, which is not a folder; fix the path or "
                 f"unset it")
    given = config_dirs(flags)
    if EXTRA_CONF_DIRS and not given:  # from $LORA_REPRO_CONF_DIRS: Hydra's own composition searches them too
        sys.argv += searchpath_override()
    EXTRA_CONF_DIRS[:] = list(dict.fromkeys([*EXTRA_CONF_DIRS, *given]))
    if any(f.split("=", 1)[0] in HYDRA_PRINT_FLAGS for f in flags):
        if any(f in ("-m", "--multirun") for f in flags):
            sys.exit("error: Hydra prints the config, help or info of one job: drop -m and give one value per key "
                     "(e.g. --cfg job method=lora)")
        _main()  # Hydra prints the config, help or info and runs nothing: no run folder is checked
        return
    try:
        check_group_overrides(overrides)
        if not precheck(sys.argv[1:]):
            return
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    _main()


if __name__ == "__main__":
    main()
