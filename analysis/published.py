"""Which published row a group of runs stands for. A run of a paper recipe names it: its record's
`paper_row` (a row of analysis/paper/hparams.yaml) gives the table's row label and printed size for
its model, and `paper_fit` says whether the run's task and model are the row's own. Runs without a
paper row (older records, your own recipes) fall back to each table's size heuristic."""

from __future__ import annotations

import pandas as pd

from lora_repro.paper_rows import published_row


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
