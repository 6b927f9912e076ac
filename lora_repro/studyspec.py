"""A study's study.yaml read and checked (see lora_repro.study for its keys): torch-free, so the
analysis reads studies without the training stack."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import PROJECT_ROOT
from .errors import ConfigError

# The studies: the project's experiments/ (LORA_REPRO_EXPERIMENTS names another folder of studies).
EXPERIMENTS_DIR = Path(os.environ.get("LORA_REPRO_EXPERIMENTS", PROJECT_ROOT / "experiments")).resolve()
STUDY_FILE = "study.yaml"
RESULTS_DIR = "results"
KNOWN_KEYS = {"description", "cost", "params", "paper_rows", "lookup", "common", "variants", "grid", "seeds", "first",
              "train_sizes", "results", "command", "tune", "only", "claims", "margins"}
TUNE_KEYS = {"key", "values", "share", "split", "seed", "extend"}
# What `results:` may ask for: analysis.study builds each (a test checks the two lists agree), so a
# typo is refused when the study is read, before any run trains. Besides these, every paper table of
# the pivot layout in analysis/paper/tables.yaml is a result of its own name (e.g. table5).
RESULT_KINDS = ("claims", "table2", "table3", "weights", "plots", "method_table", "e2e_vs_paper")
TABLES_FILE = PROJECT_ROOT / "analysis" / "paper" / "tables.yaml"


def pivot_tables() -> tuple[str, ...]:
    """The paper tables of the pivot layout in tables.yaml (analysis/layouts.py builds each)."""
    specs = OmegaConf.to_container(OmegaConf.load(TABLES_FILE)) if TABLES_FILE.is_file() else {}
    return tuple(n for n, s in specs.items() if isinstance(s, dict) and s.get("layout") == "pivot")


def result_kinds() -> tuple[str, ...]:
    return RESULT_KINDS + pivot_tables()


def experiments_dir() -> Path:
    """The folder of studies (read at call time, so a test can point it elsewhere)."""
    return EXPERIMENTS_DIR


def study_names() -> list[str]:
    return sorted(p.parent.name for p in experiments_dir().glob(f"*/{STUDY_FILE}"))


def results_dir(name: str) -> Path:
    return experiments_dir() / name / RESULTS_DIR


@dataclass
class Study:
    name: str
    spec: dict[str, Any]          # study.yaml resolved, with each param set to one value
    params: dict[str, str]
    committed: bool = True        # its committed records count as done (False: a --scratch run)

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
        extend = spec.get("extend") or {}
        return Tune(key=str(spec["key"]), split=str(spec.get("split") or "heldout"),
                    values={m: [str(v) for v in vs] for m, vs in (spec.get("values") or {}).items()},
                    share={str(k): str(v) for k, v in (spec.get("share") or {}).items()},
                    seed=None if spec.get("seed") is None else int(spec["seed"]),
                    extend_factor=float(extend.get("factor", 0) or 0), extend_times=int(extend.get("times", 0) or 0))

    def runs_with(self, variant: str, values: dict[str, str]) -> bool:
        """Whether a variant runs at these grid values (`only: {variant: {key: [values]}}`)."""
        only = (self.spec.get("only") or {}).get(variant) or {}
        return all(str(values[k]) in [str(v) for v in allowed] for k, allowed in only.items() if k in values)

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
    path = experiments_dir() / name / STUDY_FILE
    if not path.is_file():
        raise ConfigError(f"unknown study {name!r}; valid: {', '.join(study_names())}")
    try:
        spec = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(spec, DictConfig) or not spec.get("description"):
        raise ConfigError(f"{path}: a study.yaml is a mapping with at least `description:` (what the study shows); "
                          f"this one {'is empty' if not spec else 'has none'}")
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
    # A value the study does not list (probe of our own: `scale=huge` read as "no lookup entry
    # 'lookup.common.huge'"); a free param (one choice, e.g. model=) takes any value.
    wrong = [f"{k}={v}" for k, v in params.items() if len(options[k]) > 1 and v not in options[k]]
    if wrong:
        raise ConfigError(f"study {name}: {', '.join(wrong)} is not one of its choices ("
                          + "; ".join(f"{k}: {', '.join(v)}" for k, v in options.items()) + ")")
    spec.params = params
    try:
        resolved = OmegaConf.to_container(spec, resolve=True)
    except Exception as exc:  # e.g. a param value with no entry in a lookup table
        given = ", ".join(f"{k}={v}" for k, v in params.items())
        valid = "; ".join(f"{k}: " + ", ".join(v) for k, v in options.items())
        raise ConfigError(f"study {name} with {given}: {' '.join(str(exc).split())} (its params: {valid})") from None
    check_shape(name, resolved, all_variants(spec, options) if resolved.get("claims") else None)
    return Study(name, resolved, params)


def all_variants(spec: DictConfig, options: dict[str, list[str]]) -> set[str]:
    """The variant names of every choice of the study's params (claims may name any of them)."""
    names: set[str] = set()
    for combo in itertools.product(*options.values()):
        trial = spec.copy()
        trial.params = dict(zip(options, combo))
        try:
            names |= set(OmegaConf.to_container(trial.get("variants") or {}, resolve=True) or {})
        except Exception:
            continue  # a choice that does not resolve is reported when it is the one asked for
    return names


@dataclass
class Tune:
    key: str                        # the override chosen, e.g. train.lr
    split: str                      # the evaluation split whose main metric decides
    values: dict[str, list[str]]    # method name -> candidates
    share: dict[str, str]           # variant -> the variant whose choice it takes
    seed: int | None = None         # the tuning seed (not a reporting seed); None: the first of `seeds`
    extend_factor: float = 0.0      # a best candidate at an end of those tried adds one beyond it (x or / factor),
    extend_times: int = 0           # at most this many added candidates: the grid follows the optimum outwards

    def beyond(self, candidates: list[str], best: str) -> str | None:
        """The candidate to add when `best` is the largest or smallest of the candidates tried, else
        None (the optimum is bracketed)."""
        values = sorted(float(c) for c in candidates)
        if not self.extend_factor or len(values) < 2 or float(best) not in (values[0], values[-1]):
            return None
        return f"{values[-1] * self.extend_factor:.3g}" if float(best) == values[-1] else f"{values[0] / self.extend_factor:.3g}"


# ------------------------------------------------------------------------------ claims
PAIRED_TESTS = ("noninferior", "superior", "equivalent")
TESTS = PAIRED_TESTS + ("identical", "fewer_steps", "lr_ratio", "improves")
CLAIM_KEYS = {"id", "claim", "source", "test", "arm", "baseline", "min_tasks", "ratio", "then", "gate", "caveat"}
# Which arms of a paired comparison must beat the constant predictor (the validity gate): "both", or
# "arm" for a superiority claim against a control that may itself sit at chance (the head-only
# control on CoLA): "beats the control" then asks whether the arm learned more than the control, and
# a control at chance is a finding, not a broken baseline. A claim of matching a baseline always gates both.
GATES = ("both", "arm")
CLAIM_TESTS = TESTS


@dataclass
class Claim:
    claim: str                 # what the paper says
    test: str                  # one of TESTS
    arm: str
    baseline: str
    source: str = ""           # paper, table or figure
    id: str = ""
    min_tasks: int = 1         # tasks that must pass the validity gate for a claim-level verdict
    ratio: tuple[float, float] | None = None   # lr_ratio: the range of lr(arm) / lr(baseline) the claim states
    then: tuple[str, str] | None = None        # improves: (arm, baseline) at the other setting (e.g. a larger model)
    gate: str = "both"         # one of GATES: the arms that must beat the constant predictor
    caveat: str = ""           # what the comparison cannot show, printed beside its verdict


def claims_of(spec: dict[str, Any], where: str = STUDY_FILE, known_arms: set[str] | None = None) -> list[Claim]:
    """The study's `claims:` (what analysis/claims.py decides) as Claims, each checked: its keys,
    its test, its arms among the study's variants (at any choice of its params: a tier may leave a
    claim's arms out, and the claim is then not decided there), a ratio range for lr_ratio.
    check_shape calls it, so a typo stops the study before anything trains."""
    variants = set(spec.get("variants") or {}) | (known_arms or set())
    out = []
    for i, entry in enumerate(spec.get("claims") or []):
        name = f"{where}: claims[{i}]"
        if not isinstance(entry, dict) or not {"claim", "test", "arm", "baseline"} <= set(entry):
            raise ConfigError(f"{name} must be a mapping with claim, test, arm, baseline (and optional id, source, "
                              f"min_tasks, ratio, then, gate, caveat); got {entry!r}")
        unknown = sorted(set(entry) - CLAIM_KEYS)
        if unknown:
            raise ConfigError(f"{name}: unknown key(s) {unknown}; valid: {', '.join(sorted(CLAIM_KEYS))}")
        if entry["test"] not in TESTS:
            raise ConfigError(f"{name}: test {entry['test']!r} is not one of {', '.join(TESTS)}")
        then = entry.get("then")
        if entry["test"] == "improves" and not (isinstance(then, list) and len(then) == 2):
            raise ConfigError(f"{name}: an improves claim needs then: [arm, baseline] (the same comparison at the other "
                              f"setting), got {then!r}")
        missing = [a for a in (entry["arm"], entry["baseline"], *(then or [])) if variants and a not in variants]
        if missing:
            raise ConfigError(f"{name}: {', '.join(missing)} is not a variant of the study "
                              f"(variants: {', '.join(sorted(variants))})")
        ratio = entry.get("ratio")
        if entry["test"] == "lr_ratio" and not (isinstance(ratio, list) and len(ratio) == 2
                                                and 0 < float(ratio[0]) < float(ratio[1])):
            raise ConfigError(f"{name}: an lr_ratio claim needs ratio: [low, high] with 0 < low < high, got {ratio!r}")
        if not isinstance(entry.get("caveat", ""), str):
            raise ConfigError(f"{name}: caveat must be one line of text (what the comparison cannot show), "
                              f"got {entry['caveat']!r}")
        gate = str(entry.get("gate") or "both")
        if gate not in GATES or (gate == "arm" and entry["test"] != "superior"):
            raise ConfigError(f"{name}: gate {gate!r}: give 'both' (the default), or 'arm' on a superior claim whose "
                              f"baseline is a control (a claim of matching a baseline at chance would hold trivially)")
        out.append(Claim(claim=str(entry["claim"]), test=str(entry["test"]), arm=str(entry["arm"]),
                         baseline=str(entry["baseline"]), source=str(entry.get("source") or ""),
                         id=str(entry.get("id") or f"claim{i}"), min_tasks=int(entry.get("min_tasks") or 1),
                         ratio=(float(ratio[0]), float(ratio[1])) if ratio else None,
                         then=(str(then[0]), str(then[1])) if then else None, gate=gate,
                         caveat=str(entry.get("caveat") or "")))
    return out


def check_shape(name: str, spec: dict[str, Any], known_arms: set[str] | None = None) -> None:
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
        seed = tune.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed in (spec.get("seeds") or [])):
            raise ConfigError(f"{where}: tune.seed={seed!r} must be an integer that is not one of the reporting seeds "
                              f"{spec.get('seeds')} (a setting chosen on a seed would favour that seed's report)")
        extend = tune.get("extend") or {}
        if extend and (not isinstance(extend, dict) or set(extend) - {"factor", "times"}
                       or not isinstance(extend.get("factor"), (int, float)) or not extend.get("factor", 0) > 1
                       or not isinstance(extend.get("times"), int) or extend.get("times") < 1):
            raise ConfigError(f"{where}: tune.extend must be {{factor: F > 1, times: N >= 1}}, got {extend!r}")
        for variant, source in (tune.get("share") or {}).items():
            if variant not in variants or source not in variants or source in (tune.get("share") or {}):
                raise ConfigError(f"{where}: tune.share.{variant}: {source!r} must name a variant that is tuned "
                                  f"itself (variants: {', '.join(sorted(variants))})")
    only = spec.get("only") or {}
    if not isinstance(only, dict) or not all(isinstance(v, dict) and all(isinstance(x, list) for x in v.values())
                                             for v in only.values()):
        raise ConfigError(f"{where}: only must map a variant to {{grid key: [values]}}, got {only!r}")
    unknown_only = sorted(set(only) - set(spec.get("variants") or {}))
    if unknown_only:
        raise ConfigError(f"{where}: only names variant(s) {unknown_only} that `variants` does not have")
    if not isinstance(spec.get("claims") or [], list):
        raise ConfigError(f"{where}: claims must be a list of {{claim, test, arm, baseline}} mappings")
    claims_of(spec, where, known_arms)
    margins = spec.get("margins") or {}
    if not isinstance(margins, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in margins.values()):
        raise ConfigError(f"{where}: margins must map task names to positive numbers (points), got {margins!r}")
    for key in ("common", "first", "results"):
        if not isinstance(spec.get(key) or [], list):
            raise ConfigError(f"{where}: {key} must be a list, got {spec[key]!r}")
    known = result_kinds()
    unknown = sorted(set(spec.get("results") or []) - set(known))
    if unknown:
        raise ConfigError(f"{where}: results {unknown} are not known; known: {', '.join(known)}")
    seeds = spec.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds must be a list of integers >= 0, got {seeds!r}")
    # A repeated seed or grid value is one run counted twice (probe C5): the plan and its cost would lie.
    for label, values in [("seeds", seeds), *((f"grid.{k}", v) for k, v in (spec.get("grid") or {}).items()
                                              if isinstance(v, list))]:
        repeated = sorted({str(v) for v in values if [str(x) for x in values].count(str(v)) > 1})
        if repeated:
            raise ConfigError(f"{where}: {label} lists {', '.join(repeated)} more than once; each value is one run")
    # `first` orders grid values (e.g. MNLI before the tasks that start from it): a value that is no
    # grid value would be ignored silently and the order lost (probe C10).
    grid = {k: [str(x) for x in v] for k, v in (spec.get("grid") or {}).items() if isinstance(v, list)}
    for item in spec.get("first") or []:
        key, _, value = str(item).partition("=")
        if value not in grid.get(key, []):
            raise ConfigError(f"{where}: first: {item} is not a grid value ({key} takes "
                              f"{', '.join(grid[key]) if key in grid else 'no grid values: it is not in grid'})")
    for key in ("variants", "grid"):
        table = spec.get(key) or {}
        if not isinstance(table, dict) or not all(isinstance(v, list) and v for v in table.values()):
            raise ConfigError(f"{where}: {key} must map names to non-empty lists, got {table!r}")


def param_choices(name: str) -> list[dict[str, str]]:
    """Every combination of a study's param choices (the analysis reads them all)."""
    options = param_options(read_spec(name))
    return [dict(zip(options, combo)) for combo in itertools.product(*options.values())]


def split_args(study_name: str, args: list[str]) -> tuple[dict[str, str], list[str]]:
    """`key=value` for a key of the study's params sets that param; everything else is a Hydra
    override for every run."""
    params = set(param_options(read_spec(study_name)))
    assignments, extra = {}, []
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "seed":
            raise ConfigError(f"{arg}: a study runs the seeds its study.yaml lists (`seeds:`); an extra seed would train "
                              f"a run the study does not plan. Edit `seeds:` in experiments/{study_name}/{STUDY_FILE}, "
                              f"or train one run by hand with `python -m lora_repro.train ... {arg}`")
        if key in params and value:
            assignments[key] = value
        else:
            extra.append(arg)
    return assignments, extra


def command_line(study: Study) -> str:
    out = results_dir(study.name)
    return str(study.spec["command"]).format(results=out.relative_to(PROJECT_ROOT) if out.is_relative_to(PROJECT_ROOT) else out)


