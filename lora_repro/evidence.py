"""A study's evidence, committed beside its study.yaml, so a study run on one machine is continued or
re-analysed on any other (peft's method_comparison keeps one committed result per run the same way):

    experiments/<study>/runs.csv       the manifest: one row per planned run (written whenever the study plans)
    experiments/<study>/recipes.json   recipe hash -> the recipe it hashes (to name drift key by key)
    experiments/<study>/records/<task>/<model>/<method>/<hash>_seed<k>.json
                                       each finished run's record.json, slimmed (no weights, no trainer state)

A machine's outputs/ is a working copy: finished records are copied into the study (`sync`), and
committed records are written back into outputs/ where a machine lacks them (`restore`), so the
trainer skips them as done there too. Analysis reads only the manifest and the committed records,
never outputs/ and never the config stack. torch-free."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from .record import RECORD_NAME, read_run_record, write_json

MANIFEST_NAME = "runs.csv"
RECIPES_NAME = "recipes.json"
RECORDS_DIR = "records"
RUNS_PREFIX = "runs/"
# Branches whose runs count in committed results (a detached HEAD, e.g. a worktree at a commit of
# main, reads 'HEAD'); runs from any other branch, or from a tree with uncommitted code, are
# unreleased: kept, but counted only with --allow-unreleased, under results/unreleased/.
RELEASE_BRANCHES = {"main", "master", "HEAD"}
# A committed record keeps at most this many points of its training-loss curve (evenly spaced,
# last included): the tables never read it, a person looking at a run's shape does.
LOSS_POINTS = 25
# Decoded outputs quoted in a committed E2E record (the files themselves stay in outputs/).
QUOTED_OUTPUTS = 3


@dataclass(frozen=True)
class ManifestRow:
    """One planned run. `key` names the run's place in the study (its params, arm, grid values,
    tuned value and seed), so a re-plan finds the same row even when the recipe hash moved."""

    key: str
    params: str          # the study's param choices, "scale=full" ("" when it has none)
    extra: str           # overrides given on the study's command line that change recipes ("" usually)
    arm: str             # the study.yaml variant ("" when the study has none)
    grid: str            # its grid values, "method.r=4 task=sst2"
    role: str            # run | tune (a candidate not chosen) | final
    tuned: str           # the tuned key's value ("" untuned, "?" still to be chosen)
    seed: int
    run: str             # run folder relative to output_root ("" while its tuned value is undecided)
    hash: str
    recipe: str          # the conf/experiment recipe it counts under ("" none)
    paper_setting: str   # the published rows it compares with
    planned_at: str      # git commit when it was planned


COLUMNS = [f.name for f in fields(ManifestRow)]


def manifest_path(study_dir: Path) -> Path:
    return Path(study_dir) / MANIFEST_NAME


def read_manifest(study_dir: Path) -> list[ManifestRow]:
    path = manifest_path(study_dir)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: columns {sorted(missing)} missing (a manifest of an older layout; "
                             f"re-plan with `python -m lora_repro.study {Path(study_dir).name} --plan-only`)")
        return [ManifestRow(**{**{c: row[c] for c in COLUMNS}, "seed": int(row["seed"])}) for row in reader]


def manifest_text(rows: Iterable[ManifestRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r.params, r.extra, r.key)):
        writer.writerow(asdict(row))
    return out.getvalue()


def merge_rows(old: list[ManifestRow], new: list[ManifestRow], params: str, extra: str) -> list[ManifestRow]:
    """The manifest after planning one choice of the study's params (and one set of extra
    overrides): that choice's rows replaced, every other choice's rows kept."""
    return [r for r in old if (r.params, r.extra) != (params, extra)] + list(new)


def write_manifest(study_dir: Path, rows: list[ManifestRow], recipes: dict[str, Any]) -> None:
    """runs.csv and recipes.json (only the hashes the rows name), each written atomically."""
    study_dir = Path(study_dir)
    text = manifest_text(rows)
    path = manifest_path(study_dir)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        tmp = path.with_suffix(".csv.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    wanted = {r.hash for r in rows if r.hash}
    known = {**read_recipes(study_dir), **recipes}
    kept = {h: known[h] for h in sorted(wanted) if h in known}
    if kept != read_recipes(study_dir):
        write_json(study_dir / RECIPES_NAME, kept)


def read_recipes(study_dir: Path) -> dict[str, Any]:
    path = Path(study_dir) / RECIPES_NAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------ records
def committed_path(study_dir: Path, run: str) -> Path:
    """Where a run's record is committed: records/<task>/<model>/<method>/<hash>_seed<k>.json."""
    return Path(study_dir) / RECORDS_DIR / (run.removeprefix(RUNS_PREFIX) + ".json")


def read_committed(study_dir: Path, run: str) -> tuple[dict | None, str]:
    return read_run_record(committed_path(study_dir, run))


def slim_record(record: dict[str, Any], run_folder: Path | None = None) -> dict[str, Any]:
    """The record as committed: every field, the training-loss curve thinned to LOSS_POINTS, and
    decoded-output files replaced by their first lines (the files stay in the run folder)."""
    slim = {k: v for k, v in record.items() if k != "restored_from"}
    curve = slim.get("train_loss_curve") or []
    if len(curve) > LOSS_POINTS:
        step = (len(curve) - 1) / (LOSS_POINTS - 1)
        slim["train_loss_curve"] = [curve[round(i * step)] for i in range(LOSS_POINTS)]
    decoding = slim.get("decoding")
    if isinstance(decoding, dict) and run_folder is not None:
        slim["decoding"] = {split: _quote_outputs(info, run_folder) if isinstance(info, dict) else info
                            for split, info in decoding.items()}
    return slim


def _quote_outputs(info: dict[str, Any], folder: Path) -> dict[str, Any]:
    if info.get("first_outputs") or not (info.get("mrs") and info.get("outputs")):
        return info
    try:
        mrs = (folder / info["mrs"]).read_text(encoding="utf-8").splitlines()[:QUOTED_OUTPUTS]
        outputs = (folder / info["outputs"]).read_text(encoding="utf-8").splitlines()[:QUOTED_OUTPUTS]
    except OSError:
        return info
    return {**info, "first_outputs": [[mr, out] for mr, out in zip(mrs, outputs)]}


def released(record: dict[str, Any]) -> bool:
    """Whether a run's code is committed code of main: no '-dirty' commit, no other branch."""
    commit = record.get("git_commit")
    return bool(commit) and not str(commit).endswith("-dirty") and (record.get("git_branch") or "HEAD") in RELEASE_BRANCHES


@dataclass
class SyncReport:
    copied: int = 0     # records new or changed in the study
    restored: int = 0   # committed records written into this machine's outputs/

    def line(self, study: str) -> str:
        parts = [f"{self.copied} finished run record(s) copied into experiments/{study}/{RECORDS_DIR}/"] if self.copied else []
        parts += [f"{self.restored} committed record(s) restored into outputs/ (counted as done)"] if self.restored else []
        return "; ".join(parts)


def sync(study_dir: Path, output_root: Path, rows: Iterable[ManifestRow]) -> SyncReport:
    """Copy each planned run's finished record (ok or failed) from output_root into the study, and
    write each committed ok record into output_root where that machine has none (marked
    `restored_from`), so the trainer and the planner count it as done."""
    report = SyncReport()
    for run in sorted({r.run for r in rows if r.run}):
        local = Path(output_root) / run / RECORD_NAME
        target = committed_path(study_dir, run)
        record, _ = read_run_record(local) if local.is_file() else (None, "")
        if record is not None and record.get("status") in ("ok", "failed") and not record.get("restored_from"):
            slim = slim_record(record, local.parent)
            current, _ = read_run_record(target) if target.is_file() else (None, "")
            if current != json.loads(json.dumps(slim, default=str)):
                write_json(target, slim)
                report.copied += 1
        elif record is None and target.is_file():
            committed, _ = read_run_record(target)
            if committed is not None and committed.get("status") == "ok":
                write_json(local, {**committed, "restored_from": str(target)})
                report.restored += 1
    return report


def prune_records(study_dir: Path, rows: Iterable[ManifestRow]) -> list[Path]:
    """Remove committed records no manifest row names any more (after --rerun replaced a recipe);
    git history keeps them."""
    wanted = {committed_path(study_dir, r.run) for r in rows if r.run}
    root = Path(study_dir) / RECORDS_DIR
    gone = [p for p in sorted(root.rglob("*.json")) if p not in wanted] if root.is_dir() else []
    for path in gone:
        path.unlink()
    return gone


# ------------------------------------------------------------------------------------ drift
def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def recipe_changes(old: Any, new: Any) -> str:
    """How two recipes differ, key by key: 'train.label_smoothing added, train.lr 0.001 -> 0.002'."""
    if old is None:
        return "its earlier recipe is not in recipes.json"
    a, b = flat(old), flat(new)
    parts = []
    for key in sorted(set(a) | set(b)):
        if key not in a:
            parts.append(f"{key} added")
        elif key not in b:
            parts.append(f"{key} removed")
        elif a[key] != b[key]:
            parts.append(f"{key} {a[key]} -> {b[key]}")
    return ", ".join(parts) or "same keys and values (hash rules changed)"


@dataclass
class Drift:
    """Planned runs whose recipe hash differs from the committed manifest's, grouped by change."""

    with_records: dict[str, list[ManifestRow]]     # change -> old rows that have committed records
    without_records: dict[str, list[ManifestRow]]  # change -> old rows never run: nothing is lost

    def __bool__(self) -> bool:
        return bool(self.with_records)

    def lines(self) -> list[str]:
        out = [f"{len(rows)} runs changed recipe since their records were committed: {change}"
               for change, rows in self.with_records.items()]
        out += [f"{len(rows)} planned runs not yet run changed recipe: {change}"
                for change, rows in self.without_records.items()]
        return out


def find_drift(study_dir: Path, old: list[ManifestRow], new: list[ManifestRow], new_recipes: dict[str, Any]) -> Drift:
    old_recipes = read_recipes(study_dir)
    by_key = {(r.params, r.extra, r.key): r for r in old}
    drift = Drift({}, {})
    for row in new:
        before = by_key.get((row.params, row.extra, row.key))
        if before is None or not before.hash or not row.hash or before.hash == row.hash:
            continue
        change = recipe_changes(old_recipes.get(before.hash), new_recipes.get(row.hash))
        has_record = committed_path(study_dir, before.run).is_file() if before.run else False
        (drift.with_records if has_record else drift.without_records).setdefault(change, []).append(before)
    return drift
