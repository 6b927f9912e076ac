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
      values: {lora: [5.0e-4, 1.0e-3], ...}         #   candidates per variant or method name
      share: {lora_r1: lora}                        #   variants that take another variant's choice
      split: heldout                                #   the split whose main metric decides (task.heldout_rows)
      seed: 0                                       #   the tuning seed, not a reporting one (default: the first)
      extend: {factor: 3, times: 2}                 #   a best candidate at an end adds one beyond it, twice at most
    only: {lora_r1: {task: [sst2]}}                 # a variant that runs at some grid values only
    claims: [...]                                   # what analysis/claims.py decides (experiments/claims)
    margins: {sst2: 1.0}                            # per task: the margin of "matches" (analysis/claims.py)

With `tune`, the candidates run first (on the tuning seed); the best by the held-out split's final
main metric (ties: the earlier candidate; failed runs lose) is the variant's choice, and the
reporting seeds run with it. Without `tune.seed` the first seed tunes, and its chosen candidate is
also that seed's final run. The reported dev split never enters the choice.

Every run lands in its canonical run folder (lora_repro.rundir.run_dir), so a finished run is
skipped, an interrupted one resumes, and runs are shared by every study that plans them. The
results (experiments/<study>/results/) are built by `python -m analysis.study NAME`, a separate
process: the library never imports the analysis layer."""

from __future__ import annotations

import argparse
import itertools
import math
import os
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from . import PROJECT_ROOT
from .backbone import check_model_config
from .config import compose_job, instantiate_method
from .errors import ConfigError
from .metrics import split_metric
from .record import iter_records, read_run_record
from .evidence import (RECORDS_DIR, Drift, ManifestRow, find_drift, merge_rows, prune_records, read_committed, read_manifest, sync,
                       write_manifest)
from .provenance import cpu_count, git_commit
from .rundir import RUNS_DIR, canonical_recipe, existing_record, lacks_weights, recipe_hash, run_subdir
from .studyspec import (experiments_dir, STUDY_FILE, Study, Tune, command_line, load_study, param_choices,  # noqa: F401
                        read_spec, results_dir, split_args, study_names)

@dataclass
class PlannedRun:
    overrides: list[str]
    run_dir: Path | None      # None: a final run whose tuned setting is not chosen yet
    model: str
    method: str
    task: str
    samples: float            # training samples this run processes, for the cost estimate
    data_ok: bool             # its data folder exists (or it reads the hub / a wheel)
    done: bool                # finished ok here or committed in the study (and overwrite is off)
    group: tuple[int, str]    # (phase, variant): the Hydra multirun that launches it
    values: dict[str, str]    # its grid values
    experiment: str | None    # the recipe (conf/experiment) this study plans it under
    paper_setting: str        # the published rows it compares with (config's, else the method's)
    role: str = "run"         # "run"; with `tune`: "tune" (a candidate not chosen, or not yet) or "final"
    tuned: str | None = None  # the tuned key's value this run uses
    seed: int = 0
    run: str = ""             # run_dir relative to output_root ("" while undecided)
    hash: str = ""
    recipe: dict | None = None  # the canonical recipe the hash covers (for recipes.json)
    candidate: bool = False   # a tuning candidate: its tuned value is part of its place in the study
    key: str = ""             # its place in the study (evidence.ManifestRow.key), set by manifest_rows
    model_missing: str | None = None  # why its pretrained weights cannot be found here (None: found, or the hub's)


def missing_weights(model_cfg: DictConfig, seen: dict[tuple, str | None]) -> str | None:
    """Why a model's pretrained weights cannot be found on this machine (its local folder or package
    is missing: the error names the set-up step, e.g. `make setup-mpnet`), else None. Asked at plan
    time, so a launch refuses in seconds instead of failing each run; once per model setting."""
    key = tuple(str(model_cfg.get(k)) for k in ("name", "init", "path", "package", "gguf_file"))
    if key not in seen:
        try:
            check_model_config(model_cfg)
            seen[key] = None
        except ConfigError as exc:
            seen[key] = str(exc)
    return seen[key]


def unstartable(runs: list[PlannedRun], only: dict[str, set[str]] | None = None) -> list[PlannedRun]:
    """The runs still to start (selected, data present) whose model this machine cannot load."""
    return [r for r in runs if not r.done and r.data_ok and r.model_missing and selected(r, only)]


def recorded(study: Study, output_root: Path, run: str) -> dict | None:
    """A run's record: this machine's (outputs/), else the one committed in the study."""
    local = existing_record(Path(output_root) / run)
    if local is not None or not study.committed:
        return local
    committed, _ = read_committed(experiments_dir() / study.name, run)
    return committed


def placed(study: Study, cfg: DictConfig, seed: int, digest: str) -> tuple[Path, str, bool]:
    """(run folder, its path under output_root, done) for a composed job at one seed. A run finished
    here without the weights the study asks for (save_checkpoint=true) is not done: it trains again
    (a committed record from another machine counts: weights are never committed). `cfg` carries
    the seed already, `digest` is its config_hash."""
    run = run_subdir(cfg, seed, digest)
    folder = Path(str(cfg.output_root)) / run
    record = recorded(study, Path(str(cfg.output_root)), run)
    refetch = existing_record(folder) is not None and lacks_weights(cfg, folder)
    return folder, run, bool(record and record.get("status") == "ok" and not cfg.overwrite and not refetch)


@dataclass
class Composed:
    """A composed job, placed at any seed: its folder hash and recipe per seed, each computed once
    (a recipe may read the seed, e.g. task.train_sample_seed: ${seed})."""

    cfg: DictConfig
    by_seed: dict[int, tuple[str, dict]] = field(default_factory=dict)

    def at(self, seed: int) -> tuple[DictConfig, str, dict]:
        """(the config with this seed, its folder hash, its recipe)."""
        self.cfg.seed = seed
        if seed not in self.by_seed:
            recipe = canonical_recipe(self.cfg)  # resolving the recipe is most of planning's time: once
            self.by_seed[seed] = (recipe_hash(recipe), recipe)
        return (self.cfg, *self.by_seed[seed])


def composed(overrides: list[str], cache: dict[tuple[str, ...], Composed] | None) -> Composed:
    """compose_job, remembered in `cache` when given. A study that plans again after every finished
    run (the --devices pool) so composes each recipe once per process: the config files are read
    when the study starts, like the recipes its drift check compares."""
    key = tuple(overrides)
    if cache is None or key not in cache:
        job = Composed(compose_job(overrides))
        if cache is None:
            return job
        cache[key] = job
    return cache[key]


def plan(study: Study, extra: list[str], cache: dict[tuple[str, ...], Composed] | None = None) -> list[PlannedRun]:
    """Every run of the study, in launch order, with its canonical folder. The config is composed
    once per combination (once per study process with a `cache`) and placed at each seed: the
    folder's hash and recipe are the seeded config's (a recipe may read the seed)."""
    if study.is_command:
        return []
    runs = []
    sizes = study.spec.get("train_sizes") or {}
    tune = study.tune()
    choices: dict[tuple, str | None] = {}  # (variant, grid values) -> chosen value (None: not yet)
    weights_seen: dict[tuple, str | None] = {}
    variants = study.variants()
    if tune is not None:  # variants that tune themselves first, so the sharing ones find the choice
        variants = dict(sorted(variants.items(), key=lambda item: item[0] in tune.share))
    for index, phase in enumerate(study.phases()):
        keys = list(phase)
        for variant_name, variant in variants.items():
            for values in itertools.product(*phase.values()):
                if not study.runs_with(variant_name, dict(zip(keys, values))):
                    continue  # `only`: this variant runs at other grid values
                overrides = [*study.common(), *variant, *(f"{k}={v}" for k, v in zip(keys, values)), *extra]
                try:  # a bad override, key or experiment/task pair: one line, before anything runs
                    job = composed([*overrides, f"study={study.name}", f"seed={study.seeds()[0]}"], cache)
                    source = planned_source(runs, job.cfg, variant_name, dict(zip(keys, values)))
                    if source:  # e.g. MRPC starts from the MNLI run this study planned, seed for seed
                        overrides.append(f"init_from={source}")
                        job = composed([*overrides, f"study={study.name}", f"seed={study.seeds()[0]}"], cache)
                except ConfigError as exc:
                    raise ConfigError(f"study {study.name}: {exc}") from None
                cfg = job.cfg
                samples = _samples(cfg, sizes)
                # Two rows of a study may plan the same recipe (Table 2's LoRA and LoRA† rows agree on
                # MNLI and SST-2): one folder, one run, counted in both rows by the analysis.
                experiment = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("experiment=")), None)
                setting = cfg.get("paper_setting") or instantiate_method(cfg.method).paper_setting
                data_ok = cfg.task.data_dir is None or Path(str(cfg.task.data_dir)).expanduser().is_dir()
                common = dict(model=cfg.model.name, method=cfg.method.name, task=cfg.task.name, samples=samples,
                              data_ok=data_ok, group=(index, variant_name), values=dict(zip(keys, values)),
                              experiment=experiment, paper_setting=setting,
                              model_missing=missing_weights(cfg.model, weights_seen))
                if tune is not None:
                    runs += tuned_runs(study, tune, overrides, cfg, variant_name, choices, common, cache)
                    continue
                for seed in study.seeds():
                    seeded, digest, recipe = job.at(seed)
                    folder, run, done = placed(study, seeded, seed, digest)
                    runs.append(PlannedRun([*overrides, f"seed={seed}"], folder, done=done, seed=seed, run=run,
                                           hash=digest, recipe=recipe, **common))
    return runs


def planned_source(runs: list[PlannedRun], cfg: DictConfig, variant: str, values: dict[str, str]) -> str | None:
    """When a recipe starts from another task's run (`init_from=mnli`, Table 2's MRPC/RTE/STS-B), the
    exact run this study planned for it in an earlier phase: same variant, same grid values but the
    task, same seed. A path under output_root with `${seed}` in it (each seed its own source), so it is
    part of the run's hash and the same on every machine. None when the recipe names no such task."""
    name = cfg.get("init_from")
    if not name or "/" in str(name):
        return None
    for run in runs:
        if (run.task == str(name) and run.group[1] == variant and run.run and
                {k: v for k, v in run.values.items() if k != "task"} == {k: v for k, v in values.items() if k != "task"}):
            return run.run.rsplit("_seed", 1)[0] + "_seed${seed}"
    return None


def tuned_runs(study: Study, tune: Tune, overrides: list[str], cfg: DictConfig, variant: str,
               choices: dict[tuple, str | None], common: dict[str, Any],
               cache: dict[tuple[str, ...], Composed] | None = None) -> list[PlannedRun]:
    """The runs of one variant (at one set of grid values) of a tuned study: its candidates with
    the first seed, then the other seeds with the chosen value (placeholders while undecided); a
    sharing variant runs every seed with its source's choice."""
    seeds = study.seeds()
    grid_key = (tuple(sorted(common["values"].items())),)
    source = tune.share.get(variant)

    by_value: dict[str, Composed] = {}  # one compose per value, placed at each seed (Composed.at)

    def run(value: str | None, seed: int, role: str, candidate: bool = False) -> PlannedRun:
        job = [*overrides, f"{tune.key}={value}"]
        if value is None:
            return PlannedRun([*job, f"seed={seed}"], None, done=False, role=role, tuned=None, seed=seed, **common)
        if value not in by_value:
            try:
                by_value[value] = composed([*job, f"study={study.name}", f"seed={seed}"], cache)
            except ConfigError as exc:
                raise ConfigError(f"study {study.name}, variant {variant}: {exc}") from None
        seeded, digest, recipe = by_value[value].at(seed)
        folder, path, done = placed(study, seeded, seed, digest)
        return PlannedRun([*job, f"seed={seed}"], folder, done=done, role=role, tuned=value, seed=seed, run=path,
                          hash=digest, recipe=recipe, candidate=candidate, **common)

    if source is not None:
        chosen = choices.get((source, *grid_key))
        return [run(chosen, seed, "final") for seed in seeds]
    candidates = tune.values.get(variant) or tune.values.get(cfg.method.name)
    if not candidates:
        raise ConfigError(f"experiments/{study.name}/{STUDY_FILE}: tune.values has no candidates for method "
                          f"{cfg.method.name} (variant {variant}); add them, or share another variant's choice")
    # The tuning seed: tune.seed (never a reporting seed), else the first seed, whose chosen
    # candidate then doubles as that seed's final run.
    tuning_seed = seeds[0] if tune.seed is None else tune.seed
    metric = split_metric(cfg.task, tune.split)
    trials = [run(value, tuning_seed, "tune", candidate=True) for value in candidates]
    chosen = choose(study, trials, metric, Path(str(cfg.output_root)))
    # A best candidate at an end of those tried adds one beyond it (tune.extend), until the optimum
    # is bracketed or the extensions are spent; the choice waits for the added runs.
    for _ in range(tune.extend_times):
        more = tune.beyond([t.tuned for t in trials], chosen) if chosen is not None else None
        if more is None or more in {t.tuned for t in trials}:
            break
        trials.append(run(more, tuning_seed, "tune", candidate=True))
        chosen = choose(study, trials, metric, Path(str(cfg.output_root)))
    choices[(variant, *grid_key)] = chosen
    if tune.seed is not None:
        return trials + [run(chosen, seed, "final") for seed in seeds]
    for trial in trials:
        trial.role = "final" if trial.tuned == chosen else "tune"
    return trials + [run(chosen, seed, "final") for seed in seeds[1:]]


def choose(study: Study, trials: list[PlannedRun], metric: str, output_root: Path) -> str | None:
    """The candidate whose run scored best on `metric` (its final evaluation); None until every
    candidate has a record (here or committed). A failed run, or one without the metric, never
    wins; if all failed, there is no choice and the variant's other seeds do not run."""
    scores = []
    for trial in trials:
        record = recorded(study, output_root, trial.run)
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


def measured_throughput(output_root: str | Path, committed: Path | None = None) -> dict[tuple[str, str], float]:
    """Median training samples/s per (model, method) over the finished records under output_root and,
    given a study's records folder (`committed`), its committed records: a fresh clone of a study whose
    records are committed has its cost estimate before it has run anything. A run in both counts once."""
    by_run: dict[str, dict] = {}
    if committed is not None and committed.is_dir():
        for path in sorted(committed.rglob("*.json")):
            record, _ = read_run_record(path)
            if record:
                by_run[path.relative_to(committed).with_suffix("").as_posix()] = record
    root = Path(output_root)
    for path, record, _ in iter_records(root):
        if record:
            by_run[path.parent.relative_to(root).as_posix().removeprefix(f"{RUNS_DIR}/")] = record
    rates: dict[tuple[str, str], list[float]] = {}
    for record in by_run.values():
        if record.get("status") == "ok":
            rate = (record.get("throughput") or {}).get("train_samples_per_s")
            if rate:
                rates.setdefault((record.get("model"), record.get("method")), []).append(float(rate))
    return {key: statistics.median(values) for key, values in rates.items()}


def same_recipe_notes(runs: list[PlannedRun]) -> list[str]:
    """One note per set of variants that plan exactly the same run folders (probe C4: `a:
    [method=lora]` and `b: [method=lora]`): one run serves both, and each counts it, which may not
    be what was meant."""
    folders: dict[str, set[str]] = {}
    for r in runs:
        if r.run:
            folders.setdefault(r.group[1], set()).add(str(r.run))
    same: dict[frozenset, list[str]] = {}
    for variant, planned in folders.items():
        same.setdefault(frozenset(planned), []).append(variant)
    return [f"note: variants {', '.join(sorted(v))} have the same recipe: each of their {len(f)} run folders "
            f"is trained once and counts for every one of them" for f, v in same.items() if len(v) > 1 and all(v)]


def weights_per_token(arch: dict | None) -> float | None:
    """The transformer-layer weights each token meets in a forward pass, L x (4h^2 + 2 h i), from a
    model config's `arch` (BERT/MPNet/RoBERTa or GPT-2 key names; i defaults to 4h): what per-token
    compute scales with between two models of one family, attention over the sequence aside."""
    if not arch:
        return None
    pick = lambda *keys: next((float(arch[k]) for k in keys if arch.get(k)), None)  # noqa: E731
    layers = pick("num_hidden_layers", "n_layer", "num_layers")
    hidden = pick("hidden_size", "n_embd", "d_model")
    if not layers or not hidden:
        return None
    inner = pick("intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    return layers * (4 * hidden * hidden + 2 * hidden * inner)


# --only FIELD=V1,V2: what a planned run is called by, per field. The plan and the manifest stay
# whole (a study's results/ shows the rest as not run yet); only the launch is narrowed, so a user
# can run one new arm of a large study, or one task, without waiting for the rest.
SELECT_FIELDS: dict[str, Callable[[PlannedRun], str]] = {
    "arm": lambda r: r.group[1], "task": lambda r: r.task, "model": lambda r: r.model,
    "method": lambda r: r.method, "seed": lambda r: str(r.seed)}


def parse_only(specs: list[str], runs: list[PlannedRun]) -> dict[str, set[str]]:
    """--only values as {field: values}, checked against the plan: an unknown field, or a value no
    planned run has, is one error naming the choices (before anything trains)."""
    only: dict[str, set[str]] = {}
    for spec in specs:
        field, _, values = spec.partition("=")
        if field not in SELECT_FIELDS or not values:
            raise ConfigError(f"--only {spec}: give FIELD=VALUE[,VALUE...] with FIELD one of "
                              f"{', '.join(SELECT_FIELDS)} (e.g. --only arm=lora_mpnet,full_ft_mpnet)")
        wanted = {v.strip() for v in values.split(",") if v.strip()}
        known = {SELECT_FIELDS[field](r) for r in runs}
        unknown = sorted(wanted - known)
        if unknown:
            raise ConfigError(f"--only {spec}: no planned run has {field} {', '.join(unknown)}; "
                              f"this plan's {field}s: {', '.join(sorted(known, key=natural))}")
        only.setdefault(field, set()).update(wanted)
    return only


def natural(value: str) -> tuple:
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def selected(run: PlannedRun, only: dict[str, set[str]] | None) -> bool:
    """A run the launch may start: it matches every --only field (any of that field's values)."""
    return not only or all(SELECT_FIELDS[field](run) in values for field, values in only.items())


def describe(study: Study, runs: list[PlannedRun], throughput: dict[tuple[str, str], float],
             output_root: Path | None = None, devices: list[str] | None = None,
             only: dict[str, set[str]] | None = None) -> str:
    lines = [f"study {study.name}" + (f" ({', '.join(f'{k}={v}' for k, v in study.params.items())})" if study.params else "")
             + f": {str(study.spec.get('description', '')).strip().splitlines()[0] if study.spec.get('description') else ''}"]
    if study.is_command:
        return "\n".join(lines + [f"runs `python -m {command_line(study)}`; expected cost: {study.spec.get('cost', 'unknown')}"])
    no_data = [r for r in runs if not r.data_ok]
    waiting = [r for r in runs if r.run_dir is None and r.data_ok]
    pending = [r for r in runs if not r.done and r.data_ok]
    done = [r for r in runs if r.done]
    lines.append(f"{len(runs)} runs planned ({len({r.run for r in runs if r.run})} distinct run folders): "
                 f"{len(done)} already done (skipped), {len(pending)} to run"
                 + (f", {len(no_data)} left out (data folder missing: {sorted({r.task for r in no_data})})" if no_data else "")
                 + ".")
    if only:
        chosen = [r for r in pending if selected(r, only)]
        named = " ".join(k + "=" + ",".join(sorted(v, key=natural)) for k, v in only.items())
        lines.append(f"--only {named}: "
                     f"{len(chosen)} of the {len(pending)} to run are selected (their tuning candidates included "
                     f"only if they match too); the rest stay planned and are not started.")
        pending = chosen
    lines += same_recipe_notes(runs)
    blocked = unstartable(runs, only)
    if blocked:
        lines.append(f"{len(blocked)} of the runs to start cannot load their model here "
                     f"({', '.join(sorted({r.model for r in blocked}))}): {blocked[0].model_missing}")
    if done and output_root is not None:
        commits: dict[str, int] = {}
        for r in done:
            record = recorded(study, output_root, r.run) or {}
            commit = str(record.get("git_commit") or "unknown")
            short = commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")
            commits[short] = commits.get(short, 0) + 1
        lines.append("Done runs come from code " + ", ".join(f"{c} ({n})" for c, n in sorted(commits.items())) + ".")
    tune = study.tune()
    if tune is not None:
        lines.append(f"{tune.key} is chosen per variant on the {tune.split} split of the training data: "
                     f"{sum(r.role == 'tune' for r in runs)} candidate runs not chosen (or not decided yet); "
                     f"{len(waiting)} final runs wait for their variant's choice.")
    # A method with no record yet is priced at the slowest method measured on the same model (full
    # fine-tuning, in practice: every PEFT method backpropagates through the same network and updates
    # fewer weights), so the total stays an upper bound rather than leaving those runs out.
    slowest: dict[str, tuple[float, str]] = {}
    for (model, method), rate in throughput.items():
        if rate and (model not in slowest or rate < slowest[model][0]):
            slowest[model] = (rate, method)
    # A model with no record at all (MPNet before its first run) is priced from the same method on a
    # measured model, scaled by the layer weights each token meets (weights_per_token): rough, said so.
    size = {r.model: weights_per_token(((r.recipe or {}).get("model") or {}).get("arch")) for r in runs if r.recipe}
    scaled: dict[str, tuple[str, float]] = {}
    seconds, unknown, borrowed = 0.0, set(), {}
    for r in pending:
        rate = throughput.get((r.model, r.method))
        if not rate and r.model in slowest:
            rate = slowest[r.model][0]
            borrowed.setdefault(r.model, set()).add(r.method)
        if not rate and size.get(r.model):
            measured = [(model, size[model]) for (model, method) in throughput
                        if method == r.method and size.get(model)]
            if measured:
                source, source_size = min(measured, key=lambda m: abs(math.log(m[1] / size[r.model])))  # nearest in size
                rate = throughput[(source, r.method)] * source_size / size[r.model]
                scaled[r.model] = (source, size[r.model] / source_size)
        if rate and r.samples:
            seconds += r.samples / rate
        else:
            unknown.add(f"{r.model}+{r.method}")
    if pending:
        known = len(pending) - sum(f"{r.model}+{r.method}" in unknown for r in pending)
        if known:
            lines.append(f"Estimated training time for {known} of them: {seconds / 3600:.2f} h on this machine (from "
                         f"the samples/s of earlier records, at most to each run's step cap; evaluation and "
                         f"decoding not included)"
                         + (f"; on {len(devices)} devices at once, about {seconds / 3600 / len(devices):.2f} h of wall "
                            f"time if each job runs as fast as the records did (a CPU slot has fewer threads than a "
                            f"job that had the machine alone, so there it is a lower bound)." if devices and len(devices) > 1
                            else "."))
        for model, methods in sorted(borrowed.items()):
            rate, method = slowest[model]
            lines.append(f"No record yet of {', '.join(sorted(methods))} on {model}: priced at {method}'s "
                         f"{rate:.1f} samples/s, the slowest measured there, so their share is an upper bound.")
        for model, (source, factor) in sorted(scaled.items()):
            lines.append(f"No record yet on {model}: priced from {source}'s rates for the same methods, {factor:.1f}x "
                         f"slower (the layer weights each token meets, from each model's arch): a rough estimate.")
        if unknown:
            lines.append(f"No measured throughput yet for {', '.join(sorted(unknown))}.")
        work = work_by_model(pending)
        if work:
            lines.append("Work to run, per model: " + "; ".join(
                f"{model}: {samples:,.0f} training samples, about {steps:,.0f} optimizer steps" for model, (samples, steps) in work.items())
                + " (the same recipe costs more per step on a larger model).")
        lines.append(f"The study's own estimate: {study.spec.get('cost', 'not given')}.")
    return "\n".join(lines)


def work_by_model(runs: list[PlannedRun]) -> dict[str, tuple[float, float]]:
    """model -> (training samples, optimizer steps) of the runs whose recipe is decided: samples
    from the study's train_sizes x epochs (or max_steps), steps over the effective batch (per device
    x accumulation x processes). What a cost line can say before any throughput is measured."""
    out: dict[str, list[float]] = {}
    for r in runs:
        train = (r.recipe or {}).get("train") or {}
        if not r.samples or not train.get("batch_size"):
            continue  # a final run whose tuned setting is not chosen yet has no recipe to count
        batch = float(train["batch_size"]) * float(train.get("grad_accum") or 1) * float(train.get("world_size") or 1)
        total = out.setdefault(r.model, [0.0, 0.0])
        total[0] += r.samples
        total[1] += math.ceil(r.samples / batch)
    return {model: (samples, steps) for model, (samples, steps) in sorted(out.items())}


# Overrides given to a study that change how runs are carried out or where they land, never a recipe:
# they do not name a separate set of rows in the manifest.
NOT_RECIPE_OVERRIDES = ("output_root=", "overwrite=", "resume=", "logger.", "hydra.", "hydra/", "save_checkpoint=",
                        "train.num_workers=", "train.eval_batch_size=", "train.logging_steps=", "train.checkpoint_every=")


def manifest_rows(study: Study, runs: list[PlannedRun], extra: list[str], commit: str) -> list[ManifestRow]:
    """The manifest rows of one planning of the study (one choice of its params and extras)."""
    params = " ".join(f"{k}={v}" for k, v in study.params.items())
    extras = " ".join(o for o in extra if not o.lstrip("+~").startswith(NOT_RECIPE_OVERRIDES))
    tune = study.tune()
    rows = {}
    for r in runs:
        arm = r.group[1]
        grid = " ".join(f"{k}={v}" for k, v in r.values.items())
        tuned = "" if tune is None else (r.tuned if r.tuned is not None else "?")
        slot = f"{tune.key}={tuned}" if tune is not None and r.candidate else ""
        key = " ".join(x for x in (f"arm={arm}" if arm else "", grid, slot, f"seed={r.seed}") if x)
        r.key = key
        row = ManifestRow(key=key, params=params, extra=extras, arm=arm, grid=grid, role=r.role, tuned=tuned,
                          seed=r.seed, run=r.run, hash=r.hash, recipe=r.experiment or "",
                          paper_setting=r.paper_setting, planned_at=commit)
        rows[(key, row.recipe)] = row  # a run two rows of a table plan counts once per recipe label
    return list(rows.values())


@dataclass
class Evidence:
    """The committed side of one study: its manifest, recipes and records, kept in step with this
    machine's outputs/ while the study plans and runs."""

    study: Study
    extra: list[str]
    output_root: Path
    keep: bool = False          # drifted runs keep their committed records (old recipe)
    rerun: bool = False         # drifted runs run again under the new recipe
    write: bool = True          # False for --dry-run: nothing is written anywhere
    compose_cache: dict = field(default_factory=dict, repr=False)  # plan(): each recipe composed once

    @property
    def folder(self) -> Path:
        """Where the manifest lives: the study's folder, or for a --scratch run this machine's
        <output_root>/scratch/<study>/ (git-ignored; committed evidence is neither read nor changed)."""
        if self.study.committed:
            return experiments_dir() / self.study.name
        return self.output_root / "scratch" / self.study.name

    def replan(self) -> list[PlannedRun]:
        """Plan, name any drift against the committed manifest, apply --keep, write the manifest
        and sync records both ways. Raises ConfigError when drift needs a choice."""
        if not self.study.committed:
            runs = plan(self.study, self.extra, self.compose_cache)
            if self.write:
                self.folder.mkdir(parents=True, exist_ok=True)
                rows = manifest_rows(self.study, runs, self.extra, git_commit() or "unknown")
                write_manifest(self.folder, rows, {r.hash: r.recipe for r in runs if r.hash})
            return runs
        if self.write:
            landed = sync(self.folder, self.output_root, read_manifest(self.folder))  # what finished here since
            if landed.line(self.study.name):
                print(landed.line(self.study.name), flush=True)
        runs = plan(self.study, self.extra, self.compose_cache)
        commit = (git_commit() or "unknown")
        rows = manifest_rows(self.study, runs, self.extra, commit)
        old = read_manifest(self.folder)
        recipes = {r.hash: r.recipe for r in runs if r.hash}
        drift = find_drift(self.folder, old, rows, recipes)
        for line in drift.lines():
            print(line, flush=True)
        if drift and not (self.keep or self.rerun):
            message = (f"{sum(len(v) for v in drift.with_records.values())} committed records were made under an "
                       f"earlier recipe. Re-run with --keep to count them as they are (nothing re-runs), or with "
                       f"--rerun to run the new recipe (the old records leave the manifest; git history keeps them)")
            if self.write:
                raise ConfigError(message)
            print(f"(dry run) {message}", flush=True)
        if drift and self.keep:
            rows = keep_old(drift, runs, rows, self.output_root)
        if self.write:
            params = " ".join(f"{k}={v}" for k, v in self.study.params.items())
            merged = merge_rows(old, rows, params, rows[0].extra if rows else "")
            write_manifest(self.folder, merged, recipes)
            if drift and self.rerun:
                for path in prune_records(self.folder, merged):
                    print(f"removed {path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path} "
                          f"(its recipe was replaced)")
            report = sync(self.folder, self.output_root, rows)
            if report.line(self.study.name):
                print(report.line(self.study.name), flush=True)
        return runs

    def after_launch(self) -> None:
        if not self.study.committed:
            return
        report = sync(self.folder, self.output_root, read_manifest(self.folder))
        if report.line(self.study.name):
            print(report.line(self.study.name), flush=True)


def keep_old(drift: Drift, runs: list[PlannedRun], rows: list[ManifestRow],
             output_root: Path) -> list[ManifestRow]:
    """--keep: a drifted run whose record is committed keeps its old row (old folder and hash) and
    counts as done; nothing re-runs it."""
    kept = {r.key: r for old_rows in drift.with_records.values() for r in old_rows}
    for run in runs:
        old = kept.get(run.key)
        if old is not None:
            run.run_dir, run.run, run.hash, run.done = output_root / old.run, old.run, old.hash, True
    return [kept.get(r.key, r) for r in rows]


def nearest_first(runs: list[PlannedRun]) -> list[PlannedRun]:
    """The runs closest to finishing an arm first: final seeds, then the candidates of the arms
    with the fewest candidates left to run (the last one unlocks the seeds); plan order otherwise."""
    def arm(r: PlannedRun) -> tuple:  # a variant at one set of grid values: what tunes as one
        return r.group, tuple(sorted(r.values.items()))

    left: dict[tuple, int] = {}
    for r in runs:
        if r.role != "final":
            left[arm(r)] = left.get(arm(r), 0) + 1
    return sorted(runs, key=lambda r: (r.role != "final", left.get(arm(r), 0)))


def launch_tuned(study: Study, evidence: Evidence, extra: list[str], devices: list[str] | None = None,
                 only: dict[str, set[str]] | None = None) -> int:
    """A tuned study in rounds: whatever can run now (the candidates, then the seeds whose setting
    has been chosen) runs, and the plan is made again, until nothing new can run. Each round
    launches one Hydra multirun per variant and value set; with --devices, one pool that plans again
    after every finished run instead. A run that failed is not retried here (a later `make` retries it)."""
    status, attempted = 0, set()
    key = study.tune().key

    def runnable() -> list[PlannedRun]:  # replan() first copies the records that landed into the study
        return [r for r in evidence.replan() if r.run_dir is not None and r.data_ok and not r.done
                and r.run_dir not in attempted and selected(r, only)]

    while True:
        todo = runnable()
        if not todo:
            return status
        if devices:  # one pool: after each finished run, plan again and give out what can run now
            attempted.update(r.run_dir for r in todo)

            def refill() -> list[PlannedRun]:
                more = runnable()
                attempted.update(r.run_dir for r in more)
                return nearest_first(more)

            status = run_on_devices(study, nearest_first(todo), devices, evidence.output_root, refill) or status
            continue  # the next replan copies the last records and finds nothing left
        groups: dict[tuple, list[PlannedRun]] = {}
        for r in todo:
            base = tuple(o for o in r.overrides if not o.startswith(("seed=", f"{key}=")))
            groups.setdefault(base, []).append(r)
        for base, members in groups.items():
            values = sorted({r.tuned for r in members}, key=[r.tuned for r in members].index)
            seeds = sorted({str(r.seed) for r in members}, key=int)
            batches = [(values, seeds)] if len(values) * len(seeds) == len(members) else [
                ([r.tuned], [str(r.seed)]) for r in members]
            for batch_values, batch_seeds in batches:
                cmd = [sys.executable, "-m", "lora_repro.train", "-m", f"study={study.name}",
                       *[o for o in base if o not in extra], f"{key}={','.join(batch_values)}",
                       f"seed={','.join(batch_seeds)}", *extra]
                print("$ python " + " ".join(cmd[1:]), flush=True)
                status = run_child(cmd) or status
                evidence.after_launch()
            attempted.update(r.run_dir for r in members)


def launch(study: Study, runs: list[PlannedRun], extra: list[str], evidence: Evidence,
           devices: list[str] | None = None, only: dict[str, set[str]] | None = None) -> int:
    """One Hydra multirun per phase and variant (a fresh process each, so peak memory is per
    variant), over the grid values and seeds that still have a run to do and data to do it with;
    finished runs inside a sweep are skipped by the trainer itself. Records are copied into the
    study after each multirun."""
    status = 0
    runs = [r for r in runs if selected(r, only)]
    for index, phase in enumerate(study.phases()):
        if devices:  # a phase's runs spread over the devices; the next phase starts when it is done
            todo = [r for r in runs if r.group[0] == index and r.data_ok and not r.done]
            if todo:
                status = run_on_devices(study, todo, devices, evidence.output_root) or status
                evidence.after_launch()
            continue
        for variant_name, variant in study.variants().items():
            todo = [r for r in runs if r.group == (index, variant_name) and r.data_ok and not r.done]
            # Runs the planner wired to another run (init_from) launch apart, each with its source.
            wired: dict[tuple[str, ...], list[PlannedRun]] = {}
            for r in todo:
                wired.setdefault(tuple(o for o in r.overrides if o.startswith("init_from=")), []).append(r)
            for sources, members in wired.items():
                sweep = [f"{k}={','.join(v for v in values if any(r.values[k] == v for r in members))}"
                         for k, values in phase.items()]
                seeds = sorted({r.seed for r in members})
                cmd = [sys.executable, "-m", "lora_repro.train", "-m", f"study={study.name}", *study.common(), *variant,
                       *sweep, *sources, f"seed={','.join(str(s) for s in seeds)}", *extra]
                print("$ python " + " ".join(cmd[1:]), flush=True)
                status = run_child(cmd) or status
                evidence.after_launch()
    return status


def visible_devices(spec: str | None) -> list[str]:
    """--devices: "auto" = every visible CUDA GPU (none: no fan-out), or a list like "0,1,2"; ids
    that start with "cpu" ("cpu0,cpu1") are CPU slots (device_env)."""
    if not spec:
        return []
    if spec == "auto":
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    if not devices or len(set(devices)) != len(devices):
        raise ConfigError(f"--devices={spec!r}: give 'auto' or distinct device ids, e.g. --devices 0,1,2,3")
    return devices


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def device_env(device: str, devices: list[str], environ: dict[str, str]) -> dict[str, str]:
    """The environment of a job run on `device`. A GPU id is made the only visible GPU. A CPU slot
    ("cpu0") sees no GPU and gets an equal share of the cores as torch threads, unless the caller
    set OMP_NUM_THREADS: a small model's step does not use many threads well, so N one-thread jobs
    train more per second than one N-thread job (MiniLM-L6, batch 32, 2 cores: 1.54 against 1.25
    steps/s, measured with both jobs running; the claims study's head-only SST-2 seeds 3-7 took 296 s
    of wall time as two one-thread jobs against 423 s one after another on two threads, with the
    same selected steps and dev scores)."""
    if not device.startswith("cpu"):
        return {**environ, "CUDA_VISIBLE_DEVICES": device}
    env = {**environ, "CUDA_VISIBLE_DEVICES": ""}
    if "OMP_NUM_THREADS" not in environ:
        slots = sum(d.startswith("cpu") for d in devices)
        share = str(max(1, cpu_count() // max(1, slots)))
        env.update({name: share for name in THREAD_VARIABLES})
    return env


def run_on_devices(study: Study, jobs: list[PlannedRun], devices: list[str], output_root: Path,
                   refill: Callable[[], list[PlannedRun]] | None = None) -> int:
    """Each job in its own process, at most one per device at a time (CUDA_VISIBLE_DEVICES=<id>), so
    a machine with N GPUs trains N runs at once: the local fan-out (on SLURM, Hydra's submitit
    launcher does this). A job's output goes to <output_root>/launch_logs/; one line per start and
    end here. `refill`, called after each finished job (one at a time, while the other devices keep
    training), returns the jobs that can run now and were not given before; they go to the front of
    the queue: a tuned study's final seeds start as soon as their candidates are in, and no device
    waits for a round to end. Done when
    no job is left and none is running. SIGTERM or SIGINT reaches every running job, which are waited
    for, and nothing new starts."""
    import threading
    from collections import deque

    pending = deque(jobs)
    logs = output_root / "launch_logs"
    logs.mkdir(parents=True, exist_ok=True)
    live: set[subprocess.Popen] = set()
    lock = threading.Condition()
    stopping = threading.Event()
    codes: list[int] = []
    running = 0

    def say(line: str) -> None:  # whole lines: two jobs starting at once must not interleave
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def next_job() -> PlannedRun | None:
        nonlocal running
        with lock:
            while True:
                if stopping.is_set():
                    return None
                if pending:
                    running += 1
                    return pending.popleft()
                if running == 0:  # nothing left, and nothing running that could make more
                    return None
                lock.wait()

    def finished(code: int) -> None:
        nonlocal running
        with lock:
            codes.append(code)
            try:
                if refill is not None and not stopping.is_set():
                    # What a finished run made runnable goes first (a variant's seeds right after its
                    # candidates): arms complete one after another, so claims decide as early as they can.
                    pending.extendleft(reversed(refill()))
            finally:
                running -= 1
                lock.notify_all()

    def one(device: str, job: PlannedRun) -> int:
        cmd = [sys.executable, "-m", "lora_repro.train", f"study={study.name}", *job.overrides]
        log_file = logs / (job.run.replace("/", "__") + ".log")
        with lock:
            say(f"[device {device}] start {job.run}")
        with open(log_file, "w", encoding="utf-8") as out:
            child = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                     env=device_env(device, devices, dict(os.environ)))
            with lock:
                live.add(child)
                if stopping.is_set():  # the stop came between the start and here: pass it on too
                    child.send_signal(signal.SIGTERM)
            code = child.wait()
            with lock:
                live.discard(child)
        with lock:
            say(f"[device {device}] {'done' if code == 0 else f'failed (exit {code}; {log_file})'} {job.run}")
        return code

    errors: list[BaseException] = []

    def worker(device: str) -> None:
        try:
            while (job := next_job()) is not None:
                code = 1
                try:
                    code = one(device, job)
                finally:
                    finished(code)
        except BaseException as exc:  # a refill that failed (e.g. drift): stop the others, then raise it
            errors.append(exc)
            stopping.set()
            with lock:
                lock.notify_all()

    def forward(signum, frame):  # runs in the main thread, which only waits and never holds the lock
        stopping.set()
        with lock:
            for child in live:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        threads = [threading.Thread(target=worker, args=(device,), daemon=True) for device in devices]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):  # join with a timeout: signals reach this thread
            for thread in threads:
                thread.join(timeout=0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if errors:
        raise errors[0]
    if stopping.is_set():
        raise Stopped("stopped by a signal")
    return next((c for c in codes if c), 0)


class Stopped(Exception):
    """The launcher was told to stop (SIGTERM / SIGINT): no further child is started."""


def run_child(cmd: list[str]) -> int:
    """Run one child (a training multirun, the results build) in the project root. SIGTERM or SIGINT
    to the launcher is passed on to the child, which is waited for, so stopping a study never
    leaves training running on, holding its run folders (probe C15); then the launcher stops too,
    rather than starting the next child."""
    child = subprocess.Popen(cmd, cwd=PROJECT_ROOT)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise Stopped(f"stopped by signal {received[0]}")
    return code


def build_results(name: str, assignments: dict[str, str], scratch_root: Path | None = None) -> int:
    cmd = [sys.executable, "-m", "analysis.study", name, *(f"{k}={v}" for k, v in assignments.items()),
           *(["--scratch", str(scratch_root)] if scratch_root is not None else [])]
    print("$ python " + " ".join(cmd[1:]), flush=True)
    try:
        return run_child(cmd)
    except Stopped:
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="a folder of experiments/: " + ", ".join(study_names()))
    parser.add_argument("--dry-run", action="store_true", help="plan and print the cost; write and run nothing")
    parser.add_argument("--plan-only", action="store_true",
                        help="write the manifest (runs.csv) and sync records; run nothing")
    parser.add_argument("--no-results", action="store_true", help="run, but do not rebuild results/")
    parser.add_argument("--scratch", action="store_true",
                        help="this machine only: committed records are neither counted nor updated; results go to "
                             "<output_root>/scratch/NAME/results/ (what `make demo` does)")
    parser.add_argument("--devices", default=None,
                        help="run jobs in parallel, one per device at a time: 'auto' (every visible GPU) or ids "
                             "'0,1,2,3' (each job sees only its own: CUDA_VISIBLE_DEVICES), or CPU slots 'cpu0,cpu1' (each job "
                             "gets an equal share of the cores as threads). Default: one job at a time")
    parser.add_argument("--only", action="append", default=[], metavar="FIELD=V1,V2",
                        help="start only the planned runs with these values (fields: " + ", ".join(SELECT_FIELDS)
                             + "; repeat to narrow further), e.g. --only arm=lora_mpnet,full_ft_mpnet; the plan, "
                               "the manifest and results/ still cover the whole study")
    drift = parser.add_mutually_exclusive_group()
    drift.add_argument("--keep", action="store_true",
                       help="runs whose recipe changed keep their committed records (nothing re-runs them)")
    drift.add_argument("--rerun", action="store_true",
                       help="runs whose recipe changed run again under the new recipe")
    args, rest = parser.parse_known_args(argv)
    try:
        devices = visible_devices(args.devices)
        assignments, extra = split_args(args.name, rest)
        study = load_study(args.name, assignments)
        study.committed = not args.scratch
        if study.is_command:
            runs, root, evidence = [], None, None
        else:
            # Where this machine keeps the study's runs: the study may set output_root itself.
            root = Path(str(compose_job([*study.common(), *extra]).output_root))  # one line for a bad override
            evidence = Evidence(study, extra, root, keep=args.keep, rerun=args.rerun, write=not args.dry_run)
            runs = evidence.replan()
        if args.only and study.is_command:
            raise ConfigError(f"--only: study {study.name} runs one command, not planned runs; drop --only")
        only = parse_only(args.only, runs)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    throughput = measured_throughput(root, experiments_dir() / study.name / RECORDS_DIR if study.committed else None) \
        if root else {}
    print(describe(study, runs, throughput, root, devices, only), flush=True)
    if args.dry_run or args.plan_only:
        return 0
    blocked = unstartable(runs, only)
    if blocked:  # before any run starts (each would fail in seconds, one failed record after another)
        print(f"error: {len(blocked)} of the runs to start cannot load their model here: {blocked[0].model_missing}. "
              "Set it up and start again, or leave those runs out with --only", file=sys.stderr)
        return 2
    try:
        if study.is_command:
            out = results_dir(study.name)
            out.mkdir(parents=True, exist_ok=True)
            command = command_line(study).split()
            print("$ python -m " + " ".join(command + extra), flush=True)
            status = run_child([sys.executable, "-m", *command, *extra])
            if status != 0:  # the tool said why; results/ keeps what an earlier, successful run wrote
                return status
        else:
            status = (launch_tuned(study, evidence, extra, devices, only) if study.tune() is not None
                      else launch(study, runs, extra, evidence, devices, only))
    except Stopped as exc:
        if evidence is not None:
            evidence.after_launch()  # the records that landed are copied into the study
        print(f"study {study.name}: {exc}; the same command continues where it stopped", file=sys.stderr)
        return 130
    if not args.no_results:
        status = build_results(study.name, assignments, None if study.committed else root) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
