"""One benchmark measurement in a fresh process (so the peak memory is this method's alone):
`python -m lora_repro.bench_worker '{"kind": "train", "model": "gpt2_medium", "method": "lora", ...}'`
prints one JSON line. Used by lora_repro.bench; importable for tests."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .backbone import count_parameters
from .profiling import LiveTensorBytes, PeakMemory, live_tensors, optimizer_state

from .assembly import build as assemble
from .config import compose_config
from .trainer import trainable_state


def compose_run_cfg(model: str, method: str, *overrides: str):
    """A benchmark run's config: the architecture only (random weights), any method; decoders as
    language models (the E2E task), encoders as classifiers (SST-2)."""
    base = [f"model={model}", "model.init=random", f"method={method}"]
    cfg = compose_config([*base, "task=sst2", *overrides])
    return compose_config([*base, "task=e2e", *overrides]) if cfg.model.decoder else cfg


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build(model_name: str, method_name: str, *overrides: str):
    """The benchmark's model, assembled as a training run assembles it (lora_repro.assembly)."""
    cfg = compose_run_cfg(model_name, method_name, *overrides)
    torch.manual_seed(0)
    built = assemble(cfg)
    return cfg, built.method, built.model, built.head


def random_batch(cfg: Any, batch_size: int, seq_len: int, dev: torch.device) -> dict[str, torch.Tensor]:
    vocab = int(cfg.model.arch.get("vocab_size", 30000))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g).to(dev)
    labels = ids.clone() if cfg.model.decoder else torch.zeros(batch_size, dtype=torch.long, device=dev)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def one_step(model, optimizer, batch, autocast) -> None:
    with autocast:
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def peak_tensor_bytes(model, optimizer, step) -> tuple[int, str]:
    """Live tensor bytes at their peak in one more (untimed) training step: weights and optimizer
    state already live, gradients and activations made during the step. CUDA: max allocated."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_memory_allocated"
    with LiveTensorBytes(existing=live_tensors(model, optimizer)) as mode:
        step()
    return mode.peak, "cpu_live_tensors_one_step"


def measure_train(spec: dict) -> dict:
    # Peak memory with the instrument every run record uses (PeakMemory: sampled RSS on CPU, CUDA max
    # allocated on a GPU), over the same span: model build through the last training step.
    with PeakMemory() as memory:
        out = _measure_train(spec)
    return {**out, "peak_bytes": memory.peak, "peak_source": memory.source}


def _measure_train(spec: dict) -> dict:
    cfg, method, model, head = build(spec["model"], spec["method"], f"train.lr={spec['lr']}")
    dev = device()
    model.to(dev).train()
    optimizer, _ = method.create_optimizer(model, cfg.train)
    batch = random_batch(cfg, spec["batch_size"], spec["seq_len"], dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=spec.get("precision") == "bf16")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(spec["warmup_steps"] + spec["steps"]):
        sync()
        start = time.perf_counter()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= spec["warmup_steps"]:
            times.append(time.perf_counter() - start)
    # The moments only: bench.memory_terms sets them beside its analytic 2 x trainable, so the 0-dim
    # step counters are left out here (live_tensors above counts them, as a step finds them alive).
    optimizer_bytes = sum(t.numel() * t.element_size() for t in optimizer_state(optimizer) if t.dim() > 0)
    tensor_peak, tensor_source = peak_tensor_bytes(model, optimizer, lambda: one_step(model, optimizer, batch, autocast))
    state = trainable_state(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trainable.safetensors"
        save_file(state, str(path))
        checkpoint = path.stat().st_size
    step_s = statistics.median(times)
    return {
        "model": spec["model"], "method": spec["method"], "step_s": step_s,
        "tokens_per_s": spec["batch_size"] * spec["seq_len"] / step_s,
        "peak_tensor_bytes": tensor_peak, "peak_tensor_source": tensor_source,
        **{f"params_{k}": v for k, v in count_parameters(model, head).items()},
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "optimizer_state_bytes": optimizer_bytes, "checkpoint_bytes": checkpoint,
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(measure_train(spec)), flush=True)


if __name__ == "__main__":
    main()
