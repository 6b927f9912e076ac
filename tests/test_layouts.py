"""Paper tables of the pivot layout (analysis/layouts.py): Table 5 from its tables.yaml entry, and a
new table of that shape added as one entry plus its CSV, with no code edited."""

from __future__ import annotations

import json
import shutil

import pytest
from omegaconf import OmegaConf

import analysis.published as published
from analysis.layouts import build_pivot, label_of, pivot_markdown
from analysis.published import table_spec
from analysis.records import load_records
from lora_repro.record import RECORD_NAME


def write_runs(folder, runs) -> None:
    """runs: (targets, r, scores by seed)."""
    for targets, r, scores in runs:
        for seed, score in enumerate(scores, start=1):
            run = folder / f"{'_'.join(targets)}_r{r}_{seed}"
            run.mkdir(parents=True)
            (run / RECORD_NAME).write_text(json.dumps({
                "status": "ok", "task": "rotten_tomatoes", "model": "m", "method": "lora", "seed": seed,
                "method_info": {"family": "lora", "rank_key": "r"}, "hparams": {"r": r, "target_modules": targets},
                "params": {"adapted": 1, "trainable": 1, "total": 2}, "best_metrics": {"accuracy": score}}))


def test_target_modules_map_to_the_papers_weight_types_in_its_order():
    spec = table_spec("table5")
    assert label_of(["value", "query"], spec) == "W_q,W_v"
    assert label_of(["query", "key", "value", "attention.output.dense"], spec) == "W_q,W_k,W_v,W_o"
    assert label_of(("q_proj",), spec) == "W_q"
    assert label_of(["dense"], spec) is None and label_of(None, spec) is None
    assert label_of(8.0, {}) == "8" and label_of(["a", "b"], {}) == "a,b"


def test_table5_puts_each_weight_type_in_its_column_with_its_rank(tmp_path):
    write_runs(tmp_path, [(["query"], 8, (0.60, 0.62, 0.64)), (["query", "value"], 4, (0.70, 0.72, 0.74)),
                          (["dense"], 8, (0.9, 0.9, 0.9))])  # no weight type of the paper's: left out
    table = build_pivot(load_records(tmp_path), "table5")
    assert list(table.weight_type) == ["W_q", "W_q,W_v"] and list(table["rank"]) == [8, 4]
    assert list(table["median"]) == [62.0, 72.0] and list(table.n_seeds) == [3, 3]
    assert (table.ci_low.tolist(), table.ci_high.tolist()) == ([60.0, 70.0], [64.0, 74.0])
    text = pivot_markdown(table, "table5")
    assert "| Weight Type | W_q | W_q,W_v |" in text and "| Rank r (ours) | 8 | 4 |" in text
    assert "| rotten_tomatoes (ours) | 62.0 [60.0, 64.0] (3) | 72.0 [70.0, 74.0] (3) |" in text
    assert "| WikiSQL (paper, GPT-3) | 70.4 | 73.7 |" in text and "| MultiNLI (paper, GPT-3) | 91.0 | 91.3 |" in text


@pytest.fixture
def paper_copy(tmp_path, monkeypatch):
    """A copy of analysis/paper/ that the analysis and the study reader both use."""
    import lora_repro.studyspec as studyspec

    copy = tmp_path / "paper"
    shutil.copytree(published.PAPER_DIR, copy)
    monkeypatch.setattr(published, "PAPER_DIR", copy)
    monkeypatch.setattr(studyspec, "TABLES_FILE", copy / "tables.yaml")
    table_spec.cache_clear()
    yield copy
    table_spec.cache_clear()


def test_a_new_table_of_the_pivot_layout_is_one_entry_and_its_csv(paper_copy, tmp_path):
    """A rank table (one column per rank; its published values made up for the test) takes a
    tables.yaml entry and a CSV: the study reader accepts it as a result, and it builds."""
    import lora_repro.studyspec as studyspec
    from analysis.study import builder

    specs = OmegaConf.load(paper_copy / "tables.yaml")
    specs.rank_table = {"published": "rank_table.csv", "kinds": ["classification"], "column": "task",
                        "family": "lora", "keep": ["hp.r"], "layout": "pivot",
                        "across": {"field": "hp.r", "name": "rank", "title": "Rank r"},
                        "published_across": "r", "published_row": "dataset", "published_suffix": "(made up)",
                        "title": "Accuracy by rank", "caption": "Ours: median [interval] (seeds)."}
    OmegaConf.save(specs, paper_copy / "tables.yaml")
    (paper_copy / "rank_table.csv").write_text("r,dataset,value\n4,Set A,80.0\n16,Set A,81.5\n")
    assert "rank_table" in studyspec.pivot_tables() and "rank_table" in studyspec.result_kinds()

    write_runs(tmp_path / "runs", [(["query", "value"], 16, (0.71, 0.73, 0.75)), (["query", "value"], 4, (0.60, 0.70, 0.80))])
    out = tmp_path / "results"
    out.mkdir()
    written = builder("rank_table")(load_records(tmp_path / "runs"), out, None)
    assert written == [out / "rank_table.md", out / "rank_table.csv"]
    text = (out / "rank_table.md").read_text()
    assert "| Rank r | 4 | 16 |" in text  # numeric order, not "16" < "4"
    assert "| rotten_tomatoes (ours) | 70.0 [60.0, 80.0] (3) | 73.0 [71.0, 75.0] (3) |" in text
    assert "| Set A (made up) | 80.0 | 81.5 |" in text
    assert (out / "rank_table.csv").read_text().splitlines()[0] == "rank,task,median,ci_low,ci_high,n_seeds"
