"""The Table 3 (E2E) builder on synthetic records: means over seeds, the published row of the same
model and method at the nearest size, missing metrics left missing, GLUE records kept out."""

import pandas as pd
import pytest

from analysis.records import load_records
from analysis.table3 import build_table3, table3_markdown
from analysis.tables import build_table2
from lora_repro.record import write_record


def e2e_record(method, seed, metrics, adapted, model="gpt2_medium"):
    return {"status": "ok", "error": None, "task": "e2e", "model": model, "method": method, "seed": seed,
            "hparams": {}, "metrics": metrics, "best_metrics": None,
            "params": {"adapted": adapted, "trainable": adapted, "total": 355_000_000}, "config": {"train": {"lr": 2e-4}}}


@pytest.fixture
def runs(tmp_path):
    for seed, bleu in ((1, 0.700), (2, 0.705), (3, 0.710)):
        write_record(tmp_path / f"lora_{seed}", e2e_record(
            "lora", seed, {"BLEU": bleu, "NIST": 8.8, "METEOR": 0.47, "ROUGE_L": 0.72, "CIDEr": 2.5}, 393_216))
    # Adapter^L has two published sizes; r=6 counts 0.37M, so it joins the 0.37M row.
    write_record(tmp_path / "adapter_small", e2e_record("adapter_l", 1, {"BLEU": 0.66, "NIST": 8.4}, 368_784))
    write_record(tmp_path / "smol", e2e_record("lora", 1, {"BLEU": 0.5, "NIST": 6.0, "METEOR": 0.4, "ROUGE_L": 0.6,
                                                           "CIDEr": 1.5}, 230_400, model="smollm2_135m"))
    write_record(tmp_path / "glue", {**e2e_record("lora", 1, {"accuracy": 0.9}, 294_912, model="roberta_base"),
                                     "task": "sst2", "best_metrics": {"accuracy": 0.9}})
    return tmp_path


def test_means_published_rows_and_missing_metrics(runs):
    records = load_records(runs)
    table = build_table3(records).set_index(["model", "method", "adapted", "metric"])
    bleu = table.loc[("gpt2_medium", "lora", 393_216, "BLEU")]
    assert bleu["mean"] == pytest.approx(70.5) and bleu["n_seeds"] == 3  # x100, mean of the seeds
    assert bleu["spread"] == pytest.approx(0.4082, abs=1e-3)
    assert bleu["published"] == 70.4 and bleu["diff"] == pytest.approx(0.1)
    assert bleu["published_row"] == "GPT-2 M (LoRA)"  # printed 0.35M, counted 0.39M: still this row
    assert table.loc[("gpt2_medium", "lora", 393_216, "NIST"), "mean"] == pytest.approx(8.8)  # NIST not scaled
    small = table.loc[("gpt2_medium", "adapter_l", 368_784, "BLEU")]
    assert small["published"] == 66.3  # the 0.37M row, not the 11.09M one
    met = table.loc[("gpt2_medium", "adapter_l", 368_784, "METEOR")]
    assert pd.isna(met["mean"]) and met["n_seeds"] == 0 and met["published"] == 45.0  # missing, never filled
    smol = table.loc[("smollm2_135m", "lora", 230_400, "BLEU")]
    assert smol["mean"] == pytest.approx(50.0) and pd.isna(smol["published"])  # no paper row for another model
    assert "sst2" not in set(build_table3(records).get("task", []))
    assert set(build_table2(records).task) == {"sst2", "mnli", "mrpc", "cola", "qnli", "qqp", "rte", "stsb", "avg"}


def test_markdown(runs):
    text = table3_markdown(build_table3(load_records(runs)))
    assert "| gpt2_medium (lora) | 0.39M | 70.5±0.4 (3) [paper 70.4, +0.1]" in text
    assert "GPT-2 M (Adapter^L)*" in text
