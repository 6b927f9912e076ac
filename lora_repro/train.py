"""Hydra entry point: `python -m lora_repro.train model=roberta_base method=lora task=sst2 [...]`.

Add `-m` (Hydra multirun) to sweep, e.g. `-m method=full_ft,bitfit,lora seed=1,2,3`. Each (config,
seed) has one folder: a finished one is skipped (overwrite=true re-runs it), an interrupted one
resumes from its last checkpoint (resume=false starts over). In a multirun a failed job is recorded
(status "failed") and the sweep goes on; a single run exits 1."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from . import CONF_DIR
from .config import check_group_overrides, validate
from .errors import ConfigError, one_line
from .rundir import RunDirLock, check_writable, existing_record, register_resolvers

log = logging.getLogger("lora_repro")
register_resolvers()


def fail(message: str) -> None:
    """One line to stderr; in a multirun the sweep goes on, a single run exits non-zero."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        log.error(message)
        return None
    sys.exit(message)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    from .trainer import is_main_process, run  # heavy imports after the cheap checks

    try:
        method = validate(cfg)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    done = existing_record(run_dir)
    if done and done.get("status") == "ok" and not cfg.overwrite:
        log.info("already done (status ok), skipping: %s  [overwrite=true re-runs it]", run_dir)
        return (done.get("metrics") or {}).get(cfg.task.main_metric)
    experiment = HydraConfig.get().runtime.choices.get("experiment")
    recipe = recipe_variant(cfg)
    try:
        if is_main_process():
            with RunDirLock(run_dir):
                record = run(cfg, method, run_dir, experiment, recipe)
        else:
            record = run(cfg, method, run_dir, experiment, recipe)
    except Exception as exc:
        return fail(f"error: {one_line(exc)} (recorded in {run_dir}/record.json)"
                    if (run_dir / "record.json").is_file() else f"error: {one_line(exc)}")
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


def recipe_variant(cfg: DictConfig) -> str:
    """How this run's recipe differs from its named defaults (the experiment file and the chosen
    model/method/task/train configs), e.g. `method.r=4 train.lr=0.001`: the resolved configs are
    compared, so the same recipe gets the same label however it was typed, and the analysis never
    pools runs of different hyper-parameters into one median. Data location is not a recipe."""
    from hydra import compose

    from .rundir import recipe_part

    choices = HydraConfig.get().runtime.choices
    base_overrides = [f"{group}={choices[group]}" for group in ("model", "method", "task", "train", "experiment")
                      if choices.get(group)] + [f"seed={cfg.seed}", f"output_root={cfg.output_root}"]
    base = compose(config_name="config", overrides=base_overrides)
    ours, theirs = flat(recipe_part(cfg)), flat(recipe_part(base))
    changed = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k) and k != "task.data_dir"]
    return " ".join(f"{k}={ours.get(k)}" for k in changed)


def output_root_override(argv: list[str]) -> str:
    for item in argv:
        if item.startswith("output_root="):
            return item.split("=", 1)[1]
    return "outputs"


def main() -> None:
    import datasets

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    try:
        check_group_overrides(sys.argv[1:])
        check_writable(output_root_override(sys.argv[1:]))
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    _main()


if __name__ == "__main__":
    main()
