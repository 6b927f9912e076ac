"""The claims report of experiments/claims (`make claims`, `make claims-quick`): one row per claim of
the LoRA and LoRA+ papers, decided from the study's runs with the protocol of its study.yaml.

Each arm's score is its FINAL evaluation on the dev split (the learning rate was chosen on the
held-out training rows; picking the best epoch on dev would choose on the reported set). Paired
differences are taken over the seeds both arms finished. A claim is decided against a margin of
MARGIN points (x100): "matches" / "at least as good" is non-inferiority (the CI's lower end above
-MARGIN: supported; its upper end below -MARGIN: refuted), "within noise" is equivalence (every
CI inside +-MARGIN: supported; one wholly outside: refuted), "beats" is superiority (CI above 0:
supported; below 0: refuted). Anything else is inconclusive at this scale.

Writes results/<scale>/: claims.md (the report), verdicts.md (the table the README shows),
arms.csv, paired.csv, tuning.csv and curves.png."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lora_repro.record import read_run_record

from .records import Records, row_metric
from .stats import UNDECIDED, beats_constant, decide, median_ci, paired

MARGIN = 1.0          # points (x100) of the task metric
# The validity gate (the claims critique, 1.3): an arm counts in a comparison only when it beats the
# constant predictor (majority class; mean for regression, correlation 0) by this many points on at
# least GATE_SHARE of its seeds; else the comparison is "not evaluable", never "supported".
GATE_BY = {"accuracy": 5.0, "f1": 5.0, "matched_accuracy": 5.0, "mcc": 10.0, "pearson": 30.0, "spearman": 30.0}
GATE_SHARE = 0.8
NOT_EVALUABLE = "not evaluable"
EFFICIENCY_DIR = Path(__file__).resolve().parents[1] / "experiments" / "efficiency" / "results"


@dataclass
class Claim:
    paper: str          # what the paper says, with its table or figure
    test: str           # "noninferior" | "equivalent" | "superior" | "identical" | "fewer_steps"
    pairs: list[tuple[str, str]]   # (arm, baseline arm) compared
    min_evaluable: int = 1         # comparisons that must pass the validity gate for a claim-level verdict


def claims_for(arms: set[str]) -> list[Claim]:
    """The claims the study's arms can decide (the quick grid has fewer arms)."""
    tasks = [a.split("_")[-1] for a in sorted(arms) if a.startswith("lora_") and f"full_ft_{a.split('_')[-1]}" in arms]
    out = [Claim("LoRA matches full fine-tuning on GLUE with <1% of the trainable parameters (LoRA Table 2)",
                 "noninferior", [("lora", "full_ft")] + [(f"lora_{t}", f"full_ft_{t}") for t in tasks],
                 min_evaluable=3 if tasks else 1)]
    baselines = [b for b in ("bitfit", "adapter_h", "adapter_p", "prefix_layer") if b in arms]
    if baselines:
        out.append(Claim("LoRA is at least as good as BitFit, AdapterH, AdapterP and PreLayer at comparable "
                         "budgets (LoRA Tables 2-3)", "noninferior", [("lora", b) for b in baselines]))
    ranks = [a for a in ("lora_r1", "lora_r2", "lora_r4", "lora_r64") if a in arms]
    if ranks:
        out.append(Claim("A very low rank suffices: r = 1, 2, 4, 64 score like r = 8 (LoRA Table 6 / 18)",
                         "equivalent", [(r, "lora") for r in ranks]))
    if {"lora_wq_wv_r4", "lora_wq_r8"} <= arms:
        out.append(Claim("Adapting W_q and W_v (r=4) beats W_q alone (r=8) at the same budget (LoRA Table 5)",
                         "superior", [("lora_wq_wv_r4", "lora_wq_r8")]))
    if "lora_plus_16" in arms:
        out.append(Claim("LoRA+ (lr(B)/lr(A) = 16) beats LoRA at the same lr(A) (LoRA+ Fig. 1, Table 2)",
                         "superior", [("lora_plus_16", "lora")]))
        out.append(Claim("LoRA+ reaches LoRA's final dev score in fewer steps (LoRA+: up to 2x faster)",
                         "fewer_steps", [("lora_plus_16", "lora")]))
    if "lora_plus_1" in arms:
        out.append(Claim("LoRA+ with ratio 1 is LoRA exactly (same weights, seed for seed)", "identical",
                         [("lora_plus_1", "lora")]))
    return out


# ------------------------------------------------------------------------------------------ data
def final_runs(records: Records, scale: str) -> pd.DataFrame:
    """One row per finished final run of this scale: arm, task, seed, score (x100, final dev
    evaluation), the eval curve, trainable digest, adapted parameters, lr."""
    df = records.ok
    if df.empty or "arm" not in df:
        return pd.DataFrame(columns=["arm", "task", "seed", "score", "curve", "sha", "adapted", "total", "lr"])
    df = df[(df["param.scale"] == scale) & (df["role"] == "final")]
    rows = []
    for r in df.to_dict("records"):
        metric = row_metric(r)
        value = r.get(f"metric.{metric}")
        record, _ = read_run_record(r["record_file"])
        curve = [(e["step"], 100.0 * e[metric]) for e in (record or {}).get("eval_curve") or [] if metric in e]
        config = (record or {}).get("config") or {}
        rows.append({"arm": r["arm"], "task": r["task"], "seed": int(r["seed"]), "metric": metric, "config": config,
                     "score": 100.0 * float(value) if value is not None and not pd.isna(value) else math.nan,
                     "curve": curve, "sha": (record or {}).get("trainable_sha256"),
                     "adapted": int(r["params.adapted"]), "total": int(r["params.total"]), "lr": r.get("train.lr"),
                     "constant": 100.0 * ((record or {}).get("constant_metrics") or {}).get(metric, math.nan)})
    return pd.DataFrame(rows)


def tuning_table(records: Records, scale: str) -> pd.DataFrame:
    """Every candidate run (first seed): its held-out and dev scores, and whether it was chosen."""
    df = records.ok
    if df.empty or "arm" not in df:
        return pd.DataFrame()
    df = df[(df["param.scale"] == scale) & (df["seed"] == df[df["param.scale"] == scale]["seed"].min())]
    rows = []
    for r in df.to_dict("records"):
        metric = row_metric(r)
        held, dev = r.get(f"metric.heldout_{metric}"), r.get(f"metric.{metric}")
        rows.append({"arm": r["arm"], "task": r["task"], "lr": r.get("train.lr"), "chosen": r["role"] == "final",
                     "heldout": None if held is None or pd.isna(held) else round(100 * held, 2),
                     "dev": None if dev is None or pd.isna(dev) else round(100 * dev, 2)})
    table = pd.DataFrame(rows)
    # Only arms that tuned (more than one candidate, or a candidate that was not chosen).
    tuned = table.groupby("arm").chosen.apply(lambda c: len(c) > 1 or not c.all())
    table = table[table.arm.isin(tuned[tuned].index)].sort_values(["arm", "lr"]).reset_index(drop=True)
    # A choice at the end of the candidates may be short of the best: said beside it.
    lows, highs = table.groupby("arm").lr.transform("min"), table.groupby("arm").lr.transform("max")
    table["edge"] = [("largest tried" if lr == hi else "smallest tried" if lr == lo else "") if chosen else ""
                     for lr, lo, hi, chosen in zip(table.lr, lows, highs, table.chosen)]
    return table


def failed_by_arm(records: Records, scale: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in records.failed_labels:
        if label.get("param.scale") == scale and label.get("role") == "final":
            counts[label["arm"]] = counts.get(label["arm"], 0) + 1
    return counts


def arm_table(runs: pd.DataFrame, failed: dict[str, int], planned_seeds: int) -> pd.DataFrame:
    rows = []
    for arm, group in runs.groupby("arm", sort=False):
        ci = median_ci(group.score)
        median, low, high = ci.estimate, ci.low, ci.high
        gains = [c[-1][1] - c[-2][1] for c in group.curve if len(c) >= 2]
        rows.append({"arm": arm, "task": group.task.iloc[0], "metric": group.metric.iloc[0],
                     "lr": group.lr.iloc[0], "adapted": int(group.adapted.iloc[0]),
                     "adapted_pct": 100.0 * group.adapted.iloc[0] / group.total.iloc[0],
                     "median": median, "ci_low": low, "ci_high": high, "ci_level": ci.level, "n_ok": len(group),
                     "n_failed": failed.get(arm, 0), "n_planned": planned_seeds,
                     "last_epoch_gain": float(pd.Series(gains).median()) if gains else math.nan})
    for arm, n in failed.items():
        if arm not in set(runs.arm):
            rows.append({"arm": arm, "n_ok": 0, "n_failed": n, "n_planned": planned_seeds})
    return pd.DataFrame(rows)


def steps_to(curve: list[tuple[int, float]], target: float) -> float:
    """The first evaluated step whose dev score reaches `target` (inf: never)."""
    return next((float(step) for step, score in curve if score >= target), math.inf)


# ---------------------------------------------------------------------------------------- verdicts
def combine(verdicts: list[str], min_evaluable: int = 1) -> str:
    """A claim over several comparisons, counting only those that pass the validity gate:
    supported if all are (intersection-union: no correction needed), refuted if any is, else
    undecided; "not evaluable" when none passes, "undecided (k of n evaluable)" below min_evaluable."""
    evaluable = [v for v in verdicts if v != NOT_EVALUABLE]
    if not evaluable:
        return NOT_EVALUABLE
    if len(evaluable) < min_evaluable:
        return f"{UNDECIDED} ({len(evaluable)} of {len(verdicts)} comparisons evaluable, {min_evaluable} needed)"
    if all(v == "supported" for v in evaluable):
        return "supported"
    return "refuted" if "refuted" in evaluable else UNDECIDED


def gate(runs: pd.DataFrame) -> str:
    """'' when the arm beats the constant predictor by GATE_BY on GATE_SHARE of its seeds, else why not."""
    metric, constant = runs.metric.iloc[0], runs.constant.iloc[0] if "constant" in runs else math.nan
    if constant is None or pd.isna(constant):
        return ""  # a record from before constant_metrics: no gate can be applied
    by = GATE_BY.get(metric, 5.0)
    if beats_constant(list(runs.score), float(constant), by, GATE_SHARE):
        return ""
    above = int((runs.score > constant + by).sum())
    return (f"{runs.arm.iloc[0]} did not learn: {above}/{len(runs)} seeds beat the constant predictor "
            f"({constant:.1f}) by {by:g} points")


def evaluate_claim(claim: Claim, runs: pd.DataFrame) -> tuple[list[dict], str]:
    """(one row per compared pair, the claim's verdict)."""
    rows = []
    for arm, base in claim.pairs:
        a = runs[runs.arm == arm].set_index("seed")
        b = runs[runs.arm == base].set_index("seed")
        if a.empty or b.empty:
            rows.append({"arm": arm, "baseline": base, "verdict": UNDECIDED, "n_pairs": 0,
                         "what": "no finished runs for one side"})
            continue
        task = a.task.iloc[0]
        if claim.test == "identical":
            same = [s for s in set(a.index) & set(b.index) if a.sha[s] == b.sha[s]]
            n = len(set(a.index) & set(b.index))
            diff = max((abs(a.score[s] - b.score[s]) for s in set(a.index) & set(b.index)), default=math.nan)
            rows.append({"arm": arm, "baseline": base, "task": task, "n_pairs": n, "median": diff, "low": diff,
                         "high": diff, "verdict": "supported" if n and len(same) == n else "refuted" if n else UNDECIDED,
                         "what": f"bit-identical trained weights on {len(same)} of {n} seeds; largest dev difference "
                                 f"{diff:.2f}"})
            continue
        if claim.test == "fewer_steps":
            # Steps to the baseline's median final dev score; a run that never gets there within the
            # budget counts as one evaluation interval past the last step (slower than any that did).
            target = float(b.score.median())
            last = max((c[-1][0] for c in [*a.curve, *b.curve] if c), default=0)
            beyond = last + max((c[-1][0] - c[-2][0] for c in [*a.curve, *b.curve] if len(c) >= 2), default=1)
            sa = {s: min(steps_to(c, target), beyond) for s, c in a.curve.items()}
            sb = {s: min(steps_to(c, target), beyond) for s, c in b.curve.items()}
            saved = paired(sb, sa)  # baseline's steps minus the arm's: > 0 when the arm is faster
            reached = sum(v < beyond for v in sa.values())
            status, why = decide("superior", saved, 0.0)
            rows.append({"arm": arm, "baseline": base, "task": task, "n_pairs": saved.n, "median": saved.mean.estimate,
                         "low": saved.mean.low, "high": saved.mean.high, "verdict": status,
                         "what": f"steps saved to {base}'s median final dev score {target:.1f} ({reached} of {len(sa)} "
                                 f"{arm} seeds reach it by step {last}; never = {beyond}); mean paired difference "
                                 f"(baseline - arm), 95% t-interval" + (f"; {why}" if why else "")})
            continue
        diff = paired(a.score.to_dict(), b.score.to_dict())
        status, why = decide(claim.test, diff, MARGIN)
        failed_gate = "; ".join(w for w in (gate(a.reset_index()), gate(b.reset_index())) if w)
        if failed_gate:
            status, why = NOT_EVALUABLE, failed_gate
        rows.append({"arm": arm, "baseline": base, "task": task, "n_pairs": diff.n, "median": diff.mean.estimate,
                     "low": diff.mean.low, "high": diff.mean.high, "verdict": status,
                     "what": f"mean paired difference {arm} - {base}, points, 95% t-interval" + (f"; {why}" if why else "")})
    return rows, combine([r["verdict"] for r in rows], claim.min_evaluable)


def efficiency_rows() -> list[dict]:
    """The bench's own verdicts (experiments/efficiency, `make bench`) on latency, memory and
    checkpoint size, as that study committed them."""
    path = EFFICIENCY_DIR / "claims.md"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1] != "-" and cells[4] != "-":
            verdict = ("supported" if cells[4] == "met" else "refuted" if cells[4].startswith("missed")
                       else UNDECIDED)  # "interval spans the target"
            rows.append({"claim": cells[0], "paper": cells[1], "measured": cells[2], "target": cells[3],
                         "verdict": verdict})
    return rows


# ------------------------------------------------------------------------------------------ report
def fmt(x: Any, digits: int = 1, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def plot_curves(runs: pd.DataFrame, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if runs.empty:
        return None
    tasks = list(dict.fromkeys(runs.task))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for arm, group in runs[runs.task == task].groupby("arm", sort=False):
            steps = sorted({s for c in group.curve for s, _ in c})
            medians = [pd.Series([dict(c).get(s) for c in group.curve]).median() for s in steps]
            ax.plot(steps, medians, marker="o", ms=3, label=arm)
        ax.set_title(f"{task}: dev {runs[runs.task == task].metric.iloc[0]} (median of seeds)", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_report(records: Records, out: Path, scale: str, seeds: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    runs = final_runs(records, scale)
    arms = arm_table(runs, failed_by_arm(records, scale), seeds)
    tuning = tuning_table(records, scale)
    claims = claims_for(set(arms.arm) if not arms.empty else set())
    pair_rows, verdict_rows = [], []
    for claim in claims:
        rows, verdict = evaluate_claim(claim, runs)
        pair_rows += [{"claim": claim.paper, **r} for r in rows]
        measured = "; ".join(f"{r.get('task', '?')} {r['arm']}−{r['baseline']}: {fmt(r.get('median'), 1, True)} "
                             f"[{fmt(r.get('low'), 1, True)}, {fmt(r.get('high'), 1, True)}] (n={r['n_pairs']})" for r in rows)
        shares = [f"{a['arm']} adapts {a['adapted_pct']:.2f}% of the weights" for a in arms.to_dict("records")
                  if claim.test == "noninferior" and a.get("n_ok") and a["arm"] in {p[0] for p in claim.pairs}]
        # A verdict reached before an arm's dev curve flattened holds for this budget only: said in the row.
        rising = [a["arm"] for a in arms.to_dict("records") if a.get("n_ok") and a["last_epoch_gain"] > MARGIN
                  and a["arm"] in {x for p in claim.pairs for x in p}]
        verdict_rows.append({"claim": claim.paper, "run": claim.test,
                             "verdict": verdict + (" at this budget" if rising and verdict in ("supported", "refuted")
                                                  and claim.test != "identical" else ""),
                             "measured": measured + (f" ({'; '.join(dict.fromkeys(shares))})" if shares else "")
                             + (f"; still rising in the last epoch: {', '.join(rising)}" if rising else "")})
    efficiency = efficiency_rows()
    commits = sorted(set(records.ok[records.ok["param.scale"] == scale].git_commit.dropna())) \
        if not records.ok.empty and "param.scale" in records.ok else []

    verdicts = ["| claim | measured: mean paired difference [95% t-interval] (pairs) | verdict |", "|---|---|---|"]
    verdicts += [f"| {v['claim']} | {v['measured']} | **{v['verdict']}** |" for v in verdict_rows]
    verdicts += [f"| {e['claim']} (bench; paper: {e['paper']}) | {e['measured']} (target {e['target']}) | "
                 f"**{e['verdict']}** |" for e in efficiency]
    verdict_md = "\n".join(verdicts) + "\n"

    n_ok = int((records.ok["param.scale"] == scale).sum()) if not records.ok.empty and "param.scale" in records.ok else 0
    n_failed = sum(label.get("param.scale") == scale for label in records.failed_labels)
    protocol = []
    if not runs.empty:
        for task, group in runs.groupby("task", sort=False):
            c = group.config.iloc[0]
            t, tr = c.get("task") or {}, c.get("train") or {}
            protocol.append(f"{task}: {c.get('model', {}).get('name')}, {t.get('max_train_samples')} training rows x "
                            f"{tr.get('epochs')} epochs, batch {tr.get('batch_size')}, max length {t.get('max_length')}, "
                            f"{t.get('heldout_rows')} held-out training rows, dev rows kept: {t.get('max_eval_samples')}")
    lines = [f"# Claims report ({scale})", "",
             f"Runs: {len(runs)} final runs of {len(arms)} arms ({n_ok} ok runs in all, candidates included; "
             f"{n_failed} failed); code "
             f"version(s) of the runs: {', '.join(commits) or '—'}.",
             "Scores: final dev evaluation x100. Per arm: the median with its exact order-statistic interval (its "
             "true coverage in brackets: with 5 seeds [min, max] is 93.75%). Per comparison: the mean paired "
             "difference over seeds with its 95% t-interval; non-inferiority and superiority read the one-sided "
             "95% / 97.5% bounds, equivalence the 90% interval (TOST), each checked against the signed-rank "
             "(Hodges-Lehmann) interval. The intervals cover seed noise only: the dev set is held fixed. "
             f"Margin for 'matches' / 'within noise': {MARGIN} point.",
             "Protocol: " + "; ".join(protocol) + ". The dev split is evaluated at every epoch (the curves below; "
             "steps-to-target is resolved to an epoch).", "", "## Verdicts", "", verdict_md,
             "## Arms", "",
             "| arm | task | lr (chosen on held-out rows) | adapted params (% of model) | median [interval] (coverage) | seeds ok / "
             "failed / planned | gain over the last epoch |", "|---|---|---|---|---|---|---|"]
    for a in arms.to_dict("records"):
        if not a.get("n_ok"):
            lines.append(f"| {a['arm']} | — | — | — | — | 0 / {a['n_failed']} / {a['n_planned']} | — |")
            continue
        lines.append(f"| {a['arm']} | {a['task']} ({a['metric']}) | {a['lr']:.1e} | {a['adapted']:,} "
                     f"({a['adapted_pct']:.2f}%) | {a['median']:.1f} [{a['ci_low']:.1f}, {a['ci_high']:.1f}] "
                     f"({100 * a['ci_level']:.1f}%) | "
                     f"{a['n_ok']} / {a['n_failed']} / {a['n_planned']} | {fmt(a['last_epoch_gain'], 1, True)} |")
    not_flat = [a["arm"] for a in arms.to_dict("records") if a.get("n_ok") and a["last_epoch_gain"] > MARGIN]
    lines += ["", "Gain over the last epoch: median over seeds of (final − previous) dev score; above the margin "
              "means the curve had not flattened" + (f": {', '.join(not_flat)}." if not_flat else " (none did)."),
              "", "![dev curves](curves.png)", "", "## Paired differences", "",
              "| claim | arm − baseline | task | mean [95% t-interval] | pairs | verdict |", "|---|---|---|---|---|---|"]
    for r in pair_rows:
        lines.append(f"| {r['claim'][:60]} | {r['arm']} − {r['baseline']} | {r.get('task', '—')} | "
                     f"{fmt(r.get('median'), 2, True)} [{fmt(r.get('low'), 2, True)}, {fmt(r.get('high'), 2, True)}] | "
                     f"{r['n_pairs']} | {r['verdict']} ({r['what']}) |")
    lines += ["", "## Learning-rate choice (first seed; held-out training rows decide, dev shown only)", "",
              "| arm | task | lr | held-out | dev | chosen |", "|---|---|---|---|---|---|"]
    lines += [f"| {t['arm']} | {t['task']} | {t['lr']:.1e} | {fmt(t['heldout'], 1)} | {fmt(t['dev'], 1)} | "
              f"{'yes' + (' (' + t['edge'] + ': the best may lie beyond)' if t['edge'] else '') if t['chosen'] else ''} |"
              for t in tuning.to_dict("records")]
    lines += ["", "Arms without candidates take another arm's choice (experiments/claims/study.yaml `tune.share`): "
              "the other GLUE tasks take SST-2's learning rate per method; ranks, target sets and LoRA+ take LoRA's "
              "(for LoRA+, lr(A))."]
    written = [out / "claims.md", out / "verdicts.md", out / "arms.csv", out / "paired.csv", out / "tuning.csv"]
    (out / "claims.md").write_text("\n".join(lines) + "\n")
    (out / "verdicts.md").write_text(verdict_md)
    arms.to_csv(out / "arms.csv", index=False)
    pd.DataFrame(pair_rows).to_csv(out / "paired.csv", index=False)
    tuning.to_csv(out / "tuning.csv", index=False)
    curves = plot_curves(runs, out)
    return written + ([curves] if curves else [])
