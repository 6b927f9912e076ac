"""Studies: `experiments/<study>/study.yaml` says what a set of runs is; this module plans it, says
what it will cost, launches it through the normal Hydra path and then has its results built.

    python -m lora_repro.study NAME [--dry-run] [--no-results] [param=value ...] [hydra overrides ...]
    make study NAME=mini        (make demo, make reproduce-glue, make sweep-rank, ... are aliases)

A study.yaml (every key optional but `description`):

    description: what the study shows
    cost: how long it takes where
    params: {model: [roberta_base, roberta_large]}  # choices; the first is the default. `model=X` on the
                                                    # command line picks one; ${params.model} reads it
    paper_rows: {roberta_base: [...], ...}          # a lookup for interpolations: ${paper_rows.${params.model}}
    lookup: {...}                                   # any other lookup table for interpolations
    common: [model=${params.model}, ...]            # overrides of every run
    variants: {name: [overrides], ...}              # alternatives, each crossed with grid and seeds
    grid: {key: [values], ...}                      # crossed (a Hydra sweep)
    seeds: [1, 2, 3]
    first: [task=mnli]                              # grid values that run as an earlier phase
    train_sizes: {task: rows}                       # for the cost estimate
    results: [table2, plots, ...]                   # what analysis.study builds into results/
    command: "lora_repro.bench out_dir={results}"   # instead of runs: a tool that writes results/
    tune:                                           # choose one setting per variant on held-out TRAINING rows
      key: train.lr                                 #   the override chosen
      values: {lora: [5.0e-4, 1.0e-3], ...}         #   candidates per method, each run with the first seed
      share: {lora_r1: lora}                        #   variants that take another variant's choice
      split: heldout                                #   the split whose main metric decides (task.heldout_rows)

With `tune`, the candidates run first (first seed); the best by the held-out split's final main
metric (ties: the earlier candidate; failed runs lose) is the variant's choice, and the other seeds
run with it. The chosen candidate's run is also that seed's final run: the reported dev split never
enters the choice.

Every run lands in its canonical run folder (lora_repro.rundir.run_dir), so a finished run is
skipped, an interrupted one resumes, and runs are shared by every study that plans them. The
results (experiments/<study>/results/) are built by `python -m analysis.study NAME`, a separate
process: the library never imports the analysis layer."""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import PROJECT_ROOT
from .config import compose_config, compose_job, instantiate_method
from .errors import ConfigError
from .record import iter_records
from .rundir import existing_record, finished_record, run_dir

# The studies: the project's experiments/ (LORA_REPRO_EXPERIMENTS names another folder of studies).
EXPERIMENTS_DIR = Path(os.environ.get("LORA_REPRO_EXPERIMENTS", PROJECT_ROOT / "experiments")).resolve()
STUDY_FILE = "study.yaml"
RESULTS_DIR = "results"
KNOWN_KEYS = {"description", "cost", "params", "paper_rows", "lookup", "common", "variants", "grid", "seeds", "first",
              "train_sizes", "results", "command", "tune"}
TUNE_KEYS = {"key", "values", "share", "split"}


def study_names() -> list[str]:
    return sorted(p.parent.name for p in EXPERIMENTS_DIR.glob(f"*/{STUDY_FILE}"))


def results_dir(name: str) -> Path:
    return EXPERIMENTS_DIR / name / RESULTS_DIR


@dataclass
class Study:
    name: str
    spec: dict[str, Any]          # study.yaml resolved, with each param set to one value
    params: dict[str, str]

    @property
    def is_command(self) -> bool:
        return bool(self.spec.get("command"))

    def seeds(self) -> list[int]:
        return [int(s) for s in self.spec.get("seeds") or [42]]

    def variants(self) -> dict[str, list[str]]:
        return {k: [str(o) for o in v] for k, v in (self.spec.get("variants") or {}).items()} or {"": []}

    def grid(self) -> dict[str, list[str]]:
        return {k: [str(v) for v in values] for k, values in (self.spec.get("grid") or {}).items()}

    def common(self) -> list[str]:
        return [str(o) for o in self.spec.get("common") or []]

    def tune(self) -> "Tune | None":
        spec = self.spec.get("tune")
        if not spec:
            return None
        return Tune(key=str(spec["key"]), split=str(spec.get("split") or "heldout"),
                    values={m: [str(v) for v in vs] for m, vs in (spec.get("values") or {}).items()},
                    share={str(k): str(v) for k, v in (spec.get("share") or {}).items()})

    def phases(self) -> list[dict[str, list[str]]]:
        """The grid split into phases: the `first` values, then the rest."""
        grid = self.grid()
        first = [str(f).split("=", 1) for f in self.spec.get("first") or []]
        early = {k: [v for v in values if [k, v] in first] for k, values in grid.items()}
        if not any(early.values()):
            return [grid]
        key = next(k for k, v in early.items() if v)
        late = {**grid, key: [v for v in grid[key] if v not in early[key]]}
        return [{**grid, key: early[key]}, late] if late[key] else [{**grid, key: early[key]}]


def read_spec(name: str) -> DictConfig:
    """A study's study.yaml as written (interpolations unresolved), checked for unknown keys."""
    path = EXPERIMENTS_DIR / name / STUDY_FILE
    if not path.is_file():
        raise ConfigError(f"unknown study {name!r}; valid: {', '.join(study_names())}")
    try:
        spec = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    unknown = sorted(set(spec) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid: {', '.join(sorted(KNOWN_KEYS))}")
    return spec


def param_options(spec: DictConfig) -> dict[str, list[str]]:
    params = spec.get("params")
    choices = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    return {k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in choices.items()}


def load_study(name: str, assignments: dict[str, str] | None = None) -> Study:
    """study.yaml with each param set to the given value (else its first choice)."""
    spec = read_spec(name)
    options = param_options(spec)
    params = {key: str((assignments or {}).get(key, choices[0])) for key, choices in options.items()}
    spec.params = params
    try:
        resolved = OmegaConf.to_container(spec, resolve=True)
    except Exception as exc:  # e.g. a param value with no entry in a lookup table
        given = ", ".join(f"{k}={v}" for k, v in params.items())
        valid = "; ".join(f"{k}: " + ", ".join(v) for k, v in options.items())
        raise ConfigError(f"study {name} with {given}: {' '.join(str(exc).split())} (its params: {valid})") from None
    check_shape(name, resolved)
    return Study(name, resolved, params)


@dataclass
class Tune:
    key: str                        # the override chosen, e.g. train.lr
    split: str                      # the evaluation split whose main metric decides
    values: dict[str, list[str]]    # method name -> candidates
    share: dict[str, str]           # variant -> the variant whose choice it takes


def check_shape(name: str, spec: dict[str, Any]) -> None:
    """The types study.yaml's keys must have, checked before anything is planned."""
    where = f"experiments/{name}/{STUDY_FILE}"
    tune = spec.get("tune")
    if tune is not None:
        if not isinstance(tune, dict) or not tune.get("key") or sorted(set(tune) - TUNE_KEYS):
            raise ConfigError(f"{where}: tune must be a mapping with key, values, share, split; got {tune!r}")
        values = tune.get("values") or {}
        if not isinstance(values, dict) or not all(isinstance(v, list) and v for v in values.values()):
            raise ConfigError(f"{where}: tune.values must map method names to non-empty lists, got {values!r}")
        variants = set(spec.get("variants") or {})
        for variant, source in (tune.get("share") or {}).items():
            if variant not in variants or source not in variants or source in (tune.get("share") or {}):
                raise ConfigError(f"{where}: tune.share.{variant}: {source!r} must name a variant that is tuned "
                                  f"itself (variants: {', '.join(sorted(variants))})")
    for key in ("common", "first", "results"):
        if not isinstance(spec.get(key) or [], list):
            raise ConfigError(f"{where}: {key} must be a list, got {spec[key]!r}")
    seeds = spec.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds must be a list of integers >= 0, got {seeds!r}")
    for key in ("variants", "grid"):
        table = spec.get(key) or {}
        if not isinstance(table, dict) or not all(isinstance(v, list) and v for v in table.values()):
            raise ConfigError(f"{where}: {key} must map names to non-empty lists, got {table!r}")


def param_choices(name: str) -> list[dict[str, str]]:
    """Every combination of a study's param choices (the analysis reads them all)."""
    options = param_options(read_spec(name))
    return [dict(zip(options, combo)) for combo in itertools.product(*options.values())]


@dataclass
class PlannedRun:
    overrides: list[str]
    run_dir: Path | None      # None: a final run whose tuned setting is not chosen yet
    model: str
    method: str
    task: str
    samples: float            # training samples this run processes, for the cost estimate
    data_ok: bool             # its data folder exists (or it reads the hub / a wheel)
    done: bool
    group: tuple[int, str]    # (phase, variant): the Hydra multirun that launches it
    values: dict[str, str]    # its grid values
    experiment: str | None    # the recipe (conf/experiment) this study plans it under
    paper_setting: str        # the published rows it compares with (config's, else the method's)
    role: str = "run"         # "run"; with `tune`: "tune" (a candidate not chosen, or not yet) or "final"
    tuned: str | None = None  # the tuned key's value this run uses


def plan(study: Study, extra: list[str]) -> list[PlannedRun]:
    """Every run of the study, in launch order, with its canonical folder. The config is composed
    once per combination; the seed does not enter the folder hash, only the folder name."""
    if study.is_command:
        return []
    runs = []
    sizes = study.spec.get("train_sizes") or {}
    tune = study.tune()
    choices: dict[tuple, str | None] = {}  # (variant, grid values) -> chosen value (None: not yet)
    variants = study.variants()
    if tune is not None:  # variants that tune themselves first, so the sharing ones find the choice
        variants = dict(sorted(variants.items(), key=lambda item: item[0] in tune.share))
    for index, phase in enumerate(study.phases()):
        keys = list(phase)
        for variant_name, variant in variants.items():
            for values in itertools.product(*phase.values()):
                overrides = [*study.common(), *variant, *(f"{k}={v}" for k, v in zip(keys, values)), *extra]
                try:  # a bad override, key or experiment/task pair: one line, before anything runs
                    cfg = compose_job([*overrides, f"study={study.name}", f"seed={study.seeds()[0]}"])
                except ConfigError as exc:
                    raise ConfigError(f"study {study.name}: {exc}") from None
                samples = _samples(cfg, sizes)
                # Two rows of a study may plan the same recipe (Table 2's LoRA and LoRA† rows agree on
                # MNLI and SST-2): one folder, one run, counted in both rows by the analysis.
                experiment = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("experiment=")), None)
                setting = cfg.get("paper_setting") or instantiate_method(cfg.method).paper_setting
                data_ok = cfg.task.data_dir is None or Path(str(cfg.task.data_dir)).expanduser().is_dir()
                if tune is not None:
                    common = dict(model=cfg.model.name, method=cfg.method.name, task=cfg.task.name, samples=samples,
                                  data_ok=data_ok, group=(index, variant_name), values=dict(zip(keys, values)),
                                  experiment=experiment, paper_setting=setting)
                    runs += tuned_runs(study, tune, overrides, cfg, variant_name, choices, common)
                    continue
                for seed in study.seeds():
                    cfg.seed = seed
                    folder = run_dir(cfg)
                    runs.append(PlannedRun([*overrides, f"seed={seed}"], folder, cfg.model.name, cfg.method.name,
                                           cfg.task.name, samples, data_ok,
                                           bool(finished_record(folder) and not cfg.overwrite),
                                           (index, variant_name), dict(zip(keys, values)), experiment, setting))
    return runs


def tuned_runs(study: Study, tune: Tune, overrides: list[str], cfg: DictConfig, variant: str,
               choices: dict[tuple, str | None], common: dict[str, Any]) -> list[PlannedRun]:
    """The runs of one variant (at one set of grid values) of a tuned study: its candidates with
    the first seed, then the other seeds with the chosen value (placeholders while undecided); a
    sharing variant runs every seed with its source's choice."""
    seeds = study.seeds()
    grid_key = (tuple(sorted(common["values"].items())),)
    source = tune.share.get(variant)

    composed: dict[str, DictConfig] = {}  # one compose per value; the seed only names the folder

    def run(value: str, seed: int, role: str) -> PlannedRun:
        job = [*overrides, f"{tune.key}={value}"]
        folder = None
        if value is not None:
            if value not in composed:
                try:
                    composed[value] = compose_job([*job, f"study={study.name}", f"seed={seed}"])
                except ConfigError as exc:
                    raise ConfigError(f"study {study.name}, variant {variant}: {exc}") from None
            job_cfg = composed[value]
            job_cfg.seed = seed
            folder = run_dir(job_cfg)
        done = bool(folder and finished_record(folder) and not cfg.overwrite)
        return PlannedRun([*job, f"seed={seed}"], folder, done=done, role=role, tuned=value, **common)

    if source is not None:
        chosen = choices.get((source, *grid_key))
        return [run(chosen, seed, "final") for seed in seeds]
    candidates = tune.values.get(cfg.method.name)
    if not candidates:
        raise ConfigError(f"experiments/{study.name}/{STUDY_FILE}: tune.values has no candidates for method "
                          f"{cfg.method.name} (variant {variant}); add them, or share another variant's choice")
    trials = [run(value, seeds[0], "tune") for value in candidates]
    chosen = choose(trials, f"{tune.split}_{cfg.task.main_metric}")
    choices[(variant, *grid_key)] = chosen
    for trial in trials:
        trial.role = "final" if trial.tuned == chosen else "tune"
    return trials + [run(chosen, seed, "final") for seed in seeds[1:]]


def choose(trials: list[PlannedRun], metric: str) -> str | None:
    """The candidate whose run scored best on `metric` (its final evaluation); None until every
    candidate has a record. A failed run, or one without the metric, never wins; if all failed,
    there is no choice and the variant's other seeds do not run."""
    scores = []
    for trial in trials:
        record = existing_record(trial.run_dir)
        if record is None or record.get("status") not in ("ok", "failed", "unreadable"):
            return None  # still to run (or running)
        value = (record.get("metrics") or {}).get(metric) if record.get("status") == "ok" else None
        scores.append(float(value) if isinstance(value, (int, float)) and value == value else float("-inf"))
    best = max(range(len(trials)), key=lambda i: (scores[i], -i))
    return trials[best].tuned if scores[best] > float("-inf") else None


def _samples(cfg: DictConfig, sizes: dict[str, Any]) -> float:
    train = cfg.train
    if train.max_steps and train.max_steps > 0:
        return float(train.max_steps * train.batch_size * train.grad_accum)
    size = float(sizes.get(cfg.task.name, 0))
    if cfg.task.max_train_samples:
        size = min(size, float(cfg.task.max_train_samples)) if size else float(cfg.task.max_train_samples)
    return size * float(train.epochs)


def measured_throughput(output_root: str | Path) -> dict[tuple[str, str], float]:
    """Median training samples/s per (model, method) over the finished records under output_root."""
    rates: dict[tuple[str, str], list[float]] = {}
    for _, record, _ in iter_records(Path(output_root)):
        if record and record.get("status") == "ok":
            rate = (record.get("throughput") or {}).get("train_samples_per_s")
            if rate:
                rates.setdefault((record.get("model"), record.get("method")), []).append(float(rate))
    return {key: statistics.median(values) for key, values in rates.items()}


def describe(study: Study, runs: list[PlannedRun], throughput: dict[tuple[str, str], float]) -> str:
    lines = [f"study {study.name}" + (f" ({', '.join(f'{k}={v}' for k, v in study.params.items())})" if study.params else "")
             + f": {str(study.spec.get('description', '')).strip().splitlines()[0] if study.spec.get('description') else ''}"]
    if study.is_command:
        return "\n".join(lines + [f"runs `python -m {command_line(study)}`; expected cost: {study.spec.get('cost', 'unknown')}"])
    no_data = [r for r in runs if not r.data_ok]
    waiting = [r for r in runs if r.run_dir is None and r.data_ok]
    pending = [r for r in runs if not r.done and r.data_ok]
    done = sum(r.done for r in runs)
    lines.append(f"{len(runs)} runs planned: {done} already done (skipped), {len(pending)} to run"
                 + (f", {len(no_data)} left out (data folder missing: {sorted({r.task for r in no_data})})" if no_data else "")
                 + ".")
    tune = study.tune()
    if tune is not None:
        lines.append(f"{tune.key} is chosen per variant on the {tune.split} split of the training data: "
                     f"{sum(r.role == 'tune' for r in runs)} candidate runs not chosen (or not decided yet); "
                     f"{len(waiting)} final runs wait for their variant's choice.")
    seconds, unknown = 0.0, set()
    for r in pending:
        rate = throughput.get((r.model, r.method))
        if rate and r.samples:
            seconds += r.samples / rate
        else:
            unknown.add(f"{r.model}+{r.method}")
    if pending:
        known = len(pending) - sum(f"{r.model}+{r.method}" in unknown for r in pending)
        if known:
            lines.append(f"Estimated training time for {known} of them: {seconds / 3600:.2f} h on this machine (from "
                         f"the samples/s of earlier records; evaluation and decoding not included).")
        if unknown:
            lines.append(f"No measured throughput yet for {', '.join(sorted(unknown))}.")
        lines.append(f"The study's own estimate: {study.spec.get('cost', 'not given')}.")
    return "\n".join(lines)


def launch_tuned(study: Study, extra: list[str]) -> int:
    """A tuned study in rounds: whatever can run now (the candidates, then the seeds whose setting
    has been chosen) runs, and the plan is made again, until nothing new can run. Each round
    launches one Hydra multirun per variant and value set; a run that failed is not retried here
    (a later `make` retries it)."""
    status, attempted = 0, set()
    key = study.tune().key
    while True:
        todo = [r for r in plan(study, extra) if r.run_dir is not None and r.data_ok and not r.done
                and r.run_dir not in attempted]
        if not todo:
            return status
        groups: dict[tuple, list[PlannedRun]] = {}
        for r in todo:
            base = tuple(o for o in r.overrides if not o.startswith(("seed=", f"{key}=")))
            groups.setdefault(base, []).append(r)
        for base, members in groups.items():
            values = sorted({r.tuned for r in members}, key=[r.tuned for r in members].index)
            seeds = sorted({r.overrides[-1].split("=", 1)[1] for r in members}, key=int)
            batches = [(values, seeds)] if len(values) * len(seeds) == len(members) else [
                ([r.tuned], [r.overrides[-1].split("=", 1)[1]]) for r in members]
            for batch_values, batch_seeds in batches:
                cmd = [sys.executable, "-m", "lora_repro.train", "-m", f"study={study.name}",
                       *[o for o in base if o not in extra], f"{key}={','.join(batch_values)}",
                       f"seed={','.join(batch_seeds)}", *extra]
                print("$ python " + " ".join(cmd[1:]), flush=True)
                status = subprocess.run(cmd, cwd=PROJECT_ROOT).returncode or status
            attempted.update(r.run_dir for r in members)


def launch(study: Study, runs: list[PlannedRun], extra: list[str]) -> int:
    """One Hydra multirun per phase and variant (a fresh process each, so peak memory is per
    variant), over the grid values that still have a run to do and data to do it with; finished
    runs inside a sweep are skipped by the trainer itself."""
    status = 0
    for index, phase in enumerate(study.phases()):
        for variant_name, variant in study.variants().items():
            todo = [r for r in runs if r.group == (index, variant_name) and r.data_ok and not r.done]
            if not todo:
                continue
            sweep = [f"{k}={','.join(v for v in values if any(r.values[k] == v for r in todo))}"
                     for k, values in phase.items()]
            cmd = [sys.executable, "-m", "lora_repro.train", "-m", f"study={study.name}", *study.common(), *variant,
                   *sweep, f"seed={','.join(str(s) for s in study.seeds())}", *extra]
            print("$ python " + " ".join(cmd[1:]), flush=True)
            status = subprocess.run(cmd, cwd=PROJECT_ROOT).returncode or status
    return status


def split_args(study_name: str, args: list[str]) -> tuple[dict[str, str], list[str]]:
    """`key=value` for a key of the study's params sets that param; everything else is a Hydra
    override for every run."""
    params = set(param_options(read_spec(study_name)))
    assignments, extra = {}, []
    for arg in args:
        key, _, value = arg.partition("=")
        if key in params and value:
            assignments[key] = value
        else:
            extra.append(arg)
    return assignments, extra


def command_line(study: Study) -> str:
    out = results_dir(study.name)
    return str(study.spec["command"]).format(results=out.relative_to(PROJECT_ROOT) if out.is_relative_to(PROJECT_ROOT) else out)


def build_results(name: str, assignments: dict[str, str], extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "analysis.study", name, *(f"{k}={v}" for k, v in assignments.items()), *extra]
    print("$ python " + " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, cwd=PROJECT_ROOT).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="a folder of experiments/: " + ", ".join(study_names()))
    parser.add_argument("--dry-run", action="store_true", help="plan and print the cost; run nothing")
    parser.add_argument("--no-results", action="store_true", help="run, but do not rebuild results/")
    args, rest = parser.parse_known_args(argv)
    try:
        assignments, extra = split_args(args.name, rest)
        study = load_study(args.name, assignments)
        runs = plan(study, extra)
        root = compose_config(extra).output_root if not study.is_command else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(study, runs, measured_throughput(root) if root else {}), flush=True)
    if args.dry_run:
        return 0
    if study.is_command:
        out = results_dir(study.name)
        out.mkdir(parents=True, exist_ok=True)
        command = command_line(study).split()
        print("$ python -m " + " ".join(command + extra), flush=True)
        status = subprocess.run([sys.executable, "-m", *command, *extra], cwd=PROJECT_ROOT).returncode
    elif study.tune() is not None:
        status = launch_tuned(study, extra)
    else:
        status = launch(study, runs, extra)
    if not args.no_results:
        status = build_results(study.name, assignments, extra) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
