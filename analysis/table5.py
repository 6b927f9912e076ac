"""The LoRA paper's Table 5 layout from runs that adapt different weight matrices at one budget
(experiments/table5_targets): columns the weight types with their rank, one row per task of ours
(median over seeds [exact order-statistic interval] (seeds), best evaluation x100 as Table 2), and the paper's GPT-3 rows
beside them for the ranking, not the level."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .published import published
from .records import Records
from .scores import run_scores as scores_of
from .stats import median_ci
from .tables import save_table

# Projection names -> the paper's symbols (BERT/RoBERTa names, then Llama-style ones).
SYMBOL = {"query": "W_q", "key": "W_k", "value": "W_v", "attention.output.dense": "W_o",
          "q_proj": "W_q", "k_proj": "W_k", "v_proj": "W_v", "o_proj": "W_o"}
ORDER = ["W_q", "W_k", "W_v", "W_o", "W_q,W_k", "W_q,W_v", "W_q,W_k,W_v,W_o"]


def weight_type(targets) -> str | None:
    """`query,value` -> `W_q,W_v` in the paper's order; None when a target has no symbol."""
    if not isinstance(targets, (list, tuple)):
        return None
    symbols = [SYMBOL.get(str(t)) for t in targets]
    if None in symbols:
        return None
    return ",".join(sorted(set(symbols), key=["W_q", "W_k", "W_v", "W_o"].index))


def build_table5(records: Records) -> pd.DataFrame:
    """One row per (weight type, rank, task): median, CI, seeds."""
    rows = []
    for r in scores_of(records, "table5").to_dict("records"):  # the one scoring function (x100, best evaluation)
        kind = weight_type(r.get("hp.target_modules"))
        if kind is not None:
            rows.append({"weight_type": kind, "rank": int(r["hp.r"]), "task": r["column"], "seed": r["seed"],
                         "score": r["score"]})
    scores = pd.DataFrame(rows, columns=["weight_type", "rank", "task", "seed", "score"])
    out = []
    for (kind, rank, task), group in scores.groupby(["weight_type", "rank", "task"]):
        ci = median_ci(group.score)
        out.append({"weight_type": kind, "rank": rank, "task": task, "median": ci.estimate, "ci_low": ci.low,
                    "ci_high": ci.high, "n_seeds": len(group)})
    table = pd.DataFrame(out, columns=["weight_type", "rank", "task", "median", "ci_low", "ci_high", "n_seeds"])
    return table.sort_values("weight_type", key=lambda s: s.map(lambda k: ORDER.index(k) if k in ORDER else 99))


def table5_markdown(table: pd.DataFrame) -> str:
    paper = published("table5")
    kinds = list(dict.fromkeys(table.weight_type)) or ORDER
    lines = ["# Table 5 layout from your runs", "",
             "Which weight matrices to adapt at one budget. Ours: median over seeds at the best evaluation, x100, "
             "[exact order-statistic interval of the median: with 3 seeds it is [min, max] and covers 75%] (seeds). Paper: GPT-3 175B, 18M parameters, validation accuracy.", "",
             "| Weight Type | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    ranks = {k: sorted(set(table[table.weight_type == k]["rank"])) for k in kinds}
    lines.append("| Rank r (ours) | " + " | ".join(",".join(str(r) for r in ranks[k]) or "—" for k in kinds) + " |")
    for task in sorted(set(table.task)):
        cells = []
        for kind in kinds:
            hit = table[(table.weight_type == kind) & (table.task == task)]
            cells.append("—" if hit.empty else "; ".join(f"{r['median']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}] "
                                                         f"({r['n_seeds']})" for r in hit.to_dict("records")))
        lines.append(f"| {task} (ours) | " + " | ".join(cells) + " |")
    for dataset, group in paper.groupby("dataset", sort=False):
        values = dict(zip(group.weight_type, group.value))
        lines.append(f"| {dataset} (paper, GPT-3) | " + " | ".join(f"{values[k]:.1f}" if k in values else "—"
                                                                  for k in kinds) + " |")
    return "\n".join(lines) + "\n"


def write_table5(records: Records, out: Path) -> str:
    """out/table5.{md,csv}; returns the markdown."""
    table = build_table5(records)
    return save_table(table, table5_markdown(table), out, "table5")
