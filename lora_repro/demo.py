"""`python -m lora_repro.demo [--out DIR] [extra overrides...]`: fine-tune the offline MiniLM on
Rotten Tomatoes with each method of conf/demo.yaml, one fresh process per run, then print the
comparison table (also written to DIR/table.md). Extra arguments are Hydra overrides for every run."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from . import CONF_DIR
from .record import RECORD_NAME, read_record

COLUMNS = ["method", "adapted params", "trainable params", "accuracy", "peak memory (MiB)", "tokens/s", "wall time (s)"]


def table_row(name: str, record: dict) -> list[str]:
    if record.get("status") != "ok":
        return [name, "-", "-", f"FAILED: {record.get('error')}", "-", "-", "-"]
    return [
        name,
        f"{record['params']['adapted']:,}",
        f"{record['params']['trainable']:,}",
        f"{record['metrics']['accuracy']:.4f}",
        f"{record['peak_memory_bytes'] / 2**20:,.0f}",
        f"{record['throughput']['train_tokens_per_s']:,.0f}",
        f"{record['wall_s']:.1f}",
    ]


def markdown_table(rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([fmt(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="folder for the runs (default outputs/demo/<time>)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of conf/demo.yaml runs")
    args, overrides = parser.parse_known_args(argv)
    demo = OmegaConf.load(CONF_DIR / "demo.yaml")
    out = Path(args.out or f"outputs/demo/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    names = args.methods.split(",") if args.methods else list(demo.runs)
    unknown = [n for n in names if n not in demo.runs]
    if unknown:
        print(f"error: unknown demo run(s) {unknown}; valid: {', '.join(demo.runs)}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        run_dir = out / name
        cmd = [sys.executable, "-m", "lora_repro.train", *demo.common, *demo.runs[name], *overrides,
               f"hydra.run.dir={run_dir}"]
        print(f"[demo] {name}: {' '.join(cmd[3:])}", flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        record_path = run_dir / RECORD_NAME
        if record_path.is_file():
            record = read_record(record_path)
        else:  # stopped before training (a config error): nothing was recorded
            record = {"status": "failed", "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        rows.append(table_row(name, record))
        print(f"[demo] {name}: {record['status']}" + (f" ({record['error']})" if record.get("error") else ""), flush=True)
    table = markdown_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    print(f"\nMiniLM-L6 on Rotten Tomatoes (dev accuracy; records under {out}/):\n\n{table}")
    return 0 if all(r[3][:6] != "FAILED" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
