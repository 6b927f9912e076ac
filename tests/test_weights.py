"""Section 7's measures on matrices with known answers, and `make weights` on real (tiny) runs."""

import math

import numpy as np
import pytest
import torch

from analysis.weights import (analyse, effective_rank, load_runs, lora_factors, similarity_grid,
                              subspace_similarity, table7_row)


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
