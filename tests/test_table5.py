"""Table 5's layout: runs adapting different weight matrices at one budget, by weight type."""

from __future__ import annotations

import json

from analysis.records import load_records
from analysis.table5 import table5_markdown, build_table5, weight_type
from lora_repro.record import RECORD_NAME


def test_target_modules_map_to_the_papers_weight_types_in_its_order():
    assert weight_type(["value", "query"]) == "W_q,W_v"
    assert weight_type(["query", "key", "value", "attention.output.dense"]) == "W_q,W_k,W_v,W_o"
    assert weight_type(("q_proj",)) == "W_q"
    assert weight_type(["dense"]) is None and weight_type(None) is None


def test_table5_puts_each_weight_type_in_its_column_with_its_rank(tmp_path):
    for targets, r, scores in ((["query"], 8, (0.60, 0.62, 0.64)), (["query", "value"], 4, (0.70, 0.72, 0.74))):
        for seed, score in enumerate(scores, start=1):
            folder = tmp_path / f"{'_'.join(targets)}_{seed}"
            folder.mkdir()
            (folder / RECORD_NAME).write_text(json.dumps({
                "status": "ok", "task": "rotten_tomatoes", "model": "m", "method": "lora", "seed": seed,
                "method_info": {"family": "lora", "rank_key": "r"}, "hparams": {"r": r, "target_modules": targets},
                "params": {"adapted": 1, "trainable": 1, "total": 2}, "best_metrics": {"accuracy": score}}))
    table = build_table5(load_records(tmp_path))
    assert list(table.weight_type) == ["W_q", "W_q,W_v"] and list(table["rank"]) == [8, 4]
    assert list(table["median"]) == [62.0, 72.0] and list(table.n_seeds) == [3, 3]
    text = table5_markdown(table)
    assert "| Weight Type | W_q | W_q,W_v |" in text and "| Rank r (ours) | 8 | 4 |" in text
    assert "| WikiSQL (paper, GPT-3) | 70.4 | 73.7 |" in text
