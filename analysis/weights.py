"""`make weights [STUDY=rank_sweep | RUNS=dir]` (also a study's `results: [weights]`): the LoRA paper's Section 7 ("Understanding the low-rank
updates") from finished runs' saved weights (checkpoint/trainable.safetensors) and the pretrained
weights they started from.

  subspace similarity   phi(A_1, A_2, i, j) = ||U_1[:, :i]^T U_2[:, :j]||_F^2 / min(i, j), U the
                        right-singular vectors of A (Section 7.2): between ranks (Figure 3, r=8 vs
                        r=64) and between seeds at the same rank (Figure 4). 1 = same subspace, 0 = orthogonal.
  Table 7               ||U^T W V^T||_F with U, V the top-r singular directions of dW, of W itself, or
                        random; and the amplification ||dW||_F / ||U^T W V^T||_F (dW's own directions).
  intruders             "intruder dimensions" (Shuttleworth et al. 2024, "LoRA vs full fine-tuning: an
                        illusion of equivalence"): of the top INTRUDER_K left-singular vectors of
                        W_0 + dW, those whose largest |cosine| with every left-singular vector of W_0 is
                        below INTRUDER_EPS; beside it the count for a random dW of the same rank and
                        Frobenius norm (what any update of that size would do).
  spectrum              the singular values of dW per matrix and its effective rank (exp of the entropy
                        of the normalised singular values; Roy & Vetterli 2007). dW is each method's
                        own (Method.delta_weights): s B A for LoRA, peft's merge for DoRA, PiSSA,
                        OLoRA and other peft tuners, W_ft - W_0 for full fine-tuning.

Writes <results>/weights/{subspace.csv, table7.csv, table7.md, intruders.csv, spectrum.csv,
summary.md} and PNGs (subspace heatmaps per matrix type and layer, spectra)."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lora_repro.record import CHECKPOINT_FILE, RECORD_NAME, read_run_record  # noqa: E402

# peft's names: <module path>.lora_A.<adapter>.weight; GPT-2's fused layer: <path>.lora_A.q
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<slot>[^.]+)(?:\.weight)?$")
LAYER = re.compile(r"\.(\d+)\.")


# ------------------------------------------------------------------------------------ the measures
def right_singular(a: torch.Tensor) -> torch.Tensor:
    """Columns = right-singular vectors of A (r x d), strongest first: a basis of A's row space."""
    _, _, vh = torch.linalg.svd(a.double(), full_matrices=False)
    return vh.T


def subspace_similarity(a1: torch.Tensor, a2: torch.Tensor, i: int, j: int) -> float:
    """phi(A1, A2, i, j) of Section 7.2, in [0, 1]."""
    u1, u2 = right_singular(a1)[:, :i], right_singular(a2)[:, :j]
    return float((u1.T @ u2).pow(2).sum() / min(i, j))


def similarity_grid(a1: torch.Tensor, a2: torch.Tensor, max_i: int = 8, max_j: int = 64) -> np.ndarray:
    i_max, j_max = min(max_i, a1.shape[0]), min(max_j, a2.shape[0])
    u1, u2 = right_singular(a1), right_singular(a2)
    overlap = (u1[:, :i_max].T @ u2[:, :j_max]).pow(2)  # (i_max, j_max)
    cumulative = overlap.cumsum(0).cumsum(1).numpy()
    return np.array([[cumulative[i - 1, j - 1] / min(i, j) for j in range(1, j_max + 1)] for i in range(1, i_max + 1)])


def table7_row(delta: torch.Tensor, weight: torch.Tensor, r: int, seed: int = 0) -> dict[str, float]:
    """||U^T W V^T||_F for U, V the top-r singular directions of dW, of W, and random orthonormal
    ones; ||W||_F and ||dW||_F; the amplification factor (dW's directions). Section 7.3."""
    delta, weight = delta.double(), weight.double()
    u_d, _, vh_d = torch.linalg.svd(delta, full_matrices=False)
    u_w, _, vh_w = torch.linalg.svd(weight, full_matrices=False)
    g = torch.Generator().manual_seed(seed)
    u_r = torch.linalg.qr(torch.randn(weight.shape[0], r, generator=g, dtype=torch.float64))[0]
    v_r = torch.linalg.qr(torch.randn(weight.shape[1], r, generator=g, dtype=torch.float64))[0]

    def projected(u: torch.Tensor, vh: torch.Tensor) -> float:
        return float(torch.linalg.matrix_norm(u[:, :r].T @ weight @ vh[:r].T))

    on_delta = projected(u_d, vh_d)
    return {"r": r, "delta_dirs": on_delta, "w_dirs": projected(u_w, vh_w), "random_dirs": projected(u_r, v_r.T),
            "w_norm": float(torch.linalg.matrix_norm(weight)), "delta_norm": float(torch.linalg.matrix_norm(delta)),
            "amplification": float(torch.linalg.matrix_norm(delta)) / on_delta if on_delta > 0 else float("inf")}


# The paper's own setting: the top 10 singular vectors, cosine threshold 0.5 (it also sweeps the
# threshold; intruders.csv keeps INTRUDER_EPS_ALSO beside it).
INTRUDER_K, INTRUDER_EPS, INTRUDER_EPS_ALSO = 10, 0.5, 0.7


def intruder_dimensions(weight: torch.Tensor, delta: torch.Tensor, k: int = INTRUDER_K,
                        eps: float = INTRUDER_EPS) -> int:
    """How many of the top-k left-singular vectors of W_0 + dW have |cos| < eps with every
    left-singular vector of W_0 (singular vectors are signed up to -1, hence the absolute value)."""
    w0 = weight.double()
    u0 = torch.linalg.svd(w0, full_matrices=False)[0]
    uf = torch.linalg.svd(w0 + delta.double(), full_matrices=False)[0][:, :k]
    return int(((uf.T @ u0).abs().max(dim=1).values < eps).sum())


def random_like(delta: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random matrix of dW's shape, rank and Frobenius norm (Gaussian factors)."""
    delta = delta.double()
    rank = max(1, int(torch.linalg.matrix_rank(delta)))
    g = torch.Generator().manual_seed(seed)
    m, n = delta.shape
    random = torch.randn(m, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, n, generator=g, dtype=torch.float64)
    return random * (torch.linalg.matrix_norm(delta) / torch.linalg.matrix_norm(random))


def intruder_row(weight: torch.Tensor, delta: torch.Tensor, seed: int = 0) -> dict[str, float]:
    random = random_like(delta, seed)
    return {"intruders": intruder_dimensions(weight, delta), "random_intruders": intruder_dimensions(weight, random),
            f"intruders_eps{INTRUDER_EPS_ALSO}": intruder_dimensions(weight, delta, eps=INTRUDER_EPS_ALSO),
            f"random_intruders_eps{INTRUDER_EPS_ALSO}": intruder_dimensions(weight, random, eps=INTRUDER_EPS_ALSO),
            "delta_rank": int(torch.linalg.matrix_rank(delta.double())),
            # how big the update is against W: a small one cannot displace W's top directions
            "relative_norm": float(torch.linalg.matrix_norm(delta.double()) / torch.linalg.matrix_norm(weight.double()))}


def effective_rank(delta: torch.Tensor) -> tuple[np.ndarray, float, int]:
    """Singular values, exp(entropy of sigma / sum sigma), and how many carry 90% of ||dW||_F^2."""
    s = torch.linalg.svdvals(delta.double()).numpy()
    p = s / s.sum() if s.sum() > 0 else s
    entropy = -float(np.sum(p[p > 0] * np.log(p[p > 0])))
    energy = np.cumsum(s ** 2) / np.sum(s ** 2) if np.sum(s ** 2) > 0 else np.ones_like(s)
    return s, float(np.exp(entropy)), int(np.searchsorted(energy, 0.9) + 1)


# ----------------------------------------------------------------------------------- reading runs
@dataclass
class Run:
    path: Path
    record: dict
    weights: dict[str, torch.Tensor]

    @property
    def label(self) -> str:
        r = self.record
        return f"{r['model']} {r['task']} {r['method']} r={(r.get('hparams') or {}).get('r', '-')} seed {r['seed']}"


def load_runs(folders: list[Path]) -> list[Run]:
    from safetensors.torch import load_file

    runs = []
    for folder in folders:
        record_path, weights_path = folder / RECORD_NAME, folder / CHECKPOINT_FILE
        if not record_path.is_file() or not weights_path.is_file():
            continue
        record, _ = read_run_record(record_path)
        if record is None or record.get("status") != "ok":
            continue
        try:
            runs.append(Run(folder, record, load_file(str(weights_path))))
        except Exception as exc:  # a truncated or foreign file: named, and the other runs still count
            print(f"skipped {weights_path}: {' '.join(str(exc).split())[:160]}")
    return runs


def lora_factors(run: Run) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path (or path:slot for fused q|v) -> (A, B)."""
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in run.weights.items():
        match = LORA_KEY.match(name)
        if match:
            key = match["module"] if match["slot"] == "default" else f"{match['module']}:{match['slot']}"
            pieces.setdefault(key, {})[match["which"]] = tensor
    return {k: (v["A"], v["B"]) for k, v in pieces.items() if {"A", "B"} <= set(v)}


def pretrained_weights(record: dict) -> dict[str, torch.Tensor]:
    """The backbone's pretrained weights, by module path, as the run started from them (a
    random-init backbone is rebuilt from the run's seed, as the trainer built it)."""
    from omegaconf import OmegaConf
    from transformers import set_seed

    from lora_repro.tasks import task_runner

    cfg = OmegaConf.create(record["config"])
    set_seed(int(cfg.seed))
    model = task_runner(cfg).build_model()  # the task's own model: a classifier, or a causal LM
    return {k: v.detach() for k, v in model.state_dict().items()}


def method_deltas(run: Run, pretrained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """dW per adapted matrix as the run's own method defines it (Method.delta_weights: peft's merge
    for peft tuners, so DoRA, PiSSA and OLoRA come out right; s B A per slice for GPT-2's fused
    q|v; the difference for full fine-tuning), on the run's trained model rebuilt from its record
    and saved weights; {} for methods that add modules instead of changing weights."""
    from lora_repro.predict import load_run

    loaded = load_run(run.path)
    return {k: v.double() for k, v in loaded.built.method.delta_weights(loaded.built.model, pretrained).items()}


def base_weight(pretrained: dict[str, torch.Tensor], key: str) -> torch.Tensor | None:
    module, _, slot = key.partition(":")
    weight = pretrained.get(f"{module}.weight")
    if weight is None:
        return None
    if slot:  # GPT-2's fused c_attn (Conv1D, stored in x out): q is the first third, v the last
        width = weight.shape[1] // 3
        part = {"q": 0, "k": 1, "v": 2}[slot]
        return weight[:, part * width:(part + 1) * width].T
    return weight


def matrix_type(key: str) -> str:
    module, _, slot = key.partition(":")
    return slot or module.rsplit(".", 1)[-1]


def layer_of(key: str) -> int:
    found = LAYER.findall(key)
    return int(found[-1]) if found else -1


# ------------------------------------------------------------------------------------- the report
def comparison_pairs(members: list[Run]) -> list[tuple[str, Run, Run]]:
    """The paper's comparisons: r=8 against r=64 of the same seed (Figure 3; the lowest and highest
    rank run when those are missing), and two seeds at the same rank (Figure 4), at both ranks."""
    by_rank: dict[int, list[Run]] = {}
    for run in sorted(members, key=lambda m: m.record["seed"]):
        by_rank.setdefault(int(run.record["hparams"]["r"]), []).append(run)
    if not by_rank:
        return []
    low = 8 if 8 in by_rank else min(by_rank)
    high = 64 if 64 in by_rank else max(by_rank)
    pairs = []
    if low != high:
        high_by_seed = {m.record["seed"]: m for m in by_rank[high]}
        pairs += [("ranks", m, high_by_seed[m.record["seed"]]) for m in by_rank[low] if m.record["seed"] in high_by_seed]
    for rank in dict.fromkeys((low, high)):
        if len(by_rank[rank]) >= 2:
            pairs.append(("seeds", by_rank[rank][0], by_rank[rank][1]))
    return pairs


def analyse(runs: list[Run], out: Path) -> list[Path]:
    written: list[Path] = []
    lora = [r for r in runs if lora_factors(r)]
    if not lora and not runs:
        print("no finished run with saved weights (checkpoint/trainable.safetensors): nothing to analyse")
        return written
    out.mkdir(parents=True, exist_ok=True)
    subspace_rows = []
    groups: dict[tuple, list[Run]] = {}
    for run in lora:
        rec = run.record
        groups.setdefault((rec["model"], rec["task"], rec["method"]), []).append(run)
    for (model, task, method), members in groups.items():
        for kind, a, b in comparison_pairs(members):
            ra, rb = a.record["hparams"]["r"], b.record["hparams"]["r"]
            fa, fb = lora_factors(a), lora_factors(b)
            for key in sorted(set(fa) & set(fb)):
                grid = similarity_grid(fa[key][0], fb[key][0], max_i=min(ra, rb), max_j=max(ra, rb))
                subspace_rows.append({"model": model, "task": task, "method": method, "compare": kind,
                                      "run_a": a.label, "run_b": b.label, "r_a": ra, "r_b": rb,
                                      "seed_a": a.record["seed"], "seed_b": b.record["seed"], "matrix": key,
                                      "type": matrix_type(key), "layer": layer_of(key), "phi_1_1": float(grid[0, 0]),
                                      "phi_top_mean": float(grid[:, 0].mean()), "grid": grid})
    if subspace_rows:
        df = pd.DataFrame(subspace_rows)
        df.drop(columns=["grid"]).to_csv(out / "subspace.csv", index=False)
        written.append(out / "subspace.csv")
        written += subspace_plots(df, out)
    table7, spectra, intruders = [], [], []
    backbones: dict[str, dict[str, torch.Tensor]] = {}
    for run in runs:
        factors = lora_factors(run)
        # One backbone build per model, task head shape and seed (the fresh head is seeded), not
        # one per run: a rank sweep's 42 runs share 3.
        config = run.record.get("config") or {}
        key = json.dumps([config.get("model"), (config.get("task") or {}).get("kind"),
                          (config.get("task") or {}).get("num_labels"), run.record["seed"]], sort_keys=True, default=str)
        if key not in backbones:
            backbones[key] = pretrained_weights(run.record)
        pretrained = backbones[key]
        deltas = method_deltas(run, pretrained)
        for key, delta in deltas.items():
            weight = base_weight(pretrained, key)
            s, erank, k90 = effective_rank(delta)
            spectra.append({"run": run.label, "method": run.record["method"], "matrix": key, "type": matrix_type(key),
                            "layer": layer_of(key), "effective_rank": erank, "rank_90pct_energy": k90,
                            "top_singular_values": " ".join(f"{v:.4g}" for v in s[:16])})
            if weight is not None and weight.dim() == 2 and weight.shape == delta.shape and delta.abs().max() > 0:
                intruders.append({"run": run.label, "method": run.record["method"], "seed": run.record["seed"],
                                  "r": (run.record.get("hparams") or {}).get("r"), "matrix": key, "type": matrix_type(key),
                                  "layer": layer_of(key), **intruder_row(weight, delta, seed=layer_of(key) + 1)})
            if weight is not None and factors:
                rank = int(run.record["hparams"]["r"])
                table7.append({"run": run.label, "method": run.record["method"], "matrix": key, "type": matrix_type(key), "layer": layer_of(key),
                               **table7_row(delta, weight, rank)})
    if table7:
        t7 = pd.DataFrame(table7)
        t7.to_csv(out / "table7.csv", index=False)
        (out / "table7.md").write_text(table7_markdown(t7))
        written += [out / "table7.csv", out / "table7.md"]
    if intruders:
        pd.DataFrame(intruders).to_csv(out / "intruders.csv", index=False)
        written.append(out / "intruders.csv")
    if spectra:
        sp = pd.DataFrame(spectra)
        sp.to_csv(out / "spectrum.csv", index=False)
        written.append(out / "spectrum.csv")
        written.append(spectrum_plot(sp, out))
    if subspace_rows or table7 or intruders:
        (out / "summary.md").write_text(summary_markdown(pd.DataFrame(subspace_rows), pd.DataFrame(table7),
                                                         pd.DataFrame(intruders)))
        written.append(out / "summary.md")
    return written


def summary_markdown(sub: pd.DataFrame, t7: pd.DataFrame, intruders: pd.DataFrame | None = None) -> str:
    """The few numbers that answer Section 7's questions, from the CSVs above: the subspace overlap
    of the top directions (chance level for one direction is 1/d), and Table 7 at the lowest rank,
    r = 8 and the highest rank."""
    lines = []
    if not sub.empty:
        lines += ["| method | comparison (LoRA Figs. 3-4) | matrix | phi(1, 1): overlap of the top directions of A | "
                  "pairs x layers |", "|---|---|---|---|---|"]
        for (method, compare, ra, rb, mtype), group in sub.groupby(["method", "compare", "r_a", "r_b", "type"]):
            what = f"r={ra} vs r={rb}, same seed" if compare == "ranks" else f"two seeds, r={ra}"
            lines.append(f"| {method} | {what} | W_{mtype} | {group.phi_1_1.mean():.3f} | {len(group)} |")
        lines.append("")
    if not t7.empty:
        ranks = sorted(set(t7.r))
        shown = sorted({ranks[0], ranks[-1], *([8] if 8 in ranks else [])})
        lines += ["| method | matrix | r | ‖UᵀWVᵀ‖_F, U, V from ΔW | from W | random | ‖ΔW‖_F | amplification "
                  "‖ΔW‖_F / ‖UᵀWVᵀ‖_F (ΔW's) |", "|---|---|---|---|---|---|---|---|"]
        for (method, mtype, r), group in t7[t7.r.isin(shown)].groupby(["method", "type", "r"]):
            lines.append(f"| {method} | W_{mtype} | {r} | {group.delta_dirs.mean():.3f} | {group.w_dirs.mean():.3f} | "
                         f"{group.random_dirs.mean():.3f} | {group.delta_norm.mean():.3f} | {group.amplification.mean():.2f} |")
        lines.append("")
        lines.append("Means over layers and runs; every rank is in table7.csv / table7.md.")
    if intruders is not None and not intruders.empty:
        lines += ["", f"Intruder dimensions (Shuttleworth et al. 2024): of the top {INTRUDER_K} singular vectors of "
                  f"W_0 + ΔW, those with |cos| < {INTRUDER_EPS} to every singular vector of W_0; 'random' is the same "
                  f"count for a random ΔW of the same rank and norm.", "",
                  "| method | r | matrix | intruders per matrix | random ΔW | ‖ΔW‖_F / ‖W‖_F (median) | matrices |",
                  "|---|---|---|---|---|---|---|"]
        shared = sorted(set.intersection(*[set(g.type) for _, g in intruders.groupby("method")]))
        rank = intruders.r.map(lambda v: "-" if pd.isna(v) else str(int(v)))
        for (method, r, mtype), group in intruders[intruders.type.isin(shared)].groupby(["method", rank, "type"]):
            relative = f"{group.relative_norm.median():.4f}" if "relative_norm" in group else "—"
            lines.append(f"| {method} | {r} | W_{mtype} | {group.intruders.mean():.2f} | "
                         f"{group.random_intruders.mean():.2f} | {relative} | {len(group)} |")
    return "\n".join(lines) + "\n"


def table7_markdown(t7: pd.DataFrame) -> str:
    """Table 7's layout: per run and matrix type, averaged over layers."""
    lines = ["# Table 7 layout from your runs", "",
             "||U^T W V^T||_F with U, V the top-r singular directions of dW, of W, or random; mean over layers. "
             "Amplification = ||dW||_F / ||U^T W V^T||_F with dW's own directions (the paper: 21.5 for r=4, "
             "GPT-3 layer 48 W_q; 1.9 with r=64).", "",
             "| run | matrix | r | dW dirs | W dirs | random | ‖W‖_F | ‖dW‖_F | amplification |", "|---|---|---|---|---|---|---|---|---|"]
    means = t7.groupby(["run", "type", "r"]).mean(numeric_only=True).reset_index()
    for r in means.itertuples(index=False):
        lines.append(f"| {r.run} | W_{r.type} | {r.r} | {r.delta_dirs:.3f} | {r.w_dirs:.3f} | {r.random_dirs:.3f} | "
                     f"{r.w_norm:.2f} | {r.delta_norm:.3f} | {r.amplification:.1f} |")
    return "\n".join(lines) + "\n"


def subspace_plots(df: pd.DataFrame, out: Path) -> list[Path]:
    paths = []
    for (model, task, method, compare, run_a, run_b), group in df.groupby(
            ["model", "task", "method", "compare", "run_a", "run_b"], sort=False):
        types = sorted(group.type.unique())
        layers = sorted(group.layer.unique())
        fig, axes = plt.subplots(len(types), len(layers), figsize=(2.2 * len(layers) + 1, 2.2 * len(types) + 0.6),
                                 squeeze=False)
        for (ti, mtype), (li, layer) in itertools.product(enumerate(types), enumerate(layers)):
            ax = axes[ti][li]
            row = group[(group.type == mtype) & (group.layer == layer)]
            if row.empty:
                ax.axis("off")
                continue
            image = ax.imshow(row.grid.iloc[0], vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper")
            ax.set_title(f"W_{mtype} layer {layer}", fontsize=7)
            ax.set_xlabel(f"j ({row.r_b.iloc[0]})", fontsize=6)
            ax.set_ylabel(f"i ({row.r_a.iloc[0]})", fontsize=6)
            ax.tick_params(labelsize=5)
        fig.colorbar(image, ax=axes, shrink=0.6, label="phi(i, j)")
        fig.suptitle(f"Subspace similarity, {compare}: {run_a} vs {run_b} (cf. LoRA Figs. 3-4)", fontsize=8)
        first = group.iloc[0]
        path = out / (f"subspace_{compare}_{model}_{task}_{method}_r{first.r_a}-r{first.r_b}"
                      f"_seed{first.seed_a}-{first.seed_b}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def spectrum_plot(sp: pd.DataFrame, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    summary = sp.groupby(["run", "type"]).effective_rank.mean().unstack()
    summary.plot.bar(ax=ax, rot=30, fontsize=6)
    ax.set_ylabel("effective rank of dW (mean over layers)")
    ax.set_title("How many directions the update uses")
    fig.tight_layout()
    path = out / "effective_rank.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def analyse_records(records, out: Path) -> list[Path]:
    """analyse() over the finished runs of a Records set (a study's or a runs folder's)."""
    from lora_repro.studyspec import PROJECT_ROOT

    # A committed record names its run folder relative to the project (outputs/runs/...).
    folders = [Path(p) if Path(p).is_absolute() else PROJECT_ROOT / p for p in records.ok.path] if not records.ok.empty else []
    return analyse(load_runs(folders), out)


def main(argv: list[str] | None = None) -> int:
    from .sources import source_arguments, source_records

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    records, out = source_records(args, rest)
    for path in analyse_records(records, out / "weights"):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
