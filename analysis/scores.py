"""The one scoring function every paper table reads (Tables 2, 3 and 5, the stats): one row per
finished run and table column, scored as the paper prints it. Which runs a table reads and what
its columns are is the table's spec (analysis/paper/tables.yaml): `kinds` (task kinds), `family`
(a method family), and `column: task` (the run's main metric per task, x100) or `metrics:` (named
metrics with their print scale, one column each). A recipe and seed counts once, however many
records it has (the record whose folder sorts last; a note when the copies disagree: probe F15)."""

from __future__ import annotations

import sys

import pandas as pd

from .published import of_kinds, table_spec
from .records import Records, main_score

# A table row: runs of the same model, method, size and recipe (the conf/experiment file, "-" for
# none; the variant is how the recipe differs from its named defaults). Runs of different recipes
# are never pooled into one median.
ROW_KEY = ["model", "method", "adapted", "experiment", "variant"]
LABELS = ["paper_setting", "paper_row", "paper_fit"]


def run_scores(records: Records, table: str) -> pd.DataFrame:
    """One row per ok run of the table and column: ROW_KEY, `column`, seed, score, the paper labels,
    and the spec's `keep` fields (e.g. Table 5's hp.target_modules)."""
    spec = table_spec(table)
    keep = list(spec.get("keep") or [])
    columns = [*ROW_KEY, "column", "seed", "score", *LABELS, *keep, "path"]
    df = of_kinds(records.ok, table)
    if spec.get("family") and not df.empty:
        df = df[df.family == spec["family"]]
    rows = []
    for r in df.to_dict("records"):
        base = {"model": r["model"], "method": r["method"], "adapted": int(r["params.adapted"]),
                "experiment": r.get("experiment") or "-", "variant": r.get("variant") or "", "seed": r["seed"],
                "paper_setting": r.get("paper_setting") or "paper", "paper_row": r.get("paper_row"),
                "paper_fit": r.get("paper_fit"), **{k: r.get(k) for k in keep},
                "path": str(r.get("path") or r.get("record_file") or "")}
        if spec.get("metrics"):
            for metric, scale in spec["metrics"].items():
                value = r.get(f"metric.{metric}")
                if value is not None and not pd.isna(value):
                    rows.append({**base, "column": metric, "score": float(scale) * float(value)})
        else:
            value = main_score(r)
            if value is not None:  # a run without a usable main metric is listed in records.no_score
                rows.append({**base, "column": r[spec.get("column", "task")], "score": 100.0 * float(value)})
    frame = pd.DataFrame(rows, columns=columns).sort_values("path", kind="stable")
    unique = [*ROW_KEY, *keep, "column", "seed"]  # kept fields are recipe facts: never pooled across them
    for _, copies in frame.groupby(unique, dropna=False):
        if len(copies) > 1 and copies.score.nunique() > 1:
            print(f"note: {len(copies)} records of one recipe and seed disagree ("
                  + ", ".join(f"{p}: {v:.2f}" for p, v in zip(copies.path, copies.score))
                  + f"); the table counts {copies.path.iloc[-1]}", file=sys.stderr)
    return frame.drop_duplicates(subset=unique, keep="last").drop(columns="path").reset_index(drop=True)
