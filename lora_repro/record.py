"""The run record (record.json): its schema, the one reader and the atomic writer. No torch here: the
analysis reads records without loading the training stack."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypedDict

RECORD_NAME = "record.json"
# The fine-tuned model's trainable tensors: inside a run folder, and inside a resumable checkpoint.
TRAINABLE_FILE = "trainable.safetensors"
CHECKPOINT_FILE = f"checkpoint/{TRAINABLE_FILE}"
# With train.keep_best: the weights of the best evaluation, beside the final ones.
BEST_FILE = "checkpoint/best.safetensors"


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
    paper_row: str | None           # the row of analysis/paper/hparams.yaml its recipe reproduces (None: no paper recipe)
    paper_fit: str | None           # "exact", or which task/model stood in for one the row does not list
    seed: int
    experiment: str | None          # the conf/experiment recipe it used
    overrides: str                  # how its recipe differs from the named defaults ("" when it does not)
    hparams: dict[str, Any]         # the method's own settings
    metrics: dict[str, float] | None          # the final evaluation
    best_metrics: dict[str, Any] | None       # the evaluation with the best main metric, with step, epoch
    constant_metrics: dict[str, float] | None  # what always predicting the majority class (the mean) scores there
    eval_curve: list[dict[str, Any]] | None   # every evaluation: {"step", "epoch", metric: value, ...}
    selected: dict[str, Any] | None  # early stopping: the step whose weights `metrics` and the saved weights are
    kept_best: dict[str, Any] | None  # train.keep_best: the metric, value and step of checkpoint/best.safetensors
    params: dict[str, int] | None             # adapted (the papers' count), trainable, total
    optimizer_groups: list[dict[str, Any]] | None
    peak_memory_bytes: int | None
    peak_memory_source: str | None
    peak_tensor_bytes: int | None   # peak of live tensor bytes (CPU: first training steps; CUDA: max allocated)
    peak_tensor_source: str | None
    throughput: dict[str, float] | None
    timing: dict[str, float] | None   # seconds per phase (trainer.Phases): load, tokenize, train, evaluate, save
    wall_s: float | None
    checkpoint_bytes: int | None
    train_loss_curve: list[list[float]] | None
    eval_loss_curve: list[list[Any]] | None
    decoding: dict[str, Any] | None
    forgetting: dict[str, Any] | None   # causal LMs: LM loss on general text before and after training
    resumed_from_step: int | None
    resumed_from_commit: str | None   # the code version of the steps before a resume, when it differs
    init_from: str | None
    world_size: int | None
    trainable_sha256: str | None
    git_commit: str | None
    git_branch: str | None          # 'HEAD' when detached; results count runs of main only (evidence.released)
    device: str | None              # "cuda: <GPU name> xN" or "cpu: <CPU model> (N cores, T torch threads)"
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


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically: a temp file in the same folder, fsync, then rename. A crash or a full
    disk leaves either the old file or none, never a truncated one."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; records are meant to be shared
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def write_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    return write_json(Path(run_dir) / RECORD_NAME, record)
