"""`make bench` / `python -m lora_repro.bench [overrides]` (config: conf/bench.yaml).

Measures, side by side in one run, what the LoRA paper claims about efficiency:
  train     optimizer-step time, tokens/s and peak memory per method (each in a fresh process),
            as ratios to full fine-tuning; checkpoint bytes and their ratio to the full model's
  memory    a model of parameters + gradients + optimizer state + activations, printed beside the
            measurement and extrapolated to GPT-3 175B (paper: 1.2 TB -> 350 GB)
  latency   Table 1: GPT-2 medium forward pass for base, LoRA unmerged, LoRA merged, AdapterL, AdapterH
  overhead  this project's trainer against a bare PyTorch loop doing the same steps
Writes results/bench/{train,memory_model,latency,overhead}.csv, bench.md and bench.png."""

from __future__ import annotations

import copy
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from . import CONF_DIR
from .arch import arch_of
from .bench_worker import build, compose_run_cfg, device, random_batch, sync
from .intervals import median_ci

log = logging.getLogger("lora_repro.bench")

# GPT-3 175B (Brown et al. 2020) for the memory extrapolation.
GPT3 = {"params": 175_000_000_000, "d_model": 12288, "layers": 96, "heads": 96}
PAPER = {
    "step_time_lora_over_ft": "~0.75 (GPT-3: 32.5 -> 43.1 tokens/s per V100, 25% faster)",
    "memory_ft_over_lora": "~3.4 (GPT-3: 1.2 TB -> 350 GB)",
    "checkpoint_ratio": "~1/10,000 (GPT-3: 350 GB -> 35 MB)",
}
TARGETS = {"lora_ft_step": 0.75, "ft_lora_memory": 2.5, "merged_latency": 1.02, "harness": 1.05,
           "eval_share": 0.20, "startup_s": 10.0}


# ------------------------------------------------------------------------------------------ training
def run_train(cfg: DictConfig) -> pd.DataFrame:
    rows = []
    for model in cfg.train.models:
        for method in cfg.train.methods:
            spec = {"model": model, "method": method, **{k: cfg.train[k] for k in
                    ("batch_size", "seq_len", "warmup_steps", "steps", "lr", "precision")}}
            log.info("train: %s + %s", model, method)
            proc = subprocess.run([sys.executable, "-m", "lora_repro.bench_worker", json.dumps(spec)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"bench worker {model}/{method} failed: {proc.stderr.strip().splitlines()[-1:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    df = pd.DataFrame(rows)
    for model, group in df.groupby("model"):
        ft = group[group.method == "full_ft"]
        if len(ft):
            ft = ft.iloc[0]
            idx = group.index
            df.loc[idx, "step_time_vs_ft"] = group.step_s / ft.step_s
            df.loc[idx, "ft_memory_over_this"] = ft.peak_bytes / group.peak_bytes
            df.loc[idx, "ft_tensor_memory_over_this"] = ft.peak_tensor_bytes / group.peak_tensor_bytes
            df.loc[idx, "checkpoint_vs_full"] = group.checkpoint_bytes / ft.checkpoint_bytes
    return df


# ------------------------------------------------------------------------------------- memory model
def activation_bytes(batch: int, seq: int, d: int, layers: int, heads: int, bytes_per_value: int) -> float:
    """Korthikanti et al. 2022: s b d (34 + 5 a s / d) bytes per layer with 16-bit activations;
    scaled by bytes_per_value / 2 for other precisions. The same for every method here, since
    backpropagating into adapters or low-rank factors needs the frozen layers' activations too."""
    return layers * seq * batch * d * (34 + 5 * heads * seq / d) * bytes_per_value / 2


def memory_terms(total: int, trainable: int, weight_bytes: int, grad_bytes: int, optimizer_bytes: int,
                 activations: float) -> dict[str, float]:
    """AdamW keeps two moments per trainable parameter: `optimizer_bytes` is their size together."""
    terms = {"weights": total * weight_bytes, "gradients": trainable * grad_bytes,
             "optimizer": trainable * optimizer_bytes, "activations": activations}
    terms["total"] = sum(terms.values())
    return terms


def run_memory_model(cfg: DictConfig, train: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in train.itertuples(index=False):
        arch = arch_of(compose_run_cfg(r.model, r.method).model)
        d, layers, heads = int(arch.d_model), int(arch.n_layers), int(arch.n_heads)
        act = activation_bytes(cfg.train.batch_size, cfg.train.seq_len, d, layers, heads, 4)
        terms = memory_terms(r.params_total, r.params_trainable, 4, 4, 8, act)
        rows.append({"model": r.model, "method": r.method, **{f"predicted_{k}": v for k, v in terms.items()},
                     "measured_param_bytes": r.param_bytes, "measured_optimizer_bytes": r.optimizer_state_bytes,
                     "measured_peak": r.peak_bytes, "measured_peak_tensors": r.peak_tensor_bytes})
    # GPT-3 175B, as the paper trains it: fp16 weights and gradients, fp32 Adam moments, no
    # activations (they depend on batch and sharding, which the paper does not give).
    lora_params = 2 * GPT3["layers"] * 2 * GPT3["d_model"] * 4  # q, v at r=4: 18.9M
    for method, trainable in (("full_ft", GPT3["params"]), ("lora (q,v r=4)", lora_params)):
        terms = memory_terms(GPT3["params"], trainable, 2, 2, 8, 0.0)
        rows.append({"model": "gpt3_175b (analytic)", "method": method, **{f"predicted_{k}": v for k, v in terms.items()}})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ latency
def forward_latencies(variants: dict[str, torch.nn.Module], shape: tuple[int, int], vocab: int, trials: int,
                      warmup: int) -> dict[str, list[float]]:
    """Seconds per forward pass of each variant, measured interleaved: each round times every
    variant once, the order rotating from round to round, so drift in the machine's speed (other
    jobs, clock, caches) falls on all variants alike. Returns each variant's `trials` timings, in
    round order (round i of every variant belongs together)."""
    dev = device()
    ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0)).to(dev)
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for i in range(warmup + trials):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                sync()
                start = time.perf_counter()
                variants[name](input_ids=ids)
                sync()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return times


def latency_variants(cfg: DictConfig) -> dict[str, torch.nn.Module]:
    from .methods.lora import merge_lora

    lcfg = cfg.latency
    _, _, base, _ = build(lcfg.model, "full_ft")
    variants = {"base": base}
    _, _, lora, _ = build(lcfg.model, "lora", f"method.r={lcfg.lora_r}", "method.dropout=0.0")
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # a trained-looking update, so merging really changes the weights
            torch.nn.init.normal_(p, std=0.02)
    variants["lora_unmerged"] = lora
    variants["lora_merged"] = merge_lora(copy.deepcopy(lora))
    for method in ("adapter_l", "adapter_h"):
        _, _, adapted, _ = build(lcfg.model, method, f"method.r={lcfg.adapter_r}")
        variants[method] = adapted
    return variants


def run_latency(cfg: DictConfig) -> pd.DataFrame:
    """Per shape and variant: the median time, and the median over rounds of the variant's time
    over the base's in the same round, with its exact order-statistic interval (coverage stated)."""
    lcfg = cfg.latency
    vocab = int(compose_run_cfg(lcfg.model, "full_ft").model.arch.vocab_size)
    variants = {k: m.to(device()).eval() for k, m in latency_variants(cfg).items()}
    rows = []
    for batch, seq in lcfg.shapes:
        log.info("latency: %s interleaved, batch=%s seq=%s, %s rounds", ", ".join(variants), batch, seq, lcfg.trials)
        times = forward_latencies(variants, (batch, seq), vocab, lcfg.trials, lcfg.warmup)
        for name, seconds in times.items():
            ratio = median_ci([t / b for t, b in zip(seconds, times["base"])])
            rows.append({"batch": batch, "seq": seq, "variant": name, "ms": 1000 * statistics.median(seconds),
                         "vs_base": ratio.estimate, "vs_base_low": ratio.low, "vs_base_high": ratio.high,
                         "vs_base_level": ratio.level, "rounds": len(seconds),
                         "over_base_pct": 100 * (ratio.estimate - 1)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- overhead
def bare_loop_step_s(model, optimizer, scheduler, batch, steps: int, warmup: int) -> float:
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - start) / steps


def trainer_step_s(cfg, model, optimizer, batch, steps: int, warmup: int) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback, default_data_collator

    from .trainer import RunTrainer, training_arguments

    class Clock(TrainerCallback):
        def __init__(self):
            self.start = self.end = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                sync()
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.end = time.perf_counter()

    n = (warmup + steps) * batch["input_ids"].shape[0]
    rows = {k: v[:1].repeat(n, *([1] * (v.dim() - 1))).cpu() for k, v in batch.items()}
    from transformers.trainer_utils import IntervalStrategy

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = training_arguments(cfg, Path(tmp), [])  # exactly what a real run uses, minus evaluation
        args.eval_strategy = IntervalStrategy.NO
        trainer = RunTrainer(model=model, args=args,
                             train_dataset=Dataset.from_dict({k: v.tolist() for k, v in rows.items()}),
                             data_collator=default_data_collator, optimizers=(optimizer, None), callbacks=[clock])
        trainer.train()
    return (clock.end - clock.start) / steps


def run_overhead(cfg: DictConfig) -> pd.DataFrame:
    from transformers import get_linear_schedule_with_warmup

    ocfg = cfg.overhead
    warmup = 2
    overrides = [f"train.batch_size={ocfg.batch_size}", f"train.max_steps={warmup + ocfg.steps}",
                 "train.eval_every=1000000", "train.checkpoint_every=0", "train.logging_steps=1000000",
                 "train.warmup_ratio=0.0"]
    results = {}
    for kind in ("bare", "trainer"):
        run_cfg, method, model, _ = build(ocfg.model, ocfg.method, *overrides)
        model.to(device())
        optimizer, _ = method.create_optimizer(model, run_cfg.train)
        batch = random_batch(run_cfg, ocfg.batch_size, ocfg.seq_len, device())
        log.info("overhead: %s", kind)
        if kind == "bare":
            scheduler = get_linear_schedule_with_warmup(optimizer, 0, warmup + ocfg.steps)
            results[kind] = bare_loop_step_s(model, optimizer, scheduler, batch, ocfg.steps, warmup)
        else:
            results[kind] = trainer_step_s(run_cfg, model, optimizer, batch, ocfg.steps, warmup)
    return pd.DataFrame([{"model": ocfg.model, "method": ocfg.method, "bare_step_s": results["bare"],
                          "trainer_step_s": results["trainer"], "ratio": results["trainer"] / results["bare"]}])


# ------------------------------------------------------------------------------------------- report
def verdict(value: float, target: float, higher_is_better: bool, low: float | None = None,
            high: float | None = None) -> str:
    """Against a target: with an interval, "met" only when the whole interval is on the right side,
    "missed" when the whole interval is on the wrong side, else "interval spans the target"."""
    if low is not None and high is not None:
        good, bad = (low >= target, high < target) if higher_is_better else (high <= target, low > target)
        return "met" if good else f"missed by {abs(value - target) / target:.0%}" if bad else "interval spans the target"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else f"missed by {abs(value - target) / target:.0%}"


def report(train: pd.DataFrame, memory: pd.DataFrame, latency: pd.DataFrame, overhead: pd.DataFrame, env: str,
           phases: pd.DataFrame | None = None) -> str:
    gib = lambda b: f"{b / 2**30:.2f}"
    lines = [f"# lora-repro benchmark ({env})", "", "## Training step, memory, checkpoint (ratios to full FT of the same model)", "",
             "| model | method | trainable | step (s) | tokens/s | step vs FT | peak (GiB) | FT peak / this | peak tensors (GiB) | FT tensors / this | checkpoint (MB) | checkpoint vs full |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in train.itertuples(index=False):
        lines.append(f"| {r.model} | {r.method} | {r.params_trainable:,} | {r.step_s:.3f} | {r.tokens_per_s:,.0f} | "
                     f"{r.step_time_vs_ft:.2f} | {gib(r.peak_bytes)} | {r.ft_memory_over_this:.2f} | "
                     f"{gib(r.peak_tensor_bytes)} | {r.ft_tensor_memory_over_this:.2f} | "
                     f"{r.checkpoint_bytes / 1e6:,.2f} | {r.checkpoint_vs_full:.2e} |")
    lines += ["", "## Memory model (predicted bytes; GiB) beside the measured peak", "",
              "| model | method | weights | gradients | optimizer | activations | total predicted | measured peak (process) | measured peak (tensors) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in memory.itertuples(index=False):
        measured = "-" if pd.isna(getattr(r, "measured_peak", float("nan"))) else gib(r.measured_peak)
        tensors = "-" if pd.isna(getattr(r, "measured_peak_tensors", float("nan"))) else gib(r.measured_peak_tensors)
        lines.append(f"| {r.model} | {r.method} | {gib(r.predicted_weights)} | {gib(r.predicted_gradients)} | "
                     f"{gib(r.predicted_optimizer)} | {gib(r.predicted_activations)} | {gib(r.predicted_total)} | {measured} | {tensors} |")
    lines += ["", "## Inference latency (Table 1 shape; interleaved rounds, ratio to base in the same round)", "",
              "| batch | seq | variant | ms (median) | over base: median [interval] (coverage, rounds) |", "|---|---|---|---|---|"]
    for r in latency.itertuples(index=False):
        lines.append(f"| {r.batch} | {r.seq} | {r.variant} | {r.ms:.1f} | {r.vs_base:.3f} [{r.vs_base_low:.3f}, "
                     f"{r.vs_base_high:.3f}] ({100 * r.vs_base_level:.1f}%, {r.rounds}) |")
    o = overhead.iloc[0]
    lines += ["", "## Harness overhead", "", f"trainer step {o.trainer_step_s:.3f} s vs bare loop {o.bare_step_s:.3f} s "
              f"({o.model} + {o.method}): ratio {o.ratio:.3f}", ""]

    run_targets: dict[str, float] = {}
    if phases is not None and len(phases):
        phase_lines, run_targets = phases_report(phases)
        lines += phase_lines + [""]

    claims = [("## Claims and targets", "", "| claim | paper | measured | target | verdict |", "|---|---|---|---|---|")]
    lines += list(claims[0])

    def add(claim, paper, value, target, higher, low=None, high=None):
        shown = f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")
        lines.append(f"| {claim} | {paper} | {shown} | {'>=' if higher else '<='} {target} | "
                     f"{verdict(value, target, higher, low, high)} |")

    enc = train[(train.method == "lora") & (train.model != "gpt2_medium")]
    if len(enc):
        add(f"LoRA/FT step time ({enc.iloc[0].model})", PAPER["step_time_lora_over_ft"], enc.iloc[0].step_time_vs_ft, TARGETS["lora_ft_step"], False)
    gpt = train[(train.method == "lora") & (train.model == "gpt2_medium")]
    if len(gpt):
        add("FT/LoRA peak memory, process (gpt2_medium, AdamW)", PAPER["memory_ft_over_lora"], gpt.iloc[0].ft_memory_over_this, TARGETS["ft_lora_memory"], True)
        add("FT/LoRA peak memory, live tensors (gpt2_medium, AdamW)", PAPER["memory_ft_over_lora"],
            gpt.iloc[0].ft_tensor_memory_over_this, TARGETS["ft_lora_memory"], True)
        lines.append(f"| LoRA checkpoint / full (gpt2_medium) | {PAPER['checkpoint_ratio']} | {gpt.iloc[0].checkpoint_vs_full:.2e} | - | - |")
    gpt3 = memory[memory.model.str.startswith("gpt3")]
    if len(gpt3) == 2:
        ft, lo = gpt3.iloc[0].predicted_total, gpt3.iloc[1].predicted_total
        lines.append(f"| GPT-3 175B memory model FT -> LoRA | 1.2 TB -> 350 GB | {ft / 1e12:.2f} TB -> {lo / 1e9:.0f} GB ({ft / lo:.1f}x) | - | - |")
    for (batch, seq), group in latency.groupby(["batch", "seq"]):
        merged = group[group.variant == "lora_merged"].iloc[0]
        add(f"merged LoRA latency / base (batch {batch}, seq {seq})", "1.00 (no added latency)", merged.vs_base,
            TARGETS["merged_latency"], False, merged.vs_base_low, merged.vs_base_high)
        for name, paper in (("adapter_l", "AdapterL +2.2..+20.7%"), ("adapter_h", "AdapterH +3.0..+30.3%")):
            row = group[group.variant == name]
            if len(row):
                lines.append(f"| {name} latency / base (batch {batch}, seq {seq}) | {paper} | {row.iloc[0].vs_base:.3f} | - | - |")
    add("harness / bare loop step time", "-", o.ratio, TARGETS["harness"], False)
    if run_targets:
        add("a study run's evaluation / its process time", "-", run_targets["eval_share"], TARGETS["eval_share"], False)
        add("a study run's start-up + model load (s)", "-", run_targets["startup_s"], TARGETS["startup_s"], False)
    return "\n".join(lines) + "\n"


def plot(train: pd.DataFrame, latency: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, column, title in ((axes[0], "step_time_vs_ft", "step time / full FT"),
                              (axes[1], "ft_memory_over_this", "full-FT peak memory / method's")):
        pivot = train.pivot(index="method", columns="model", values=column)
        pivot.plot.bar(ax=ax, rot=30)
        ax.set_title(title)
        ax.set_ylabel("ratio")
        ax.axhline(1.0, color="grey", lw=0.8)
    pivot = latency.assign(shape=latency.batch.astype(str) + "x" + latency.seq.astype(str)).pivot(
        index="variant", columns="shape", values="over_base_pct")
    pivot.plot.bar(ax=axes[2], rot=30)
    axes[2].set_title("inference latency over base (%)")
    axes[2].set_ylabel("%")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------- run overhead
def run_phases(cfg: DictConfig) -> pd.DataFrame:
    """One real run as a study launches it (a fresh `python -m lora_repro.train` process), timed
    from outside for the process and from its record for each phase (trainer.Phases)."""
    tcfg = cfg.throughput
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        cmd = [sys.executable, "-m", "lora_repro.train", f"model={tcfg.model}", f"task={tcfg.task}",
               f"method={tcfg.method}", f"task.max_train_samples={tcfg.rows}", f"train.epochs={tcfg.epochs}",
               "logger.wandb.mode=disabled", "save_checkpoint=false", f"output_root={tmp}", *tcfg.overrides]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        process_s = time.perf_counter() - start
        records = list(Path(tmp).rglob("record.json"))
        if done.returncode != 0 or not records:
            raise RuntimeError(f"the timed run failed: {done.stderr.strip().splitlines()[-1:]}")
        record = json.loads(records[0].read_text())
    timing = dict(record.get("timing") or {})
    timing["process_s"] = process_s
    timing["exit_s"] = max(0.0, process_s - record["wall_s"] - timing.get("process_start_to_run_s", 0.0))
    return pd.DataFrame([{"phase": k, "seconds": v} for k, v in timing.items()]).assign(
        model=tcfg.model, task=tcfg.task, method=tcfg.method, rows=tcfg.rows)


def phases_report(phases: pd.DataFrame) -> tuple[list[str], dict[str, float]]:
    t = dict(zip(phases.phase, phases.seconds))
    total = t["process_s"]
    evaluation = t.get("eval_during_training_s", 0.0) + t.get("results_s", 0.0)
    startup = t.get("process_start_to_run_s", 0.0) + t.get("model_load_s", 0.0)
    row = phases.iloc[0]
    lines = ["", f"## Where a study's run spends its time ({row.model} + {row.method}, {row.task}, {row.rows} rows)", "",
             "| phase | seconds | share of the process |", "|---|---|---|"]
    for name in ("process_start_to_run_s", "model_load_s", "tokenize_s", "setup_s", "train_s", "eval_during_training_s",
                 "results_s", "save_s", "exit_s"):
        if name in t:
            lines.append(f"| {name.removesuffix('_s').replace('_', ' ')} | {t[name]:.1f} | {100 * t[name] / total:.0f}% |")
    lines.append(f"| whole process | {total:.1f} | 100% |")
    return lines, {"eval_share": evaluation / total, "startup_s": startup}


def run_bench(cfg: DictConfig) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}, torch {torch.__version__}, " \
          f"{torch.get_num_threads()} threads"
    train = run_train(cfg)
    memory = run_memory_model(cfg, train)
    latency = run_latency(cfg)
    overhead = run_overhead(cfg)
    phases = run_phases(cfg)
    for name, df in (("train", train), ("memory_model", memory), ("latency", latency), ("overhead", overhead),
                     ("phases", phases)):
        df.to_csv(out / f"{name}.csv", index=False)
    text = report(train, memory, latency, overhead, env, phases)
    (out / "bench.md").write_text(text)
    (out / "claims.md").write_text(text[text.index("| claim |"):])  # the part the README quotes
    plot(train, latency, out / "bench.png")
    (out / "bench_config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return {"train": train, "memory": memory, "latency": latency, "overhead": overhead, "phases": phases, "markdown": text}


@hydra.main(config_path=str(CONF_DIR), config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run_bench(cfg)
    print(result["markdown"])
    print(f"written to {cfg.out_dir}/")


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    main()
