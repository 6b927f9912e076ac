"""The papers' hyper-parameters as data (analysis/paper/hparams.yaml), read by recipes through one
resolver: a recipe names its row (`paper_row: roberta_base_lora`) and writes `lr: ${paper:lr}`.

Why a resolver and not per-task tables in each recipe: a table keyed by task or model names breaks
every recipe the day a task or model is added (`experiment=paper_roberta_base_lora task=boolq` used
to fail on an interpolation key). Here a task or model the paper did not run takes its row's
`stand_in` values, and the run says so (`paper_fit`), so every recipe composes with every task and
model, while a value that is nowhere is one error naming the row, the task/model and the key."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

HPARAMS_FILE = Path(__file__).resolve().parent.parent / "analysis" / "paper" / "hparams.yaml"
ROW_KEYS = {"source", "published", "values", "tasks", "models", "stand_in"}


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, dict]:
    rows = yaml.safe_load(Path(path).read_text()) or {}
    for name, row in rows.items():
        unknown = set(row) - ROW_KEYS
        if unknown:
            raise ConfigError(f"{path}: paper row {name} has unknown keys {sorted(unknown)}; a row has {sorted(ROW_KEYS)}")
    return rows


def paper_rows(path: Path | None = None) -> dict[str, dict]:
    return _load(str(path or HPARAMS_FILE))


def row(name: str, path: Path | None = None) -> dict:
    rows = paper_rows(path)
    if name not in rows:
        raise ConfigError(f"paper_row={name} is not a row of {HPARAMS_FILE.relative_to(HPARAMS_FILE.parents[2])}; "
                          f"rows: {', '.join(rows)}")
    return rows[name]


def _entry(entries: dict, name: str, stand_in: str | None) -> tuple[dict, str | None]:
    """The row's values for this task/model, and the stand-in used (None: its own entry or no table)."""
    if not entries:
        return {}, None
    if name in entries:
        return entries[name] or {}, None
    if stand_in:
        return entries.get(stand_in) or {}, stand_in
    return {}, None


def values(row_name: str, task: str, model: str) -> tuple[dict[str, Any], list[str]]:
    """All values the row gives this task and model (task entries over model entries over the row's
    own), and one note per stand-in used."""
    spec = row(row_name)
    stand = spec.get("stand_in") or {}
    by_task, task_stand = _entry(spec.get("tasks") or {}, task, stand.get("task"))
    by_model, model_stand = _entry(spec.get("models") or {}, model, stand.get("model"))
    notes = []
    if task_stand:
        notes.append(f"task {task} is not in paper row {row_name} ({spec.get('source', '')}): it takes {task_stand}'s values")
    if model_stand:
        notes.append(f"model {model} is not in paper row {row_name} ({spec.get('source', '')}): it takes {model_stand}'s values")
    return {**(spec.get("values") or {}), **by_model, **by_task}, notes


def paper_value(key: str, *, _root_: Any) -> Any:
    """`${paper:<key>}`: the value of `key` in the recipe's paper_row for its task and model."""
    row_name = _root_.get("paper_row")
    if not row_name:
        raise ConfigError(f"${{paper:{key}}} needs `paper_row: <row>` in the recipe (rows: {', '.join(paper_rows())})")
    task, model = str(_root_.task.name), str(_root_.model.name)
    found, _ = values(str(row_name), task, model)
    if key not in found:
        raise ConfigError(f"paper row {row_name} gives no {key!r} for task {task}, model {model} "
                          f"(it gives: {', '.join(sorted(found)) or 'nothing'}); set the value on the command line")
    return found[key]


def paper_fit(cfg: Any) -> str | None:
    """How the run's task and model meet its paper row: None without a row, 'exact' when both are
    the row's own, else the stand-in notes joined (a record says which published setting it ran)."""
    row_name = cfg.get("paper_row") if hasattr(cfg, "get") else None
    if not row_name:
        return None
    _, notes = values(str(row_name), str(cfg.task.name), str(cfg.model.name))
    return "; ".join(notes) if notes else "exact"


def published_row(row_name: str, model: str) -> tuple[str, str] | None:
    """(row label, printed parameter count) of the published row this recipe stands for on `model`
    (analysis/paper/table2.csv / table3.csv), or None when the paper has none for that model."""
    entry = (row(row_name).get("published") or {}).get(model)
    return (str(entry[0]), str(entry[1])) if entry else None
