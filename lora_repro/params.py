"""`python -m lora_repro.params` (`make params`): the "# Trainable Parameters" column of the LoRA
paper's Tables 2, 3 and 4, recomputed. Each row's architecture is built from its conf/model yaml on
the meta device (no weights, no network), the method is applied exactly as in training, and the
parameters it trains outside the task head are counted. GPT-3 175B cannot be instantiated, so its
rows are computed analytically from its dimensions. Beside each count: the Section 5.1 formula,
the published figure (analysis/paper/params.csv) and whether they agree at the paper's rounding.
Writes results/params.csv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from . import CONF_DIR, PROJECT_ROOT
from .arch import arch_of
from .assembly import build
from .config import compose_config, instantiate_method

PAPER_PARAMS = PROJECT_ROOT / "analysis" / "paper" / "params.csv"
GPT3 = {"d_model": 12288, "n_layers": 96, "vocab": 50257, "positions": 2048}
# Table 2 counts classifiers (GLUE), Tables 3 and 4 language models (E2E; GPT-3 analytically).
TABLE_TASK = {2: "sst2", 3: "e2e", 4: "e2e"}


def dims(model_cfg: Any) -> tuple[int, int]:
    arch = arch_of(model_cfg)
    return int(arch.d_model), int(arch.n_layers)


def count_instantiated(cfg: Any) -> int:
    """Build the architecture on the meta device exactly as a run builds it (lora_repro.assembly:
    a classifier for GLUE rows, a language model for E2E rows) and count the method's own
    parameters, the task head excluded."""
    with torch.device("meta"):
        return build(cfg).params()["adapted"]


def published_millions(text: str) -> tuple[float, int]:
    number = text.strip().rstrip("M").replace(",", "")
    decimals = len(number.split(".")[1]) if "." in number else 0
    return float(number), decimals


def build_rows(paper: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in paper.itertuples(index=False):
        overrides = str(r.overrides).split() if isinstance(r.overrides, str) else []
        model_for_cfg = "gpt2_medium" if r.model == "gpt3_175b" else r.model
        task = TABLE_TASK[int(r.table)]
        cfg = compose_config([f"model={model_for_cfg}", "model.init=random", f"method={r.method}", f"task={task}", *overrides])
        method = instantiate_method(cfg.method)
        if r.model == "gpt3_175b":
            # GPT-3 is GPT-2's architecture scaled up (fused q|k|v), so GPT-2's model config stands in.
            counted = method.analytic_params(GPT3, cfg.model)
            formula = method.formula_params(GPT3["d_model"], GPT3["n_layers"], cfg.model)
            how = "analytic"
        else:
            counted = count_instantiated(cfg)
            formula = method.formula_params(*dims(cfg.model), cfg.model)
            how = "instantiated"
        value, decimals = published_millions(r.published)
        rows.append({
            "table": int(r.table), "row": r.row, "model": r.model, "method": r.method,
            "settings": " ".join(overrides), "counted": counted, "counted_how": how,
            "formula": formula, "published": r.published,
            "agrees": round(counted / 1e6, decimals) == value,
            "formula_agrees": None if formula is None else formula == counted,
            "note": r.note if isinstance(r.note, str) else "",
        })
    return pd.DataFrame(rows)


# The LoRA variants of conf/method (every method of the LoRA family: rsLoRA, DoRA, PiSSA, OLoRA,
# LoRA+, ...), which no table of the papers counts, at the settings of Table 2's RoBERTa-base row and
# Table 3's GPT-2 M row; where a variant cannot be applied there, its one-line reason.
VARIANT_SETTINGS = [("roberta_base", "sst2", []), ("gpt2_medium", "e2e", ["method.r=4"])]


def variant_rows() -> pd.DataFrame:
    from .errors import ConfigError

    names = [p.stem for p in sorted((CONF_DIR / "method").glob("*.yaml"))
             if instantiate_method(compose_config([f"method={p.stem}"]).method).family == "lora"]
    rows = []
    for model, task, overrides in VARIANT_SETTINGS:
        base = None
        for name in names:
            cfg = compose_config([f"model={model}", "model.init=random", f"method={name}", f"task={task}", *overrides])
            method = instantiate_method(cfg.method)
            try:
                method.check(cfg.model, cfg.task)
                counted, note = count_instantiated(cfg), ""
            except ConfigError as exc:
                counted, note = None, str(exc)
            base = counted if name == "lora" else base
            rows.append({"model": model, "method": name, "settings": " ".join(overrides), "counted": counted,
                         "note": note})
        for row in rows:
            if row["model"] == model:
                row["vs_lora"] = None if row["counted"] is None or not base else row["counted"] / base
    return pd.DataFrame(rows)


def render_variants(df: pd.DataFrame) -> str:
    lines = ["LoRA variants (not in the papers' tables), counted the same way:",
             f"{'model':<14} {'method':<18} {'settings':<12} {'counted':>12} {'vs LoRA':>8}"]
    for r in df.itertuples(index=False):
        counted = "-" if r.counted is None or pd.isna(r.counted) else f"{int(r.counted):,}"
        ratio = "-" if r.vs_lora is None or pd.isna(r.vs_lora) else f"{r.vs_lora:.3f}"
        lines.append(f"{r.model:<14} {r.method:<18} {r.settings:<12} {counted:>12} {ratio:>8}"
                     + (f"  not applicable: {r.note}" if r.note else ""))
    return "\n".join(lines)


def render(df: pd.DataFrame) -> str:
    lines = [f"{'T':>1} {'row':<22} {'settings':<40} {'counted':>15} {'formula':>15} {'published':>10} agree"]
    for r in df.itertuples(index=False):
        formula = "-" if r.formula is None or pd.isna(r.formula) else f"{int(r.formula):,}"
        lines.append(f"{r.table:>1} {r.row:<22} {r.settings:<40} {r.counted:>15,} {formula:>15} "
                     f"{r.published:>10} {'yes' if r.agrees else 'NO'}")
    disagree = df[~df.agrees]
    if len(disagree):
        lines.append("\nRows where the published figure differs from the count:")
        lines += [f"  T{r.table} {r.row}: {r.note}" for r in disagree.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/params.csv")
    args = parser.parse_args(argv)
    df = build_rows(pd.read_csv(PAPER_PARAMS, dtype={"published": str}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(render(df))
    print(f"\n{int(df.agrees.sum())}/{len(df)} rows agree at the paper's rounding; written to {out}")
    variants = variant_rows()
    variants.to_csv(out.parent / "variants.csv", index=False)
    print("\n" + render_variants(variants) + f"\nwritten to {out.parent / 'variants.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
