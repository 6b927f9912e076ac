"""Run records into one pandas frame, from a runs folder or from one study's planned runs.
Unreadable or corrupt files, and runs whose status is not ok, are counted and listed, never used as
results. The record's fields are declared once, in lora_repro.record.RunRecord."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lora_repro.record import RECORD_NAME, iter_records, read_run_record


# The metric the papers report per task (x100 in the tables): MNLI matched accuracy, MCC for CoLA,
# Pearson for STS-B, BLEU for E2E, accuracy elsewhere (also MRPC/QQP).
TABLE2_METRIC = {"mnli": "matched_accuracy", "cola": "mcc", "stsb": "pearson", "e2e": "BLEU"}
DEFAULT_METRIC = "accuracy"


def task_metric(task: str) -> str:
    return TABLE2_METRIC.get(task, DEFAULT_METRIC)


def main_score(row: dict) -> float | None:
    """A run's main metric at its best evaluation (the final one where there is no best, e.g. E2E
    BLEU on the decoded test set); None when it has none or it is not a number."""
    metric = task_metric(row["task"])
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

    def summary(self) -> str:
        lines = [f"{len(self.ok)} ok runs, {len(self.failed)} failed, {len(self.unreadable)} unreadable"
                 + (f", {len(self.missing)} planned but not run yet" if self.missing else "")
                 + (f"; {len(self.no_score)} ok runs have no usable main metric and are left out of tables "
                    f"and plots" if self.no_score else "")]
        lines += [f"  failed: {p}: {e}" for p, e in self.failed]
        lines += [f"  skipped unreadable: {p}: {why}" for p, why in self.unreadable]
        lines += [f"  no main metric: {p}: {why}" for p, why in self.no_score]
        return "\n".join(lines)


def flatten(record: dict, path: Path) -> dict:
    row = {k: record.get(k) for k in ("task", "model", "method", "seed", "wall_s", "peak_memory_bytes",
                                      "peak_tensor_bytes", "checkpoint_bytes")}
    # Runs of different recipes (experiment file, hyper-parameter overrides) are never pooled.
    row["experiment"] = record.get("experiment") or "-"
    row["variant"] = record.get("overrides") or ""
    row["study"] = record.get("study") or "-"
    row["git_commit"] = record.get("git_commit")
    row["path"] = str(path.parent)
    hparams = record.get("hparams") or {}
    info = record.get("method_info") or {}
    row["family"] = info.get("family") or record.get("method")
    row["paper_setting"] = record.get("paper_setting") or info.get("paper_setting") or "paper"
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
        if record is None:
            unreadable.append((str(path), why))
        elif record["status"] != "ok":
            failed.append((str(path), record.get("error") or record["status"]))
            failed_labels.append({"path": str(path.parent), "seed": record.get("seed"), **(labels[0] if labels else {})})
        else:
            rows.append({**flatten(record, path), **(labels[0] if labels else {})})
    no_score = [(row["path"], f"{task_metric(row['task'])} is "
                 f"{row.get('metric.' + task_metric(row['task']), 'absent')}") for row in rows if main_score(row) is None]
    return Records(ok=pd.DataFrame(rows), failed=failed, unreadable=unreadable, no_score=no_score,
                   failed_labels=failed_labels)


def check_runs_dir(root: str | Path) -> Path:
    """A runs folder that does not exist is an error, never an empty table over earlier results."""
    root = Path(root)
    if not root.is_dir():
        raise SystemExit(f"error: runs folder {root} does not exist (RUNS=... names a folder of run records; "
                         f"or STUDY=... one of experiments/)")
    return root


def load_records(root: str | Path) -> Records:
    return collect(iter_records(check_runs_dir(root)))


def load_run_dirs(run_dirs: list[Path], labels: list[dict] | None = None) -> Records:
    """The records of the given run folders (a study's plan), each row labelled as `labels` say;
    folders with no record yet are listed as missing."""
    items, missing = [], []
    for index, folder in enumerate(run_dirs):
        path = Path(folder) / RECORD_NAME
        if not path.is_file():
            missing.append(str(folder))
            continue
        record, why = read_run_record(path)
        items.append((path, record, why, labels[index] if labels else {}))
    records = collect(items)
    records.missing = missing
    return records


def load_study_records(name: str, assignments: dict[str, str] | None = None, extra: list[str] | None = None) -> Records:
    """Exactly the runs a study plans (every choice of its params unless `assignments` fix some),
    read from their canonical folders; a run planned by two studies counts in both."""
    from lora_repro.study import load_study, param_choices, plan

    planned = []  # (params, run)
    for choice in param_choices(name):
        if assignments and any(choice.get(k) != v for k, v in assignments.items() if k in choice):
            continue
        study = load_study(name, {**choice, **(assignments or {})})
        planned += [(study.params, r) for r in plan(study, list(extra or []))]
    if assignments and not planned:  # a param value outside the listed choices
        study = load_study(name, assignments)
        planned = [(study.params, r) for r in plan(study, list(extra or []))]
    # A tuned study's final runs still waiting for their setting have no folder yet: missing.
    waiting = [f"{' '.join(r.overrides)} (waits for its variant's choice)" for _, r in planned
               if r.run_dir is None and r.data_ok]
    unique = {(r.run_dir, r.experiment): (params, r) for params, r in planned if r.data_ok and r.run_dir is not None}
    # Labels: the recipe and published rows the plan counts it under, its variant (arm) and role,
    # and the study's params (a study with several choices, e.g. claims' scale, reads them apart).
    labels = [{"experiment": r.experiment or "-", "paper_setting": r.paper_setting, "arm": r.group[1], "role": r.role,
               **{f"param.{k}": v for k, v in params.items()}} for params, r in unique.values()]
    records = load_run_dirs([r.run_dir for _, r in unique.values()], labels)
    records.missing += waiting
    return records
