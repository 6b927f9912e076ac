"""Hydra entry point: `python -m lora_repro.train model=roberta_base method=lora task=sst2 [...]`.

Add `-m` (Hydra multirun) to sweep, e.g. `-m method=full_ft,bitfit,lora seed=1,2,3`. In a
multirun a failed job is recorded (status "failed") and the sweep goes on; a single run exits 1."""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from . import CONF_DIR
from .config import check_group_overrides, validate
from .errors import ConfigError, one_line

log = logging.getLogger("lora_repro")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    from .trainer import run  # heavy imports after the cheap checks

    try:
        method = validate(cfg)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        record = run(cfg, method, run_dir)
    except Exception as exc:
        message = f"error: {one_line(exc)} (recorded in {run_dir}/record.json)"
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error(message)
            return None
        sys.exit(message)
    main = record["metrics"].get(cfg.task.main_metric)
    log.info("%s %s %s seed=%s: %s=%.4f -> %s", cfg.task.name, cfg.model.name, cfg.method.name, cfg.seed,
             cfg.task.main_metric, main, run_dir)
    return main


def main() -> None:
    import datasets

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    try:
        check_group_overrides(sys.argv[1:])
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    _main()


if __name__ == "__main__":
    main()
