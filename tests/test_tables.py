"""The Table 2 builder on synthetic records: medians over seeds, published values joined, missing
cells left missing, failed and corrupt records excluded."""

import pandas as pd
import pytest

from analysis.records import load_records
from analysis.tables import build_table2, to_markdown
from lora_repro.record import write_record


def record(task, method, seed, metrics, adapted, model="roberta_base", status="ok"):
    return {"status": status, "error": None if status == "ok" else "boom", "task": task, "model": model,
            "method": method, "seed": seed, "hparams": {"r": 8}, "metrics": metrics, "best_metrics": metrics,
            "params": {"adapted": adapted, "trainable": adapted + 10, "total": 10**8}, "config": {"train": {"lr": 5e-4}}}


@pytest.fixture
def runs(tmp_path):
    for seed, acc in ((1, 0.95), (2, 0.94), (3, 0.96)):
        write_record(tmp_path / f"sst2_{seed}", record("sst2", "lora", seed, {"accuracy": acc}, 294_912))
    for seed, (m, mm) in ((1, (0.876, 0.870)), (2, (0.874, 0.868))):
        write_record(tmp_path / f"mnli_{seed}", record("mnli", "lora", seed, {"matched_accuracy": m, "mismatched_accuracy": mm}, 294_912))
    write_record(tmp_path / "cola_1", record("cola", "lora", 1, {"mcc": 0.60, "accuracy": 0.8}, 294_912))
    write_record(tmp_path / "sst2_failed", record("sst2", "lora", 4, {"accuracy": 0.10}, 294_912, status="failed"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "record.json").write_text("{")
    write_record(tmp_path / "rt", record("rotten_tomatoes", "bitfit", 1, {"accuracy": 0.8}, 25_728, model="minilm_l6"))
    return tmp_path


def test_medians_published_values_and_missing_cells(runs):
    records = load_records(runs)
    table = build_table2(records).set_index(["model", "method", "task"])
    sst2 = table.loc[("roberta_base", "lora", "sst2")]
    assert sst2["median"] == pytest.approx(95.0) and sst2["n_seeds"] == 3  # the failed seed-4 run is not used
    assert sst2["published"] == 95.1 and sst2["diff"] == pytest.approx(-0.1)
    assert sst2["spread"] == pytest.approx(0.8165, abs=1e-3)
    assert table.loc[("roberta_base", "lora", "mnli"), "median"] == pytest.approx(87.5)  # matched accuracy
    assert table.loc[("roberta_base", "lora", "cola"), "median"] == pytest.approx(60.0)  # MCC, not accuracy
    rte = table.loc[("roberta_base", "lora", "rte")]
    assert pd.isna(rte["median"]) and rte["n_seeds"] == 0 and rte["published"] == 86.6  # missing, never filled
    avg = table.loc[("roberta_base", "lora", "avg")]
    assert pd.isna(avg["median"]) and avg["published"] == 87.2  # no Avg over an incomplete row
    rt = table.loc[("minilm_l6", "bitfit", "rotten_tomatoes")]
    assert rt["median"] == pytest.approx(80.0) and pd.isna(rt["published"])


def test_markdown_lists_excluded_records(runs):
    records = load_records(runs)
    text = to_markdown(build_table2(records), records)
    assert "| roberta_base (lora) | 0.3M |" in text
    assert "95.0±0.8 (3) [paper 95.1, -0.1]" in text
    assert "1 failed, 1 unreadable" in text and "sst2_failed" in text and "broken" in text


def test_runs_of_different_recipes_are_not_pooled(tmp_path):
    for seed, (acc, experiment) in enumerate(((0.95, "paper_roberta_base_lora"), (0.70, "mini"), (0.96, "paper_roberta_base_lora"))):
        write_record(tmp_path / str(seed), {**record("sst2", "lora", seed, {"accuracy": acc}, 294_912), "experiment": experiment})
    table = build_table2(load_records(tmp_path))
    sst2 = table[table.task == "sst2"].set_index("experiment")
    assert sst2.loc["paper_roberta_base_lora", "median"] == pytest.approx(95.5)
    assert sst2.loc["mini", "median"] == pytest.approx(70.0) and sst2.loc["mini", "n_seeds"] == 1
    assert "[mini]" in to_markdown(table, load_records(tmp_path))


def test_runs_with_different_overrides_are_not_pooled(tmp_path):
    for seed, (acc, overrides) in enumerate(((0.9, ""), (0.6, "train.lr=1e-2"), (0.92, ""))):
        write_record(tmp_path / str(seed), {**record("sst2", "lora", seed, {"accuracy": acc}, 294_912), "overrides": overrides})
    table = build_table2(load_records(tmp_path))
    sst2 = table[table.task == "sst2"].set_index("variant")
    assert sst2.loc["", "median"] == pytest.approx(91.0) and sst2.loc["train.lr=1e-2", "median"] == pytest.approx(60.0)
    assert pd.isna(sst2.loc["train.lr=1e-2", "published"])  # a changed recipe is not the paper's row
    assert "[train.lr=1e-2]" in to_markdown(table, load_records(tmp_path))


def test_recipe_variant_is_the_resolved_difference_from_the_named_defaults(sst2_dir):
    """The label a run's record keeps (lora_repro.job.prepare -> trainer.run's `overrides`); a CLI
    run writing it is tests/test_job.py's submitit test."""
    from lora_repro.config import compose_job_with_choices
    from lora_repro.job import prepare

    base = ["model=tiny_bert", "task=sst2", f"task.data_dir={sst2_dir}", "logger.wandb.mode=disabled",
            "train.max_steps=1", "train.checkpoint_every=0"]
    variants = []
    for extra in (["method.r=4", "train.lr=1e-3"], ["train.lr=0.001", "method.r=4"], []):
        overrides = [*base, *extra]
        variants.append(prepare(*compose_job_with_choices(overrides), overrides).recipe)
    # however it was typed; the shared train.* settings of this test are part of every variant, but
    # not checkpoint_every, which never changes a result (probe F14: it split one recipe into two rows)
    assert variants[0] == variants[1] == "method.r=4 train.lr=0.001 train.max_steps=1"
    assert variants[2] == "train.max_steps=1"


def test_the_same_recipe_and_seed_counts_once(tmp_path):
    for folder, acc in (("a", 0.90), ("b", 0.90), ("c", 0.80)):
        seed = 2 if folder == "c" else 1
        write_record(tmp_path / folder, record("sst2", "lora", seed, {"accuracy": acc}, 294_912))
    sst2 = build_table2(load_records(tmp_path)).set_index("task").loc["sst2"]
    assert sst2["n_seeds"] == 2 and sst2["median"] == pytest.approx(85.0)


def test_the_reported_metric_is_the_one_the_runs_task_config_names(tmp_path):
    """Design review: the main metric was declared twice (the task yaml's, used for tuning and early
    stopping, and a table in analysis). A run whose task says main_metric=f1 is reported on F1."""
    for seed, (acc, f1) in enumerate(((0.80, 0.86), (0.82, 0.88)), start=1):
        write_record(tmp_path / str(seed), {**record("mrpc", "lora", seed, {"accuracy": acc, "f1": f1}, 294_912),
                                            "config": {"task": {"main_metric": "f1"}, "train": {"lr": 5e-4}}})
    table = build_table2(load_records(tmp_path)).set_index("task")
    assert table.loc["mrpc", "median"] == pytest.approx(87.0)
