"""`make plots [STUDY=name | RUNS=dir]` / `python -m analysis.plots [RUNS_DIR | --study NAME]`: PNGs
under <results>/plots/ from run records.

  rank.png             metric vs LoRA rank r (the shape of the paper's Tables 6 and 18)
  <method>_ratio_<model>_<task>[_<experiment>].png   heatmap of the metric over (lr_A, lr ratio)
                       for methods with a learning-rate ratio (LoRA+)
  params_<model>_<task>[_<experiment>].png     metric vs trainable parameters per method (log x),
                                Table 2's published points of the same model and task overlaid
Runs of different recipes (their conf/experiment file) are drawn apart, never pooled.
  efficiency.png       peak memory and training throughput per method
A plot whose records do not exist yet is skipped with a message, never drawn empty."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .records import Records, main_score  # noqa: E402
from .records import row_metric  # noqa: E402
from .published import published, table_spec  # noqa: E402


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def suffix(experiment: str, sep: str = "_") -> str:
    """Runs of different recipes (conf/experiment files) are drawn apart, never pooled."""
    return "" if experiment == "-" else f"{sep}[{experiment}]" if sep == " " else f"{sep}{experiment}"


def scores(ok: pd.DataFrame) -> pd.DataFrame:
    """Per run: the task's main metric at the best evaluation (the final one where a task has no
    best, e.g. E2E BLEU on the decoded test set), x100."""
    if ok.empty:
        return ok
    df = ok.copy()
    values = [main_score(row) for row in df.to_dict("records")]
    df["score"] = [np.nan if v is None else 100.0 * v for v in values]
    df["main_metric"] = [row_metric(row) for row in df.to_dict("records")]
    return df.dropna(subset=["score"])


def plot_rank(df: pd.DataFrame, out: Path) -> Path | None:
    """Every method that declares a rank (Method.rank_key) and was run at two ranks or more."""
    ranked = df[df["rank"].notna()] if "rank" in df else df.iloc[0:0]
    if ranked.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for (model, task, method, experiment), group in ranked.groupby(["model", "task", "method", "experiment"]):
        med = group.groupby("rank").score.median()
        if len(med) < 2:
            continue
        ax.plot(med.index, med.values, marker="o", label=f"{model} {task} {method}{suffix(experiment, ' ')}")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r")
    ax.set_ylabel("main metric (x100, median over seeds; E2E: test BLEU)")
    ax.set_title("Metric vs rank (cf. LoRA Tables 6, 18)")
    ax.legend(fontsize=7)
    return save(fig, out / "rank.png")


def plot_loraplus(df: pd.DataFrame, out: Path) -> list[Path]:
    """Methods that declare a learning-rate ratio (Method.lr_ratio_key; LoRA+), over (lr, ratio)."""
    if "lr_ratio" not in df:
        return []
    paths = []
    for (model, task, method, experiment), group in df[df.lr_ratio.notna()].groupby(["model", "task", "method", "experiment"]):
        grid = group.pivot_table(index="lr_ratio", columns="train.lr", values="score", aggfunc="median")
        if grid.shape[0] < 2 or grid.shape[1] < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 4.5))
        image = ax.imshow(grid.values, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(grid.shape[1]), [f"{v:.0e}" for v in grid.columns], rotation=45)
        ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if not np.isnan(grid.values[i, j]):
                    ax.text(j, i, f"{grid.values[i, j]:.1f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xlabel("lr(A) = train.lr")
        ax.set_ylabel("lr(B) / lr(A)")
        ax.set_title(f"{method} {model} {task}{suffix(experiment, ' ')} (cf. LoRA+ Figs. 3-4)")
        fig.colorbar(image, ax=ax, label="dev metric (x100)")
        paths.append(save(fig, out / f"{method}_ratio_{model}_{task}{suffix(experiment)}.png"))
    return paths


def published_points() -> pd.DataFrame:
    """Table 2 (GLUE) and Table 3 (E2E BLEU) published values with their printed sizes."""
    paper = published("table2")
    paper = paper[paper.task != table_spec("table2")["average"]].copy()
    spec = table_spec("table3")
    e2e = published("table3")
    e2e = e2e[e2e.metric == spec["plot_metric"]].assign(task=spec["task"])
    paper = pd.concat([paper, e2e[["table", "row", "model", "method", "params", "task", "value"]]], ignore_index=True)
    paper["adapted"] = paper.params.str.rstrip("M").astype(float) * 1e6
    return paper


def plot_params(df: pd.DataFrame, out: Path) -> list[Path]:
    paper = published_points()
    paths = []
    for (model, task, experiment), group in df.groupby(["model", "task", "experiment"]):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        med = group.groupby(["method", "variant", "params.adapted"]).score.agg(["median", "min", "max"]).reset_index()
        for method, rows in med.groupby("method"):
            ax.errorbar(rows["params.adapted"], rows["median"], yerr=[rows["median"] - rows["min"], rows["max"] - rows["median"]],
                        fmt="o", capsize=3, label=f"{method} (ours)")
        pub = paper[(paper.model == model) & (paper.task == task)]
        if len(pub):
            ax.scatter(pub.adapted, pub.value, marker="x", color="k", label=f"published (Table {int(pub.table.iloc[0])})")
            for r in pub.itertuples():
                ax.annotate(r.method, (r.adapted, r.value), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (the paper's count, head excluded)")
        ax.set_ylabel(f"{group.main_metric.iloc[0]} (x100)")
        ax.set_title(f"{model} on {task}{suffix(experiment, ' ')}")
        ax.legend(fontsize=7)
        paths.append(save(fig, out / f"params_{model}_{task}{suffix(experiment)}.png"))
    return paths


def plot_efficiency(ok: pd.DataFrame, out: Path) -> Path | None:
    if ok.empty or "throughput.train_tokens_per_s" not in ok:
        return None
    agg = ok.groupby(["model", "experiment", "method"]).agg(memory=("peak_memory_bytes", "median"),
                                                            tokens=("throughput.train_tokens_per_s", "median")).reset_index()
    agg["setting"] = [f"{m}{suffix(e, ' ')}" for m, e in zip(agg.model, agg.experiment)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, column, label in ((axes[0], "memory", "peak memory (GiB)"), (axes[1], "tokens", "training tokens/s")):
        pivot = agg.pivot(index="method", columns="setting", values=column)
        (pivot / 2**30 if column == "memory" else pivot).plot.bar(ax=ax, rot=40)
        ax.set_ylabel(label)
        ax.set_title(f"{label} per method (median over runs)")
    return save(fig, out / "efficiency.png")


def make_plots(records: Records, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = scores(records.ok)
    written: list[Path] = []
    if df.empty:
        print("no finished runs: nothing to plot")
        return written
    for name, result in (("rank", plot_rank(df, out)), ("lr ratio", plot_loraplus(df, out)),
                         ("params", plot_params(df, out)), ("efficiency", plot_efficiency(records.ok, out))):
        produced = [result] if isinstance(result, Path) else (result or [])
        if not produced:
            print(f"skipped {name}: no records with what it plots yet")
        written += produced
    print(records.summary())
    return written


def main(argv: list[str] | None = None) -> int:
    from .sources import source_arguments, source_records

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    records, out = source_records(args, rest)
    for path in make_plots(records, out / "plots"):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
