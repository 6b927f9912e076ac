"""The claims protocol (experiments/claims): held-out training rows carved into their own split, a
tuned study choosing on them (never on the reported dev split), the statistics, and the verdicts."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from analysis.claims import Claim, evaluate_claim, steps_to
from analysis.stats import median_ci, paired
from lora_repro import studyspec as study_module
from lora_repro.data import HELDOUT_SPLIT, load_task
from lora_repro.errors import DataError
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
@pytest.fixture
def tuned_study(tmp_path, monkeypatch):
    experiments = tmp_path / "experiments"
    (experiments / "t").mkdir(parents=True)
    data_dir = write_sst2_dir(tmp_path / "SST-2", n_train=96, n_dev=32)
    spec = {
        "description": "a tuned study", "cost": "none",
        "common": [*TINY, f"task.data_dir={data_dir}", "task.heldout_rows=32", f"output_root={tmp_path / 'out'}"],
        "variants": {"a": ["method=lora"], "b": ["method=lora", "method.r=2"]},
        "seeds": [1, 2],
        "tune": {"key": "train.lr", "values": {"lora": [1.0e-3, 3.0e-3]}, "share": {"b": "a"}},
        "results": ["claims"],
    }
    (experiments / "t" / "study.yaml").write_text(json.dumps(spec))
    monkeypatch.setattr(study_module, "EXPERIMENTS_DIR", experiments)
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
    return pd.DataFrame([{"task": "sst2", "metric": "accuracy", "curve": [], "sha": None, **r} for r in rows])


def test_identical_arms_are_decided_by_their_trained_weights():
    claim = Claim("ratio 1 is LoRA", "identical", [("plus1", "lora")])
    same = runs_frame([{"arm": "plus1", "seed": s, "score": 80.0, "sha": f"h{s}"} for s in (1, 2)]
                      + [{"arm": "lora", "seed": s, "score": 80.0, "sha": f"h{s}"} for s in (1, 2)])
    assert evaluate_claim(claim, same)[1] == "supported"
    differ = same.copy()
    differ.loc[1, "sha"] = "other"
    rows, verdict = evaluate_claim(claim, differ)
    assert verdict == "refuted" and "on 1 of 2 seeds" in rows[0]["what"]


def test_steps_to_target_counts_a_run_that_never_gets_there_as_slower_than_any_that_did():
    assert steps_to([(10, 70.0), (20, 80.0), (30, 81.0)], 80.0) == 20.0
    assert steps_to([(10, 70.0)], 80.0) == math.inf
    claim = Claim("faster", "fewer_steps", [("plus", "lora")])
    fast = [(10, 85.0), (20, 85.0), (30, 85.0)]
    slow = [(10, 60.0), (20, 70.0), (30, 80.0)]
    runs = runs_frame([{"arm": "plus", "seed": s, "score": 85.0, "curve": fast} for s in (1, 2, 3)]
                      + [{"arm": "lora", "seed": s, "score": 80.0, "curve": slow} for s in (1, 2, 3)])
    rows, verdict = evaluate_claim(claim, runs)
    assert verdict == "supported" and rows[0]["median"] == 20.0  # 20 steps saved
    never = runs_frame([{"arm": "plus", "seed": s, "score": 50.0, "curve": [(10, 50.0), (20, 50.0), (30, 50.0)]}
                        for s in (1, 2, 3)] + [{"arm": "lora", "seed": s, "score": 80.0, "curve": slow} for s in (1, 2, 3)])
    rows, verdict = evaluate_claim(claim, never)
    assert verdict == "refuted" and rows[0]["median"] == -10.0  # never (= step 40) vs step 30


def test_a_paired_claim_over_too_few_seeds_is_undecided():
    claim = Claim("beats", "superior", [("a", "b")])
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
    claim = Claim("LoRA matches FT", "noninferior", [("lora", "full_ft")])
    collapsed = runs_frame([{"arm": arm, "seed": s, "score": 68.38, "constant": 68.38}
                            for arm in ("lora", "full_ft") for s in range(1, 6)])
    rows, verdict = evaluate_claim(claim, collapsed)
    assert verdict == "not evaluable" and rows[0]["verdict"] == "not evaluable"
    assert "lora did not learn: 0/5 seeds beat the constant predictor (68.4) by 5 points" in rows[0]["what"]
    learned = runs_frame([{"arm": arm, "seed": s, "score": 80.0 + 0.1 * s, "constant": 50.9}
                          for arm in ("lora", "full_ft") for s in range(1, 6)])
    assert evaluate_claim(claim, learned)[1] == "supported"


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
