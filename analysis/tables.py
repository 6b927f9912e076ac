"""`make tables` / `python -m analysis.tables [RUNS_DIR]`: the LoRA paper's Table 2 (GLUE) and
Table 3 (E2E, analysis/table3.py) layouts rebuilt. Table 2:
from run records: rows model x method (x size), columns tasks, "# Trainable Parameters" and Avg;
each cell the median over seeds at the best evaluation (as the paper reports), with the spread and
the number of seeds, beside the published value and the difference. Missing cells stay missing.
Writes results/table2.{md,csv} and results/table3.{md,csv}."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .published import by_paper_row, is_row, of_kinds, published, table_spec
from .records import Records
from .scores import ROW_KEY
from .scores import run_scores as scores_of
from .stats import median_ci, paired
from .table3 import build_table3, table3_markdown

AVERAGE = table_spec("table2")["average"]  # the published column averaging every other task column


def published_tasks(paper: pd.DataFrame) -> list[str]:
    """The published table's task columns in its own order (Table 2: MNLI ... STS-B), its average
    left out: the columns come from analysis/paper/table2.csv, not from a list kept here."""
    return [t for t in dict.fromkeys(paper.task) if t != AVERAGE]


def millions(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 5e4 else f"{n / 1e6:.2f}M"


def run_scores(records: Records) -> pd.DataFrame:
    """One row per ok run of a Table 2 task: ROW_KEY, task, seed, score (x100, best evaluation) and
    the paper labels (analysis.scores.run_scores, the one scoring function)."""
    return scores_of(records, "table2").rename(columns={"column": "task"})


def aggregate(scores: pd.DataFrame) -> pd.DataFrame:
    """Median, spread (std over seeds, 0 for one seed) and seed count per row key and task."""
    if scores.empty:
        return pd.DataFrame(columns=[*ROW_KEY, "task", "median", "spread", "n", "paper_setting", "paper_row", "paper_fit"])
    grouped = scores.groupby([*ROW_KEY, "task"])
    out = grouped.score.agg(median="median", n="count").reset_index()
    out["spread"] = grouped.score.std(ddof=0).values
    out["paper_setting"] = grouped.paper_setting.first().values
    out["paper_row"] = grouped.paper_row.first().values
    out["paper_fit"] = grouped.paper_fit.first().values
    return out


def published_table2() -> pd.DataFrame:
    return published("table2")


def match_published(model: str, method: str, adapted: int, setting: str, paper: pd.DataFrame) -> pd.DataFrame:
    """The published row with the same model, method and setup (the record's paper_setting: Table
    2's † and adapter rows ran in the Houlsby et al. setup) whose "# Trainable Parameters" equals
    our adapted count at the paper's rounding (one decimal, in millions)."""
    rows = paper[(paper.model == model) & (paper.method == method) & (paper.setting == setting)]
    if rows.empty:
        return rows
    ours = round(adapted / 1e6, 1)
    same = rows[rows.params.str.rstrip("M").astype(float).round(1) == ours]
    return same if not same.empty else rows.iloc[0:0]


def task_order(columns: list[str]):
    """Sort key: the published columns in their order, then other tasks by name, the average last."""
    return lambda task: (task == AVERAGE, task not in columns, columns.index(task) if task in columns else task)


def build_table2(records: Records) -> pd.DataFrame:
    """Long format: one row per (row key, task) with ours, published and the difference; an "avg"
    row only over a complete set of the published table's tasks (8 for GLUE), as the paper's Avg."""
    agg = aggregate(run_scores(records))
    paper = published_table2()
    columns = published_tasks(paper)
    rows = []
    for (model, method, adapted, experiment, variant), group in agg.groupby(ROW_KEY):
        setting = group.paper_setting.iloc[0]
        named = by_paper_row(paper, group.paper_row.iloc[0], group.paper_fit.iloc[0], model)
        published = (paper.iloc[0:0] if variant else named if named is not None
                     else match_published(model, method, adapted, setting, paper))
        pub = dict(zip(published.task, published.value))
        key = {"model": model, "method": method, "adapted": adapted, "experiment": experiment, "variant": variant,
               "params": millions(adapted),
               "published_row": published.row.iloc[0] if len(published) else None}
        ours = {r["task"]: (r["median"], r["spread"], int(r["n"])) for r in group.to_dict("records")}
        scored = [ours[t][0] for t in columns if t in ours]
        if len(scored) == len(columns):
            ours[AVERAGE] = (sum(scored) / len(scored), None, min(ours[t][2] for t in columns))
        for task in sorted(set(ours) | set(pub), key=task_order(columns)):
            median, spread, n = ours.get(task, (None, None, 0))
            rows.append({**key, "task": task, "median": median, "spread": spread, "n_seeds": n,
                         "published": pub.get(task),
                         "diff": None if median is None or task not in pub else median - pub[task]})
    return pd.DataFrame(rows)


def cell(r: pd.Series) -> str:
    if r["median"] is None or pd.isna(r["median"]):
        ours = "—"
    else:
        ours = f"{r['median']:.1f}" + (f"±{r['spread']:.1f}" if r["spread"] is not None and not pd.isna(r["spread"]) and r["n_seeds"] > 1 else "") + f" ({r['n_seeds']})"
    if r["published"] is None or pd.isna(r["published"]):
        return ours
    diff = "" if r["diff"] is None or pd.isna(r["diff"]) else f", {r['diff']:+.1f}"
    return f"{ours} [paper {r['published']:.1f}{diff}]"


def metric_note(records: Records) -> str:
    """Which metric each task's cells are: the runs' own task.main_metric, from their records."""
    df = records.ok
    if df.empty or "main_metric" not in df:
        return ""
    pairs = of_kinds(df, "table2").groupby("task", sort=True).main_metric.agg(lambda s: "/".join(sorted(set(s))))
    return " Metric (each task's main_metric): " + ", ".join(f"{t} {m}" for t, m in pairs.items()) + "." if len(pairs) else ""


def to_markdown(table: pd.DataFrame, records: Records) -> str:
    lines = ["# Table 2 layout from your runs", "",
             "Cells: median over seeds at the best evaluation, x100, ±std (seeds) [published value, difference]. "
             "— = no finished run." + metric_note(records), ""]
    if table.empty:
        lines.append("No finished runs found.")
    else:
        tasks = sorted(set(table.task), key=task_order(published_tasks(published_table2())))
        lines.append("| Model & Method | # Trainable Params | " + " | ".join(t.upper() if t != AVERAGE else "Avg." for t in tasks) + " |")
        lines.append("|---|---|" + "---|" * len(tasks))
        for (model, method, adapted, experiment, variant), group in table.groupby(ROW_KEY, sort=False):
            cells = {row["task"]: cell(pd.Series(row)) for row in group.to_dict("records")}
            tags = [t for t in (experiment if experiment != "-" else "", variant) if t]
            label = f"{model} ({method})" + (f" [{'; '.join(tags)}]" if tags else "")
            lines.append(f"| {label} | {millions(adapted)} | " + " | ".join(cells.get(t, "—") for t in tasks) + " |")
    lines += ["", f"Records: {records.summary()}"]
    return "\n".join(lines) + "\n"


def save_table(table: pd.DataFrame, text: str, out: Path, stem: str) -> str:
    """out/<stem>.csv and out/<stem>.md; returns the markdown."""
    table.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.md").write_text(text)
    return text


def write_table2(records: Records, out: Path) -> str:
    """out/table2.{md,csv}; returns the markdown."""
    table = build_table2(records)
    return save_table(table, to_markdown(table, records), out, "table2")


def build_stats(records: Records) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(medians with their order-statistic intervals per row and task; paired differences). Each row of a model and
    task is paired with that task's full fine-tuning row of the same model (the paper's reference;
    the first row where there is none) over the seeds both ran, which removes the variation the two
    share through the seed (data order, head initialisation)."""
    scores = run_scores(records)
    ci_rows, pair_rows = [], []
    for key, group in scores.groupby([*ROW_KEY, "task"], sort=True):
        ci = median_ci(group.score)
        ci_rows.append({**dict(zip([*ROW_KEY, "task"], key)), "median": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                        "ci_level": round(ci.level, 4), "n_seeds": len(group)})
    for (model, task), group in scores.groupby(["model", "task"], sort=True):
        rows = {key: dict(zip(g.seed, g.score)) for key, g in group.groupby(ROW_KEY, sort=True)}
        if len(rows) < 2:
            continue
        baseline = table_spec("table2")["baseline"]
        base = next((k for k in rows if is_row(dict(zip(ROW_KEY, k)), baseline)), next(iter(rows)))
        for key, seeds in rows.items():
            if key == base:
                continue
            diff = paired(seeds, rows[base])
            pair_rows.append({"model": model, "task": task, "row": row_label(key), "baseline": row_label(base),
                              "mean_diff": diff.mean.estimate, "ci_low": diff.mean.low, "ci_high": diff.mean.high,
                              "hl": diff.hodges_lehmann.estimate, "n_pairs": diff.n})
    return pd.DataFrame(ci_rows), pd.DataFrame(pair_rows)


def row_label(key: tuple) -> str:
    model, method, adapted, experiment, variant = key
    tags = [t for t in (experiment if experiment != "-" else "", variant) if t]
    return f"{method} {millions(adapted)}" + (f" [{'; '.join(tags)}]" if tags else "")


def write_stats(records: Records, out: Path) -> str:
    """out/stats.md (+ stats_ci.csv, stats_paired.csv): every median with its exact order-statistic
    interval (coverage stated), and the paired differences with t-intervals; returns the markdown."""
    ci, pairs = build_stats(records)
    ci.to_csv(out / "stats_ci.csv", index=False)
    pairs.to_csv(out / "stats_paired.csv", index=False)
    lines = ["# Medians with their intervals, and paired differences", "",
             "Scores x100 at each run's best evaluation (Table 2's convention). Interval of the median: the exact "
             "order-statistic (sign-test) interval, with its true coverage (5 seeds: [min, max], 93.75%; 95% needs "
             "6 seeds or more); one seed has none.", "",
             "| model | task | row | median [interval] (coverage) | seeds |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['task']} | {row_label(tuple(r[k] for k in ROW_KEY))} | {r['median']:.1f} "
              + (f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}] ({100 * r['ci_level']:.1f}%)" if r["n_seeds"] > 1 else "(one seed)")
              + f" | {r['n_seeds']} |" for r in ci.to_dict("records")]
    lines += ["", "Paired differences (row − baseline, same seeds): mean [95% t-interval], Hodges-Lehmann estimate:", "",
              "| model | task | row − baseline | mean difference [95% t-interval] | HL | pairs |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['task']} | {r['row']} − {r['baseline']} | {r['mean_diff']:+.2f} "
              + (f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if r["n_pairs"] > 1 else "(one pair)")
              + f" | {r['hl']:+.2f} | {r['n_pairs']} |" for r in pairs.to_dict("records") if r["n_pairs"]]
    if pairs.empty or not pairs.n_pairs.any():
        lines.append("| — | — | no two rows of a model and task share seeds | — | — | — |")
    text = "\n".join(lines) + "\n"
    (out / "stats.md").write_text(text)
    return text


def write_table3(records: Records, out: Path) -> str:
    """out/table3.{md,csv}; returns the markdown."""
    table = build_table3(records)
    return save_table(table, table3_markdown(table), out, "table3")


def write_tables(records: Records, out: Path) -> str:
    """results/table2.{md,csv}, stats.md (CIs, paired differences) and table3.{md,csv}; returns the
    markdown texts."""
    out.mkdir(parents=True, exist_ok=True)
    return write_table2(records, out) + "\n" + write_stats(records, out) + "\n" + write_table3(records, out)


def main(argv: list[str] | None = None) -> int:
    from .sources import source_arguments, source_records

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    records, out = source_records(args, rest)
    print(write_tables(records, out))
    print(f"written to {out}/table2.md, {out}/table2.csv, {out}/stats.md, {out}/table3.md and {out}/table3.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
