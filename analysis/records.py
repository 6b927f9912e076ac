"""Read every record.json under a runs folder into one pandas frame. Unreadable or corrupt files,
and runs whose status is not ok, are counted and listed, never used as results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

RECORD_NAME = "record.json"


@dataclass
class Records:
    ok: pd.DataFrame                                         # one row per finished run
    failed: list[tuple[str, str]] = field(default_factory=list)      # (path, error)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def summary(self) -> str:
        lines = [f"{len(self.ok)} ok runs, {len(self.failed)} failed, {len(self.unreadable)} unreadable"]
        lines += [f"  failed: {p}: {e}" for p, e in self.failed]
        lines += [f"  skipped unreadable: {p}: {why}" for p, why in self.unreadable]
        return "\n".join(lines)


def flatten(record: dict, path: Path) -> dict:
    row = {k: record.get(k) for k in ("task", "model", "method", "seed", "wall_s", "peak_memory_bytes", "checkpoint_bytes")}
    # Runs of different recipes (experiment file, hyper-parameter overrides) are never pooled.
    row["experiment"] = record.get("experiment") or "-"
    row["variant"] = record.get("overrides") or ""
    row["path"] = str(path.parent)
    row.update({f"hp.{k}": (tuple(v) if isinstance(v, list) else v) for k, v in (record.get("hparams") or {}).items()})
    row.update({f"metric.{k}": v for k, v in (record.get("metrics") or {}).items()})
    row.update({f"best.{k}": v for k, v in (record.get("best_metrics") or {}).items() if k not in ("step", "epoch")})
    row.update({f"params.{k}": v for k, v in (record.get("params") or {}).items()})
    row.update({f"throughput.{k}": v for k, v in (record.get("throughput") or {}).items()})
    train = ((record.get("config") or {}).get("train") or {})
    row["train.lr"] = train.get("lr")
    return row


def load_records(root: str | Path) -> Records:
    root = Path(root)
    rows, failed, unreadable = [], [], []
    for path in sorted(root.rglob(RECORD_NAME)):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or "status" not in record:
                raise ValueError("not a run record (no status)")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            unreadable.append((str(path), " ".join(str(exc).split())[:200]))
            continue
        if record["status"] != "ok":
            failed.append((str(path), record.get("error") or record["status"]))
            continue
        rows.append(flatten(record, path))
    return Records(ok=pd.DataFrame(rows), failed=failed, unreadable=unreadable)
