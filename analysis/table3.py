"""The LoRA paper's Table 3 layout (E2E NLG, test set) rebuilt from run records: rows model x method
(x size, x recipe), columns "# Trainable Parameters", BLEU, NIST, METEOR, ROUGE-L, CIDEr; each cell
the mean over seeds +- std, as the paper reports its LoRA rows (mean of 3 seeds), beside the published
value and the difference. BLEU, METEOR and ROUGE-L are x100 as in the paper; NIST and CIDEr raw.
Published rows are joined on model and method, and for a method with two sizes (Adapter^L) the
published size nearest the run's count."""

from __future__ import annotations

import math

import pandas as pd

from .published import by_paper_row, published, table_spec
from .records import Records
from .scores import ROW_KEY
from .scores import run_scores as scores_of

SCALE = {metric: float(scale) for metric, scale in table_spec("table3")["metrics"].items()}  # as the paper prints
E2E_METRICS = list(SCALE)
HEADERS = {"METEOR": "MET", "ROUGE_L": "ROUGE-L"}  # the paper's column headers, where not the metric's name


def published_table3() -> pd.DataFrame:
    return published("table3")


def run_scores(records: Records) -> pd.DataFrame:
    """One row per ok run of a generation task and metric, scaled as the paper prints it
    (analysis.scores.run_scores, the one scoring function)."""
    return scores_of(records, "table3").rename(columns={"column": "metric"})


def match_published(model: str, method: str, adapted: int, paper: pd.DataFrame) -> pd.DataFrame:
    """The published row of this model and method whose printed size is nearest ours (within 25%:
    the paper prints 0.35M for GPT-2 M LoRA where q,v at r=4 counts 0.39M)."""
    rows = paper[(paper.model == model) & (paper.method == method)]
    if rows.empty or adapted <= 0:
        return rows.iloc[0:0]
    sizes = rows.params.str.rstrip("M").astype(float) * 1e6
    distance = (sizes / adapted).map(lambda x: abs(math.log(x)))
    best = distance.min()
    if best > math.log(1.25):
        return rows.iloc[0:0]
    return rows[distance == best]


def build_table3(records: Records) -> pd.DataFrame:
    scores = run_scores(records)
    paper = published_table3()
    out = []
    if scores.empty:
        return pd.DataFrame(columns=[*ROW_KEY, "published_row", "metric", "mean", "spread", "n_seeds", "published", "diff"])
    grouped = scores.groupby([*ROW_KEY, "metric"]).score
    names = scores.groupby(ROW_KEY)[["paper_row", "paper_fit"]].first()
    agg = grouped.agg(mean="mean", n="count").reset_index()
    agg["spread"] = grouped.std(ddof=0).values
    for key, group in agg.groupby(ROW_KEY):
        model, method, adapted, experiment, variant = key
        named = by_paper_row(paper, *names.loc[key], model)
        published = (paper.iloc[0:0] if variant else named if named is not None
                     else match_published(model, method, adapted, paper))
        pub = dict(zip(published.metric, published.value))
        ours = {r["metric"]: r for r in group.to_dict("records")}
        for metric in E2E_METRICS:
            r = ours.get(metric)
            mean = None if r is None else r["mean"]
            out.append({"model": model, "method": method, "adapted": adapted, "experiment": experiment,
                        "variant": variant, "published_row": published.row.iloc[0] if len(published) else None,
                        "metric": metric, "mean": mean, "spread": None if r is None else r["spread"],
                        "n_seeds": 0 if r is None else int(r["n"]), "published": pub.get(metric),
                        "diff": None if mean is None or metric not in pub else mean - pub[metric]})
    return pd.DataFrame(out)


def _cell(r: dict) -> str:
    digits = 2 if r["metric"] in ("NIST", "CIDEr") else 1
    if r["mean"] is None or pd.isna(r["mean"]):
        ours = "—"
    else:
        spread = f"±{r['spread']:.{digits}f}" if r["n_seeds"] > 1 else ""
        ours = f"{r['mean']:.{digits}f}{spread} ({r['n_seeds']})"
    if r["published"] is None or pd.isna(r["published"]):
        return ours
    diff = "" if r["diff"] is None or pd.isna(r["diff"]) else f", {r['diff']:+.{digits}f}"
    return f"{ours} [paper {r['published']:.{digits}f}{diff}]"


def table3_markdown(table: pd.DataFrame) -> str:
    lines = ["# Table 3 layout from your runs (E2E NLG test set)", "",
             "Cells: mean over seeds ±std (seeds) [published value, difference]; BLEU, MET, ROUGE-L x100, NIST and "
             "CIDEr raw. — = no finished run. The paper's rows are joined only for the same model (GPT-2 M/L).", ""]
    if table.empty:
        return "\n".join(lines + ["No finished E2E runs found."]) + "\n"
    lines.append("| Model & Method | # Trainable Params | " + " | ".join(HEADERS.get(m, m) for m in E2E_METRICS) + " | paper row |")
    lines.append("|---|---|" + "---|" * (len(E2E_METRICS) + 1))
    for key, group in table.groupby(ROW_KEY, sort=False):
        model, method, adapted, experiment, variant = key
        cells = {r["metric"]: _cell(r) for r in group.to_dict("records")}
        tags = [t for t in (experiment if experiment != "-" else "", variant) if t]
        label = f"{model} ({method})" + (f" [{'; '.join(tags)}]" if tags else "")
        row = group.published_row.iloc[0]
        lines.append(f"| {label} | {adapted / 1e6:.2f}M | " + " | ".join(cells.get(m, "—") for m in E2E_METRICS)
                     + f" | {row if isinstance(row, str) else '—'} |")
    return "\n".join(lines) + "\n"
