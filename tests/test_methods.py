"""Each method trains only its own parameters, through the same Method interface the trainer uses."""

import pytest
import torch

from lora_repro.backbone import build_classifier, set_trainable
from lora_repro.config import instantiate_method

from .conftest import TINY, compose_cfg


def tiny_setup(method_name: str, *overrides: str):
    torch.manual_seed(0)
    cfg = compose_cfg(*TINY, f"method={method_name}", *overrides)
    method = instantiate_method(cfg.method)
    model = method.apply(build_classifier(cfg.model, cfg.task), cfg.model)
    set_trainable(model, list(cfg.model.head_modules))
    return cfg, method, model


def batch(n: int = 16, length: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (n, length), generator=g)
    labels = (ids[:, 3] % 2).long()  # learnable from one token
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.mark.parametrize("method_name", ["full_ft", "bitfit", "lora", "lora_plus"])
def test_only_the_methods_parameters_change(method_name):
    cfg, method, model = tiny_setup(method_name, "train.lr=1e-2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, _ = method.create_optimizer(model, cfg.train)
    inputs = batch()
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable  # frozen weights are bit-identical
    if method_name == "bitfit":
        assert all(n.endswith(".bias") or ".pooler." in n or "classifier" in n for n in trainable)
    if method_name.startswith("lora"):
        backbone = {n for n in trainable if "lora_" not in n}
        assert all(".pooler." in n or "classifier" in n for n in backbone)
        assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


def test_lora_plus_gives_B_ratio_times_the_lr_of_A():
    cfg, method, model = tiny_setup("lora_plus", "train.lr=1e-3", "method.loraplus_lr_ratio=16")
    optimizer, _ = method.create_optimizer(model, cfg.train)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    a = [n for n in named if "lora_A" in n]
    b = [n for n in named if "lora_B" in n]
    assert len(a) == len(b) == 2 * 2  # 2 layers x (query, value)
    assert all(lr_of[id(named[n])] == pytest.approx(1e-3) for n in a)
    assert all(lr_of[id(named[n])] == pytest.approx(16e-3) for n in b)
    assert set(lr_of) == {id(p) for p in named.values() if p.requires_grad}


def test_lora_plus_weight_decay_reaches_the_optimizer():
    cfg, method, model = tiny_setup("lora_plus", "train.weight_decay=0.1")
    optimizer, groups = method.create_optimizer(model, cfg.train)
    decays = {g.name: g.weight_decay for g in groups}
    assert decays["A_and_other_weights"] == 0.1 and decays["B_and_1d_no_decay"] == 0.0


@pytest.mark.parametrize("init,zero,random", [("a_random", "lora_B", "lora_A"), ("b_random", "lora_A", "lora_B")])
def test_lora_init_choice(init, zero, random):
    _, _, model = tiny_setup("lora", f"method.init={init}")
    for n, p in model.named_parameters():
        if zero in n:
            assert torch.count_nonzero(p) == 0, n
        if random in n:
            assert p.abs().sum() > 0, n


def test_lora_starts_as_the_pretrained_function_under_both_inits():
    for init in ("a_random", "b_random"):
        torch.manual_seed(0)
        cfg = compose_cfg(*TINY, "method=lora", f"method.init={init}", "method.dropout=0.0")
        base = build_classifier(cfg.model, cfg.task).eval()
        inputs = {k: v for k, v in batch().items() if k != "labels"}
        with torch.no_grad():
            expected = base(**inputs).logits
            method = instantiate_method(cfg.method)
            wrapped = method.apply(base, cfg.model).eval()
            got = wrapped(**inputs).logits
        torch.testing.assert_close(got, expected)


def test_lora_names_the_models_linear_layers_when_a_target_is_missing():
    from lora_repro.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\['q_proj'\] not found in tiny_bert; its linear layers are: .*query"):
        tiny_setup("lora", "method.target_modules=[q_proj,value]")
