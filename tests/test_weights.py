"""Section 7's measures on matrices with known answers, and `make weights` on real (tiny) runs."""

import math

import numpy as np
import pytest
import torch

from analysis.weights import (analyse, effective_rank, intruder_dimensions, load_runs, lora_factors, random_like,
                              similarity_grid, subspace_similarity, table7_row)


def orthonormal_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.T  # n orthonormal rows in R^d


def test_identical_subspaces_give_one_and_orthogonal_ones_give_zero():
    rows = orthonormal_rows(12, 40)
    a = rows[:4] * torch.tensor([[4.0], [3.0], [2.0], [1.0]], dtype=torch.float64)
    assert subspace_similarity(a, 7 * a, 4, 4) == pytest.approx(1.0)
    assert subspace_similarity(a, rows[4:12], 4, 8) == pytest.approx(0.0, abs=1e-12)
    # Half of A's 4 directions inside B's 8-dimensional span: phi(4, 8) = 2 / 4.
    b = torch.cat([rows[:2], rows[4:10]])
    assert subspace_similarity(a, b, 4, 8) == pytest.approx(0.5)
    grid = similarity_grid(a, b, 4, 8)
    assert grid.shape == (4, 8) and np.all((grid >= -1e-12) & (grid <= 1 + 1e-12))
    assert grid[3, 7] == pytest.approx(0.5)


def test_table7_on_a_rank_one_update_along_ws_top_direction():
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    sigma = torch.linspace(10, 1, 20, dtype=torch.float64)
    weight = u[:, :20] @ torch.diag(sigma) @ v.T
    delta = 0.5 * torch.outer(u[:, 0], v[:, 0])  # W's own top direction, ||dW||_F = 0.5
    row = table7_row(delta, weight, r=1)
    assert row["delta_dirs"] == pytest.approx(10.0)   # U^T W V^T = sigma_1(W)
    assert row["w_dirs"] == pytest.approx(10.0)
    assert row["random_dirs"] < 10.0
    assert row["amplification"] == pytest.approx(0.05)
    assert row["w_norm"] == pytest.approx(float(torch.linalg.matrix_norm(weight)))
    # An update along W's weakest direction is amplified: Section 7.3's finding for LoRA.
    weak = 0.5 * torch.outer(u[:, 19], v[:, 19])
    assert table7_row(weak, weight, r=1)["amplification"] == pytest.approx(0.5)


def test_intruder_dimensions_on_updates_with_known_singular_vectors():
    w0 = torch.diag(torch.arange(10, 0, -1, dtype=torch.float64))   # singular vectors: the axes
    assert intruder_dimensions(w0, torch.zeros(10, 10)) == 0          # no update: every top vector is W_0's own
    along = torch.zeros(10, 10)
    along[0, 0] = 5.0                                                  # grows W_0's own top direction
    assert intruder_dimensions(w0, along) == 0
    v = torch.ones(10, dtype=torch.float64) / math.sqrt(10)            # |cos| with every axis: 0.316
    spike = 100.0 * torch.outer(v, v)                                  # a new, dominant direction
    assert intruder_dimensions(w0, spike, k=1) == 1
    assert intruder_dimensions(w0, spike, k=1, eps=0.3) == 0          # the threshold decides
    tilted = 100.0 * torch.outer(torch.tensor([1.0, 1.0] + [0.0] * 8, dtype=torch.float64) / math.sqrt(2),
                                 torch.tensor([1.0, 1.0] + [0.0] * 8, dtype=torch.float64) / math.sqrt(2))
    assert intruder_dimensions(w0, tilted, k=1) == 0                   # |cos| 0.707 with two axes: not an intruder
    random = random_like(spike, seed=0)
    assert int(torch.linalg.matrix_rank(random)) == 1
    assert float(torch.linalg.matrix_norm(random)) == pytest.approx(float(torch.linalg.matrix_norm(spike)))


def test_effective_rank_counts_the_directions_used():
    s, erank, k90 = effective_rank(torch.outer(torch.ones(6, dtype=torch.float64), torch.ones(5, dtype=torch.float64)))
    assert erank == pytest.approx(1.0) and k90 == 1 and s[0] == pytest.approx(math.sqrt(30))
    _, erank, k90 = effective_rank(torch.eye(8, dtype=torch.float64))
    assert erank == pytest.approx(8.0) and k90 == 8


@pytest.mark.slow
def test_weights_report_from_tiny_lora_runs(tmp_path, sst2_dir):
    from lora_repro.config import validate
    from lora_repro.trainer import run

    from .conftest import TINY, compose_cfg

    folders = []
    for r, seed in ((2, 1), (4, 1), (4, 2)):
        cfg = compose_cfg(*TINY, f"task.data_dir={sst2_dir}", "train.max_steps=6", "train.lr=1e-2",
                          f"method.r={r}", f"seed={seed}", "train.checkpoint_every=0")
        folder = tmp_path / f"r{r}_s{seed}"
        run(cfg, validate(cfg), folder)
        folders.append(folder)
    runs = load_runs(folders)
    assert len(runs) == 3 and len(lora_factors(runs[0])) == 4  # 2 layers x (query, value)
    written = {p.name for p in analyse(runs, tmp_path / "weights")}
    assert {"subspace.csv", "table7.csv", "table7.md", "spectrum.csv", "effective_rank.png"} <= written
    assert any(name.startswith("subspace_ranks_") for name in written) and any(name.startswith("subspace_seeds_") for name in written)
    import pandas as pd

    sub = pd.read_csv(tmp_path / "weights" / "subspace.csv")
    assert set(sub["compare"]) == {"ranks", "seeds"} and sub.phi_1_1.between(0, 1).all()
    t7 = pd.read_csv(tmp_path / "weights" / "table7.csv")
    assert (t7.delta_norm > 0).all() and (t7.amplification > 0).all()
    spectrum = pd.read_csv(tmp_path / "weights" / "spectrum.csv")
    assert (spectrum.effective_rank <= 4 + 1e-6).all()  # a rank-r update uses at most r directions
    intruders = pd.read_csv(tmp_path / "weights" / "intruders.csv")
    assert len(intruders) == 3 * 4 and intruders.intruders.between(0, 10).all()
    assert (intruders.delta_rank <= intruders.r).all()


def _perturbed(method_overrides: list[str], model: list[str]):
    """A tiny model under the method with every trainable tensor moved (as training would), its
    pretrained backbone, and the method."""
    import torch

    from lora_repro.assembly import build
    from lora_repro.tasks import task_runner
    from lora_repro.config import validate
    from transformers import set_seed

    from .conftest import compose_cfg

    cfg = compose_cfg(*model, *method_overrides)
    set_seed(0)
    base = task_runner(cfg).build_model().eval()
    set_seed(0)
    built = build(cfg, validate(cfg))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in built.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return built, base


TINY_BERT = ["model=tiny_bert", "task=sst2"]
TINY_GPT2_LM = ["model=gpt2_medium", "model.init=random", "model.arch.n_embd=32", "model.arch.n_layer=2",
                "model.arch.n_head=2", "task=e2e", "model.tokenizer=null"]


@pytest.mark.parametrize("method, model", [
    (["method=dora", "method.dropout=0.0"], TINY_BERT),
    (["method=pissa", "method.dropout=0.0"], TINY_BERT),
    (["method=olora", "method.dropout=0.0"], TINY_BERT),
    (["method=lora", "method.dropout=0.0"], TINY_GPT2_LM),   # GPT-2's fused q|v (FusedQKVLoRA)
    (["method=full_ft"], TINY_BERT),
])
def test_a_methods_delta_w_added_to_the_pretrained_weights_gives_the_trained_models_outputs(method, model):
    """What `make weights` analyses is each method's own dW (Method.delta_weights): W_0 + dW in a
    plain backbone reproduces the adapted model's logits. For DoRA (magnitude), PiSSA and OLoRA
    (residual base) that is not s B A, which the analysis used to assume."""
    import copy

    import torch

    from lora_repro.methods.lora import merge_lora

    built, base = _perturbed(method, model)
    pretrained = {k: v.detach().clone() for k, v in base.state_dict().items()}
    deltas = built.method.delta_weights(built.model, pretrained)
    assert deltas and all(d.abs().max() > 0 for d in deltas.values())
    # The plain backbone with W_0 + dW; everything else (the trained head, biases) from the trained model.
    rebuilt = copy.deepcopy(base)
    trained = merge_lora(copy.deepcopy(built.model)).state_dict()
    state = {k: v for k, v in trained.items() if k in pretrained}
    updated: dict[str, torch.Tensor] = {}
    for key, delta in deltas.items():
        module, _, slot = key.partition(":")
        weight = updated.setdefault(module, pretrained[f"{module}.weight"].double().clone())
        if slot:  # GPT-2's Conv1D is stored in x out; q | k | v are column blocks
            width = weight.shape[1] // 3
            part = {"q": 0, "k": 1, "v": 2}[slot]
            weight[:, part * width:(part + 1) * width] += delta.t()
        else:
            weight += delta
    state.update({f"{module}.weight": weight.float() for module, weight in updated.items()})
    rebuilt.load_state_dict(state)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    with torch.no_grad():
        expected = built.model.eval()(input_ids=ids).logits
        got = rebuilt.eval()(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_dora_delta_w_is_not_s_b_a():
    """The old analysis took s B A for every LoRA-family run; with DoRA's magnitude moved that is
    another matrix than the update the model applies."""
    built, base = _perturbed(["method=dora"], TINY_BERT)
    pretrained = base.state_dict()
    deltas = built.method.delta_weights(built.model, pretrained)
    scale = built.method.alpha / built.method.r
    layer = next(m for n, m in built.model.named_modules() if n.endswith("layer.0.attention.self.query") and hasattr(m, "lora_A"))
    s_b_a = scale * (layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double())
    delta = next(v for k, v in deltas.items() if k.endswith("layer.0.attention.self.query"))
    assert (delta - s_b_a).norm() > 0.1 * s_b_a.norm()
