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
