"""The run record (record.json) and the measurements that go into it: peak memory, git commit,
atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, TypedDict

import psutil
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from . import PROJECT_ROOT

RECORD_NAME = "record.json"
# The fine-tuned model's trainable tensors: inside a run folder, and inside a resumable checkpoint.
TRAINABLE_FILE = "trainable.safetensors"
CHECKPOINT_FILE = f"checkpoint/{TRAINABLE_FILE}"


class RunRecord(TypedDict):
    """record.json, declared once: the trainer fills it, the analysis reads it (analysis.records)."""

    status: str                     # "running" while it trains, then "ok" or "failed"
    error: str | None               # one line naming why a run failed
    study: str | None               # the experiments/<study> that launched it (None: launched by hand)
    task: str
    model: str
    method: str
    method_info: dict[str, Any]     # Method.info(): family, rank_key, lr_ratio_key, paper_setting
    paper_setting: str              # "paper" or "houlsby": which published Table 2 rows it compares with
    seed: int
    experiment: str | None          # the conf/experiment recipe it used
    overrides: str                  # how its recipe differs from the named defaults ("" when it does not)
    hparams: dict[str, Any]         # the method's own settings
    metrics: dict[str, float] | None          # the final evaluation
    best_metrics: dict[str, Any] | None       # the evaluation with the best main metric, with step, epoch
    eval_curve: list[dict[str, Any]] | None   # every evaluation: {"step", "epoch", metric: value, ...}
    params: dict[str, int] | None             # adapted (the papers' count), trainable, total
    optimizer_groups: list[dict[str, Any]] | None
    peak_memory_bytes: int | None
    peak_memory_source: str | None
    peak_tensor_bytes: int | None   # peak of live tensor bytes (CPU: first training steps; CUDA: max allocated)
    peak_tensor_source: str | None
    throughput: dict[str, float] | None
    wall_s: float | None
    checkpoint_bytes: int | None
    train_loss_curve: list[list[float]] | None
    eval_loss_curve: list[list[Any]] | None
    decoding: dict[str, Any] | None
    forgetting: dict[str, Any] | None   # causal LMs: LM loss on general text before and after training
    resumed_from_step: int | None
    init_from: str | None
    world_size: int | None
    trainable_sha256: str | None
    git_commit: str | None
    config: dict[str, Any]


RECORD_FIELDS = tuple(RunRecord.__annotations__)


def new_record(**known: Any) -> RunRecord:
    """A record with every field present (None until measured); `known` fills some of them."""
    unknown = set(known) - set(RECORD_FIELDS)
    if unknown:
        raise KeyError(f"not run-record fields: {sorted(unknown)}")
    values: dict[str, Any] = {name: None for name in RECORD_FIELDS}
    values["status"] = "running"
    values.update(known)
    return RunRecord(**values)  # type: ignore[typeddict-item]


def read_run_record(path: str | Path) -> tuple[dict | None, str]:
    """(record, "") or (None, why) where the file is not readable JSON or not a run record."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or "status" not in record:
            raise ValueError("not a run record (no status)")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, " ".join(str(exc).split())[:200]
    return record, ""


def iter_records(root: str | Path):
    """(path, record or None, why) for every record.json under `root`."""
    for path in sorted(Path(root).rglob(RECORD_NAME)):
        yield path, *read_run_record(path)


def show_progress() -> bool:
    """Progress bars (training steps with ETA and loss, decoding MRs/s) only for a person watching:
    stderr is a terminal and CI is not set. LORA_REPRO_PROGRESS=1 or 0 forces them on or off."""
    forced = os.environ.get("LORA_REPRO_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty() and not os.environ.get("CI")


def write_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write record.json atomically: a temp file in the same folder, fsync, then rename. A crash or
    a full disk leaves either the old record or none, never a truncated one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / RECORD_NAME
    fd, tmp = tempfile.mkstemp(prefix=".record.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; records are meant to be shared
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def read_record(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def git_commit() -> str | None:
    """HEAD of the project checkout, with '-dirty' when tracked files have uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


class LiveTensorBytes(TorchDispatchMode):
    """The peak of live CPU tensor bytes while it is active: every tensor an operator returns is
    counted (once per storage) until it is freed. On CPU this is what a method changes (weights,
    gradients, optimizer state, activations), which the process's resident set hides under the
    allocator, the libraries and the interpreter. `start` counts what already lives (the weights).
    Each operator pays a little Python, so the trainer measures only the first steps."""

    def __init__(self, start: int = 0):
        super().__init__()
        self.live = self.peak = int(start)
        self._sizes: dict[int, int] = {}

    def _track(self, value: Any) -> None:
        if not isinstance(value, torch.Tensor) or value.device.type != "cpu" or value.is_meta:
            return
        storage = value.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if not size or key in self._sizes:
            return
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            self._track(value)
        return out


def tensor_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


class PeakMemory:
    """Peak memory over a block. On CUDA: torch.cuda.max_memory_allocated (reset on entry). On CPU:
    the highest resident set size sampled every `interval` s during the block, which, unlike the
    process-wide ru_maxrss, is per run when a Hydra multirun trains several runs in one process."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.cuda = torch.cuda.is_available()
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        return "cuda_max_memory_allocated" if self.cuda else "cpu_peak_rss_sampled"

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = psutil.Process().memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
