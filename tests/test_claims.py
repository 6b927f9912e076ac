"""The claims protocol (experiments/claims): held-out training rows carved into their own split, a
tuned study choosing on them (never on the reported dev split), the statistics, and the verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.claims import (Claim, claim_label, comparison_cell, convergence, evaluate_claim, plot_curves, plot_improves,
                             steps_to)
from analysis.stats import median_ci, paired
from lora_repro import studyspec as study_module
from lora_repro.studyspec import claims_of
from lora_repro.data import HELDOUT_SPLIT, load_task
from lora_repro.errors import ConfigError, DataError
from lora_repro.record import RECORD_NAME
from lora_repro.study import load_study, plan

from .conftest import TINY, compose_cfg, write_sst2_dir


# ------------------------------------------------------------------------------ held-out training rows
def test_heldout_rows_leave_the_training_data_and_are_the_same_for_every_seed(tmp_path):
    data_dir = write_sst2_dir(tmp_path / "SST-2", n_train=256, n_dev=64)
    cfg = compose_cfg(*TINY, f"task.data_dir={data_dir}", "task.heldout_rows=40", "task.max_eval_samples=30")
    data = load_task(cfg.task)
    assert len(data.train) == 216 and len(data.evals[HELDOUT_SPLIT]) == 40
    assert len(data.evals["validation"]) == 30  # max_eval_samples trims the dev split, not the held-out rows
    held = set(data.evals[HELDOUT_SPLIT]["sentence"])
    assert not held & set(data.train["sentence"])
    assert held | set(data.train["sentence"]) == {line.split("\t")[0] for line in
                                                 (data_dir / "train.tsv").read_text().splitlines()[1:]}
    again = load_task(compose_cfg(*TINY, f"task.data_dir={data_dir}", "task.heldout_rows=40", "seed=7").task)
    assert again.evals[HELDOUT_SPLIT]["sentence"] == data.evals[HELDOUT_SPLIT]["sentence"]
    # max_train_samples then subsamples what is left
    small = load_task(compose_cfg(*TINY, f"task.data_dir={data_dir}", "task.heldout_rows=40",
                                  "task.max_train_samples=100").task)
    assert len(small.train) == 100 and not set(small.train["sentence"]) & held


def test_heldout_rows_that_leave_no_training_data_are_one_error(tmp_path):
    data_dir = write_sst2_dir(tmp_path / "SST-2", n_train=50, n_dev=10)
    with pytest.raises(DataError, match=r"task.heldout_rows=50 leaves no training rows \(the train split has 50\)"):
        load_task(compose_cfg(*TINY, f"task.data_dir={data_dir}", "task.heldout_rows=50").task)


def test_a_run_with_heldout_rows_keeps_the_dev_metrics_names_and_adds_heldout_ones(tmp_path):
    from lora_repro.config import validate
    from lora_repro.trainer import run

    data_dir = write_sst2_dir(tmp_path / "SST-2", n_train=96, n_dev=32)
    cfg = compose_cfg(*TINY, f"task.data_dir={data_dir}", "task.heldout_rows=32", "train.epochs=2",
                      "method=lora", "train.lr=1e-3", f"output_root={tmp_path / 'out'}", "save_checkpoint=false",
                      "train.checkpoint_every=0")
    record = run(cfg, validate(cfg), tmp_path / "run")
    assert {"accuracy", "heldout_accuracy"} <= set(record["metrics"])
    assert not any(k.startswith("validation_") for k in record["metrics"])
    assert [e["step"] for e in record["eval_curve"]] == [4, 8]  # 64 rows / 16 per step, every epoch
    assert all({"accuracy", "heldout_accuracy"} <= set(e) for e in record["eval_curve"])


# ------------------------------------------------------------------------------------ tuned studies
def write_study(tmp_path, monkeypatch, **changes):
    experiments = tmp_path / "experiments"
    (experiments / "t").mkdir(parents=True, exist_ok=True)
    data_dir = write_sst2_dir(tmp_path / "SST-2", n_train=96, n_dev=32)
    spec = {
        "description": "a tuned study", "cost": "none",
        "common": [*TINY, f"task.data_dir={data_dir}", "task.heldout_rows=32", f"output_root={tmp_path / 'out'}"],
        "variants": {"a": ["method=lora"], "b": ["method=lora", "method.r=2"]},
        "seeds": [1, 2],
        "tune": {"key": "train.lr", "values": {"lora": [1.0e-3, 3.0e-3]}, "seed": 0, "extend": {"factor": 3, "times": 2}},
        "results": ["claims"], **changes,
    }
    (experiments / "t" / "study.yaml").write_text(json.dumps(spec))
    monkeypatch.setattr(study_module, "EXPERIMENTS_DIR", experiments)
    return spec


@pytest.fixture
def tuned_study(tmp_path, monkeypatch):
    write_study(tmp_path, monkeypatch,
                tune={"key": "train.lr", "values": {"lora": [1.0e-3, 3.0e-3]}, "share": {"b": "a"}})
    return load_study("t")


def fake_record(folder, status="ok", **metrics):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECORD_NAME).write_text(json.dumps({"status": status, "metrics": metrics}))


def test_a_tuned_study_waits_for_its_candidates_then_chooses_on_heldout_rows_not_dev(tuned_study):
    runs = plan(tuned_study, [])
    trials = [r for r in runs if r.role == "tune"]
    assert [(r.group[1], r.tuned, r.overrides[-1]) for r in trials] == [("a", "0.001", "seed=1"), ("a", "0.003", "seed=1")]
    waiting = [r for r in runs if r.run_dir is None]
    assert len(waiting) == 3  # a's seed 2, b's seeds 1 and 2
    # The better held-out score wins even though the other candidate has the better dev score.
    fake_record(trials[0].run_dir, heldout_accuracy=0.9, accuracy=0.5)
    fake_record(trials[1].run_dir, heldout_accuracy=0.6, accuracy=0.99)
    runs = plan(tuned_study, [])
    finals = [r for r in runs if r.role == "final"]
    assert all(r.run_dir is not None and r.tuned == "0.001" for r in finals)
    assert sorted((r.group[1], r.overrides[-1]) for r in finals) == [("a", "seed=1"), ("a", "seed=2"),
                                                                    ("b", "seed=1"), ("b", "seed=2")]
    assert next(r for r in finals if r.group[1] == "a" and r.overrides[-1] == "seed=1").run_dir == trials[0].run_dir
    assert [r.tuned for r in runs if r.role == "tune"] == ["0.003"]


def test_a_failed_candidate_never_wins_and_all_failed_leave_the_seeds_unplanned(tuned_study):
    trials = [r for r in plan(tuned_study, []) if r.role == "tune"]
    fake_record(trials[0].run_dir, status="failed")
    fake_record(trials[1].run_dir, heldout_accuracy=0.2)
    assert {r.tuned for r in plan(tuned_study, []) if r.role == "final"} == {"0.003"}
    fake_record(trials[1].run_dir, status="failed")
    runs = plan(tuned_study, [])
    assert [r for r in runs if r.role == "final" and r.run_dir is not None] == []


def test_tune_share_must_name_a_variant_that_tunes_itself(tuned_study, tmp_path):
    from lora_repro.errors import ConfigError

    path = tmp_path / "experiments" / "t" / "study.yaml"
    spec = json.loads(path.read_text())
    spec["tune"]["share"] = {"b": "nope"}
    path.write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=r"tune.share.b: 'nope' must name a variant that is tuned itself"):
        load_study("t")


# ---------------------------------------------------------------------------------------- statistics
def test_median_ci_skips_non_numbers_and_handles_ties():
    assert median_ci([2.5, 2.5, 2.5]).low == median_ci([2.5, 2.5, 2.5]).high == 2.5
    assert median_ci([1.0, float("nan"), 3.0]).estimate == 2.0  # a NaN score is not a number to average
    assert median_ci([1.0, None, 3.0]).n == 2


def test_paired_differences_use_only_the_seeds_both_arms_have():
    diff = paired({1: 5.0, 2: 6.0, 3: 7.0}, {1: 4.0, 2: 4.0})
    assert (diff.n, diff.mean.estimate, diff.diffs) == (2, 1.5, (1.0, 2.0))


def runs_frame(rows):
    return pd.DataFrame([{"task": "sst2", "metric": "accuracy", "curve": [], "curve_key": "heldout_accuracy", "sha": None,
                          "lr": 1e-3, **r} for r in rows])


def test_identical_arms_are_decided_by_their_trained_weights():
    claim = Claim("ratio 1 is LoRA", "identical", "plus1", "lora")
    same = runs_frame([{"arm": "plus1", "seed": s, "score": 80.0, "sha": f"h{s}"} for s in (1, 2)]
                      + [{"arm": "lora", "seed": s, "score": 80.0, "sha": f"h{s}"} for s in (1, 2)])
    assert evaluate_claim(claim, same)[1] == "supported"
    differ = same.copy()
    differ.loc[1, "sha"] = "other"
    rows, verdict = evaluate_claim(claim, differ)
    assert verdict == "refuted" and "on 1 of 2 seeds" in rows[0]["what"]
    assert comparison_cell({"test": "identical", **rows[0]}) == "largest dev difference 0.00"
    assert comparison_cell({"test": "superior", "median": -1.5, "low": -2.0, "high": -1.0}) == "-1.50 [-2.00, -1.00]"
    assert comparison_cell({"test": "superior", "missing": True, "median": None}) == "—"


def test_the_curves_plot_gives_each_arm_one_colour_on_every_task(tmp_path, monkeypatch):
    import matplotlib.figure

    figures = []
    savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), savefig(fig, *a, **k))[1])
    curve = [(8, 60.0), (16, 70.0)]
    arms_by_task = {"sst2": ["lora", "bitfit", "full_ft"], "cola": ["lora", "full_ft"]}  # bitfit only on sst2
    rows = [{"arm": arm, "task": task, "seed": 1, "score": 70.0, "curve": curve}
            for task, arms in arms_by_task.items() for arm in arms]
    path = plot_curves(runs_frame(rows), tmp_path)
    assert path == tmp_path / "curves.png" and path.stat().st_size > 0
    colours: dict[str, set] = {}
    for ax in figures[0].axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert set(colours) == {"lora", "bitfit", "full_ft"}
    assert all(len(c) == 1 for c in colours.values()) and len({c.pop() for c in colours.values()}) == 3


def test_steps_to_target_counts_a_run_that_never_gets_there_as_slower_than_any_that_did():
    assert steps_to([(10, 70.0), (20, 80.0), (30, 81.0)], 80.0) == 20.0
    assert steps_to([(10, 70.0)], 80.0) == math.inf
    claim = Claim("faster", "fewer_steps", "plus", "lora")
    fast = [(10, 85.0), (20, 85.0), (30, 85.0)]
    slow = [(10, 60.0), (20, 70.0), (30, 80.0)]
    runs = runs_frame([{"arm": "plus", "seed": s, "score": 85.0, "curve": fast} for s in (1, 2, 3)]
                      + [{"arm": "lora", "seed": s, "score": 80.0, "curve": slow} for s in (1, 2, 3)])
    rows, verdict = evaluate_claim(claim, runs)
    assert verdict == "supported" and rows[0]["median"] == 20.0  # 20 steps saved
    runs["constant"] = 82.0  # the baseline (80) no longer beats the constant predictor
    assert evaluate_claim(claim, runs)[1] == "not evaluable"
    never = runs_frame([{"arm": "plus", "seed": s, "score": 50.0, "curve": [(10, 50.0), (20, 50.0), (30, 50.0)]}
                        for s in (1, 2, 3)] + [{"arm": "lora", "seed": s, "score": 80.0, "curve": slow} for s in (1, 2, 3)])
    rows, verdict = evaluate_claim(claim, never)
    assert verdict == "refuted" and rows[0]["median"] == -10.0  # never (= step 40) vs step 30


def test_a_paired_claim_over_too_few_seeds_is_undecided():
    claim = Claim("beats", "superior", "a", "b")
    runs = runs_frame([{"arm": "a", "seed": 1, "score": 90.0}, {"arm": "b", "seed": 1, "score": 50.0}])
    assert evaluate_claim(claim, runs)[1] == "undecided"


def test_make_tables_writes_cis_and_paired_differences_against_full_finetuning(tmp_path):
    from analysis.records import load_records
    from analysis.tables import write_tables

    for method, scores in (("full_ft", (0.80, 0.82, 0.84)), ("lora", (0.81, 0.83, 0.85)), ("bitfit", (0.70,))):
        for seed, score in zip((1, 2, 3), scores):
            folder = tmp_path / "runs" / method / f"s{seed}"
            folder.mkdir(parents=True)
            (folder / RECORD_NAME).write_text(json.dumps({
                "status": "ok", "task": "sst2", "model": "m", "method": method, "seed": seed,
                "params": {"adapted": 1000 if method != "full_ft" else 10**6, "trainable": 1, "total": 10**6},
                "metrics": {"accuracy": score}, "best_metrics": {"accuracy": score}}))
    text = write_tables(load_records(tmp_path / "runs"), tmp_path / "out")
    ci = pd.read_csv(tmp_path / "out" / "stats_ci.csv")
    full = ci[ci.method == "full_ft"].iloc[0]
    assert (full["median"], full.n_seeds, full.ci_low, full.ci_high) == (pytest.approx(82.0), 3, 80.0, 84.0)
    assert full.ci_level == pytest.approx(0.75)  # [min, max] of 3 seeds
    pairs = pd.read_csv(tmp_path / "out" / "stats_paired.csv").set_index("row")
    lora = pairs.loc["lora 0.00M"]
    assert (lora.mean_diff, lora.ci_low, lora.ci_high, lora.n_pairs) == (pytest.approx(1.0), pytest.approx(1.0),
                                                                        pytest.approx(1.0), 3)
    assert pairs.loc["bitfit 0.00M"].n_pairs == 1 and pairs.loc["bitfit 0.00M"].mean_diff == pytest.approx(-10.0)
    assert "| m | sst2 | lora 0.00M − full_ft 1.0M | +1.00 [+1.00, +1.00] | +1.00 | 3 |" in text
    assert "| m | sst2 | full_ft 1.0M | 82.0 [80.0, 84.0] (75.0%) | 3 |" in text


def test_two_arms_that_both_predict_the_majority_class_are_not_evaluable_not_supported():
    """The claims critique's latent bug: both arms collapsed to the constant predictor give paired
    differences of exactly 0, which a non-inferiority test would call supported."""
    claim = Claim("LoRA matches FT", "noninferior", "lora", "full_ft")
    collapsed = runs_frame([{"arm": arm, "seed": s, "score": 68.38, "constant": 68.38}
                            for arm in ("lora", "full_ft") for s in range(1, 6)])
    rows, verdict = evaluate_claim(claim, collapsed)
    assert verdict == "not evaluable" and rows[0]["verdict"] == "not evaluable"
    assert "lora did not learn: 0/5 seeds beat the constant predictor (68.4) by 5 points" in rows[0]["what"]
    learned = runs_frame([{"arm": arm, "seed": s, "score": 80.0 + 0.1 * s, "constant": 50.9}
                          for arm in ("lora", "full_ft") for s in range(1, 6)])
    assert evaluate_claim(claim, learned)[1] == "supported"


def test_a_control_at_chance_is_beaten_only_when_the_claim_gates_the_arm_alone():
    """head-only on CoLA sits at chance (MCC ~4; the committed core tier). "Full FT beats the head
    alone" is then decidable: gate: arm applies the validity gate to full FT only. The default gates
    both; the arm itself at chance is still not evaluable; gate: arm is refused on a claim of
    matching, where a control at chance would make the claim hold trivially."""
    rows = [{"arm": "full_ft", "seed": s, "score": 15.0 + s, "constant": 0.0} for s in range(1, 8)]
    rows += [{"arm": "head_only", "seed": s, "score": 3.0 + 0.5 * s, "constant": 0.0} for s in range(1, 8)]
    control = Claim("FT beats the head alone", "superior", "full_ft", "head_only", gate="arm")
    out, verdict = evaluate_claim(control, runs_frame(rows), {"sst2": 2.5})
    assert verdict == "supported" and out[0]["median"] == pytest.approx(14.0)  # 12 + 0.5 x mean seed 4
    both = Claim("FT beats the head alone", "superior", "full_ft", "head_only")
    out, verdict = evaluate_claim(both, runs_frame(rows), {"sst2": 2.5})
    assert verdict == "not evaluable" and "head_only did not learn: 3/7 seeds" in out[0]["what"]
    flat = [dict(r, score=1.0 + 0.1 * r["seed"]) if r["arm"] == "full_ft" else r for r in rows]
    assert evaluate_claim(control, runs_frame(flat), {"sst2": 2.5})[1] == "not evaluable"
    spec = {"variants": {"lora": [], "head_only": []},
            "claims": [{"claim": "x", "test": "noninferior", "arm": "lora", "baseline": "head_only", "gate": "arm"}]}
    with pytest.raises(ConfigError, match="gate 'arm'.*'arm' on a superior claim"):
        claims_of(spec)


def test_a_glue_level_claim_needs_enough_evaluable_tasks():
    from analysis.claims import combine

    assert combine(["supported", "not evaluable", "not evaluable"], min_evaluable=3) == \
        "undecided (1 of 3 comparisons evaluable, 3 needed)"
    assert combine(["supported", "supported", "supported", "not evaluable"], min_evaluable=3) == "supported"
    assert combine(["not evaluable", "not evaluable"]) == "not evaluable"
    assert combine(["supported", "refuted", "not evaluable"]) == "refuted"


def test_a_run_records_what_the_constant_predictor_scores(tmp_path, sst2_dir):
    from lora_repro.config import validate
    from lora_repro.trainer import run

    cfg = compose_cfg(*TINY, f"task.data_dir={sst2_dir}", "task.heldout_rows=32", "train.max_steps=2",
                      "save_checkpoint=false", "train.checkpoint_every=0")
    record = run(cfg, validate(cfg), tmp_path / "r")
    dev_labels = [int(line.rsplit("\t", 1)[1]) for line in (sst2_dir / "dev.tsv").read_text().splitlines()[1:]]
    majority = max(dev_labels.count(0), dev_labels.count(1)) / len(dev_labels)
    assert record["constant_metrics"]["accuracy"] == pytest.approx(majority)
    assert set(record["constant_metrics"]) == {"accuracy", "heldout_accuracy"}


# ------------------------------------------------------------------- the claims protocol's planner
def test_a_tuning_seed_reports_nothing_and_every_reporting_seed_runs_the_choice(tmp_path, monkeypatch):
    write_study(tmp_path, monkeypatch, tune={"key": "train.lr", "values": {"lora": [1.0e-3, 3.0e-3]}, "seed": 0})
    runs = plan(load_study("t"), [])
    trials = [r for r in runs if r.role == "tune"]
    assert sorted((r.group[1], r.tuned, r.seed) for r in trials) == [("a", "0.001", 0), ("a", "0.003", 0),
                                                                    ("b", "0.001", 0), ("b", "0.003", 0)]
    assert all(r.run_dir is None and r.seed in (1, 2) for r in runs if r.role == "final")
    fake_record(next(r for r in trials if r.group[1] == "a" and r.tuned == "0.001").run_dir, heldout_accuracy=0.8)
    fake_record(next(r for r in trials if r.group[1] == "a" and r.tuned == "0.003").run_dir, heldout_accuracy=0.7)
    runs = plan(load_study("t"), [])
    finals = [r for r in runs if r.role == "final" and r.group[1] == "a"]
    assert sorted((r.seed, r.tuned) for r in finals) == [(1, "0.001"), (2, "0.001")]
    # the chosen candidate stays a tuning run: seed 0 never enters the report
    assert all(r.run_dir not in {t.run_dir for t in trials} for r in finals)


def test_a_best_value_at_an_end_of_the_grid_adds_one_beyond_it_until_bracketed(tmp_path, monkeypatch):
    write_study(tmp_path, monkeypatch, variants={"a": ["method=lora"]})
    study = load_study("t")
    trials = {r.tuned: r for r in plan(study, []) if r.role == "tune"}
    fake_record(trials["0.001"].run_dir, heldout_accuracy=0.6)
    fake_record(trials["0.003"].run_dir, heldout_accuracy=0.7)    # the top end wins: 0.009 is tried
    runs = plan(study, [])
    assert sorted(r.tuned for r in runs if r.role == "tune") == ["0.001", "0.003", "0.009"]
    assert all(r.run_dir is None for r in runs if r.role == "final")  # the choice waits for it
    added = next(r for r in runs if r.tuned == "0.009")
    fake_record(added.run_dir, heldout_accuracy=0.65)               # bracketed: 0.003 is chosen
    runs = plan(study, [])
    assert {r.tuned for r in runs if r.role == "final"} == {"0.003"}
    assert sorted(r.tuned for r in runs if r.role == "tune") == ["0.001", "0.003", "0.009"]
    fake_record(added.run_dir, heldout_accuracy=0.9)                # still rising: once more (times: 2)...
    runs = plan(study, [])
    fake_record(next(r for r in runs if r.tuned == "0.027").run_dir, heldout_accuracy=0.95)
    runs = plan(study, [])                                          # ...and no further: the end is said in the report
    assert sorted(r.tuned for r in runs if r.role == "tune") == ["0.001", "0.003", "0.009", "0.027"]
    assert {r.tuned for r in runs if r.role == "final"} == {"0.027"}


def test_only_limits_a_variant_to_some_grid_values_and_a_tuning_seed_must_not_report(tmp_path, monkeypatch):
    from lora_repro.errors import ConfigError

    write_study(tmp_path, monkeypatch, grid={"method.dropout": [0.0, 0.1]}, only={"b": {"method.dropout": [0.1]}})
    runs = plan(load_study("t"), [])
    assert {r.values["method.dropout"] for r in runs if r.group[1] == "b"} == {"0.1"}
    assert {r.values["method.dropout"] for r in runs if r.group[1] == "a"} == {"0.0", "0.1"}
    write_study(tmp_path, monkeypatch, tune={"key": "train.lr", "values": {"lora": [1e-3]}, "seed": 2})
    with pytest.raises(ConfigError, match=r"tune.seed=2 must be an integer that is not one of the reporting seeds"):
        load_study("t")


@pytest.mark.parametrize("claim, message", [
    ({"claim": "x", "test": "better", "arm": "a", "baseline": "b"}, "test 'better' is not one of noninferior"),
    ({"claim": "x", "test": "superior", "arm": "a", "baseline": "nope"}, "nope is not a variant of the study"),
    ({"claim": "x", "test": "lr_ratio", "arm": "a", "baseline": "b"}, "an lr_ratio claim needs ratio: [low, high]"),
    ({"claim": "x", "test": "superior", "arm": "a", "baseline": "b", "margin": 2}, "unknown key(s) ['margin']"),
    ({"claim": "x", "test": "improves", "arm": "a", "baseline": "b"}, "an improves claim needs then: [arm, baseline]"),
    ({"claim": "x", "test": "superior", "arm": "a", "baseline": "b", "caveat": ["two", "models"]},
     "caveat must be one line of text"),
])
def test_a_claim_with_a_typo_stops_the_study_before_anything_runs(tmp_path, monkeypatch, claim, message):
    from lora_repro.errors import ConfigError

    write_study(tmp_path, monkeypatch, claims=[claim])
    with pytest.raises(ConfigError) as info:
        load_study("t")
    assert message in str(info.value) and "claims[0]" in str(info.value)


# --------------------------------------------------------------------------- claim-level decisions
def two_tasks(diffs_by_task, base=80.0):
    rows = []
    for task, diffs in diffs_by_task.items():
        for seed, d in enumerate(diffs, start=1):
            rows += [{"arm": "lora", "task": task, "seed": seed, "score": base + d + 0.01 * seed, "constant": 50.0},
                     {"arm": "full_ft", "task": task, "seed": seed, "score": base + 0.01 * seed, "constant": 50.0}]
    return runs_frame(rows)


def test_a_refutation_counts_for_the_claim_only_when_it_survives_holm():
    claim = Claim("LoRA matches FT", "noninferior", "lora", "full_ft")
    # task x: clearly worse than the margin (refuted, p tiny); task y: supported
    strong = two_tasks({"x": [-3.0, -3.2, -2.9, -3.1, -3.05], "y": [0.1, -0.1, 0.0, 0.2, 0.05]})
    rows, verdict = evaluate_claim(claim, strong, {"x": 1.0, "y": 1.0})
    assert [r["verdict"] for r in rows] == ["refuted", "supported"] and rows[0]["holm"] == "survives"
    assert verdict == "refuted"
    # a barely refuted task among 3 (p ~ 0.03) does not survive Holm over the claim's 3 tasks
    weak = two_tasks({"x": [-1.2, -2.6, -1.5, -2.9, -1.4], "y": [0.0] * 5, "z": [0.1, 0.0, 0.2, 0.1, 0.0]})
    rows, verdict = evaluate_claim(claim, weak, {"x": 1.0, "y": 1.0, "z": 1.0})
    assert rows[0]["verdict"] == "refuted" and 0.025 / 3 < rows[0]["p_refute"] < 0.05
    assert rows[0]["holm"] == "does not survive" and verdict == "undecided"


def test_a_comparison_waits_for_every_planned_seed():
    claim = Claim("LoRA matches FT", "noninferior", "lora", "full_ft")
    runs = two_tasks({"sst2": [0.0, 0.1, -0.1, 0.05, 0.0]})
    assert evaluate_claim(claim, runs, seeds=5)[1] == "supported"
    rows, verdict = evaluate_claim(claim, runs, seeds=7)  # 5 of 7 seeds landed so far
    assert verdict == "undecided" and "5 of 7 planned seeds in" in rows[0]["what"]


def test_a_margin_is_per_task():
    claim = Claim("LoRA matches FT", "noninferior", "lora", "full_ft")
    runs = two_tasks({"cola": [-2.0, -1.8, -2.1, -1.9, -2.0]})
    assert evaluate_claim(claim, runs, {"cola": 1.0})[1] == "refuted"
    assert evaluate_claim(claim, runs, {"cola": 2.5})[1] == "supported"


def test_an_arm_tuned_to_the_end_of_its_grid_is_not_tested_as_specified():
    claim = Claim("LoRA matches FT", "noninferior", "lora", "full_ft")
    runs = two_tasks({"sst2": [0.0] * 5})
    rows, verdict = evaluate_claim(claim, runs, edges={("lora", "sst2"): "largest tried"})
    assert verdict == "not tested as specified" and "lora: the chosen lr is the largest tried" in rows[0]["what"]


def test_a_run_that_used_its_whole_budget_while_still_rising_is_told_from_one_that_stopped_early():
    train = {"eval_every": 10, "early_stopping": {"patience": 3}}
    rising = [(10, 50.0), (20, 60.0), (30, 70.0), (40, 80.0)]  # best at the cap; 70 by step 30 (= 75%)
    assert convergence(rising, {"step": 40, "stopped_at_step": 40}, train) == (True, 10.0)
    flat = [(s, 70.0) for s in (10, 20, 30, 40, 50, 60)]  # best at 10, patience 3 x 10 steps ran out at 40+
    assert convergence(flat, {"step": 10, "stopped_at_step": 60}, train) == (False, 0.0)
    # Without early stopping every run uses its budget; a curve that falls late gained nothing.
    assert convergence([(10, 50.0), (20, 90.0), (30, 85.0), (40, 80.0)], {}, {"eval_every": 10}) == (True, 0.0)
    to_cap, gain = convergence([(10, 50.0)], {}, train)  # one evaluation: the record cannot say
    assert to_cap is None and math.isnan(gain)


def test_an_arm_still_rising_at_its_step_cap_on_half_its_seeds_is_not_tested_as_specified():
    claim = Claim("LoRA matches FT", "noninferior", "lora", "full_ft")
    runs = two_tasks({"sst2": [0.0, 0.1, -0.1, 0.05]})
    runs["to_cap"], runs["late_gain"] = True, 0.0
    assert evaluate_claim(claim, runs)[1] == "supported"  # ran to the cap but flat: converged enough
    ft = runs.index[runs.arm == "full_ft"]
    runs.loc[ft[:2], "late_gain"] = 1.5  # 2 of 4 FT seeds gained 1.5 points (margin 1) in their last quarter
    rows, verdict = evaluate_claim(claim, runs)
    assert verdict == "not tested as specified"
    assert "full_ft was still rising when its step budget ran out (2/4 seeds gained ≥ 1 points" in rows[0]["what"]
    assert evaluate_claim(claim, runs, {"sst2": 2.0})[1] == "supported"  # 1.5 < a 2-point margin
    runs.loc[ft[1], "late_gain"] = 0.5  # 1 of 4: below RISING_SHARE
    assert evaluate_claim(claim, runs)[1] == "supported"
    runs.loc[ft[:2], "late_gain"], runs.loc[ft[:2], "to_cap"] = 1.5, False  # early stopping fired: not rising
    assert evaluate_claim(claim, runs)[1] == "supported"


def test_the_arm_table_counts_runs_to_the_cap_and_names_each_arms_devices():
    from analysis.claims import arm_table

    runs = two_tasks({"sst2": [0.0, 0.1, -0.1]})
    runs["adapted"], runs["total"] = 10, 100
    runs["to_cap"], runs["late_gain"] = [True, True, False, True, True, True], [1.5, 0.2, 3.0, 0.0, 0.0, 0.0]
    runs["device"] = ["gpu: H200", "cpu: x", "cpu: x", "cpu: x", "gpu: H200", "gpu: H200"]  # rows: lora, FT per seed
    runs["selected_step"], runs["stopped_at"] = [40, 8, 16, 8, 48, 8], [48, 48, 64, 48, 48, 48]
    table = {r["arm"]: r for r in arm_table(runs, {}, 3, {"sst2": 1.0}).to_dict("records")}
    assert (table["lora"]["n_to_cap"], table["lora"]["n_rising"]) == (2, 1)  # seed 2 stopped early: not counted
    assert table["lora"]["late_gain_median"] == pytest.approx(0.75)  # median of 1.5 and 0.0
    assert (table["lora"]["selected_step"], table["lora"]["stopped_at"]) == (40, 48)  # medians over seeds
    assert table["lora"]["devices"] == {"gpu: H200": 2, "cpu: x": 1} and table["full_ft"]["devices"] == {"cpu: x": 2, "gpu: H200": 1}
    # a planned arm with no run yet, and one whose only run failed, get a row of counts
    rows = arm_table(runs, {("bitfit", "sst2"): 1}, 3, {"sst2": 1.0},
                     planned={("lora", "sst2"), ("full_ft", "sst2"), ("lora", "cola"), ("bitfit", "sst2")})
    counts = {(r["arm"], r["task"]): (r["n_ok"], r["n_failed"], r["n_planned"]) for r in rows.to_dict("records")}
    assert counts == {("lora", "sst2"): (3, 0, 3), ("full_ft", "sst2"): (3, 0, 3), ("bitfit", "sst2"): (0, 1, 3),
                      ("lora", "cola"): (0, 0, 3)}
    assert rows.n_to_cap.dtype.kind == rows.n_rising.dtype.kind == "i"  # the report prints "2 of 3", not "2.0 of 3"


def test_a_learning_rate_ratio_claim_reads_the_chosen_rates():
    claim = Claim("LoRA's lr is ~10x FT's", "lr_ratio", "lora", "full_ft", ratio=(3.0, 30.0))
    runs = two_tasks({"sst2": [0.0] * 3})
    runs.loc[runs.arm == "lora", "lr"] = 1e-3
    runs.loc[runs.arm == "full_ft", "lr"] = 1e-4
    rows, verdict = evaluate_claim(claim, runs)
    assert verdict == "supported" and rows[0]["median"] == pytest.approx(10.0)
    # one ratio per task, not a paired difference: the report prints no interval for it
    assert comparison_cell({"test": "lr_ratio", **rows[0]}) == "10.00x (ratio of chosen lrs; no interval)"
    runs.loc[runs.arm == "full_ft", "lr"] = 1e-3
    assert evaluate_claim(claim, runs)[1] == "refuted"
    runs.loc[runs.arm == "lora", "score"] = 51.0  # LoRA at chance (constant 50): its "best lr" means nothing
    rows, verdict = evaluate_claim(claim, runs)
    assert verdict == "not evaluable" and "lora did not learn" in rows[0]["what"]


def test_a_learning_rate_ratio_claim_counts_every_ratio_that_tied_candidates_allow():
    """One tuning seed's held-out score chooses each lr: candidates within the task's margin of the
    best are ties it cannot break, so the ratio claim holds only when every tied ratio is in range;
    a tie at an end of the grid tried leaves that side open."""
    import math

    from analysis.claims import near_best_lrs

    tuning = pd.DataFrame([  # held-out points on the tuning seed
        {"arm": "lora", "task": "sst2", "lr": 3e-4, "heldout": 84.4},
        {"arm": "lora", "task": "sst2", "lr": 1e-3, "heldout": 86.4},   # 0.4 below the best: tied
        {"arm": "lora", "task": "sst2", "lr": 3e-3, "heldout": 86.8},
        {"arm": "lora", "task": "sst2", "lr": 9e-3, "heldout": 84.0},
        {"arm": "full_ft", "task": "sst2", "lr": 1e-5, "heldout": 83.0},
        {"arm": "full_ft", "task": "sst2", "lr": 3e-5, "heldout": 85.6},  # 0.4 below: tied
        {"arm": "full_ft", "task": "sst2", "lr": 1e-4, "heldout": 86.0},
        {"arm": "full_ft", "task": "sst2", "lr": 3e-4, "heldout": 84.8},  # 1.2 below: not tied
    ])
    near = near_best_lrs(tuning, {"sst2": 1.0})
    assert near == {("lora", "sst2"): [1e-3, 3e-3], ("full_ft", "sst2"): [3e-5, 1e-4]}
    assert near_best_lrs(tuning, {"sst2": 0.3}) == {("lora", "sst2"): [3e-3], ("full_ft", "sst2"): [1e-4]}
    claim = Claim("LoRA's lr is ~10x FT's", "lr_ratio", "lora", "full_ft", ratio=(3.0, 30.0))
    runs = two_tasks({"sst2": [0.0] * 3})
    runs.loc[runs.arm == "lora", "lr"], runs.loc[runs.arm == "full_ft", "lr"] = 3e-3, 1e-4
    assert evaluate_claim(claim, runs)[1] == "supported"  # chosen 30x, no ties known
    rows, verdict = evaluate_claim(claim, runs, near_best=near)  # ties allow 10x to 100x
    assert verdict == "undecided" and (rows[0]["low"], rows[0]["high"]) == pytest.approx((10.0, 100.0))
    assert "lora 0.001, 0.003, full_ft 3e-05, 0.0001: ratios 10.00x to 100.00x" in rows[0]["what"]
    assert comparison_cell({"test": "lr_ratio", **rows[0]}) == \
        "30.00x (ratio of chosen lrs; no interval; 10.00x to 100.00x over lrs tied within the margin)"
    wide = Claim("LoRA's lr is 3x to 300x FT's", "lr_ratio", "lora", "full_ft", ratio=(3.0, 300.0))
    assert evaluate_claim(wide, runs, near_best=near)[1] == "supported"  # every tied ratio in range
    far = Claim("LoRA's lr is at most 3x FT's", "lr_ratio", "lora", "full_ft", ratio=(0.1, 3.0))
    assert evaluate_claim(far, runs, near_best=near)[1] == "refuted"  # no tied ratio in range
    # FT's 1e-5 tied too, and it is the smallest FT tried: lower rates may tie as well, so the ratio
    # is open above and "3x to 300x" can no longer be supported
    tuning.loc[(tuning.arm == "full_ft") & (tuning.lr == 1e-5), "heldout"] = 85.5
    open_near = near_best_lrs(tuning, {"sst2": 1.0})
    assert open_near[("full_ft", "sst2")] == [0.0, 1e-5, 3e-5, 1e-4]
    rows, verdict = evaluate_claim(wide, runs, near_best=open_near)
    assert verdict == "undecided" and rows[0]["high"] == math.inf
    assert "full_ft <= 1e-05, 3e-05, 0.0001" in rows[0]["what"] and "leaves that side open" in rows[0]["what"]
    assert comparison_cell({"test": "lr_ratio", **rows[0]}).endswith("10.00x to ∞ over lrs tied within the margin)")
    assert evaluate_claim(far, runs, near_best=open_near)[1] == "refuted"  # 10x and up: still none in range


def test_a_verdict_the_dev_sample_does_not_carry_is_undecided():
    """Seeds agree perfectly (the t-interval is a point), but the arms disagree on only 16 of 200 dev
    rows (LoRA wrong on 6, FT on 10): +2 points whose dev-sampling SE is also ~2 points (sqrt(16)/200).
    Kept predictions make that visible."""
    claim = Claim("beats", "superior", "lora", "full_ft")
    y = [i % 2 for i in range(200)]
    better = [1 - v if i < 6 else v for i, v in enumerate(y)]
    worse = [1 - v if 6 <= i < 16 else v for i, v in enumerate(y)]
    rows = []
    for seed in range(1, 6):
        rows += [{"arm": "lora", "seed": seed, "score": 97.0 + 0.001 * seed, "constant": 50.0, "labels": y,
                  "predictions": better},
                 {"arm": "full_ft", "seed": seed, "score": 95.0, "constant": 50.0, "labels": y, "predictions": worse}]
    out, verdict = evaluate_claim(claim, runs_frame(rows), {"sst2": 1.0})
    assert verdict == "undecided" and "two-way bootstrap" in out[0]["what"]
    assert out[0]["two_way_low"] <= 0.0 and out[0]["dev_rows"] == 200
    assert "too small to resolve a 1-point margin" in out[0]["what"]
    without = runs_frame([{k: v for k, v in r.items() if k not in ("labels", "predictions")} for r in rows])
    assert evaluate_claim(claim, without, {"sst2": 1.0})[1] == "supported"


def test_a_run_that_watches_held_out_rows_stops_early_and_keeps_its_dev_predictions(tmp_path):
    from lora_repro.config import validate
    from lora_repro.trainer import run

    data_dir = write_sst2_dir(tmp_path / "SST-2", n_train=160, n_dev=40)
    cfg = compose_cfg(*TINY, f"task.data_dir={data_dir}", "task.heldout_rows=32", "train.epochs=4", "train.eval_every=2",
                      "train.watch=[heldout]", "+train.early_stopping={metric: heldout_accuracy, patience: 2, min_evals: 3}",
                      "train.keep_predictions=true", "method=lora", "train.lr=1e-2", "save_checkpoint=false",
                      "train.checkpoint_every=0")
    record = run(cfg, validate(cfg), tmp_path / "run")
    # during training only the held-out rows were scored; the dev split once, at the selected step
    assert record["eval_curve"] and all(set(e) - {"step", "epoch"} == {"heldout_accuracy"} for e in record["eval_curve"])
    kept = record["predictions"]
    assert kept["split"] == "validation" and len(kept["labels"]) == len(kept["predictions"]) == 40
    accuracy = sum(p == y for p, y in zip(kept["predictions"], kept["labels"])) / 40
    assert record["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert record["selected"]["step"] <= record["throughput"]["train_steps"]


def test_the_intruder_claim_reads_the_weights_studys_counts(tmp_path):
    from analysis.claims import intruder_rows

    rows = []
    for seed in (1, 2, 3):
        for layer in range(2):
            for mtype in ("query", "value"):
                rows += [{"method": "lora", "r": 8, "seed": seed, "type": mtype, "layer": layer,
                          "intruders": 2 + (seed == 3), "random_intruders": 0},
                         {"method": "full_ft", "r": None, "seed": seed, "type": mtype, "layer": layer,
                          "intruders": 0, "random_intruders": 0}]
    rows += [{"method": "full_ft", "r": None, "seed": 1, "type": "dense", "layer": 0, "intruders": 9, "random_intruders": 0}]
    path = tmp_path / "intruders.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    found = intruder_rows(path)
    assert [r["verdict"] for r in found] == ["supported", "supported"]   # vs full FT, vs a random update
    assert "W_query/W_value" in found[0]["claim"] and found[0]["measured"].startswith("2.33 vs 0.00")
    # none anywhere, and a random update of the same rank and norm makes none either: the count cannot
    # see updates this small, so the tie says nothing (not "refuted")
    pd.DataFrame([{**r, "intruders": 0} for r in rows]).to_csv(path, index=False)
    found = intruder_rows(path)
    assert [r["verdict"] for r in found] == ["not evaluable", "not evaluable"]
    assert "a random ΔW of LoRA's rank and norm makes 0.00 per matrix" in found[0]["measured"]
    # where a random update of that size does make intruders, LoRA's none is evidence: refuted
    pd.DataFrame([{**r, "intruders": 0, "random_intruders": 3} for r in rows]).to_csv(path, index=False)
    assert [r["verdict"] for r in intruder_rows(path)] == ["refuted", "refuted"]


def test_a_gap_that_shrinks_with_model_size_is_decided_on_the_change_per_seed(tmp_path):
    claim = Claim("LoRA's gap to FT shrinks", "improves", "lora", "full_ft", then=("lora_big", "full_ft_big"))
    rows = []
    for seed in range(1, 6):
        rows += [{"arm": "full_ft", "seed": seed, "score": 85.0 + seed, "constant": 50.0},
                 {"arm": "lora", "seed": seed, "score": 82.0 + seed + 0.1 * (seed % 2), "constant": 50.0},   # -3
                 {"arm": "full_ft_big", "seed": seed, "score": 90.0 + seed, "constant": 50.0},
                 {"arm": "lora_big", "seed": seed, "score": 89.5 + seed - 0.1 * (seed % 2), "constant": 50.0}]  # -0.5
    out, verdict = evaluate_claim(claim, runs_frame(rows), {"sst2": 1.0})
    assert verdict == "supported" and out[0]["median"] == pytest.approx(2.5 - 0.2 * 3 / 5, abs=1e-9)
    # the gaps over the paired seeds, and as a share of FT's gain over the constant predictor (a
    # ceiling guard): 2.94 of FT's 88 - 50 = 38 points, 0.56 of its 93 - 50 = 43
    assert "gap -2.94 → -0.56 points over the 5 paired seeds (-7.7% → -1.3% of full_ft's gain" in out[0]["what"]
    # what one contrast of two models cannot show is said beside the verdict (study.yaml's caveat:)
    spec = {"claims": [{"claim": "gap shrinks", "source": "A 2020", "test": "improves", "arm": "lora",
                        "baseline": "full_ft", "then": ["lora_big", "full_ft_big"], "caveat": "two models, not a trend"}]}
    assert claim_label(claims_of(spec)[0]) == "gap shrinks (A 2020); *two models, not a trend*"
    assert claim_label(claim) == "LoRA's gap to FT shrinks"
    # a seed the small model lacks is no pair: both gaps are read over the same seeds
    fewer = runs_frame([r for r in rows if not (r["arm"] == "lora" and r["seed"] == 5)])
    out, _ = evaluate_claim(claim, fewer, {"sst2": 1.0})
    assert out[0]["n_pairs"] == 4 and "gap -2.95 → -0.55 points over the 4 paired seeds" in out[0]["what"]
    # drawn as a slope chart over the baseline's size (a file), and not drawn without the larger arms
    sized = runs_frame(rows).assign(total=lambda d: np.where(d.arm.str.endswith("_big"), 110_000_000, 22_000_000))
    assert plot_improves(claim, sized, tmp_path / "gap.png") == tmp_path / "gap.png"
    assert (tmp_path / "gap.png").stat().st_size > 5000
    missing = runs_frame([r for r in rows if r["arm"] != "lora_big"])
    assert plot_improves(claim, missing.assign(total=1), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    out, verdict = evaluate_claim(claim, missing)
    # No task has every arm: nothing was compared, so the claim is not run yet (not "undecided").
    assert verdict == "not run yet" and "no finished runs of lora_big" in out[0]["what"]
    two_tasks = pd.concat([runs_frame(rows).assign(task="cola"), missing])
    out, verdict = evaluate_claim(claim, two_tasks, {"cola": 1.0, "sst2": 1.0})
    # One task compared, one not yet: the claim waits for it (undecided), whatever the first says.
    assert [r["verdict"] for r in out] == ["supported", "not run yet"] and verdict == "undecided"


def test_a_gap_change_within_the_dev_sets_noise_is_not_called_an_improvement():
    """All four arms kept their predictions on the same 200 dev rows. Seeds agree exactly, so the
    t-interval of the change is a point (+2: the small model's FT is wrong on rows 0-19, its LoRA on
    rows 4-27, 4 more; the big model's arms agree); but that is 8 rows against 4 of 200, within the dev
    sample's noise: undecided, with the two-way interval beside it."""
    claim = Claim("LoRA's gap to FT shrinks", "improves", "lora", "full_ft", then=("lora_big", "full_ft_big"))
    y = [i % 2 for i in range(200)]
    flip = lambda rows: [1 - v if i in rows else v for i, v in enumerate(y)]  # noqa: E731
    rows = []
    for seed in range(1, 6):
        for arm, wrong in (("full_ft", range(20)), ("lora", range(4, 28)), ("full_ft_big", range(10)),
                           ("lora_big", range(10))):
            score = 100.0 - len(wrong) / 2 + (0.001 * seed if arm == "lora_big" else 0.0)
            rows.append({"arm": arm, "seed": seed, "score": score, "constant": 50.0, "labels": y,
                         "predictions": flip(wrong)})
    out, verdict = evaluate_claim(claim, runs_frame(rows), {"sst2": 1.0})
    assert out[0]["median"] == pytest.approx(2.0, abs=0.01) and out[0]["low"] > 1.0
    assert verdict == "undecided" and "two-way bootstrap" in out[0]["what"]
    assert out[0]["two_way_low"] <= 0.0 and out[0]["dev_rows"] == 200
    without = runs_frame([{k: v for k, v in r.items() if k not in ("labels", "predictions")} for r in rows])
    assert evaluate_claim(claim, without, {"sst2": 1.0})[1] == "supported"


def test_two_records_of_one_recipe_and_seed_that_disagree_are_named_and_one_counts(tmp_path, capsys):
    """Probe F15: which copy counted depended on the sort order of hash strings, silently."""
    from analysis.records import load_records
    from analysis.tables import run_scores

    for folder, score in (("a_copy", 0.90), ("b_copy", 0.56)):
        path = tmp_path / "runs" / folder
        path.mkdir(parents=True)
        (path / RECORD_NAME).write_text(json.dumps({
            "status": "ok", "task": "sst2", "model": "m", "method": "lora", "seed": 42,
            "params": {"adapted": 1000, "trainable": 1, "total": 10**6},
            "metrics": {"accuracy": score}, "best_metrics": {"accuracy": score}}))
    scores = run_scores(load_records(tmp_path / "runs"))
    assert len(scores) == 1 and scores.score.iloc[0] == pytest.approx(56.0)   # the folder that sorts last
    err = capsys.readouterr().err
    assert "2 records of one recipe and seed disagree" in err and "a_copy: 90.00" in err and "b_copy" in err


def test_a_claim_whose_arms_have_not_run_says_so_rather_than_undecided():
    claim = Claim("LoRA matches FT", "noninferior", "lora", "full_ft")
    rows, verdict = evaluate_claim(claim, runs_frame([{"arm": "head_only", "seed": 1, "score": 50.0}]))
    assert rows == [] and verdict == "not run yet"
    # A task where the study never runs one of the claim's arms is not the claim's task.
    at_least = Claim("LoRA >= BitFit", "noninferior", "lora", "bitfit")
    lora_on_cola = runs_frame([{"arm": "lora", "task": "cola", "seed": 1, "score": 50.0}])
    planned = {("lora", "cola"), ("lora", "sst2"), ("bitfit", "sst2")}
    rows, verdict = evaluate_claim(at_least, lora_on_cola, planned=planned)
    assert [(r["task"], r["what"]) for r in rows] == [("sst2", "no finished runs of lora, bitfit")]
    assert verdict == "not run yet"
    rows, verdict = evaluate_claim(at_least, lora_on_cola, planned=planned | {("bitfit", "cola")})
    assert [r["task"] for r in rows] == ["cola", "sst2"] and {r["verdict"] for r in rows} == {"not run yet"}


def test_a_planned_task_with_no_runs_yet_keeps_the_claim_undecided():
    """A new CoLA recipe replaced every CoLA record: the claim, supported on SST-2 and STS-B, waits
    for CoLA instead of reading as supported over the tasks that happen to have runs."""
    claim = Claim("LoRA matches FT", "noninferior", "lora", "full_ft")
    runs = two_tasks({"sst2": [0.0, 0.1, -0.1, 0.05, 0.0], "stsb": [0.1, 0.0, 0.05, -0.05, 0.0]})
    both = {(arm, task) for arm in ("lora", "full_ft") for task in ("sst2", "stsb")}
    assert evaluate_claim(claim, runs, planned=both)[1] == "supported"
    rows, verdict = evaluate_claim(claim, runs, planned=both | {("lora", "cola"), ("full_ft", "cola")})
    assert verdict == "undecided"
    assert [r["task"] for r in rows] == ["cola", "sst2", "stsb"]   # name order, runs or not
    assert rows[0]["what"] == "no finished runs of lora, full_ft"


def test_variants_with_the_same_recipe_are_named_when_planned(tmp_path, monkeypatch):
    """Probe C4: two variants that plan the same folders share one run each; the plan says so."""
    from lora_repro.study import describe, same_recipe_notes

    write_study(tmp_path, monkeypatch, tune=None, variants={"a": ["method=lora"], "b": ["method=lora"],
                                                         "c": ["method=lora", "method.r=2"]})
    study = load_study("t")
    runs = plan(study, [])
    assert same_recipe_notes(runs) == ["note: variants a, b have the same recipe: each of their 2 run folders is "
                                       "trained once and counts for every one of them"]
    assert same_recipe_notes(runs)[0] in describe(study, runs, {})


def test_the_cost_line_divides_the_job_time_over_the_devices(tmp_path, monkeypatch):
    from lora_repro.study import describe

    write_study(tmp_path, monkeypatch, tune=None, variants={"a": ["method=lora", "train.max_steps=4"]})
    study = load_study("t")
    runs = plan(study, [])
    samples = sum(r.samples for r in runs if not r.done)
    rate = samples / 7200.0  # samples/s at which the pending runs take 2 h of job time
    alone = describe(study, runs, {(runs[0].model, runs[0].method): rate})
    assert "2.00 h on this machine" in alone and "wall time" not in alone
    slots = describe(study, runs, {(runs[0].model, runs[0].method): rate}, devices=["cpu0", "cpu1"])
    assert "2.00 h on this machine" in slots and "on 2 devices at once, about 1.00 h of wall time" in slots
    # a method with no record yet is priced at the slowest rate measured on its model, and said so
    other = {(runs[0].model, "full_ft"): rate / 2, (runs[0].model, "bitfit"): rate * 2}
    borrowed = describe(study, runs, other)
    assert "4.00 h on this machine" in borrowed
    assert f"No record yet of {runs[0].method} on {runs[0].model}: priced at full_ft's" in borrowed
    assert "No measured throughput" not in borrowed
    assert "No measured throughput yet for" in describe(study, runs, {("another_model", "full_ft"): rate})


def test_a_model_with_no_record_is_priced_from_a_measured_one_by_the_weights_each_token_meets(tmp_path, monkeypatch):
    import dataclasses

    import yaml

    from lora_repro.study import describe, weights_per_token

    conf = Path(__file__).resolve().parents[1] / "conf" / "model"
    minilm, mpnet = (weights_per_token(yaml.safe_load((conf / f"{m}.yaml").read_text())["arch"]) for m in ("minilm_l6", "mpnet_base"))
    assert minilm == 6 * (4 * 384**2 + 2 * 384 * 1536) == 10_616_832
    assert mpnet == 12 * (4 * 768**2 + 2 * 768 * 3072) == 84_934_656   # 8x MiniLM's per token
    assert weights_per_token({"n_layer": 24, "n_embd": 1024}) == 24 * (4 + 8) * 1024**2   # GPT-2 names, i = 4h
    assert weights_per_token({"vocab_size": 10}) is None

    write_study(tmp_path, monkeypatch, tune=None, variants={"a": ["method=lora", "train.max_steps=4"]})
    study = load_study("t")
    runs = plan(study, [])
    target = runs[0]
    arch = target.recipe["model"]["arch"]
    half = dataclasses.replace(target, model="half", done=True, recipe={
        **target.recipe, "model": {**target.recipe["model"], "arch": {**arch, "num_hidden_layers": arch["num_hidden_layers"] / 2}}})
    samples = sum(r.samples for r in runs if not r.done)
    text = describe(study, [*runs, half], {("half", target.method): samples / 7200.0})
    assert "4.00 h on this machine" in text   # twice the layers: half the measured rate
    assert f"No record yet on {target.model}: priced from half's rates for the same methods, 2.0x slower" in text


def test_the_claims_recipe_gives_cola_and_stsb_their_own_protocol_and_leaves_other_tasks_as_they_were():
    """experiments/claims' per-task protocol (protocol_by_task): CoLA counts patience past MCC 0.10 and
    trains up to 8 epochs, STS-B up to 8 epochs with the common floor; SST-2's recipe keeps 4 epochs
    and no floor key, so its folders (and committed records) stand, and the report's protocol line
    says which floor each task used."""
    from analysis.claims import protocol_lines
    from lora_repro.rundir import canonical_recipe

    cola = compose_cfg("experiment=claims", "task=cola", "method=lora")
    sst2 = compose_cfg("experiment=claims", "task=sst2", "method=lora")
    stsb = compose_cfg("experiment=claims", "task=stsb", "method=full_ft")
    assert cola.train.epochs == 8 and cola.train.early_stopping.above_constant_by == pytest.approx(0.10)
    assert stsb.train.epochs == 8 and stsb.train.early_stopping.above_constant_by is None
    assert sst2.train.epochs == 4 and sst2.train.early_stopping.above_constant_by is None
    assert "above_constant_by" not in canonical_recipe(stsb)["train"]["early_stopping"]
    assert "above_constant_by" not in canonical_recipe(sst2)["train"]["early_stopping"]
    assert "protocol_by_task" not in canonical_recipe(sst2)   # the table itself is no part of a recipe
    runs = pd.DataFrame([{"task": name, "seed": 1, "config": {
        "model": {"name": "minilm_l6"}, "task": {"max_train_samples": 2000, "heldout_rows": 500, "max_length": 48},
        "train": {"epochs": cfg.train.epochs, "batch_size": 32, "eval_every": 8,
                  "early_stopping": {"metric": "heldout_mcc", "patience": 6, "min_evals": 8, "above_constant": True,
                                     "above_constant_by": cfg.train.early_stopping.above_constant_by}}}}
        for name, cfg in (("cola", cola), ("sst2", sst2))])
    cola_line, sst2_line = protocol_lines(runs, pd.DataFrame())
    assert "up to 8 epochs" in cola_line and "counted once it beats the constant predictor by 10 points)" in cola_line
    assert "up to 4 epochs" in sst2_line and "counted once it beats the constant predictor)" in sst2_line


def test_each_claim_gets_a_card_with_its_verdict_comparisons_and_arms_only(tmp_path):
    from analysis.claims import write_cards

    verdicts = [{"claim": "LoRA matches FT (T2)", "id": "lora_ft", "arms": ["lora", "full_ft"], "test": "noninferior",
                 "verdict": "undecided", "measured": "sst2: -2.4 [-3.9, -1.0] (n=7)"},
                {"claim": "BitFit", "id": "bitfit", "arms": ["lora", "bitfit"], "test": "noninferior",
                 "verdict": "not run yet", "measured": "sst2: no finished runs of bitfit"}]
    pairs = [{"claim": "lora_ft", "arm": "lora", "baseline": "full_ft", "task": "sst2", "test": "noninferior",
              "median": -2.4, "low": -3.9, "high": -1.0, "n_pairs": 7, "verdict": "undecided", "what": "why"},
             {"claim": "bitfit", "arm": "lora", "baseline": "bitfit", "task": "sst2", "verdict": "not run yet",
              "n_pairs": 0, "what": "no finished runs of bitfit", "missing": True}]
    ran = {"n_ok": 7, "n_failed": 0, "n_planned": 7, "task": "sst2", "metric": "accuracy", "lr": 1e-4, "adapted": 100,
           "adapted_pct": 1.0, "median": 80.0, "ci_low": 79.0, "ci_high": 81.0, "ci_level": 0.984, "mean": 80.0,
           "mean_low": 79.5, "mean_high": 80.5, "constant": 50.9, "n_to_cap": 0, "devices": {"cpu: X": 7}}
    arms = pd.DataFrame([{**ran, "arm": "full_ft"}, {**ran, "arm": "lora", "devices": {"cpu: Y": 7}},
                         {"arm": "bitfit", "task": "sst2", "n_ok": 0, "n_failed": 0, "n_planned": 7, "devices": math.nan},
                         {**ran, "arm": "lora", "task": "cola"}])
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "dropped_claim.md").write_text("old")
    tuning = pd.DataFrame([{"arm": arm, "task": task, "lr": lr, "heldout": h, "dev": d, "chosen": c, "edge": e}
                           for arm, task, lr, h, d, c, e in [("full_ft", "sst2", 1e-4, 86.0, 80.6, True, ""),
                                                             ("full_ft", "sst2", 3e-5, 85.6, 79.6, False, ""),
                                                             ("lora", "sst2", 3e-3, 86.8, 80.0, True, "largest tried"),
                                                             ("lora", "cola", 1e-3, 17.2, 5.1, True, ""),
                                                             ("bitfit", "sst2", 3e-3, 84.4, 78.3, True, "")]])
    written = write_cards(tmp_path / "cards", verdicts, pairs, arms, {"cpu: X": "D1", "cpu: Y": "D2"}, "core", tuning)
    assert sorted(p.name for p in (tmp_path / "cards").iterdir()) == ["bitfit.md", "lora_ft.md"] == sorted(p.name for p in written)
    card = (tmp_path / "cards" / "lora_ft.md").read_text().splitlines()
    assert card[0] == ("Claim `lora_ft`, core tier (rules, protocol and learning-rate choices: the claims.md beside "
                       "this claims/ folder); devices: D1 = cpu: X, D2 = cpu: Y.")
    assert card[4] == "| LoRA matches FT (T2) | noninferior | sst2: -2.4 [-3.9, -1.0] (n=7) | **undecided** |"
    body = "\n".join(card)
    assert "| lora_ft | lora − full_ft | sst2 | -2.40 [-3.90, -1.00] | — | 7 | undecided (why) |" in body
    assert "bitfit" not in body and "| lora | cola" not in body     # the claim's tasks and arms only
    arm_rows = [line.split(" | ")[0] for line in card if line.startswith(("| lora | sst2 (", "| full_ft | sst2 ("))]
    assert arm_rows == ["| lora", "| full_ft"]                       # in the claim's order: arm, then baseline
    # its arms' learning-rate candidates on its tasks, the claim's arm first, each arm's by lr
    assert card[card.index("| arm | task | lr | held-out | dev | chosen |") + 2:] == [
        "| lora | sst2 | 3.0e-03 | 86.8 | 80.0 | yes (largest tried: the best may lie beyond) |",
        "| full_ft | sst2 | 3.0e-05 | 85.6 | 79.6 |  |",
        "| full_ft | sst2 | 1.0e-04 | 86.0 | 80.6 | yes |"]
    bitfit = (tmp_path / "cards" / "bitfit.md").read_text()
    assert "| bitfit | sst2 | — | — | — | — | — | 0 / 0 / 7 | — | — | — |" in bitfit and "devices" in bitfit.splitlines()[0]
