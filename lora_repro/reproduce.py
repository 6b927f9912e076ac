"""`make reproduce-glue MODEL=roberta_base`, `make reproduce-mini`: run a grid from conf/reproduce/
as Hydra multiruns. Before starting it prints how many runs the grid has, how many are already
done (their record.json says ok, so they are skipped), and an estimate of the remaining cost from
the throughput measured in earlier records of the same model and method.

    python -m lora_repro.reproduce glue --model roberta_base [--dry-run] [hydra overrides...]
    python -m lora_repro.reproduce mini [--dry-run]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from . import CONF_DIR
from .config import compose_config
from .errors import ConfigError
from .rundir import config_hash, existing_record


@dataclass
class Job:
    overrides: list[str]
    task: str
    model: str
    method: str
    run_dir: Path
    samples: float          # training samples this run will process (all epochs)
    done: bool


def plan(grid, model: str, extra: list[str]) -> list[Job]:
    experiments = grid.experiments.get(model)
    if not experiments:
        raise ConfigError(f"conf/reproduce has no experiments for model {model}; it has: {', '.join(grid.experiments)}")
    methods = list(grid.methods) or [None]
    jobs = []
    for experiment, task, method, seed in itertools.product(experiments, grid.tasks, methods, grid.seeds):
        overrides = [f"experiment={experiment}", f"task={task}", f"seed={seed}", f"model={model}", *extra]
        if method:
            overrides.insert(2, f"method={method}")
        cfg = compose_config(overrides)
        run_dir = Path(str(cfg.output_root)) / "runs" / task / cfg.model.name / cfg.method.name / f"{config_hash(cfg)}_seed{seed}"
        record = existing_record(run_dir)
        size = grid.train_sizes.get(task, 0)
        if cfg.task.max_train_samples:
            size = min(size, int(cfg.task.max_train_samples))
        samples = cfg.train.max_steps * cfg.train.batch_size * cfg.train.grad_accum if cfg.train.max_steps and cfg.train.max_steps > 0 \
            else size * float(cfg.train.epochs)
        jobs.append(Job(overrides, task, cfg.model.name, cfg.method.name, run_dir, samples,
                        bool(record and record.get("status") == "ok")))
    return jobs


def measured_throughput(runs_root: str) -> dict[tuple[str, str], float]:
    """Median training samples/s per (model, method) over every finished record."""
    from analysis.records import load_records

    ok = load_records(runs_root).ok
    if ok.empty or "throughput.train_samples_per_s" not in ok:
        return {}
    grouped = ok.groupby(["model", "method"])["throughput.train_samples_per_s"]
    return {key: float(statistics.median(values.dropna())) for key, values in grouped if len(values.dropna())}


def estimate(jobs: list[Job], throughput: dict[tuple[str, str], float]) -> tuple[float, list[str]]:
    seconds, unknown = 0.0, set()
    for job in jobs:
        if job.done:
            continue
        rate = throughput.get((job.model, job.method))
        if rate:
            seconds += job.samples / rate
        else:
            unknown.add(f"{job.model}+{job.method}")
    return seconds, sorted(unknown)


def describe(jobs: list[Job], throughput: dict) -> str:
    pending = [j for j in jobs if not j.done]
    seconds, unknown = estimate(jobs, throughput)
    lines = [f"{len(jobs)} runs in the grid: {len(jobs) - len(pending)} already done (skipped), {len(pending)} to run."]
    if pending:
        known = len(pending) - sum(1 for j in pending if f"{j.model}+{j.method}" in unknown)
        lines.append(f"Estimated training time for {known} of them: {seconds / 3600:.2f} h on this machine "
                     f"(from measured samples/s in earlier records; evaluation not included).")
        if unknown:
            lines.append(f"No measured throughput yet for {', '.join(unknown)}: their cost is unknown "
                         "(run one of them, or `make demo`, first).")
    return "\n".join(lines)


def launch(jobs: list[Job], grid, extra: list[str]) -> int:
    """One Hydra multirun per phase (the `first` tasks, then the rest); task varies slowest."""
    status = 0
    first = [t for t in grid.tasks if t in set(grid.first)]
    rest = [t for t in grid.tasks if t not in set(grid.first)]
    for tasks in (first, rest):
        tasks = [t for t in tasks if any(j.task == t for j in jobs)]
        if not tasks:
            continue
        experiments = sorted({j.overrides[0].split("=", 1)[1] for j in jobs})
        cmd = [sys.executable, "-m", "lora_repro.train", "-m", f"task={','.join(tasks)}",
               f"experiment={','.join(experiments)}", f"model={jobs[0].model}"]
        if list(grid.methods):
            cmd.append(f"method={','.join(grid.methods)}")
        cmd += [f"seed={','.join(str(s) for s in grid.seeds)}", *extra]
        print("$ " + " ".join(cmd[1:]), flush=True)
        status = subprocess.run(cmd).returncode or status
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("grid", choices=sorted(p.stem for p in (CONF_DIR / "reproduce").glob("*.yaml")))
    parser.add_argument("--model", default=None, help="model of the grid (default: the grid's first)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the estimate only")
    args, extra = parser.parse_known_args(argv)
    grid = OmegaConf.load(CONF_DIR / "reproduce" / f"{args.grid}.yaml")
    model = args.model or next(iter(grid.experiments))
    try:
        jobs = plan(grid, model, extra)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = sorted({j.task for j in jobs if not _data_available(j)})
    if missing:
        print(f"skipping task(s) {', '.join(missing)}: their data folder is not present", flush=True)
        jobs = [j for j in jobs if j.task not in missing]
    print(describe(jobs, measured_throughput(str(compose_config(jobs[0].overrides).output_root) if jobs else "outputs")), flush=True)
    if args.dry_run or not any(not j.done for j in jobs):
        return 0
    return launch(jobs, grid, extra)


def _data_available(job: Job) -> bool:
    data_dir = compose_config(job.overrides).task.data_dir
    return data_dir is None or Path(str(data_dir)).is_dir()


if __name__ == "__main__":
    sys.exit(main())
