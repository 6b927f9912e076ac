"""Entry point: `python -m lora_repro.train model=roberta_base method=lora task=sst2 [...]`.

Add `-m` (Hydra's multirun syntax) to sweep, e.g. `-m method=full_ft,bitfit,lora seed=1,2,3`. Each
(config, seed) has one folder: a finished one is skipped (overwrite=true re-runs it), an interrupted
one resumes from its last checkpoint (resume=false starts over). In a sweep a failed job is recorded
(status "failed") and the sweep goes on; a single run exits 1.

Each job is composed once (Hydra's compose API, every job of a sweep before any starts, so a bad
value costs seconds), then prepared and executed (lora_repro.job). A sweep handed to one of Hydra's
launchers or sweepers (`hydra/launcher=slurm`) and Hydra's own printing flags (`--cfg job`) go
through Hydra's app, whose job function is the same prepare + execute."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import CONF_DIR
from .config import (EXTRA_CONF_DIRS, check_group_overrides, compose_job_with_choices, group_choices,
                     searchpath_override)
from .errors import ConfigError, FolderInUse, RecordNotWritten, one_line
from .job import execute, main_metric, preflight, prepare, setup_logging
from .record import RECORD_NAME
from .rundir import register_resolvers, run_dir

log = logging.getLogger("lora_repro")
register_resolvers()


def record_config_failure(cfg: DictConfig, exc: ConfigError) -> Path:
    """A sweep job whose config is invalid: recorded as failed in its folder (a re-run retries it)."""
    from .record import new_record, write_record

    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # the error line is what matters
        config = None
    folder = run_dir(cfg)
    write_record(folder, new_record(status="failed", error=f"config: {exc}", study=cfg.get("study"),
                                    task=cfg.task.name, model=cfg.model.name, method=cfg.method.name,
                                    seed=cfg.seed, config=config))
    return folder


def run_one(cfg: DictConfig, choices: dict[str, str], overrides: list[str], sweep: bool) -> float | None:
    """Prepare and execute one composed job; its main metric (None when it did not finish). A
    failure in a sweep is logged (and recorded) and the sweep goes on; a single run exits with one
    line."""
    def fail(message: str) -> None:
        if not sweep:
            sys.exit(message)
        log.error(message)

    try:
        job = prepare(cfg, choices, overrides)
    except ConfigError as exc:
        if sweep:
            folder = record_config_failure(cfg, exc)
            log.error("error: %s (recorded in %s/record.json; the sweep goes on)", exc, folder)
            return None
        sys.exit(f"error: {exc}")
    try:
        record = execute(job)
    except FolderInUse as exc:
        if sweep:  # another launcher of the same study runs it: normal (probe C14)
            log.info("skipped, another job is running it: %s", one_line(exc))
            return None
        return fail(f"error: {one_line(exc)}")
    except ConfigError as exc:  # the folder cannot be written
        return fail(f"error: {exc}")
    except Exception as exc:
        recorded = (getattr(exc, "record_written", True) and not isinstance(exc, RecordNotWritten)
                    and (job.run_dir / RECORD_NAME).is_file())
        return fail(f"error: {one_line(exc)}" + (f" (recorded in {job.run_dir}/record.json)" if recorded else ""))
    main = main_metric(cfg, record)
    log.info("%s %s %s seed=%s: %s=%s -> %s", cfg.task.name, cfg.model.name, cfg.method.name, cfg.seed,
             cfg.task.main_metric, "-" if main is None else f"{main:.4f}", job.run_dir)
    return main


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_job(cfg: DictConfig) -> float | None:
    """A job one of Hydra's launchers started with the config it composed (Hydra makes no run
    folder: conf/hydra/default.yaml). Under Hydra's printing flags this never runs."""
    setup_logging()
    hydra_cfg = HydraConfig.get()
    return run_one(cfg, group_choices(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task),
                   sweep=hydra_cfg.mode == RunMode.MULTIRUN)


def compose_jobs(jobs: list[list[str]], sweep: bool) -> list[tuple[DictConfig, dict[str, str], list[str]]]:
    """Every job's config, composed once, before any job starts: a job that does not compose stops
    the sweep with nothing run (no folder can be named for it)."""
    composed = []
    for job in jobs:
        try:
            cfg, choices = compose_job_with_choices(job)
        except ConfigError as exc:
            if sweep:
                raise ConfigError(f"sweep job [{' '.join(job)}]: {exc}; nothing was run") from None
            raise
        composed.append((cfg, choices, job))
    return composed


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


# Hydra's flags that this entry point follows itself; any other (--config-name, --info, ...) goes to
# Hydra's app as typed.
OWN_FLAGS = {"-m", "--multirun", "--config-dir", "-cd"}


def hydra_decides(flags: list[str], overrides: list[str]) -> bool:
    """Whether Hydra's app must run the command: a flag of its own, a launcher or sweeper, a
    hydra.* setting."""
    names = {f.split("=", 1)[0] for f in flags if f.startswith("-")}
    return bool(names - OWN_FLAGS) or any(o.lstrip("+~").startswith(("hydra/", "hydra.")) for o in overrides)


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
    through_hydra = hydra_decides(flags, overrides)
    if EXTRA_CONF_DIRS and not given:  # from $LORA_REPRO_CONF_DIRS: Hydra's own composition searches them too
        sys.argv += searchpath_override()
    EXTRA_CONF_DIRS[:] = list(dict.fromkeys([*EXTRA_CONF_DIRS, *given]))
    if any(f.split("=", 1)[0] in HYDRA_PRINT_FLAGS for f in flags):
        if any(f in ("-m", "--multirun") for f in flags):
            sys.exit("error: Hydra prints the config, help or info of one job: drop -m and give one value per key "
                     "(e.g. --cfg job method=lora)")
        hydra_job()  # Hydra prints the config, help or info and runs nothing: no run folder is checked
        return
    setup_logging()
    try:
        check_group_overrides(overrides)
        sweep, jobs = job_overrides(sys.argv[1:])
        composed = compose_jobs(jobs, sweep)
        probed: set[str] = set()
        for cfg, _, _ in composed:
            preflight(cfg, probed)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    if through_hydra:  # Hydra composes each job again and its launcher starts them
        hydra_job()
        return
    if sweep:
        log.info("Launching %d jobs locally", len(composed))
    for index, (cfg, choices, job) in enumerate(composed):
        if sweep:
            log.info("\t#%d : %s", index, " ".join(job))
        run_one(cfg, choices, job, sweep)

if __name__ == "__main__":
    main()
