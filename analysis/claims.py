"""The claims report of experiments/claims (`make claims`, `make claims-quick`): one row per claim
that the study's study.yaml lists under `claims:`, decided from the study's runs by stated rules.

* Scores: each final run's dev evaluation (x100), at its selected checkpoint where the run early-
  stopped on its held-out training rows. The learning rate was chosen on those rows (on a tuning
  seed that reports nothing, where the study names one). Paired differences over the seeds both
  arms finished: the same seed draws the same training rows in the same order for every arm.
* Per task, against that task's margin (`margins:` in study.yaml): non-inferiority, superiority or
  equivalence from the t-interval of the mean paired difference, checked against the signed-rank
  (Hodges-Lehmann) interval (analysis/stats.decide). Where the runs kept per-example predictions,
  a verdict that the two-way bootstrap (seeds x dev examples) does not also show is undecided, and a
  dev set whose own sampling noise exceeds the margin is named as too small to resolve it.
* Validity: a comparison counts only when both arms beat the constant predictor by GATE_BY points on
  GATE_SHARE of their seeds, else it is "not evaluable". An arm whose chosen learning rate is the
  largest or smallest it tried (after the grid extended itself) was not tuned as the protocol
  specifies: its comparisons are "not tested as specified". So are those of an arm still rising when
  its step budget ran out: on at least half its seeds, early stopping never fired and the held-out
  score gained at least the task's margin over the last quarter of the steps (RISING_SHARE).
* A learning-rate ratio claim (lr_ratio): the ratio of the two arms' chosen rates, and of every pair
  of candidates whose tuning-seed held-out score lies within the margin of its arm's best (one
  seed's held-out rows cannot order those; a tie at an end of the grid tried leaves that side
  open): supported when all of them are in the claimed range, refuted when none is, else undecided.
* A claim over several tasks: supported when every evaluable task supports it and at least
  `min_tasks` are evaluable; refuted when a task's refutation survives Holm's correction over the
  claim's tasks; else undecided.

Writes results/<scale>/: claims.md (the report), verdicts.md (the table the README quotes),
arms.csv, paired.csv, tuning.csv and curves.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lora_repro.metrics import split_metric
from lora_repro.record import read_run_record
from lora_repro.studyspec import Claim, claims_of

from .published import is_row, table_spec
from .records import Records, row_metric
from .stats import (NOT_AS_SPECIFIED, NOT_EVALUABLE, REFUTED, SUPPORTED, UNDECIDED, beats_constant, decide,
                    dev_contrast, holm, mean_ci, median_ci, paired, refutation_pvalue)

NOT_RUN = "not run yet"  # no finished final run of the claim's arms: nothing was measured
DEFAULT_MARGIN = 1.0  # points (x100) of the task's main metric, for a task study.yaml gives no margin
# The validity gate (the claims critique, 1.3): an arm counts in a comparison only when it beats the
# constant predictor (majority class; mean for regression, correlation 0) by this many points on at
# least GATE_SHARE of its seeds; else the comparison is "not evaluable", never "supported".
GATE_BY = {"accuracy": 5.0, "f1": 5.0, "matched_accuracy": 5.0, "mcc": 10.0, "pearson": 30.0, "spearman": 30.0}
GATE_SHARE = 0.8
# Convergence (the claims critique, 2.1: "13 of 22 arms still rising"): a run "ran to the cap" when
# its early stopping never fired (it stopped less than `patience` evaluations after its selected
# step, or had no early stopping), and is "still rising" when its watched held-out score also gained
# at least the task's margin over the last quarter of its steps: another quarter of training could
# move a comparison by a margin. An arm is still rising on a task when RISING_SHARE of its seeds are.
RISING_SHARE = 0.5
LATE_SHARE = 0.25
EFFICIENCY_DIR = Path(__file__).resolve().parents[1] / "experiments" / "efficiency" / "results"

# ------------------------------------------------------------------------------------------ data
def final_runs(records: Records, scale: str) -> pd.DataFrame:
    """One row per finished final run of this scale: arm, task, seed, score (x100), the held-out or
    dev curve, trainable digest, adapted parameters, lr, the constant predictor's score and the
    kept per-example predictions."""
    df = records.ok
    columns = ["arm", "task", "seed", "score", "curve", "sha", "adapted", "total", "lr", "metric", "config",
               "constant", "labels", "predictions", "to_cap", "late_gain", "device", "selected_step", "stopped_at"]
    if df.empty or "arm" not in df:
        return pd.DataFrame(columns=columns)
    df = df[(df["param.scale"] == scale) & (df["role"] == "final")]
    rows = []
    for r in df.to_dict("records"):
        metric = row_metric(r)
        value = r.get(f"metric.{metric}")
        record, _ = read_run_record(r["record_file"])
        record = record or {}
        curve_points = record.get("eval_curve") or []
        # Steps-to-target reads the held-out curve where the run watched it (train.watch), else dev.
        task_cfg = (record.get("config") or {}).get("task") or {}
        held = split_metric(task_cfg, "heldout") if task_cfg.get("splits") else f"heldout_{metric}"
        key = held if any(held in e for e in curve_points) else metric
        kept = record.get("predictions") or {}
        curve = [(e["step"], 100.0 * e[key]) for e in curve_points if key in e]
        selected = record.get("selected") or {}
        to_cap, late_gain = convergence(curve, selected, ((record.get("config") or {}).get("train") or {}))
        rows.append({"arm": r["arm"], "task": r["task"], "seed": int(r["seed"]), "metric": metric,
                     "config": record.get("config") or {},
                     "score": 100.0 * float(value) if value is not None and not pd.isna(value) else math.nan,
                     "curve": curve, "curve_key": key, "to_cap": to_cap, "late_gain": late_gain,
                     "device": r.get("device") or "unknown", "selected_step": selected.get("step", math.nan),
                     "stopped_at": selected.get("stopped_at_step", curve[-1][0] if curve else math.nan),
                     "sha": record.get("trainable_sha256"), "adapted": int(r["params.adapted"]),
                     "total": int(r["params.total"]), "lr": r.get("train.lr"),
                     "constant": 100.0 * (record.get("constant_metrics") or {}).get(metric, math.nan),
                     "labels": kept.get("labels"), "predictions": kept.get("predictions")})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def tuning_table(records: Records, scale: str) -> pd.DataFrame:
    """Every candidate run (tuning seed): its held-out and dev scores, whether it was chosen, and
    whether the choice is at an end of what was tried."""
    df = records.ok
    if df.empty or "arm" not in df or "tuned" not in df:
        return pd.DataFrame(columns=["arm", "task", "lr", "chosen", "heldout", "dev", "edge"])
    df = df[(df["param.scale"] == scale)]
    finals = df[df["role"] == "final"]
    chosen = {(r["arm"], r["task"]): str(r.get("tuned")) for r in finals.to_dict("records")}
    # The candidates of an arm that tuned: its runs at the tuning seed (the seed of its "tune" rows;
    # without tune.seed the chosen candidate is also that seed's final run).
    tuning_seed = {(r["arm"], r["task"]): r["seed"] for r in df[df["role"] == "tune"].to_dict("records")}
    candidates = df[[tuning_seed.get((a, t)) == s for a, t, s in zip(df.arm, df.task, df.seed)]]
    rows = []
    for r in candidates.to_dict("records"):
        metric = row_metric(r)
        # MNLI's main metric names its split (matched_accuracy); its held-out score is heldout_accuracy.
        held = next((r.get(k) for k in (f"metric.heldout_{metric}", f"metric.heldout_{metric.split('_', 1)[-1]}")
                     if r.get(k) is not None), None)
        dev = r.get(f"metric.{metric}")
        rows.append({"arm": r["arm"], "task": r["task"], "lr": float(r.get("train.lr")),
                     "chosen": chosen.get((r["arm"], r["task"])) == str(r.get("tuned")),
                     "heldout": None if held is None or pd.isna(held) else round(100 * held, 2),
                     "dev": None if dev is None or pd.isna(dev) else round(100 * dev, 2),
                     "seed": tuning_seed.get((r["arm"], r["task"]))})
    table = pd.DataFrame(rows, columns=["arm", "task", "lr", "chosen", "heldout", "dev", "seed"])
    if table.empty:
        return table.assign(edge=[])
    table = table.drop_duplicates(["arm", "task", "lr"]).sort_values(["task", "arm", "lr"]).reset_index(drop=True)
    group = table.groupby(["arm", "task"]).lr
    lows, highs, tried = group.transform("min"), group.transform("max"), group.transform("size")
    table["edge"] = [("only value tried" if n == 1 else "largest tried" if lr == hi else "smallest tried" if lr == lo
                      else "") if ok else "" for lr, lo, hi, n, ok in zip(table.lr, lows, highs, tried, table.chosen)]
    return table


def near_best_lrs(tuning: pd.DataFrame, margins: dict[str, float]) -> dict[tuple[str, str], list[float]]:
    """(arm, task) -> the candidate learning rates whose held-out score on the tuning seed lies within
    the task's margin of the best candidate's: one seed's 500 held-out rows cannot tell them apart.
    A tie at the smallest (largest) rate tried adds 0.0 (inf): the ties may go on past the grid."""
    out: dict[tuple[str, str], list[float]] = {}
    if tuning.empty:
        return out
    for (arm, task), group in tuning.dropna(subset=["heldout"]).groupby(["arm", "task"]):
        best, margin = float(group.heldout.max()), float(margins.get(task, DEFAULT_MARGIN))
        tied = sorted(float(lr) for lr, h in zip(group.lr, group.heldout) if h >= best - margin)
        if len(group) > 1:
            below = [0.0] if tied[0] == float(group.lr.min()) else []
            above = [math.inf] if tied[-1] == float(group.lr.max()) else []
            tied = below + tied + above
        out[(arm, task)] = tied
    return out


def failed_by_arm(records: Records, scale: str) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for label in records.failed_labels:
        if label.get("param.scale") == scale and label.get("role") == "final":
            key = (label.get("arm"), label.get("task"))
            counts[key] = counts.get(key, 0) + 1
    return counts


def arm_table(runs: pd.DataFrame, failed: dict[tuple[str, str], int], planned_seeds: int,
              margins: dict[str, float] | None = None, planned: set[tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per arm and task with runs; arms that only failed, and (given `planned`) planned arms
    with no run yet, get a row of counts."""
    rows = []
    for (task, arm), group in runs.groupby(["task", "arm"], sort=False):
        med, mean = median_ci(group.score), mean_ci(group.score)
        margin = float((margins or {}).get(task, DEFAULT_MARGIN))
        capped_gains = late_gains(group)
        rows.append({"arm": arm, "task": task, "metric": group.metric.iloc[0], "lr": group.lr.iloc[0],
                     "adapted": int(group.adapted.iloc[0]),
                     "adapted_pct": 100.0 * group.adapted.iloc[0] / group.total.iloc[0],
                     "median": med.estimate, "ci_low": med.low, "ci_high": med.high, "ci_level": med.level,
                     "mean": mean.estimate, "mean_low": mean.low, "mean_high": mean.high,
                     "constant": float(group.constant.iloc[0]) if "constant" in group else math.nan,
                     "n_ok": len(group), "n_failed": failed.get((arm, task), 0), "n_planned": planned_seeds,
                     "n_to_cap": sum(c is True for c in group.to_cap) if "to_cap" in group else 0,
                     "n_rising": sum(g >= margin for g in capped_gains),
                     "late_gain_median": float(np.median(capped_gains)) if capped_gains else math.nan,
                     "devices": group.device.value_counts().to_dict() if "device" in group else {},
                     "selected_step": float(np.nanmedian(group.selected_step)) if "selected_step" in group
                     and group.selected_step.notna().any() else math.nan,
                     "stopped_at": float(np.nanmedian(group.stopped_at)) if "stopped_at" in group
                     and group.stopped_at.notna().any() else math.nan})
    seen = {(r["arm"], r["task"]) for r in rows}
    for (arm, task) in [*failed, *sorted((planned or set()) - set(failed))]:
        if (arm, task) not in seen:
            rows.append({"arm": arm, "task": task, "n_ok": 0, "n_failed": failed.get((arm, task), 0),
                         "n_planned": planned_seeds, "n_to_cap": 0, "n_rising": 0})  # counts stay integers
    return pd.DataFrame(rows)


def steps_to(curve: list[tuple[int, float]], target: float) -> float:
    """The first evaluated step whose score reaches `target` (inf: never)."""
    return next((float(step) for step, score in curve if score >= target), math.inf)


def convergence(curve: list[tuple[int, float]], selected: dict, train_cfg: dict) -> tuple[bool | None, float]:
    """(did the run use its whole step budget, points its watched score gained over the last
    LATE_SHARE of its steps). None / nan when the record cannot say (no curve)."""
    if len(curve) < 2:
        return None, math.nan
    last = curve[-1][0]
    stop = train_cfg.get("early_stopping") or {}
    patience_steps = float(stop.get("patience") or 0) * float(train_cfg.get("eval_every") or 0)
    step, stopped = selected.get("step"), selected.get("stopped_at_step", last)
    fired = bool(stop) and step is not None and stopped is not None and stopped - step >= patience_steps > 0
    before = [score for s, score in curve if s <= (1.0 - LATE_SHARE) * last]
    if not before:
        return not fired, math.nan
    return not fired, max(0.0, max(score for _, score in curve) - max(before))


def late_gains(group: pd.DataFrame) -> list[float]:
    """The late gains of the runs that ran to their step cap (see convergence)."""
    if "to_cap" not in group or "late_gain" not in group:
        return []
    return [float(g) for c, g in zip(group.to_cap, group.late_gain) if c is True and not pd.isna(g)]


def rising_arms(runs: pd.DataFrame, margins: dict[str, float]) -> dict[tuple[str, str], str]:
    """(arm, task) -> why, for each arm still rising when its step budget ran out (see RISING_SHARE)."""
    out: dict[tuple[str, str], str] = {}
    if runs.empty:
        return out
    for (arm, task), group in runs.groupby(["arm", "task"], sort=False):
        margin = float(margins.get(task, DEFAULT_MARGIN))
        rising = sum(g >= margin for g in late_gains(group))
        if rising and rising >= RISING_SHARE * len(group):
            out[(arm, task)] = (f"{arm} was still rising when its step budget ran out ({rising}/{len(group)} seeds "
                                f"gained ≥ {margin:g} points over the last quarter of their steps)")
    return out


# ---------------------------------------------------------------------------------------- verdicts
def combine(verdicts: list[str], min_evaluable: int = 1, refuted_after_holm: bool | None = None) -> str:
    """A claim over several comparisons, counting only those that pass the validity gate:
    supported if all are (intersection-union: no correction needed), refuted if one is (and, when
    given, survives Holm's correction), else undecided; "not evaluable" when none passes (or "not
    tested as specified" when that is why), "undecided (k of n evaluable)" below min_evaluable."""
    evaluable = [v for v in verdicts if v not in (NOT_EVALUABLE, NOT_AS_SPECIFIED)]
    if not evaluable:
        return NOT_AS_SPECIFIED if NOT_AS_SPECIFIED in verdicts else NOT_EVALUABLE
    if len(evaluable) < min_evaluable:
        return f"{UNDECIDED} ({len(evaluable)} of {len(verdicts)} comparisons evaluable, {min_evaluable} needed)"
    if all(v == SUPPORTED for v in evaluable):
        return SUPPORTED
    if REFUTED in evaluable and refuted_after_holm is not False:
        return REFUTED
    return UNDECIDED


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


def gate_failures(sides: list[pd.DataFrame], gated: list[bool]) -> str:
    """Why the gated sides of a comparison fail the validity gate ('' when none does)."""
    return "; ".join(w for w, on in zip((gate(x.reset_index()) for x in sides), gated) if w and on)


def kept_predictions(side: pd.DataFrame) -> tuple[dict[int, list], list | None]:
    preds = {int(s): p for s, p in zip(side.index, side.predictions) if isinstance(p, list)} if "predictions" in side else {}
    labels = next((lab for lab in side.labels if isinstance(lab, list)), None) if "labels" in side else None
    return preds, labels


def dev_check(status: str, test: str, terms: list[tuple[float, pd.DataFrame]], metric: str,
              margin: float) -> tuple[str, str, dict]:
    """The dev set is a sample too: the two-way bootstrap (seeds x dev examples, 90%) must show the
    verdict as well, and the dev set alone must resolve the margin. `terms`: the signed arms of the
    compared quantity ((+1, a), (-1, b) for a - b; four for a difference of differences). Skipped
    when some arm kept no per-example predictions or the arms were scored on different dev rows."""
    kept = [(w, *kept_predictions(side)) for w, side in terms]
    labels = kept[0][2] if kept else None
    if not kept or any(not preds or lab is None or lab != labels for _, preds, lab in kept):
        return status, "", {}
    sampled = dev_contrast([(w, preds) for w, preds, _ in kept], labels, metric)
    low, high, half = sampled.two_way.low, sampled.two_way.high, sampled.dev_half_width
    info = {"two_way_low": low, "two_way_high": high, "dev_half_width": half, "dev_rows": len(labels)}
    notes = []
    if np.isfinite(half) and half > margin:
        notes.append(f"the dev set ({len(labels)} rows) alone moves the difference by ±{half:.2f} (90%): too small "
                     f"to resolve a {margin:g}-point margin")
    shown = {"noninferior": (low > -margin) if status == SUPPORTED else (high < -margin),
             "superior": (low > 0) if status == SUPPORTED else (high < 0 or (low > -margin and high < margin)),
             "equivalent": (low > -margin and high < margin) if status == SUPPORTED else (low > margin or high < -margin)}
    if status in (SUPPORTED, REFUTED) and test in shown and not shown[test]:
        notes.append(f"the t-interval says {status} but the two-way bootstrap over seeds and dev examples "
                     f"[{low:+.2f}, {high:+.2f}] does not")
        status = UNDECIDED
    return status, "; ".join(notes), info


def compare(claim: Claim, a: pd.DataFrame, b: pd.DataFrame, margin: float, edges: dict, rising: dict | None = None,
            near_best: dict | None = None) -> dict:
    """One task's comparison of claim.arm (a) against claim.baseline (b), both indexed by seed.
    `near_best`: (arm, task) -> the learning rates whose tuning-seed held-out score lies within the
    margin of the best (near_best_lrs); an lr_ratio claim reads every ratio they allow."""
    task = a.task.iloc[0]
    row: dict[str, Any] = {"arm": claim.arm, "baseline": claim.baseline, "task": task, "margin": margin, "p_refute": 1.0}
    if claim.test == "identical":
        common = sorted(set(a.index) & set(b.index))
        same = [s for s in common if a.sha[s] == b.sha[s]]
        diff = max((abs(a.score[s] - b.score[s]) for s in common), default=math.nan)
        status = SUPPORTED if common and len(same) == len(common) else REFUTED if common else UNDECIDED
        return {**row, "n_pairs": len(common), "median": diff, "low": diff, "high": diff, "verdict": status,
                "p_refute": 0.0 if status == REFUTED else 1.0,
                "what": f"bit-identical trained weights on {len(same)} of {len(common)} seeds; largest dev difference "
                        f"{diff:.2f}"}
    # The validity gate holds for every comparison of scores (a best lr, or a speed to a score, of an
    # arm that learned nothing means nothing); only bit-identity above needs none.
    gated = [True, claim.gate == "both"]
    if claim.test == "lr_ratio":
        failed_gate = gate_failures([a, b], gated)
        lra, lrb = float(a.lr.iloc[0]), float(b.lr.iloc[0])
        ratio = lra / lrb
        low, high = claim.ratio or (0.0, math.inf)
        # The choice is one tuning seed's held-out score: a candidate within the margin of the best
        # is a tie the protocol cannot break, so the claim is decided on the whole range of ratios
        # such ties allow (0 or inf where a tie reaches an end of the grid tried: open on that side).
        near_a, near_b = (sorted({*(near_best or {}).get((x, task), ()), lr}) for x, lr in
                          ((claim.arm, lra), (claim.baseline, lrb)))
        least = 0.0 if near_a[0] == 0 or near_b[-1] == math.inf else near_a[0] / near_b[-1]
        most = math.inf if near_a[-1] == math.inf or near_b[0] == 0 else near_a[-1] / near_b[0]
        tol = 1e-9  # 3e-3 / 1e-4 is 29.999999999999996 in floating point
        status = (SUPPORTED if least >= low * (1 - tol) and most <= high * (1 + tol)
                  else REFUTED if most < low * (1 - tol) or least > high * (1 + tol) else UNDECIDED)
        edge = [x for x in (claim.arm, claim.baseline) if edges.get((x, task))]
        why = ""
        if failed_gate:
            status, why = NOT_EVALUABLE, failed_gate
        elif edge:
            status, why = NOT_AS_SPECIFIED, f"{', '.join(edge)}: chosen lr at an end of the grid tried"
        ties = ""
        if len(near_a) > 1 or len(near_b) > 1:
            def tied(lrs: list[float]) -> str:
                inner = [x for x in lrs if 0 < x < math.inf]
                return (("<= " if lrs[0] == 0 else "") + ", ".join(f"{x:.2g}" for x in inner)
                        + (" or more" if lrs[-1] == math.inf else ""))
            ties = (f"; lrs within the margin ({margin:g}) of each best held-out score: {claim.arm} {tied(near_a)}, "
                    f"{claim.baseline} {tied(near_b)}: ratios {fmt_ratio(least)} to {fmt_ratio(most)}"
                    + (" (a tie at an end of the grid tried leaves that side open)" if least == 0 or most == math.inf else ""))
        return {**row, "n_pairs": 0, "median": ratio, "low": least, "high": most, "verdict": status,
                "p_refute": 0.0 if status == REFUTED else 1.0,
                "what": f"chosen lr {lra:.2g} / {lrb:.2g} = {ratio:.2g} (claim: {low:g} to {high:g}; the grid's step "
                        f"bounds the resolution){ties}" + (f"; {why}" if why else "")}
    if claim.test == "fewer_steps":
        # Steps to the baseline's median best score on the watched curve; a run that never gets there
        # counts as one evaluation interval past the last step (slower than any that did).
        target = float(np.median([max(s for _, s in c) for c in b.curve if c])) if any(len(c) for c in b.curve) else math.nan
        curves = [c for c in [*a.curve, *b.curve] if c]
        last = max((c[-1][0] for c in curves), default=0)
        beyond = last + max((c[-1][0] - c[-2][0] for c in curves if len(c) >= 2), default=1)
        sa = {s: min(steps_to(c, target), beyond) for s, c in a.curve.items()}
        sb = {s: min(steps_to(c, target), beyond) for s, c in b.curve.items()}
        saved = paired(sb, sa)  # baseline's steps minus the arm's: > 0 when the arm is faster
        status, why = decide("superior", saved, 0.0)
        failed_gate = gate_failures([a, b], gated)
        if failed_gate:
            status, why = NOT_EVALUABLE, failed_gate
        reached = sum(v < beyond for v in sa.values())
        ratio = (np.median(list(sa.values())) / np.median(list(sb.values()))) if sa and sb else math.nan
        return {**row, "n_pairs": saved.n, "median": saved.mean.estimate, "low": saved.mean.low,
                "high": saved.mean.high, "verdict": status,
                "p_refute": refutation_pvalue("superior", saved, 0.0) if status == REFUTED else 1.0,
                "what": f"steps saved to {claim.baseline}'s median best {a.curve_key.iloc[0]} {target:.1f} ({reached} of "
                        f"{len(sa)} {claim.arm} seeds reach it by step {last}; never = {beyond}; median steps "
                        f"{claim.arm}/{claim.baseline} = {ratio:.2f}); mean paired difference (baseline − arm), 95% "
                        f"t-interval" + (f"; {why}" if why else "")}
    diff = paired(a.score.to_dict(), b.score.to_dict())
    status, why = decide(claim.test, diff, margin)
    status, dev_note, dev_info = dev_check(status, claim.test, [(1.0, a), (-1.0, b)], str(a.metric.iloc[0]), margin)
    decided = decision(claim.test, diff, margin, status, why, [a, b], [claim.arm, claim.baseline], task, edges,
                       gated=gated, rising=rising)
    notes = "; ".join(n for n in (decided.pop("why"), dev_note) if n)
    return {**row, **decided, **dev_info,
            "what": f"mean paired difference {claim.arm} − {claim.baseline}, points, 95% t-interval, margin {margin:g}"
                    + (f"; {notes}" if notes else "")}


def decision(test: str, diff: Any, margin: float, status: str, why: str, sides: list[pd.DataFrame], names: list[str],
             task: str, edges: dict, gated: list[bool] | None = None, rising: dict | None = None) -> dict:
    """What every paired comparison reports: the interval of the mean difference, and the verdict
    after the checks that overrule the test, in this order: an arm that fails the validity gate
    makes the task not evaluable; an arm whose chosen lr sits at an end of the grid it tried, or
    that was still rising when its step budget ran out (`rising`, from rising_arms), makes it not
    tested as specified. `gated`: which sides the gate applies to (default: all; a claim with
    gate: arm leaves its control out). The refutation p-value counts only for a refutation (Holm)."""
    gated = gated or [True] * len(sides)
    rising = rising or {}
    failed_gate = gate_failures(sides, gated)
    edge = [n for n in names if edges.get((n, task))]
    unconverged = [rising[(n, task)] for n in dict.fromkeys(names) if (n, task) in rising]
    if failed_gate:
        status, why = NOT_EVALUABLE, failed_gate
    elif edge:
        status, why = NOT_AS_SPECIFIED, (f"{', '.join(edge)}: the chosen lr is the {edges[(edge[0], task)]} after the "
                                         f"grid extended itself, so the arm's best lr may lie beyond")
    elif unconverged:
        status, why = NOT_AS_SPECIFIED, "; ".join(unconverged)
    return {"n_pairs": diff.n, "median": diff.mean.estimate, "low": diff.mean.low, "high": diff.mean.high,
            "verdict": status, "p_refute": refutation_pvalue(test, diff, margin) if status == REFUTED else 1.0,
            "why": why}


def compare_improves(claim: Claim, sides: list[pd.DataFrame], margin: float, edges: dict,
                     rising: dict | None = None) -> dict:
    """claim.arm - claim.baseline at one setting against the same comparison at another (claim.then:
    e.g. the same two methods on a larger model), paired over seeds (a seed draws the same training
    rows at both): superiority of (then_arm - then_baseline) - (arm - baseline) against 0, margin for
    the tie, with the dev set's own noise from all four arms' kept predictions (both settings score
    the same dev rows). The gaps are shown over the seeds paired, and as a share of the baseline's
    gain over the constant predictor at each setting: a larger model nearer the ceiling narrows a
    raw gap by itself (a descriptive guard, not tested)."""
    a, b, a2, b2 = sides
    task = a.task.iloc[0]
    names = [claim.arm, claim.baseline, *(claim.then or ("", ""))]
    gap = lambda x, y: {s: x.score[s] - y.score[s] for s in set(x.index) & set(y.index)}  # noqa: E731
    before, after = gap(a, b), gap(a2, b2)
    diff = paired(after, before)
    status, why = decide("superior", diff, margin)
    status, dev_note, dev_info = dev_check(status, "superior", [(1.0, a2), (-1.0, b2), (-1.0, a), (1.0, b)],
                                           str(a.metric.iloc[0]), margin)
    decided = decision("superior", diff, margin, status, why, sides, names, task, edges, rising=rising)
    notes = "; ".join(n for n in (decided.pop("why"), dev_note) if n)
    seeds = sorted(set(before) & set(after))

    def over_seeds(values: dict) -> float:
        return float(np.mean([values[s] for s in seeds])) if seeds else math.nan

    def share(gaps: dict, baseline: pd.DataFrame) -> str:
        constant = baseline.constant.iloc[0] if "constant" in baseline else math.nan
        gain = over_seeds(baseline.score.to_dict()) - float(constant) if constant is not None else math.nan
        return f"{100 * over_seeds(gaps) / gain:+.1f}%" if np.isfinite(gain) and gain > 0 else "—"

    return {"arm": claim.arm, "baseline": claim.baseline, "task": task, "margin": margin, **decided, **dev_info,
            "what": f"({names[2]} − {names[3]}) − ({names[0]} − {names[1]}): gap {over_seeds(before):+.2f} → "
                    f"{over_seeds(after):+.2f} points over the {len(seeds)} paired seeds ({share(before, b)} → "
                    f"{share(after, b2)} of {names[1]}'s gain over the constant predictor), mean paired change, "
                    f"95% t-interval" + (f"; {notes}" if notes else "")}


def evaluate_claim(claim: Claim, runs: pd.DataFrame, margins: dict[str, float] | None = None,
                   edges: dict | None = None, planned: set[tuple[str, str]] | None = None,
                   seeds: int | None = None, near_best: dict | None = None) -> tuple[list[dict], str]:
    """(one row per task where both arms ran, the claim's verdict). `edges`: (arm, task) -> "largest
    tried" / "smallest tried" for arms whose choice sits at an end of their grid. Arms still rising
    at their step cap are read from the runs themselves (rising_arms). `planned`: the (arm, task)
    pairs the study plans; a task where one of the claim's arms is not planned is not the claim's
    (BitFit runs on SST-2 only: LoRA's CoLA runs do not make "LoRA >= BitFit" wait for CoLA).
    `seeds`: the reporting seeds the study plans; a comparison over fewer pairs is not decided yet
    (the protocol's seed count, not whatever had landed when the report was built)."""
    margins, edges = margins or {}, edges or {}
    rising = rising_arms(runs, margins)
    rows = []
    names = [claim.arm, claim.baseline, *(claim.then or ())]
    # The tasks with runs and those the study plans for the claim's arms but that have none yet (a
    # task whose records were all replaced by a new recipe still waits: it is not the claim's no more),
    # in name order, so the report does not reorder as records land.
    tasks = sorted({*(runs.task if not runs.empty else []), *(t for arm, t in planned or () if arm in names)})
    for task in tasks:
        a = runs[(runs.arm == claim.arm) & (runs.task == task)].set_index("seed")
        b = runs[(runs.arm == claim.baseline) & (runs.task == task)].set_index("seed")
        sides = [a, b] + [runs[(runs.arm == name) & (runs.task == task)].set_index("seed") for name in claim.then or ()]
        empty = [n for n, side in zip(names, sides) if side.empty]
        if planned is None and len(empty) == len(names):
            continue  # no plan to say this task waits for them
        if planned is not None and any((n, task) not in planned for n in empty):
            continue  # the study never runs that arm on this task
        if empty:
            # A task waiting for an arm was not compared: "not run yet" there; the claim, which needs
            # it, stays undecided in combine() (it is neither supported nor refuted).
            rows.append({"arm": claim.arm, "baseline": claim.baseline, "task": task, "verdict": NOT_RUN, "n_pairs": 0,
                         "p_refute": 1.0, "what": f"no finished runs of {', '.join(empty)}", "missing": True})
            continue
        margin = float(margins.get(task, DEFAULT_MARGIN))
        rows.append(compare_improves(claim, sides, margin, edges, rising) if claim.test == "improves"
                    else compare(claim, a, b, margin, edges, rising, near_best))
    if all(r.get("missing") for r in rows):  # no task has every arm of the claim: nothing was compared
        return rows, NOT_RUN
    for r in rows:
        if (seeds and claim.test != "lr_ratio" and not r.get("missing") and r["n_pairs"] < seeds
                and r["verdict"] in (SUPPORTED, REFUTED)):
            r["verdict"], r["p_refute"] = UNDECIDED, 1.0
            r["what"] += f"; {r['n_pairs']} of {seeds} planned seeds in: decided once all are"
    refuted = [i for i, r in enumerate(rows) if r["verdict"] == REFUTED]
    survives = holm([r["p_refute"] for r in rows]) if refuted else []
    for i in refuted:
        rows[i]["holm"] = "survives" if survives[i] else "does not survive"
    return rows, combine([r["verdict"] for r in rows], claim.min_tasks,
                         refuted_after_holm=any(survives[i] for i in refuted) if refuted else None)


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
            verdict = (SUPPORTED if cells[4] == "met" else REFUTED if cells[4].startswith("missed")
                       else UNDECIDED)  # "interval spans the target"
            rows.append({"claim": cells[0], "paper": cells[1], "measured": cells[2], "target": cells[3],
                         "verdict": verdict})
    return rows


INTRUDERS_CSV = Path(__file__).resolve().parents[1] / "experiments" / "intruders" / "results" / "weights" / "intruders.csv"
INTRUDER_MARGIN = 0.5   # intruders per matrix: a difference below half a vector per matrix is no difference


def intruder_rows(path: Path = INTRUDERS_CSV) -> list[dict]:
    """The intruder-dimension claim (Shuttleworth et al. 2024) from the intruders study's committed
    counts (its weights are not committed, so this is read, like the bench's): per seed, the mean
    count over the W_q / W_v matrices both methods change, LoRA (each rank) against full FT and
    against a random update of the same rank and norm, paired over seeds."""
    if not path.is_file():
        return []
    df = pd.read_csv(path)
    baseline = table_spec("intruders")["baseline"]
    is_baseline = pd.Series([is_row(r, baseline) for r in df.to_dict("records")], index=df.index, dtype=bool)
    ft, lora = df[is_baseline], df[~is_baseline]
    base_name = "/".join(str(v) for v in baseline.values())
    shared = sorted(set(ft.type) & set(lora.type))
    if ft.empty or lora.empty or not shared:
        return []
    per_seed = lambda frame, column: frame[frame.type.isin(shared)].groupby("seed")[column].mean().to_dict()  # noqa: E731
    rows = []
    for r, group in lora.groupby("r"):
        lora_counts = per_seed(group, "intruders")
        # The random update of LoRA's own rank and norm is the count's sensitivity check: when even it
        # makes fewer than the margin, an update this small cannot register as intruders, so a count of
        # none (or a tie) says nothing about the method: not evaluable rather than refuted. A count that
        # does clear it stays evidence.
        random_counts = per_seed(group, "random_intruders")
        sensitivity = float(np.mean(list(random_counts.values())))
        for against, counts in ((base_name, per_seed(ft, "intruders")), ("random ΔW", random_counts)):
            diff = paired(lora_counts, counts)
            status, why = decide("superior", diff, INTRUDER_MARGIN)
            if status != SUPPORTED and sensitivity < INTRUDER_MARGIN:
                status = NOT_EVALUABLE
                why = (f"a random ΔW of LoRA's rank and norm makes {sensitivity:.2f} per matrix (< {INTRUDER_MARGIN}): "
                       f"the count cannot register an update this small")
            size = (f"; median ‖ΔW‖/‖W‖ {group[group.type.isin(shared)].relative_norm.median():.4f} (LoRA), "
                    f"{ft[ft.type.isin(shared)].relative_norm.median():.4f} ({base_name})" if "relative_norm" in df else "")
            rows.append({"claim": f"LoRA (r={int(r)}) has more intruder dimensions than {against} "
                                  f"(Shuttleworth et al. 2024; intruders study, W_{'/W_'.join(shared)})",
                         "measured": f"{np.mean(list(lora_counts.values())):.2f} vs {np.mean(list(counts.values())):.2f} "
                                     f"per matrix; difference {diff.mean.fmt(2, signed=True)}" + (f"; {why}" if why else "")
                                     + (size if status != SUPPORTED else ""),
                         "verdict": status})
    return rows


# ------------------------------------------------------------------------------------------ report
def fmt(x: Any, digits: int = 1, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_ratio(x: float, digits: int = 2) -> str:
    """A learning-rate ratio: "30.00x"; a side left open by a tie at an end of the grid: "0" or "∞"."""
    return "∞" if x == math.inf else "0" if x == 0 else f"{x:.{digits}f}x"


def has_tie_range(row: dict) -> bool:
    """Whether an lr_ratio row carries a range of ratios over tied learning rates (the chosen ratio
    lies inside it, so a range that is not one point is a tie)."""
    low, high = row.get("low"), row.get("high")
    return low is not None and high is not None and not pd.isna(low) and low != high


def comparison_cell(row: dict) -> str:
    """The Comparisons table's measured cell. A ratio of chosen learning rates is one number per task,
    not a paired difference, and bit-identity has its largest difference: neither has an interval,
    so neither is printed as one."""
    if row.get("missing") or row.get("median") is None or pd.isna(row.get("median")):
        return "—"
    if row.get("test") == "lr_ratio":
        return (f"{fmt_ratio(row['median'])} (ratio of chosen lrs; no interval"
                + (f"; {fmt_ratio(row['low'])} to {fmt_ratio(row['high'])} over lrs tied within the margin)"
                   if has_tie_range(row) else ")"))
    if row.get("test") == "identical":
        return f"largest dev difference {fmt(row['median'], 2)}"
    return f"{fmt(row.get('median'), 2, True)} [{fmt(row.get('low'), 2, True)}, {fmt(row.get('high'), 2, True)}]"


def plot_curves(runs: pd.DataFrame, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if runs.empty:
        return None
    tasks = list(dict.fromkeys(runs.task))
    # One colour and line style per arm across every panel (a study can have 15+ arms on one task:
    # tab20's ten dark colours, then its ten light ones, then dashed), so an arm reads the same on each task.
    arms = sorted(set(runs.arm))
    tab20 = plt.get_cmap("tab20").colors
    palette = tab20[0::2] + tab20[1::2]
    style = {arm: (palette[i % len(palette)], "-" if i < len(palette) else "--") for i, arm in enumerate(arms)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for arm, group in runs[runs.task == task].groupby("arm", sort=True):
            steps = sorted({s for c in group.curve for s, _ in c})
            medians = [pd.Series([dict(c).get(s) for c in group.curve]).median() for s in steps]
            colour, line = style[arm]
            ax.plot(steps, medians, marker="o", ms=1.5, lw=1.1, color=colour, ls=line, label=arm)
        ax.set_title(f"{task}: {runs[runs.task == task].curve_key.iloc[0]} (median of seeds)", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=6, ncol=2 if runs[runs.task == task].arm.nunique() > 8 else 1)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_improves(claim: Claim, runs: pd.DataFrame, path: Path) -> Path | None:
    """An `improves` claim as a slope chart, per task: each seed's gap (arm - baseline) at the first
    setting and at the second (claim.then), joined by a line (the pairs the test reads), with the
    mean over those seeds and its 95% t-interval beside them; x is the baseline's parameter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not claim.then:
        return None
    names = [claim.arm, claim.baseline, *claim.then]
    tasks = [t for t in dict.fromkeys(runs.task) if all(((runs.arm == n) & (runs.task == t)).any() for n in names)]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        side = {n: runs[(runs.arm == n) & (runs.task == task)].set_index("seed") for n in names}
        gaps = [{s: side[a].score[s] - side[b].score[s] for s in set(side[a].index) & set(side[b].index)}
                for a, b in ((claim.arm, claim.baseline), claim.then)]
        sizes = [float(side[claim.baseline].total.iloc[0]) / 1e6, float(side[claim.then[1]].total.iloc[0]) / 1e6]
        seeds = sorted(set(gaps[0]) & set(gaps[1]))
        for seed in seeds:
            ax.plot(sizes, [gaps[0][seed], gaps[1][seed]], color="0.6", lw=0.8, marker="o", ms=3)
        for x, g in zip((sizes[0] / 1.15, sizes[1] * 1.15), gaps):   # beside the seeds' points, not on them
            ci = mean_ci([g[s] for s in seeds])
            if np.isfinite(ci.low):
                ax.errorbar([x], [ci.estimate], yerr=[[ci.estimate - ci.low], [ci.high - ci.estimate]], color="C3",
                            marker="D", ms=5, capsize=4, lw=1.5, zorder=3)
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{x:.0f}M\n{n}" for x, n in zip(sizes, (claim.baseline, claim.then[1]))], fontsize=7)
        ax.minorticks_off()
        ax.set_xlim(sizes[0] / 1.6, sizes[1] * 1.6)
        ax.set_ylabel(f"{claim.arm} − {claim.baseline} ({side[claim.arm].metric.iloc[0]}, points)", fontsize=8)
        ax.set_title(f"{task}: gap per paired seed (grey, n={len(seeds)}); mean, 95% t (red)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def above_by(stop: dict[str, Any]) -> str:
    """' by 10 points' for early_stopping.above_constant_by 0.10 (in the metric's units; '' for none)."""
    by = stop.get("above_constant_by")
    return f" by {100 * float(by):g} points" if by else ""


def protocol_lines(runs: pd.DataFrame, tuning: pd.DataFrame) -> list[str]:
    """What the runs did, read from their own configs (one line per task)."""
    out = []
    for task, group in runs.groupby("task", sort=False):
        c = group.config.iloc[0]
        t, tr = c.get("task") or {}, c.get("train") or {}
        stop = tr.get("early_stopping") or {}
        model = (c.get("model") or {}).get("name")
        seeds = sorted(set(group.seed))
        tuning_seeds = sorted(set(tuning[tuning.task == task].seed.dropna())) if not tuning.empty else []
        out.append(f"{task} ({model}): {t.get('max_train_samples')} training rows drawn per seed, "
                   f"{t.get('heldout_rows')} held-out training rows, up to {tr.get('epochs')} epochs of batch "
                   f"{tr.get('batch_size')}, max length {t.get('max_length')}; "
                   + (f"early stopping on {stop.get('metric')} (patience {stop.get('patience')} evaluations, at least "
                      f"{stop.get('min_evals')}" + (f", counted once it beats the constant predictor{above_by(stop)}" if stop.get("above_constant") else "")
                      + f"), evaluated every {tr.get('eval_every')} steps, dev scored at the "
                      f"selected step" if stop else f"dev scored after the last epoch (evaluated every {tr.get('eval_every')})")
                   + f"; reporting seeds {', '.join(map(str, seeds))}"
                   + (f"; lr tuned on seed {', '.join(str(int(s)) for s in tuning_seeds)}" if tuning_seeds else ""))
    return out


def claim_label(claim: Claim) -> str:
    """The verdict table's claim cell: the claim, its source, and what the comparison cannot show."""
    return ((f"{claim.claim} ({claim.source})" if claim.source else claim.claim)
            + (f"; *{claim.caveat}*" if claim.caveat else ""))


VERDICT_HEAD = ["| claim | test | measured: per task, mean paired difference [95% t-interval] (pairs) | verdict |",
                "|---|---|---|---|"]
ARM_HEAD = ["| arm | task | lr (chosen on held-out rows) | adapted params (% of model) | median [interval] (coverage) | "
            "mean [95% t] | constant predictor | seeds ok / failed / planned | median step selected / stopped | "
            "ran to the step cap: seeds (still rising; median late gain) | device (runs) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
PAIR_HEAD = ["| claim | arm − baseline | task | measured: mean paired difference [95% t-interval] | two-way 90% (seeds x "
             "dev rows) | pairs | verdict |", "|---|---|---|---|---|---|---|"]


TUNING_HEAD = ["| arm | task | lr | held-out | dev | chosen |", "|---|---|---|---|---|---|"]


def tuning_line(t: dict) -> str:
    return (f"| {t['arm']} | {t['task']} | {t['lr']:.1e} | {fmt(t['heldout'], 1)} | {fmt(t['dev'], 1)} | "
            f"{'yes' + (' (' + t['edge'] + ': the best may lie beyond)' if t['edge'] else '') if t['chosen'] else ''} |")


def verdict_line(v: dict) -> str:
    return f"| {v['claim']} | {v['test']} | {v['measured']} | **{v['verdict']}** |"


def arm_line(a: dict, device_label: dict[str, str]) -> str:
    if not a.get("n_ok"):
        return f"| {a['arm']} | {a.get('task', '—')} | — | — | — | — | — | 0 / {a['n_failed']} / {a['n_planned']} | — | — | — |"
    return (f"| {a['arm']} | {a['task']} ({a['metric']}) | {float(a['lr']):.1e} | {int(a['adapted']):,} "
            f"({a['adapted_pct']:.2f}%) | {a['median']:.1f} [{a['ci_low']:.1f}, {a['ci_high']:.1f}] "
            f"({100 * a['ci_level']:.1f}%) | {fmt(a['mean'])} [{fmt(a['mean_low'])}, {fmt(a['mean_high'])}] | "
            f"{fmt(a['constant'])} | {a['n_ok']} / {a['n_failed']} / {a['n_planned']} | "
            f"{fmt(a.get('selected_step'), 0)} / {fmt(a.get('stopped_at'), 0)} | {a['n_to_cap']} of {a['n_ok']}"
            + (f" ({a['n_rising']} rising; {fmt(a['late_gain_median'], 2, True)})" if a['n_to_cap'] else "") + " | "
            + ", ".join(f"{device_label.get(d, d)} ×{n}" for d, n in sorted((a.get("devices") or {}).items()))
            + " |")


def pair_line(r: dict) -> str:
    two_way = (f"[{fmt(r.get('two_way_low'), 2, True)}, {fmt(r.get('two_way_high'), 2, True)}]"
               if r.get("two_way_low") is not None and not pd.isna(r.get("two_way_low")) else "—")
    return (f"| {r['claim']} | {r['arm']} − {r['baseline']} | {r.get('task', '—')} | "
            f"{comparison_cell(r)} | {two_way} | {r.get('n_pairs', 0)} | {r['verdict']}"
            + (f", Holm: {r['holm']}" if r.get("holm") else "") + f" ({r['what']}) |")


def write_cards(folder: Path, verdict_rows: list[dict], pair_rows: list[dict], arms: pd.DataFrame,
                device_label: dict[str, str], scale: str, tuning: pd.DataFrame | None = None) -> list[Path]:
    """One file per claim (claims/<id>.md): its verdict row, its comparisons, its arms' rows and their
    learning-rate candidates (a choice within the margin of another candidate shows as such), the
    whole evidence for one claim in one place (the README quotes one of them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.md"), *folder.glob("*.png")]:
        stale.unlink()  # a claim dropped from study.yaml leaves no card behind
    written = []
    for v in verdict_rows:
        pairs = [r for r in pair_rows if r["claim"] == v["id"]]
        tasks = {r.get("task") for r in pairs}
        cells = arms[arms.arm.isin(v["arms"]) & arms.task.isin(tasks)] if not arms.empty else arms
        cells = cells.assign(order=cells.arm.map(v["arms"].index)).sort_values(["task", "order"]) if not cells.empty else cells
        used = sorted({d for a in cells.to_dict("records") for d in (a["devices"] if isinstance(a.get("devices"), dict) else {})},
                      key=lambda d: int(device_label.get(d, "D0")[1:]))
        head = (f"Claim `{v['id']}`, {scale} tier (rules, protocol and learning-rate choices: the claims.md beside this claims/ folder)"
                + (f"; devices: {', '.join(f'{device_label[d]} = {d}' for d in used)}" if used else "") + ".")
        text = [head, "", *VERDICT_HEAD, verdict_line(v), "", *PAIR_HEAD, *(pair_line(r) for r in pairs), "", *ARM_HEAD,
                *(arm_line(a, device_label) for a in cells.to_dict("records"))]
        tried = (tuning[tuning.arm.isin(v["arms"]) & tuning.task.isin(tasks)] if tuning is not None and not tuning.empty
                 else pd.DataFrame())
        if not tried.empty:
            tried = tried.assign(order=tried.arm.map(v["arms"].index)).sort_values(["task", "order", "lr"])
            text += ["", "Learning-rate candidates (tuning seed; held-out rows choose, dev shown only):", "",
                     *TUNING_HEAD, *(tuning_line(t) for t in tried.to_dict("records"))]
        path = folder / f"{v['id']}.md"
        path.write_text("\n".join(text) + "\n")
        written.append(path)
    return written


def build_report(records: Records, out: Path, scale: str, seeds: int, spec: dict[str, Any] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    spec = spec or {}
    runs = final_runs(records, scale)
    margins = {str(k): float(v) for k, v in (spec.get("margins") or {}).items()}
    planned = {(p["arm"], p["task"]) for p in records.planned
               if p.get("param.scale") == scale and p.get("role") == "final"} or None
    arms = arm_table(runs, failed_by_arm(records, scale), seeds, margins, planned)
    tuning = tuning_table(records, scale)
    edges = {(t["arm"], t["task"]): t["edge"] for t in tuning.to_dict("records") if t["edge"]}
    near_best = near_best_lrs(tuning, margins)
    # The claims this tier can decide: those whose two arms are among its variants (study.yaml
    # checked every claim against every tier when the study was read).
    variants = set(spec.get("variants") or {})
    named = {x for c in spec.get("claims") or [] for x in (c.get("arm"), c.get("baseline"), *(c.get("then") or []))}
    claims = [c for c in claims_of(spec, known_arms=named)
              if not variants or {c.arm, c.baseline, *(c.then or ())} <= variants]
    pair_rows, verdict_rows = [], []
    for claim in claims:
        rows, verdict = evaluate_claim(claim, runs, margins, edges, planned, seeds, near_best)
        pair_rows += [{"claim": claim.id, "test": claim.test, **r} for r in rows]
        unit = "x" if claim.test == "lr_ratio" else ""
        measured = "; ".join(
            f"{r['task']}: {r['what']}" if r.get("missing") else
            f"{r['task']}: {fmt(r.get('median'), 2 if unit else 1, not unit)}{unit}"
            + (f" [{fmt(r.get('low'), 1, True)}, {fmt(r.get('high'), 1, True)}] (n={r['n_pairs']})" if r.get("n_pairs") else "")
            + (f" (tied lrs: {fmt_ratio(r['low'])} to {fmt_ratio(r['high'])})" if unit and has_tie_range(r) else "")
            + ("" if r["verdict"] == verdict else f" {r['verdict']}") for r in rows) or "no runs yet"
        verdict_rows.append({"claim": claim_label(claim), "id": claim.id,
                             "arms": [claim.arm, claim.baseline, *(claim.then or ())],
                             "test": claim.test, "verdict": verdict, "measured": measured})
    efficiency = efficiency_rows()
    ok_scale = records.ok[records.ok["param.scale"] == scale] if not records.ok.empty and "param.scale" in records.ok \
        else pd.DataFrame()
    commits = sorted(set(ok_scale.git_commit.dropna())) if "git_commit" in ok_scale else []
    devices = sorted(set(ok_scale.device.dropna())) if "device" in ok_scale else []
    device_label = {d: f"D{i}" for i, d in enumerate(devices, start=1)}  # the Arms table names them so
    protocol = protocol_lines(runs, tuning)

    box = ["> **Protocol** (" + scale + "): " + (" · ".join(protocol) if protocol else "no finished runs yet") + ".",
           f"> Devices: {', '.join(f'{device_label[d]} = {d}' for d in devices) or '—'}. Margins (points of each task's metric): "
           + (", ".join(f"{k} {v:g}" for k, v in margins.items()) or f"{DEFAULT_MARGIN:g}") + ".", ""]
    verdicts = [*VERDICT_HEAD, *(verdict_line(v) for v in verdict_rows)]
    efficiency_md = ["", "| efficiency (bench) | paper | measured | target | verdict |", "|---|---|---|---|---|"]
    efficiency_md += [f"| {e['claim']} | {e['paper']} | {e['measured']} | {e['target']} | **{e['verdict']}** |"
                      for e in efficiency]
    intruders = intruder_rows()
    intruders_md = ["", f"| weights (make weights STUDY=intruders) | measured: mean [95% t-interval] over seeds | "
                        f"verdict (margin {INTRUDER_MARGIN} per matrix) |", "|---|---|---|"]
    intruders_md += [f"| {r['claim']} | {r['measured']} | **{r['verdict']}** |" for r in intruders]
    verdict_md = "\n".join(box + verdicts + (efficiency_md if efficiency else [])
                           + (intruders_md if intruders else [])) + "\n"

    n_ok = len(ok_scale)
    n_failed = sum(label.get("param.scale") == scale for label in records.failed_labels)
    lines = [f"# Claims report ({scale})", "",
             f"Runs: {len(runs)} final runs of {len(arms)} arm x task cells ({n_ok} ok runs in all, tuning "
             f"candidates included; {n_failed} failed); code version(s): {', '.join(commits) or '—'}.", "",
             "Rules: per arm, the median with its exact order-statistic interval (true coverage in brackets) and "
             "the mean with its t-interval. Per task, the mean paired difference over seeds with its 95% "
             "t-interval; non-inferiority and superiority read the one-sided 95% / 97.5% bounds, equivalence the "
             "90% interval (TOST), each against the task's margin and checked against the signed-rank "
             "(Hodges-Lehmann) interval and, where predictions were kept, the two-way bootstrap over seeds and "
             "dev examples. Both arms must beat the constant predictor (validity gate; against a control, such as "
             "training the head alone, only the arm must); an arm tuned to an end of "
             "its grid is 'not tested as specified', and so is an arm still rising when its step budget ran out "
             f"(on at least {RISING_SHARE:.0%} of its seeds early stopping never fired and the held-out score "
             f"gained at least the margin over the last {LATE_SHARE:.0%} of the steps). A claim is supported when every evaluable task supports it "
             "(at least min_tasks), refuted when a task's refutation survives Holm's correction over the claim's "
             "tasks, else undecided. A learning-rate ratio claim reads every ratio of the candidates whose "
             "tuning-seed held-out score lies within the margin of each arm's best (one seed cannot order them): "
             "supported when all are in the claimed range, refuted when none is, else undecided.",
             "", "## Verdicts", "", verdict_md,
             "## Arms", "", *ARM_HEAD]
    lines += [arm_line(a, device_label) for a in arms.to_dict("records")]
    lines += ["", "![curves](curves.png)", "", "## Comparisons", "", *PAIR_HEAD]
    lines += [pair_line(r) for r in pair_rows]
    lines += ["", "## Learning-rate choice (tuning seed; held-out training rows decide, dev shown only)", "", *TUNING_HEAD]
    lines += [tuning_line(t) for t in tuning.to_dict("records")]
    shared = spec.get("tune", {}).get("share") if isinstance(spec.get("tune"), dict) else None
    if shared:
        lines += ["", "Arms that take another arm's learning rate (study.yaml `tune.share`): "
                  + ", ".join(f"{k} ← {v}" for k, v in shared.items()) + "."]
    written = [out / "claims.md", out / "verdicts.md", out / "arms.csv", out / "paired.csv", out / "tuning.csv"]
    written += write_cards(out / "claims", verdict_rows, pair_rows, arms, device_label, scale, tuning)
    written += [p for c in claims if c.test == "improves"
                for p in [plot_improves(c, runs, out / "claims" / f"{c.id}.png")] if p]
    (out / "claims.md").write_text("\n".join(lines) + "\n")
    (out / "verdicts.md").write_text(verdict_md)
    arms.to_csv(out / "arms.csv", index=False)
    pd.DataFrame(pair_rows).to_csv(out / "paired.csv", index=False, float_format="%.6g")
    tuning.to_csv(out / "tuning.csv", index=False)
    curves = plot_curves(runs, out)
    return written + ([curves] if curves else [])
