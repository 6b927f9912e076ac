"""Which published row a group of runs stands for. A run of a paper recipe names it: its record's
`paper_row` (a row of analysis/paper/hparams.yaml) gives the table's row label and printed size for
its model, and `paper_fit` says whether the run's task and model are the row's own. Runs without a
paper row (older records, your own recipes) fall back to each table's size heuristic."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from lora_repro.paper_rows import published_row

PAPER_DIR = Path(__file__).resolve().parent / "paper"


@functools.lru_cache(maxsize=None)
def table_spec(name: str) -> dict[str, Any]:
    """analysis/paper/tables.yaml's entry for one table: which runs it reads (task kinds, method
    family), its published CSV, average column, baseline and reference rows."""
    specs = OmegaConf.to_container(OmegaConf.load(PAPER_DIR / "tables.yaml"))
    return specs[name]


def published(name: str) -> pd.DataFrame:
    """The published values of a table spec (its CSV in analysis/paper/)."""
    return pd.read_csv(PAPER_DIR / table_spec(name)["published"])


def of_kinds(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The runs of `df` whose task kind the table reads."""
    if df.empty or "kind" not in df:
        return df
    return df[df.kind.isin(table_spec(name)["kinds"])]


def is_row(row: Any, match: dict[str, Any]) -> bool:
    """Whether a run (a dict or a row key's fields) is the spec's named row, e.g. {method: full_ft}."""
    return all(row.get(k) == v for k, v in match.items())


def by_paper_row(paper: pd.DataFrame, paper_row: str | None, paper_fit: str | None, model: str) -> pd.DataFrame | None:
    """The published lines of the run's paper row (empty where the run is not that row's setting:
    a stand-in task or model, or a model the row has no published value for); None when the run
    names no paper row, so the caller's heuristic decides."""
    if not paper_row or pd.isna(paper_row):
        return None
    found = published_row(str(paper_row), model) if paper_fit == "exact" else None
    if found is None:
        return paper.iloc[0:0]
    label, size = found
    return paper[(paper.row == label) & (paper.params == size)]
