"""Plots from synthetic records: each PNG is written, non-empty and really a PNG."""

import pytest

from analysis.plots import make_plots as make_plots_from_records
from analysis.records import load_records
from lora_repro.config import compose_config, instantiate_method
from lora_repro.record import write_record


def make_plots(runs, out):
    return make_plots_from_records(load_records(runs), out)


def method_info(method):
    """What the real method declares (rank_key, lr_ratio_key, ...), as a trained run records it."""
    return instantiate_method(compose_config([f"method={method}"]).method).info()


def rec(method, seed, acc, adapted, hparams, lr=1e-3, task="sst2", model="roberta_base"):
    return {"status": "ok", "task": task, "model": model, "method": method, "seed": seed, "hparams": hparams,
            "method_info": method_info(method),
            "metrics": {"accuracy": acc}, "best_metrics": {"accuracy": acc}, "peak_memory_bytes": 2**30 * (3 if method == "full_ft" else 1),
            "params": {"adapted": adapted, "trainable": adapted, "total": 10**8},
            "throughput": {"train_tokens_per_s": 1000.0, "train_samples_per_s": 30.0}, "config": {"train": {"lr": lr}}}


def test_every_plot_is_written(tmp_path):
    runs = tmp_path / "runs"
    for r in (1, 2, 4, 8):
        for seed in (1, 2):
            write_record(runs / f"lora_r{r}_{seed}", rec("lora", seed, 0.90 + 0.005 * r + 0.001 * seed, 36_864 * r, {"r": r}))
    for ratio in (1, 4, 16):
        for lr in (1e-4, 1e-3):
            write_record(runs / f"lp_{ratio}_{lr}", rec("lora_plus", 1, 0.9 + ratio / 1000, 294_912, {"r": 8, "loraplus_lr_ratio": ratio}, lr=lr))
    write_record(runs / "ft", rec("full_ft", 1, 0.948, 124_055_040, {}))
    paths = make_plots(runs, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == ["efficiency.png", "lora_plus_ratio_roberta_base_sst2.png", "params_roberta_base_sst2.png", "rank.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_nothing_to_plot_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    assert make_plots(tmp_path / "empty", tmp_path / "plots") == []
    assert not any((tmp_path / "plots").iterdir())


def test_a_mistyped_runs_folder_is_an_error_not_empty_results(tmp_path):
    with pytest.raises(SystemExit, match="runs folder .*missing does not exist"):
        make_plots(tmp_path / "missing", tmp_path / "plots")
    assert not (tmp_path / "plots").exists()


def test_results_notebook_runs_top_to_bottom_offline(tmp_path):
    import nbformat

    from analysis.notebook import execute

    runs = tmp_path / "runs"
    for seed in (1, 2):
        write_record(runs / f"lora_{seed}", rec("lora", seed, 0.95, 294_912, {"r": 8}))
    out = execute(runs, tmp_path / "executed.ipynb", timeout=300)
    nb = nbformat.read(out, as_version=4)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "2 ok runs, 0 failed, 0 unreadable" in text and "95.0" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_runs_of_different_recipes_get_separate_plots(tmp_path):
    runs = tmp_path / "runs"
    write_record(runs / "a", {**rec("lora", 1, 0.9, 294_912, {"r": 8}), "experiment": "mini"})
    write_record(runs / "b", rec("lora", 1, 0.7, 294_912, {"r": 8}))
    names = sorted(p.name for p in make_plots(runs, tmp_path / "plots"))
    assert "params_roberta_base_sst2.png" in names and "params_roberta_base_sst2_mini.png" in names


def test_e2e_runs_plot_test_bleu_against_rank_and_table3(tmp_path):
    runs = tmp_path / "runs"
    for r, bleu in ((1, 0.687), (4, 0.704), (16, 0.696)):
        write_record(runs / f"e2e_r{r}", {**rec("lora", 1, None, 98_304 * r, {"r": r}, task="e2e", model="gpt2_medium"),
                                          "metrics": {"BLEU": bleu, "NIST": 8.8}, "best_metrics": None})
    names = sorted(p.name for p in make_plots(runs, tmp_path / "plots"))
    assert names == ["efficiency.png", "params_gpt2_medium_e2e.png", "rank.png"]
