"""Paper tables whose columns are a setting of the runs (LoRA's Table 5: one column per adapted
weight type, its rank beneath): the `pivot` layout of analysis/paper/tables.yaml. A table of this
shape is one entry there plus its published CSV; this module names no table, task or method.

An entry gives:
  across:  {field, name}  the run field whose values are the columns (a list value, e.g. target
                          modules, is one column: its labels joined in `label_order`), and the
                          column's name in the CSV written
  header:  {field, name, title}  optional: a first row of this field's values under each column (the rank)
  labels:  value -> printed label (the paper's symbols); a run with a value it does not name is left
           out. Without `labels`, values print as they are.
  column_order: the published order of the columns (others follow)
  published_across / published_row: the published CSV's columns naming a value's table column and row
  title, caption, published_suffix: the text around the table
Our rows: one per task (the table's `column`), median over seeds at the best evaluation x100
[exact order-statistic interval of the median] (seeds), from the one scoring function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from .published import published, table_spec
from .records import Records
from .scores import run_scores
from .stats import median_ci


def plain(value: Any) -> str:
    """A value as printed: a whole float (a rank read back as 8.0 beside missing values) as 8."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def label_of(value: Any, spec: dict[str, Any]) -> str | None:
    """A run's value of the `across` field as the paper prints it; None when `labels` does not name it."""
    labels = spec.get("labels")
    items = list(value) if isinstance(value, (list, tuple)) else None
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if labels is None:
        return ",".join(plain(v) for v in items) if items is not None else plain(value)
    if items is None:
        items = [value]
    names = [labels.get(str(v)) for v in items]
    if not names or None in names:
        return None
    order = spec.get("label_order") or []
    return ",".join(sorted(set(names), key=lambda n: order.index(n) if n in order else len(order)))


def column_key(label: str, spec: dict[str, Any]) -> tuple[int, float, str]:
    """The published order (`column_order`), then numbers by value (a rank 16 after 4), then by name."""
    order = [str(c) for c in spec.get("column_order") or []]
    try:
        number = float(label)
    except ValueError:
        number = float("inf")
    return (order.index(label) if label in order else len(order), number, label)


def build_pivot(records: Records, name: str) -> pd.DataFrame:
    """One row per (column label, header value, task): median, its interval, seeds."""
    spec = table_spec(name)
    across, header = spec["across"], spec.get("header")
    rows = []
    for r in run_scores(records, name).to_dict("records"):
        label = label_of(r.get(across["field"]), spec)
        if label is not None:
            rows.append({across["name"]: label, "task": r["column"], "score": r["score"],
                         **({header["name"]: r.get(header["field"])} if header else {})})
    keys = [across["name"], *([header["name"]] if header else []), "task"]
    columns = [*keys, "median", "ci_low", "ci_high", "n_seeds"]
    out = []
    for key, group in pd.DataFrame(rows, columns=[*keys, "score"]).groupby(keys):
        ci = median_ci(group.score)
        out.append({**dict(zip(keys, key)), "median": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                    "n_seeds": len(group)})
    table = pd.DataFrame(out, columns=columns)
    if header and not table.empty and pd.api.types.is_float_dtype(table[header["name"]]) \
            and (table[header["name"]] % 1 == 0).all():
        table[header["name"]] = table[header["name"]].astype(int)  # a rank read back as 8.0 prints as 8
    return table.sort_values(across["name"], key=lambda s: s.map(lambda k: column_key(k, spec)), kind="stable")


def pivot_markdown(table: pd.DataFrame, name: str) -> str:
    spec = table_spec(name)
    across, header = spec["across"]["name"], spec.get("header")
    paper = published(name)
    labels = list(dict.fromkeys(table[across])) or [str(c) for c in spec.get("column_order") or []]
    lines = [f"# {spec['title']}", "", spec["caption"].strip(), "",
             f"| {spec['across'].get('title', across)} | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    if header:
        values = {k: sorted(set(table[table[across] == k][header["name"]])) for k in labels}
        lines.append(f"| {header.get('title', header['name'])} | "
                     + " | ".join(",".join(plain(v) for v in values[k]) or "—" for k in labels) + " |")
    for task in sorted(set(table.task)):
        cells = []
        for label in labels:
            hit = table[(table[across] == label) & (table.task == task)]
            cells.append("—" if hit.empty else "; ".join(f"{r['median']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}] "
                                                         f"({r['n_seeds']})" for r in hit.to_dict("records")))
        lines.append(f"| {task} (ours) | " + " | ".join(cells) + " |")
    for row, group in paper.groupby(spec["published_row"], sort=False):
        cells = {plain(k): v for k, v in zip(group[spec["published_across"]], group.value)}
        lines.append(f"| {row} {spec.get('published_suffix', '(paper)')} | "
                     + " | ".join(f"{cells[k]:.1f}" if k in cells else "—" for k in labels) + " |")
    return "\n".join(lines) + "\n"


def write_pivot(records: Records, out: Path, name: str) -> str:
    """out/<name>.{md,csv}; returns the markdown."""
    table = build_pivot(records, name)
    text = pivot_markdown(table, name)
    table.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(text)
    return text
