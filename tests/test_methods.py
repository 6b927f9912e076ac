"""Every method trains only its own parameters, on encoders and on GPT-2 language models, through
the same Method interface the trainer uses."""

from types import SimpleNamespace

import pytest
import torch

from lora_repro.assembly import build
from lora_repro.backbone import build_classifier, find_blocks
from lora_repro.config import instantiate_method, validate
from lora_repro.errors import ConfigError

from .conftest import TINY, compose_cfg

ALL_METHODS = ["full_ft", "bitfit", "lora", "lora_plus", "adapter_h", "adapter_l", "adapter_p", "adapter_d",
               "ft_top2", "prefix_embed", "prefix_layer"]
# Small versions of the paper's architectures, built from their own yaml with shrunk dimensions.
TINY_GPT2 = ["model=gpt2_medium", "model.init=random", "model.arch.n_embd=32", "model.arch.n_layer=2",
             "model.arch.n_head=2", "model.arch.vocab_size=500", "model.arch.n_positions=64"]
TINY_DEBERTA = ["model=deberta_v2_xxlarge", "model.init=random", "model.arch.hidden_size=32",
                "model.arch.num_hidden_layers=2", "model.arch.num_attention_heads=2",
                "model.arch.intermediate_size=64", "model.arch.vocab_size=500", "model.arch.position_buckets=16"]
TINY_ROBERTA = ["model=roberta_base", "model.init=random", "model.arch.hidden_size=32", "model.arch.num_hidden_layers=2",
                "model.arch.num_attention_heads=2", "model.arch.intermediate_size=64", "model.arch.vocab_size=500",
                "model.arch.max_position_embeddings=66"]
SMALL = {"adapter_d": ["method.drop_lowest=1"], "ft_top2": ["method.top_k=1"]}


def method_setup(method_name: str, *overrides: str, lm: bool = False):
    """The model a run would train, built by the trainer's own assembly step: a classifier with its
    head for SST-2, a language model for E2E (lm=True)."""
    torch.manual_seed(0)
    task = ["task=e2e", "task.label_smoothing=0.0"] if lm else []
    cfg = compose_cfg(*TINY, *task, f"method={method_name}", *SMALL.get(method_name, []), *overrides)
    built = build(cfg, instantiate_method(cfg.method))
    return cfg, built.method, built.model


def classification_batch(n: int = 16, length: int = 12, vocab=(1000, 2000)):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(*vocab, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, length - 3:] = 0  # some right padding
    return {"input_ids": ids, "attention_mask": mask, "labels": (ids[:, 3] % 2).long()}


def lm_batch(n: int = 8, length: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 500, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100  # a prompt of 5 tokens, loss on the rest (as for E2E)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def train_steps(model, method, cfg, inputs, steps=8):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, _ = method.create_optimizer(model, cfg.train)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return losses, changed, trainable


def is_head(name: str) -> bool:
    return ".pooler." in name or "classifier" in name


OWN = {  # what each method may train besides the head
    "full_ft": lambda n: True,
    "bitfit": lambda n: n.endswith(".bias"),
    "lora": lambda n: "lora_" in n,
    "lora_plus": lambda n: "lora_" in n,
    "adapter_h": lambda n: ".adapter." in n,
    "adapter_l": lambda n: ".adapter." in n,
    "adapter_p": lambda n: ".adapter." in n,
    "adapter_d": lambda n: ".adapter." in n,
    "ft_top2": lambda n: ".layer.1." in n or ".h.1." in n,
    "prefix_embed": lambda n: n == "virtual",
    "prefix_layer": lambda n: n == "virtual",
}


@pytest.mark.parametrize("method_name", ALL_METHODS)
def test_encoder_classifier_trains_only_the_methods_parameters(method_name):
    cfg, method, model = method_setup(method_name, "train.lr=1e-2")
    losses, changed, trainable = train_steps(model, method, cfg, classification_batch())
    assert losses[-1] < losses[0], losses
    assert changed and changed <= trainable  # frozen weights are bit-identical
    assert all(OWN[method_name](n) or is_head(n) for n in trainable)
    assert any(OWN[method_name](n) and not is_head(n) for n in changed)


def test_head_only_trains_the_task_head_alone_and_learns():
    cfg, method, model = method_setup("head_only", "train.lr=1e-2")
    losses, changed, trainable = train_steps(model, method, cfg, classification_batch())
    head = {n for n, _ in model.named_parameters() if is_head(n)}
    assert losses[-1] < losses[0], losses
    assert trainable == head and changed == head
    # the tiny BERT's head: pooler dense 32x32 + 32, classifier 32x2 + 2
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == 32 * 32 + 32 + 32 * 2 + 2


# GPT-2 is pre-LN: AdapterHub's post-LN placement of AdapterP/D does not exist there (a config error).
GPT2_SMALL = {"adapter_p": ["method.placement=projection"], "adapter_d": ["method.placement=projection"]}


@pytest.mark.parametrize("method_name", ALL_METHODS)
def test_gpt2_language_model_trains_only_the_methods_parameters(method_name):
    cfg, method, model = method_setup(method_name, *TINY_GPT2, *GPT2_SMALL.get(method_name, []), "train.lr=1e-2", lm=True)
    losses, changed, trainable = train_steps(model, method, cfg, lm_batch())
    assert losses[-1] < losses[0], losses
    assert changed and changed <= trainable
    assert all(OWN[method_name](n) for n in trainable)


@pytest.mark.parametrize("method_name", ["adapter_h", "adapter_l", "adapter_p", "adapter_d", "lora"])
def test_methods_start_as_the_pretrained_function(method_name):
    torch.manual_seed(0)
    cfg = compose_cfg(*TINY, f"method={method_name}", *SMALL.get(method_name, []))
    model = build_classifier(cfg.model, cfg.task).eval()
    inputs = {k: v for k, v in classification_batch().items() if k != "labels"}
    with torch.no_grad():
        expected = model(**inputs).logits
        adapted = instantiate_method(cfg.method).apply(model, cfg.model).eval()
        torch.testing.assert_close(adapted(**inputs).logits, expected)


def test_adapter_p_post_ln_on_gpt2_is_one_line():
    from lora_repro.errors import ConfigError

    with pytest.raises(ConfigError, match="placement post_ln .* needs a post-LN block output .*use method.placement=projection"):
        validate(compose_cfg(*TINY_GPT2, "task=e2e", "task.max_length=32", "method=adapter_p"))


def adapter_reference(output, down, up, act, hidden, residual, placement):
    """AdapterHub's bottleneck layer written out from its equations (adapters' Adapter.pre_forward,
    forward, post_forward with SeqBnConfig / DoubleSeqBnConfig), on the block's own dense, dropout
    and LayerNorm: the independent reference the harness's adapters are held to."""
    h = output.dropout(output.dense(hidden))
    if placement == "post_ln":        # original_ln_before=True, residual_before_ln=True
        x, kept = output.LayerNorm(h + residual), h
    else:                             # original_ln_before=False (Houlsby): the adapter reads h
        x, kept = h, h
    adapted = up(act(down(x))) + kept            # adapter_residual_before_ln=False, no ln_after
    return output.LayerNorm(adapted + residual)  # original_ln_after=True


@pytest.mark.parametrize("method_name,overrides,placement", [
    ("adapter_p", [], "post_ln"),
    ("adapter_h", ["method.placement=after_dropout", "method.activation=swish", "method.init=bert"], "after_dropout"),
])
@pytest.mark.parametrize("arch", [[], TINY_ROBERTA, TINY_DEBERTA], ids=["bert", "roberta", "deberta_v2"])
def test_adapters_compute_what_adapterhub_computes_at_equal_weights(method_name, overrides, placement, arch):
    torch.manual_seed(0)
    cfg = compose_cfg(*TINY, *arch, f"method={method_name}", *overrides)
    model = instantiate_method(cfg.method).apply(build_classifier(cfg.model, cfg.task), cfg.model).eval()
    output = find_blocks(model)[0].output  # the MLP's post-LN output module (dense, dropout, LayerNorm)
    if placement == "post_ln":
        adapter = output.adapter
        parts = SimpleNamespace(dense=output.base_layer.dense, dropout=output.base_layer.dropout,
                                LayerNorm=output.base_layer.LayerNorm)
    else:  # the adapter wraps the block's dropout
        adapter = output.dropout.adapter
        parts = SimpleNamespace(dense=output.dense, dropout=output.dropout.base_layer, LayerNorm=output.LayerNorm)
    if method_name == "adapter_h":  # AdapterHub's choices: swish, N(0, 0.02) on both matrices
        assert isinstance(adapter.act, torch.nn.SiLU)
        assert 0.015 < float(adapter.up.weight.detach().std()) < 0.025
    with torch.no_grad():
        for p in model.parameters():  # away from the init, so the adapters really act
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
        hidden = torch.randn(2, 5, parts.dense.in_features)
        residual = torch.randn(2, 5, parts.dense.out_features)
        expected = adapter_reference(parts, adapter.down, adapter.up, adapter.act, hidden, residual, placement)
        torch.testing.assert_close(output(hidden, residual), expected)
        if placement == "post_ln":  # the old placement (the adapter on the raw MLP output) differs
            other = adapter_reference(parts, adapter.down, adapter.up, adapter.act, hidden, residual, "projection")
            assert (other - expected).abs().max() > 1e-2


@pytest.mark.parametrize("method_name", ["prefix_embed", "prefix_layer"])
@pytest.mark.parametrize("arch", [[], TINY_ROBERTA, TINY_DEBERTA], ids=["bert", "roberta", "deberta_v2"])
def test_prefix_methods_change_the_output_and_learn(method_name, arch):
    cfg, method, model = method_setup(method_name, *arch, "method.n_prefix=3", "method.n_infix=2", "train.lr=5e-2")
    inputs = classification_batch(vocab=(100, 400))
    model.eval()
    with torch.no_grad():
        before = model(**inputs).logits
        model.virtual.add_(torch.randn_like(model.virtual))
        # The prefix reaches the head: were it ignored, the logits would be bit-identical.
        assert (model(**inputs).logits - before).abs().max() > 0
    losses, changed, _ = train_steps(model, method, cfg, inputs, steps=10)
    assert changed == {"virtual"} | {n for n in changed if is_head(n)}
    assert losses[-1] < losses[0]


def test_virtual_token_layout():
    from lora_repro.methods.prefix import virtual_layout

    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    # Encoder: prefix (-1, -2) after the first token, infix (-3) after the last real token.
    layout = virtual_layout(mask, None, n_prefix=2, n_infix=1, lead=1)
    assert layout.tolist() == [[0, -1, -2, 1, 2, 3, -3], [0, -1, -2, 1, -3, 2, 3]]
    # Causal LM: prefix first, infix right before the first supervised token.
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    layout = virtual_layout(mask, labels, n_prefix=1, n_infix=1, lead=0)
    assert layout.tolist() == [[-1, 0, 1, -2, 2, 3], [-1, 0, -2, 1, 2, 3]]
    with pytest.raises(ValueError, match="right-padded"):
        virtual_layout(torch.tensor([[0, 1, 1]]), None, 1, 0, 0)


def test_gpt2_lora_adapts_q_and_v_only_and_merges_exactly():
    from lora_repro.methods.lora import FusedQKVLoRA, merge_lora

    cfg, method, model = method_setup("lora", *TINY_GPT2, "method.r=4", "method.dropout=0.0", lm=True)
    layers = [m for m in model.modules() if isinstance(m, FusedQKVLoRA)]
    assert len(layers) == 2
    for layer in layers:  # make B non-zero so the update is visible
        for b in layer.lora_B.values():
            torch.nn.init.normal_(b)
    x = torch.randn(3, 5, 32)
    layer = layers[0]
    with torch.no_grad():
        out, frozen = layer(x), layer.base_layer(x)
    q, k, v = out.split(32, dim=-1)
    fq, fk, fv = frozen.split(32, dim=-1)
    assert torch.equal(k, fk)  # the k slice is untouched
    assert not torch.allclose(q, fq) and not torch.allclose(v, fv)
    # 2 layers x (q, v) x (A: r x d + B: d x r)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 2 * 2 * 2 * 4 * 32
    ids = lm_batch()["input_ids"]
    model.eval()
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        merged_model = merge_lora(model)
        assert not any(isinstance(m, FusedQKVLoRA) for m in merged_model.modules())
        torch.testing.assert_close(merged_model(input_ids=ids).logits, unmerged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rslora", [False, True])
def test_gpt2_fused_lora_exports_to_peft_files_that_give_the_same_logits(tmp_path, rslora):
    """GPT-2's fused q,v LoRA in peft's own format: PeftModel.from_pretrained on the plain backbone
    computes what the run computes (k untouched, the scale carried by lora_alpha)."""
    from peft import PeftModel
    from transformers import set_seed

    from lora_repro.backbone import build_causal_lm
    from lora_repro.methods.lora import FusedQKVLoRA, fused_to_peft

    extra = ["+method.peft_config.use_rslora=true"] if rslora else []
    set_seed(0)
    cfg, method, model = method_setup("lora", *TINY_GPT2, "method.r=4", "method.alpha=8", *extra, lm=True)
    for layer in (m for m in model.modules() if isinstance(m, FusedQKVLoRA)):
        for b in layer.lora_B.values():
            torch.nn.init.normal_(b)
    ids = lm_batch()["input_ids"]
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    fused_to_peft(model).save_pretrained(str(tmp_path / "adapter"))
    torch.manual_seed(0)  # method_setup seeds 0 before building: the same random-init backbone
    base = build_causal_lm(cfg.model)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_peft_lora_merge_gives_the_same_logits():
    from lora_repro.methods.lora import merge_lora

    cfg, method, model = method_setup("lora", "method.dropout=0.0")
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    inputs = {k: v for k, v in classification_batch().items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        unmerged = model(**inputs).logits
        torch.testing.assert_close(merge_lora(model)(**inputs).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_lora_plus_gives_B_ratio_times_the_lr_of_A():
    cfg, method, model = method_setup("lora_plus", "train.lr=1e-3", "method.loraplus_lr_ratio=16")
    optimizer, _ = method.create_optimizer(model, cfg.train)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    a = [n for n in named if "lora_A" in n]
    b = [n for n in named if "lora_B" in n]
    assert len(a) == len(b) == 2 * 2  # 2 layers x (query, value)
    assert all(lr_of[id(named[n])] == pytest.approx(1e-3) for n in a)
    assert all(lr_of[id(named[n])] == pytest.approx(16e-3) for n in b)
    assert set(lr_of) == {id(p) for p in named.values() if p.requires_grad}


def test_lora_plus_on_gpt2_groups_the_fused_layers_factors():
    cfg, method, model = method_setup("lora_plus", *TINY_GPT2, "train.lr=1e-3", "method.loraplus_lr_ratio=4", lm=True)
    optimizer, _ = method.create_optimizer(model, cfg.train)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        if "lora_B" in n:
            assert lr_of[id(p)] == pytest.approx(4e-3), n
        elif "lora_A" in n:
            assert lr_of[id(p)] == pytest.approx(1e-3), n


def test_lora_targets_match_dotted_suffixes_as_peft_does():
    """BERT's W_o is attention.output.dense; the MLP's output is also named dense and stays bare."""
    cfg, _, model = method_setup("lora", "method.target_modules=[attention.output.dense]", "method.r=4")
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted and all(n.endswith("attention.output.dense") for n in adapted)
    assert len(adapted) == 2  # tiny_bert's 2 layers


def test_lora_plus_as_its_authors_train_it():
    """conf/method/lora_plus_authors.yaml: RoBERTa's classifier.dense frozen, no weight decay."""
    from lora_repro.assembly import build

    cfg = compose_cfg(*TINY, *TINY_ROBERTA, "method=lora_plus_authors", "train.weight_decay=0.1")
    built = build(cfg, validate(cfg))
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert not any("classifier.dense" in n for n in trainable)
    assert {n for n in trainable if "classifier" in n} == {"base_model.model.classifier.out_proj.weight",
                                                            "base_model.model.classifier.out_proj.bias"}
    _, groups = built.method.create_optimizer(built.model, cfg.train)
    assert {g.weight_decay for g in groups} == {0.0}
    assert built.method.hparams()["freeze_head_modules"] == ["classifier.dense"]
    harness = compose_cfg(*TINY, *TINY_ROBERTA, "method=lora_plus", "train.weight_decay=0.1")
    built = build(harness, validate(harness))
    assert any("classifier.dense" in n for n, p in built.model.named_parameters() if p.requires_grad)
    assert 0.1 in {g.weight_decay for g in built.method.create_optimizer(built.model, harness.train)[1]}
    from lora_repro.errors import ConfigError

    with pytest.raises(ConfigError, match=r"freeze_head_modules \['classifier.dense'\] match no module of tiny_bert"):
        build(compose_cfg(*TINY, "method=lora_plus_authors"))


def test_lora_plus_weight_decay_reaches_the_optimizer():
    cfg, method, model = method_setup("lora_plus", "train.weight_decay=0.1")
    optimizer, groups = method.create_optimizer(model, cfg.train)
    decays = {g.name: g.weight_decay for g in groups}
    assert decays["A_and_other_weights"] == 0.1 and decays["B_and_1d_no_decay"] == 0.0


@pytest.mark.parametrize("init,zero,random", [("a_random", "lora_B", "lora_A"), ("b_random", "lora_A", "lora_B")])
@pytest.mark.parametrize("arch", [[], TINY_GPT2], ids=["peft", "fused_gpt2"])
def test_lora_init_choice(init, zero, random, arch):
    _, _, model = method_setup("lora", *arch, f"method.init={init}", lm=bool(arch))
    for n, p in model.named_parameters():
        if zero in n:
            assert torch.count_nonzero(p) == 0, n
        if random in n:
            assert p.abs().sum() > 0, n


def test_lora_names_the_models_linear_layers_when_a_target_is_missing():
    from lora_repro.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\['q_proj'\] not found in tiny_bert; its linear layers are: .*query"):
        method_setup("lora", "method.target_modules=[q_proj,value]")


@pytest.mark.parametrize("variant,check", [
    ("rslora", lambda m: m.scaling["default"] == 8 / 8 ** 0.5),            # alpha / sqrt(r), alpha=8, r=8
    ("dora", lambda m: "default" in m.lora_magnitude_vector),             # a trainable magnitude per output
    ("pissa", lambda m: m.lora_B["default"].weight.abs().sum() > 0),       # B from W's singular vectors, not 0
    ("olora", lambda m: m.lora_B["default"].weight.abs().sum() > 0),       # B from W's QR, not 0
])
def test_peft_lora_variants_are_one_yaml_each_and_train(variant, check):
    """conf/method/{rslora,dora,pissa,olora}.yaml: LoRA + one peft option each, no code of their own."""
    from peft.tuners.lora import LoraLayer

    cfg, method, model = method_setup(variant, "train.lr=1e-2")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers and all(check(m) for m in layers)
    losses, changed, trainable = train_steps(model, method, cfg, classification_batch())
    assert losses[-1] < losses[0]
    assert any("lora_" in n for n in changed)
    assert method.info()["family"] == "lora"


def test_rslora_reaches_gpt2s_fused_projection_with_the_shared_scale():
    """peft_config.use_rslora on GPT-2 (FusedQKVLoRA) scales B A by alpha / sqrt(r) as peft does on
    separate projections; other peft options are still refused there in one line."""
    from lora_repro.methods.lora import FusedQKVLoRA, lora_scaling

    for overrides, scale in ((["method=lora"], 32 / 4), (["method=rslora"], 32 / 2)):
        cfg = compose_cfg(*TINY_GPT2, *overrides, "method.r=4", "method.alpha=32")
        built = build(cfg, instantiate_method(cfg.method))
        layers = [m for m in built.model.modules() if isinstance(m, FusedQKVLoRA)]
        assert layers and all(m.scaling == scale for m in layers)
    assert lora_scaling(32, 4, rslora=True) == 16.0 and lora_scaling(32, 4) == 8.0
    with pytest.raises(ConfigError, match=r"\['use_dora'\] cannot be applied to gpt2_medium"):
        cfg = compose_cfg(*TINY_GPT2, "method=dora")
        instantiate_method(cfg.method).check(cfg.model, cfg.task)


def test_a_fused_projection_takes_enable_lora_and_explicit_widths():
    """loralib's MergedLinear(enable_lora=...) with unequal q, k, v widths (a grouped-query fused
    projection): only the enabled slices change, each by its own s B A."""
    from transformers.pytorch_utils import Conv1D

    from lora_repro.methods.lora import FusedQKVLoRA

    torch.manual_seed(0)
    base = Conv1D(16 + 4 + 4, 8)  # d_in 8 -> q 16 | k 4 | v 4
    layer = FusedQKVLoRA(base, r=2, alpha=4, dropout=0.0, init="a_random", enable_lora=(False, True, True), widths=(16, 4, 4))
    with torch.no_grad():
        for s in layer.slices:
            layer.lora_B[s].normal_()
    x = torch.randn(3, 8)
    out, frozen = layer(x), base(x)
    assert torch.equal(out[:, :16], frozen[:, :16])                       # q not enabled: untouched
    for s, cols in (("k", slice(16, 20)), ("v", slice(20, 24))):
        expected = frozen[:, cols] + 2.0 * x @ layer.lora_A[s].t() @ layer.lora_B[s].t()
        assert torch.allclose(out[:, cols], expected, atol=1e-5)
    with pytest.raises(ConfigError, match=r"widths \(16, 4, 3\) do not add up to the projection's 24 outputs"):
        FusedQKVLoRA(base, r=2, alpha=4, dropout=0.0, init="a_random", widths=(16, 4, 3))
