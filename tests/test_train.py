"""End-to-end runs of the real trainer on a tiny BERT and generated data (seconds on a CPU)."""

import json
import math

import pytest
from omegaconf import OmegaConf

from lora_repro.config import validate
from lora_repro.errors import TrainingDiverged
from lora_repro.record import RECORD_FIELDS
from lora_repro.record import CHECKPOINT_FILE
from lora_repro.trainer import run

from .conftest import TINY, compose_cfg


def train(tmp_path, sst2_dir, *overrides):
    cfg = compose_cfg(*TINY, f"task.data_dir={sst2_dir}", *overrides)
    return run(cfg, validate(cfg), tmp_path / "run"), tmp_path / "run"


# The tiny backbone is random, so LoRA (frozen random weights) needs more steps than full FT.
@pytest.mark.parametrize("method,lr,epochs,min_acc", [("full_ft", "3e-3", 6, 0.9), ("lora", "2e-2", 10, 0.8)])
def test_tiny_run_learns_and_records_every_field(tmp_path, sst2_dir, method, lr, epochs, min_acc):
    record, run_dir = train(tmp_path, sst2_dir, f"method={method}", f"train.lr={lr}", f"train.epochs={epochs}")
    on_disk = json.loads((run_dir / "record.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert set(RECORD_FIELDS) <= set(on_disk)
    assert on_disk["status"] == "ok" and on_disk["error"] is None
    assert (on_disk["task"], on_disk["model"], on_disk["method"], on_disk["seed"]) == ("sst2", "tiny_bert", method, 42)

    losses = [loss for _, loss in on_disk["train_loss_curve"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert on_disk["metrics"]["accuracy"] >= min_acc
    assert on_disk["best_metrics"]["accuracy"] >= on_disk["metrics"]["accuracy"]
    assert on_disk["best_metrics"]["epoch"] > 0

    p = on_disk["params"]
    assert 0 < p["adapted"] < p["trainable"] <= p["total"]
    assert on_disk["peak_memory_bytes"] > 50 * 2**20
    # Tensor level: weights, gradients and AdamW's two moments of the trainable part are all alive.
    assert on_disk["peak_tensor_bytes"] >= 4 * p["total"] + 12 * p["trainable"]
    assert on_disk["peak_tensor_source"] == "cpu_live_tensors_first_3_steps"
    assert on_disk["throughput"]["train_tokens_per_s"] > 0 and on_disk["throughput"]["train_samples_per_s"] > 0
    assert on_disk["wall_s"] > 0
    assert on_disk["config"]["method"]["name"] == method and on_disk["config"]["train"]["lr"] == float(lr)
    assert on_disk["checkpoint_bytes"] == (run_dir / CHECKPOINT_FILE).stat().st_size
    # The checkpoint holds exactly the trainable tensors: 4 bytes each plus the safetensors header.
    assert 4 * p["trainable"] < on_disk["checkpoint_bytes"] < 4 * p["trainable"] + 64 * 1024


def test_lora_checkpoint_is_a_small_fraction_of_full_ft(tmp_path, sst2_dir):
    lora, _ = train(tmp_path / "a", sst2_dir, "method=lora", "train.max_steps=2")
    full, _ = train(tmp_path / "b", sst2_dir, "method=full_ft", "train.max_steps=2")
    assert lora["checkpoint_bytes"] * 50 < full["checkpoint_bytes"]
    assert lora["params"]["adapted"] == 2 * 2 * 8 * (32 + 32)  # 2 layers x (query, value) x r (d_in + d_out)


def test_nan_loss_stops_the_run_and_records_the_step(tmp_path, sst2_dir):
    with pytest.raises(TrainingDiverged, match=r"training loss is (nan|inf) at step \d+"):
        train(tmp_path, sst2_dir, "method=full_ft", "train.lr=1e30", "train.max_steps=20")
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("training loss is") and "at step" in record["error"]
    assert record["metrics"] is None


def test_lora_plus_records_its_parameter_groups(tmp_path, sst2_dir):
    record, _ = train(tmp_path, sst2_dir, "method=lora_plus", "train.lr=1e-3", "method.loraplus_lr_ratio=8",
                      "train.max_steps=3")
    groups = {g["name"]: g for g in record["optimizer_groups"]}
    assert groups["A_and_other_weights"]["lr"] == pytest.approx(1e-3)
    assert groups["B_and_1d_no_decay"]["lr"] == pytest.approx(8e-3)
    assert sum(g["params"] for g in groups.values()) == record["params"]["trainable"]


def test_mnli_layout_records_matched_and_mismatched(tmp_path):
    from .conftest import sentiment_rows

    cols = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label"
    names = ["entailment", "neutral", "contradiction"]
    for fname, n, seed in (("train.tsv", 48, 0), ("dev_matched.tsv", 12, 1), ("dev_mismatched.tsv", 12, 2)):
        rows = [f"{i}\t1\t2\tg\t\t\t\t\t{s}\tthe film\t{names[(i + y) % 3]}\t{names[(i + y) % 3]}"
                for i, (s, y) in enumerate(sentiment_rows(n, seed))]
        (tmp_path / fname).write_text(cols + "\n" + "\n".join(rows) + "\n")
    cfg = compose_cfg(*TINY, "task=mnli", f"task.data_dir={tmp_path}", "train.max_steps=2")
    record = run(cfg, validate(cfg), tmp_path / "run")
    assert set(record["metrics"]) == {"matched_accuracy", "mismatched_accuracy"}
    assert all(0.0 <= v <= 1.0 for v in record["metrics"].values())


def test_stsb_regression_records_pearson(tmp_path):
    from .conftest import sentiment_rows

    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for fname, n, seed in (("train.tsv", 32, 0), ("dev.tsv", 16, 1)):
        rows = [f"{i}\tg\tf\t2012\t{i}\ts\ts\t{s}\tthe film\t{4.0 * y + 0.5 * (i % 3)}"
                for i, (s, y) in enumerate(sentiment_rows(n, seed))]
        (tmp_path / fname).write_text(header + "\n" + "\n".join(rows) + "\n")
    cfg = compose_cfg(*TINY, "task=stsb", f"task.data_dir={tmp_path}", "train.max_steps=2")
    record = run(cfg, validate(cfg), tmp_path / "run")
    assert set(record["metrics"]) == {"pearson", "spearman"}
    assert -1.0 <= record["metrics"]["pearson"] <= 1.0 and not math.isnan(record["metrics"]["pearson"])


@pytest.mark.parametrize("method", ["adapter_h", "prefix_layer", "ft_top2"])
def test_every_method_family_runs_through_the_trainer(tmp_path, sst2_dir, method):
    record, _ = train(tmp_path, sst2_dir, f"method={method}", "train.lr=1e-2", "train.max_steps=6")
    assert record["status"] == "ok"
    assert 0 < record["params"]["adapted"] < record["params"]["trainable"]
    losses = [loss for _, loss in record["train_loss_curve"]]
    assert all(math.isfinite(x) for x in losses)


def test_bf16_mixed_precision_and_gradient_accumulation(tmp_path, sst2_dir):
    record, _ = train(tmp_path, sst2_dir, "method=lora", "train.precision=bf16", "train.grad_accum=2",
                      "train.max_steps=3", "train.lr=1e-2")
    assert record["status"] == "ok" and record["throughput"]["train_steps"] == 3
    assert record["config"]["train"]["precision"] == "bf16"
    # 3 optimizer steps x 2 micro-batches x 16 sentences
    assert record["throughput"]["train_samples_per_s"] * record["throughput"]["train_runtime_s"] == pytest.approx(96, rel=0.05)


def test_progress_bars_show_in_a_terminal_and_stay_quiet_in_ci(tmp_path, sst2_dir, monkeypatch, capsys):
    from lora_repro.generation import progress_bar
    from lora_repro.ui import show_progress
    from lora_repro.trainer import training_arguments

    monkeypatch.delenv("LORA_REPRO_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "true")
    assert not show_progress()
    cfg = compose_cfg(*TINY, f"task.data_dir={sst2_dir}")
    assert training_arguments(cfg, tmp_path, []).disable_tqdm
    monkeypatch.setenv("LORA_REPRO_PROGRESS", "1")  # what a terminal gets
    assert not training_arguments(cfg, tmp_path, []).disable_tqdm
    bar = progress_bar(total=4, desc="decoding", unit="MR")
    bar.update(4)
    bar.close()
    err = capsys.readouterr().err
    assert "decoding: 100%" in err and "4/4" in err and "MR/s" in err
    monkeypatch.setenv("LORA_REPRO_PROGRESS", "0")
    assert not show_progress()


def test_early_stopping_restores_the_selected_step_and_reports_and_saves_its_weights(tmp_path, sst2_dir):
    """A learning rate too small to change a prediction: the held-out score never beats its first
    evaluation (step 2), so with patience 2 the run stops at step 6, restores step 2's weights,
    reports every split there, and saves exactly the weights a 2-step run makes (constant schedule)."""
    from lora_repro.config import validate
    from lora_repro.trainer import run

    common = [*TINY, f"task.data_dir={sst2_dir}", "task.heldout_rows=32", "train.lr=1e-9", "train.schedule=constant",
              "train.eval_every=2", "train.checkpoint_every=0", "save_checkpoint=false", "seed=3"]
    stopped_cfg = compose_cfg(*common, "train.max_steps=20",
                              "train.early_stopping={metric: heldout_accuracy, patience: 2, min_evals: 1}")
    stopped = run(stopped_cfg, validate(stopped_cfg), tmp_path / "stopped")
    assert stopped["selected"] == {"metric": "heldout_accuracy", "value": stopped["eval_curve"][0]["heldout_accuracy"],
                                   "step": 2, "evaluations": 3, "stopped_at_step": 6}
    assert stopped["throughput"]["train_steps"] == 6 and [e["step"] for e in stopped["eval_curve"]] == [2, 4, 6]
    short_cfg = compose_cfg(*common, "train.max_steps=2")
    short = run(short_cfg, validate(short_cfg), tmp_path / "short")
    assert stopped["trainable_sha256"] == short["trainable_sha256"]
    assert stopped["metrics"]["accuracy"] == short["metrics"]["accuracy"]


def test_a_malformed_early_stopping_spec_is_one_line_before_loading():
    from lora_repro.config import validate
    from lora_repro.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.early_stopping must be \{metric: <split>_<metric>"):
        validate(compose_cfg(*TINY, "train.early_stopping={metric: heldout_accuracy, patience: 0}"))


def test_gpu_speed_switches_reach_the_trainer_and_only_numeric_ones_change_the_recipe(tmp_path):
    """Issue #21 item 12, checked on CPU for what they change in the config: TF32 and compile can
    change numerics (a new run folder); padding multiples and DDP's unused-parameter search cannot."""
    from lora_repro.config import validate
    from lora_repro.errors import ConfigError
    from lora_repro.rundir import run_subdir
    from lora_repro.trainer import training_arguments

    base = compose_cfg(*TINY, "train.compile=true")
    args = training_arguments(base, tmp_path, [])
    assert args.torch_compile is True and args.ddp_find_unused_parameters is False
    plain = run_subdir(compose_cfg(*TINY))
    assert run_subdir(compose_cfg(*TINY, "train.pad_to_multiple_of=16", "train.ddp_find_unused_parameters=true")) == plain
    assert run_subdir(compose_cfg(*TINY, "train.tf32=true")) != plain and run_subdir(base) != plain
    with pytest.raises(ConfigError, match="train.tf32 must be true, false or null, got 'yes'"):
        validate(compose_cfg(*TINY, "train.tf32=yes"))


def test_keep_best_saves_the_best_evaluations_weights_beside_the_final_ones(tmp_path, sst2_dir):
    """Issue #21 item 10: Table 2 reports a run's best evaluation; train.keep_best saves exactly the
    weights that scored it (checked against a run stopped at that step: constant schedule)."""
    from safetensors.torch import load_file

    from lora_repro.config import validate
    from lora_repro.trainer import run, state_digest

    common = [*TINY, f"task.data_dir={sst2_dir}", "train.lr=5e-3", "train.schedule=constant", "train.eval_every=2",
              "train.checkpoint_every=0", "seed=5"]
    cfg = compose_cfg(*common, "train.max_steps=8", "train.keep_best=accuracy")
    record = run(cfg, validate(cfg), tmp_path / "full")
    step = record["kept_best"]["step"]
    assert record["kept_best"] == {"metric": "accuracy", "value": record["best_metrics"]["accuracy"],
                                   "step": record["best_metrics"]["step"]}
    best = load_file(tmp_path / "full" / "checkpoint" / "best.safetensors")
    short_cfg = compose_cfg(*common, f"train.max_steps={step}")
    short = run(short_cfg, validate(short_cfg), tmp_path / "short")
    assert state_digest(best) == short["trainable_sha256"]


def test_a_finished_run_loads_predicts_and_exports_to_peft(tmp_path, sst2_dir):
    """Issue #21 item 15: load_run gives back exactly the trained weights (the record's digest),
    predicts, and exports a peft adapter that PeftModel.from_pretrained loads to the same logits."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from lora_repro.backbone import build_classifier
    from lora_repro.config import validate
    from lora_repro.predict import export_peft, load_run, predict
    from lora_repro.trainer import run, state_digest, trainable_state

    cfg = compose_cfg(*TINY, f"task.data_dir={sst2_dir}", "train.max_steps=6", "train.lr=5e-3", "train.checkpoint_every=0")
    record = run(cfg, validate(cfg), tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert state_digest(trainable_state(loaded.built.model)) == record["trainable_sha256"]
    rows = predict(loaded, ["the film was great", "the plot was awful"])
    assert [sorted(r) for r in rows] == [["label", "name", "probabilities", "text"]] * 2
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-3 for r in rows)

    files = {p.name for p in export_peft(loaded, tmp_path / "export")}
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors"} <= files
    from transformers import set_seed

    set_seed(int(loaded.cfg.seed))  # tiny_bert is random-init: the same base as the run's (a pretrained one loads)
    fresh = PeftModel.from_pretrained(build_classifier(loaded.cfg.model, loaded.cfg.task), str(tmp_path / "export"))
    fresh.load_state_dict(load_file(tmp_path / "export" / "head.safetensors"), strict=False)
    batch = loaded.tokenizer(["the film was great"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(**batch).logits, loaded.built.model(**batch).logits, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "bitfit", "adapter_h"])
def test_a_finished_run_merges_into_a_plain_transformers_model_with_the_same_logits(tmp_path, sst2_dir, method,
                                                                                      monkeypatch, capsys):
    """`predict --merge DIR`: the method's weights folded into the backbone, loadable with
    AutoModelForSequenceClassification alone; a method that adds modules says it cannot merge."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lora_repro.config import validate
    from lora_repro.errors import ConfigError
    from lora_repro.predict import load_run, main
    from lora_repro.trainer import run

    cfg = compose_cfg(*TINY, f"task.data_dir={sst2_dir}", f"method={method}", "train.max_steps=6", "train.lr=5e-3",
                      "train.checkpoint_every=0")
    run(cfg, validate(cfg), tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    batch = loaded.tokenizer(["the film was great", "the plot was awful"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = loaded.built.model(**batch).logits
    if method == "adapter_h":
        with pytest.raises(ConfigError, match="adds modules to the network"):
            loaded.built.method.merged(loaded.built.model)
        return
    assert main([str(tmp_path / "run"), "--merge", str(tmp_path / "merged")]) == 0
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, expected, atol=1e-5)
    assert main([str(tmp_path / "run"), "--push", "me/x"]) == 2   # nothing to push without --export/--merge
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([str(tmp_path / "run"), "--merge", str(tmp_path / "m2"), "--push", "me/x"]) == 2
    assert "HF_HUB_OFFLINE=1 is set (no network)" in capsys.readouterr().err


def stopped_at(curve: list[float], floor: float | None) -> tuple[int | None, int | None]:
    """(the evaluation early stopping ends at, or None; the best one) for a held-out MCC curve fed to
    BestState one evaluation per step, with patience 3 and at least 2 evaluations."""
    from types import SimpleNamespace

    import torch

    from lora_repro.trainer import BestState

    best = BestState(torch.nn.Linear(2, 1), "heldout_mcc", patience=3, min_evals=2, floor=floor)
    for step, value in enumerate(curve, start=1):
        control = SimpleNamespace(should_training_stop=False)
        best.on_evaluate(None, SimpleNamespace(global_step=step), control, metrics={"eval_heldout_mcc": value})
        if control.should_training_stop:
            return step, best.best_step
    return None, best.best_step


def test_early_stopping_above_constant_waits_out_the_majority_class_plateau():
    """CoLA's held-out MCC sits at 0 (the constant predictor's score) for the first epoch; plain
    patience stops there, above_constant keeps training until the score has beaten the constant."""
    curve = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.12, 0.2, 0.18, 0.19, 0.17]
    assert stopped_at(curve, None) == (4, 1)      # three evaluations without improvement on the plateau
    assert stopped_at(curve, 0.0) == (11, 8)      # waits for 0.12 > 0, then three without improvement past 0.2


def test_above_constant_reads_the_floor_of_a_run_with_one_evaluated_split():
    """With one evaluated split the Trainer names its metrics plainly (`accuracy`): the floor is
    that split's constant-predictor score."""
    import torch

    from lora_repro.trainer import early_stopping

    cfg = compose_cfg(*TINY, "train.early_stopping={metric: accuracy, patience: 2, above_constant: true}")
    evals = {"validation": {"labels": [1, 1, 1, 0]}}
    assert early_stopping(cfg, torch.nn.Linear(2, 1), evals).floor == 0.75
    by = compose_cfg(*TINY, "train.early_stopping={metric: accuracy, patience: 2, above_constant: true, "
                            "above_constant_by: 0.1}")
    assert early_stopping(by, torch.nn.Linear(2, 1), evals).floor == pytest.approx(0.85)


def test_above_constant_by_waits_past_one_lucky_minority_answer():
    """The claims runs' LoRA on CoLA: held-out MCC 0 on the plateau, one right minority answer
    lifts it to 0.07, then noise; patience counted from there stopped it before it learned. With
    the floor 0.10 above the constant, patience counts only from the first score past 0.10."""
    curve = [0.0, 0.0, 0.07, 0.0, -0.02, 0.0, 0.05, 0.0, 0.12, 0.15, 0.2, 0.18, 0.19, 0.17]
    assert stopped_at(curve, 0.0) == (6, 3)        # 0.07 beats the constant; three evaluations later it stops
    assert stopped_at(curve, 0.10) == (14, 11)     # waits for 0.12, then three past 0.2


@pytest.mark.parametrize("spec", ["{metric: accuracy, above_constant_by: 0.1}",               # without above_constant
                                  "{metric: accuracy, above_constant: true, above_constant_by: -0.1}",
                                  "{metric: accuracy, above_constant: true, above_constant_by: true}"])
def test_above_constant_by_rejects_a_bad_value(spec):
    from lora_repro.config import ConfigError, check_early_stopping

    with pytest.raises(ConfigError, match="above_constant_by"):
        check_early_stopping(OmegaConf.create(spec))
