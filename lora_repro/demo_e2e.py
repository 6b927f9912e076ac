"""`python -m lora_repro.demo_e2e [overrides...]` (`make demo-e2e`): the E2E NLG pipeline offline
(conf/experiment/demo_e2e.yaml: SmolLM2-135M + LoRA trained on E2E dev, beam search on all 630 test
MRs, the five official metrics), then a summary beside the paper's GPT-2 M LoRA row."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .metrics.e2e import METRIC_NAMES
from .record import RECORD_NAME, read_record

# LoRA paper Table 3, GPT-2 M (LoRA), test set (BLEU x100, the others as the scorer prints them).
PAPER_GPT2_M_LORA = {"BLEU": 0.704, "NIST": 8.85, "METEOR": 0.468, "ROUGE_L": 0.718, "CIDEr": 2.53}


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    run_dir = Path(f"outputs/demo_e2e/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    cmd = [sys.executable, "-m", "lora_repro.train", "experiment=demo_e2e", *overrides, f"hydra.run.dir={run_dir}"]
    print("[demo-e2e] " + " ".join(cmd[3:]), flush=True)
    status = subprocess.run(cmd).returncode
    path = run_dir / RECORD_NAME
    if not path.is_file():
        return status or 1
    record = read_record(path)
    if record.get("status") != "ok":
        print(f"[demo-e2e] failed: {record.get('error')}", file=sys.stderr)
        return 1
    metrics, decoding = record["metrics"], record["decoding"]["test"]
    print(f"\nE2E test set, {decoding['mrs_decoded']} MRs / {decoding['n_references']} references "
          f"({record['model']} + {record['method']}, {record['params']['adapted']:,} trainable parameters; "
          f"{record['throughput']['train_steps']} training steps in {record['throughput']['train_runtime_s']:.0f} s, "
          f"decoding {decoding['decode_s']:.0f} s, wall {record['wall_s']:.0f} s)\n")
    print("| metric  | this run | paper GPT-2 M LoRA |\n|---------|----------|--------------------|")
    for name in METRIC_NAMES:
        print(f"| {name:<7} | {metrics[name]:8.4f} | {PAPER_GPT2_M_LORA[name]:18.4f} |")
    mrs = (run_dir / decoding["mrs"]).read_text(encoding="utf-8").splitlines()
    outputs = (run_dir / decoding["outputs"]).read_text(encoding="utf-8").splitlines()
    print("\nFirst outputs:")
    for mr, out in list(zip(mrs, outputs))[:3]:
        print(f"  {mr}\n    -> {out}")
    print(f"\nOutputs, references and record.json in {run_dir}/ "
          f"(rescore: python -m lora_repro.metrics.e2e {run_dir / decoding['references']} {run_dir / decoding['outputs']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
