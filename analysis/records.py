"""Run records into one pandas frame, from a runs folder or from one study's manifest and committed
records (lora_repro.evidence). Unreadable or corrupt files, and runs whose status is not ok, are
counted and listed, never used as results. The record's fields are declared once, in
lora_repro.record.RunRecord. Nothing here imports torch or composes a config."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from lora_repro import CONF_DIR

from lora_repro.evidence import committed_path, read_manifest, released, slim_record
from lora_repro.record import RECORD_NAME, iter_records, read_run_record
from lora_repro.studyspec import PROJECT_ROOT, experiments_dir


# A run's main metric is its task yaml's `main_metric`, read from the record's config: the one the
# run was tuned and early-stopped on is the one reported, and no table in analysis/ keeps a second
# list of them. A record without a config (hand-made) gets what its task's yaml names now; one whose
# task has no yaml here has no main score and is listed as such.
NO_METRIC = "main_metric"  # what a record without task.main_metric is reported as missing


@functools.lru_cache(maxsize=None)
def catalogue_task(task: str) -> dict:
    """conf/task/<task>.yaml over the task files its `defaults` name (`_glue`): a plain yaml read,
    no composition, no torch; {} for a task with no yaml here."""
    path = CONF_DIR / "task" / f"{task}.yaml"
    if not path.is_file():
        return {}
    own = OmegaConf.load(path)
    bases = [CONF_DIR / "task" / f"{d}.yaml" for d in own.get("defaults") or [] if isinstance(d, str) and d != "_self_"]
    merged = OmegaConf.merge(*[OmegaConf.load(b) for b in bases if b.is_file()], own)
    return OmegaConf.to_container(merged)


def catalogue_metric(task: str) -> str:
    return str(catalogue_task(task).get("main_metric") or NO_METRIC)


def record_task(record: dict, key: str) -> Any:
    """A task fact (main_metric, kind) from the record's own config, else from its task's yaml."""
    return ((record.get("config") or {}).get("task") or {}).get(key) or catalogue_task(str(record.get("task"))).get(key)


def record_metric(record: dict) -> str:
    """The main metric a record's own task config names (its task yaml's, for a record without one)."""
    return record_task(record, "main_metric") or NO_METRIC


def row_metric(row: dict) -> str:
    """The main metric of a flattened record row (flatten() stores it)."""
    metric = row.get("main_metric")
    return str(metric) if isinstance(metric, str) and metric else catalogue_metric(str(row.get("task")))


def main_score(row: dict) -> float | None:
    """A run's main metric at its best evaluation (the final one where there is no best, e.g. E2E
    BLEU on the decoded test set); None when it has none or it is not a number."""
    metric = row_metric(row)
    for key in (f"best.{metric}", f"metric.{metric}"):
        value = row.get(key)
        if value is not None and not pd.isna(value):
            return float(value)
    return None


@dataclass
class Records:
    ok: pd.DataFrame                                         # one row per finished run
    failed: list[tuple[str, str]] = field(default_factory=list)      # (path, error)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    missing: list[str] = field(default_factory=list)                 # planned runs with no record yet (studies)
    no_score: list[tuple[str, str]] = field(default_factory=list)    # ok runs whose main metric is NaN/absent
    failed_labels: list[dict] = field(default_factory=list)          # a study's labels of each failed run
    unreleased: list[tuple[str, str]] = field(default_factory=list)  # (record, commit) left out: dirty tree or branch
    planned: list[dict] = field(default_factory=list)                # a study's labels of every planned run, run or not

    def summary(self) -> str:
        lines = [f"{len(self.ok)} ok runs, {len(self.failed)} failed, {len(self.unreadable)} unreadable"
                 + (f", {len(self.missing)} planned but not run yet" if self.missing else "")
                 + (f"; {len(self.no_score)} ok runs have no usable main metric and are left out of tables "
                    f"and plots" if self.no_score else "")
                 + (f"; {len(self.unreleased)} from uncommitted code or another branch left out "
                    f"(--allow-unreleased counts them, under results/unreleased/)" if self.unreleased else "")]
        lines += [f"  failed: {p}: {e}" for p, e in self.failed]
        lines += [f"  skipped unreadable: {p}: {why}" for p, why in self.unreadable]
        lines += [f"  no main metric: {p}: {why}" for p, why in self.no_score]
        lines += [f"  unreleased: {p}: code {commit}" for p, commit in self.unreleased]
        return "\n".join(lines)


def flatten(record: dict, path: Path) -> dict:
    row = {k: record.get(k) for k in ("task", "model", "method", "seed", "wall_s", "peak_memory_bytes",
                                      "peak_tensor_bytes", "checkpoint_bytes")}
    # Runs of different recipes (experiment file, hyper-parameter overrides) are never pooled.
    row["experiment"] = record.get("experiment") or "-"
    row["variant"] = record.get("overrides") or ""
    row["study"] = record.get("study") or "-"
    row["git_commit"] = record.get("git_commit")
    row["device"] = record.get("device") or "unknown"
    row["record_file"] = str(path)
    row["main_metric"] = record_metric(record)
    row["kind"] = record_task(record, "kind")
    row["path"] = str(path.parent)
    hparams = record.get("hparams") or {}
    info = record.get("method_info") or {}
    row["family"] = info.get("family") or record.get("method")
    row["paper_setting"] = record.get("paper_setting") or info.get("paper_setting") or "paper"
    row["paper_row"] = record.get("paper_row")
    row["paper_fit"] = record.get("paper_fit")
    # What the method declares as its rank and its learning-rate ratio (Method.info()).
    row["rank"] = hparams.get(info["rank_key"]) if info.get("rank_key") else None
    row["lr_ratio"] = hparams.get(info["lr_ratio_key"]) if info.get("lr_ratio_key") else None
    row.update({f"hp.{k}": (tuple(v) if isinstance(v, list) else str(v) if isinstance(v, dict) else v)
                for k, v in hparams.items()})
    row.update({f"metric.{k}": v for k, v in (record.get("metrics") or {}).items()})
    row.update({f"best.{k}": v for k, v in (record.get("best_metrics") or {}).items() if k not in ("step", "epoch")})
    row.update({f"params.{k}": v for k, v in (record.get("params") or {}).items()})
    row.update({f"throughput.{k}": v for k, v in (record.get("throughput") or {}).items()})
    train = ((record.get("config") or {}).get("train") or {})
    row["train.lr"] = train.get("lr")
    return row


def collect(items) -> Records:
    """Items are (path, record or None, why) or (path, record, why, labels): `labels` replace the
    record's own (a study's plan says under which recipe it counts a shared run)."""
    rows, failed, unreadable, failed_labels = [], [], [], []
    for path, record, why, *labels in items:
        why = why or shape_problem(record)
        if record is None or why:
            unreadable.append((str(path), why))
        elif record["status"] != "ok":
            failed.append((str(path), record.get("error") or record["status"]))
            failed_labels.append({"path": str(path.parent), "seed": record.get("seed"), "record_file": str(path),
                                  **(labels[0] if labels else {})})
        else:
            rows.append({**flatten(record, path), **(labels[0] if labels else {})})
    no_score = [(row["path"], "its config names no task.main_metric" if row_metric(row) == NO_METRIC else
                 f"{row_metric(row)} is {row.get('metric.' + row_metric(row), 'absent')}")
                for row in rows if main_score(row) is None]
    return Records(ok=pd.DataFrame(rows), failed=failed, unreadable=unreadable, no_score=no_score,
                   failed_labels=failed_labels)


def shape_problem(record: dict | None) -> str:
    """Why an ok record cannot be tabulated ("" when it can): a field of the wrong type, a metric
    that is not a number. Such a record is listed as unreadable; the other runs still count."""
    if record is None or record.get("status") != "ok":
        return ""
    for key in ("metrics", "best_metrics", "params", "throughput", "hparams", "method_info", "config"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            return f"{key} is a {type(record[key]).__name__}, not a mapping"
    if not isinstance(record.get("params"), dict):
        return "params (the parameter counts) missing"
    for key in ("metrics", "best_metrics"):
        for name, value in (record.get(key) or {}).items():
            if value is not None and not isinstance(value, (int, float)) and name not in ("step", "epoch"):
                return f"{key}.{name} is {value!r}, not a number"
    return ""


def check_runs_dir(root: str | Path) -> Path:
    """A runs folder that does not exist is an error, never an empty table over earlier results."""
    root = Path(root)
    if not root.is_dir():
        raise SystemExit(f"error: runs folder {root} does not exist (RUNS=... names a folder of run records; "
                         f"or STUDY=... one of experiments/)")
    return root


def load_records(root: str | Path) -> Records:
    return collect(iter_records(check_runs_dir(root)))


def load_study_records(name: str, assignments: dict[str, str] | None = None,
                       allow_unreleased: bool = False, scratch_root: Path | None = None) -> Records:
    """Exactly the runs the study's committed manifest (experiments/<name>/runs.csv) lists, read from
    its committed records; `assignments` keep one choice of its params. A run planned by two rows
    of a table counts in both. Runs with no committed record are missing; records from uncommitted
    code or another branch are left out unless `allow_unreleased`. With `scratch_root` (a study run
    with --scratch) the manifest and the records are that machine's: <root>/scratch/<name>/runs.csv
    and <root>/<run>/record.json, and every record counts."""
    folder = experiments_dir() / name if scratch_root is None else Path(scratch_root) / "scratch" / name
    try:
        rows = read_manifest(folder)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    wanted = {k: str(v) for k, v in (assignments or {}).items()}
    rows = [r for r in rows if all(f"{k}={v}" in r.params.split() for k, v in wanted.items())]
    items, missing, unreleased, planned = [], [], [], []
    for row in rows:
        params = {f"param.{k}": v for k, v in (p.split("=", 1) for p in row.params.split())}
        grid = dict(p.split("=", 1) for p in row.grid.split() if "=" in p)
        planned.append({"arm": row.arm, "role": row.role, "task": grid.get("task"), **params})
        if not row.run:
            missing.append(f"{row.key} (waits for its variant's choice)")
            continue
        path = committed_path(folder, row.run) if scratch_root is None else Path(scratch_root) / row.run / RECORD_NAME
        if not path.is_file():
            missing.append(row.run)
            continue
        record, why = read_run_record(path)
        if record is not None and scratch_root is not None:
            record = slim_record(record, path.parent)  # as it would be committed (decoded lines quoted)
        if record is not None and not released(record) and not allow_unreleased and scratch_root is None:
            unreleased.append((str(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path),
                               str(record.get("git_commit"))))
            continue
        labels = {"path": str(path.parent) if scratch_root is not None else f"outputs/{row.run}",  # where its weights and decoded files are, on a machine that ran it
                  "experiment": row.recipe or "-", "paper_setting": row.paper_setting, "arm": row.arm,
                  "role": row.role, "tuned": row.tuned, **params}
        items.append((path, record, why, labels))
    records = collect(items)
    records.missing, records.unreleased, records.planned = sorted(set(missing)), unreleased, planned
    return records
