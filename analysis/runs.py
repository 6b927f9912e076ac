"""`make runs [RUNS=outputs] [STUDY=name]`: every run folder on this machine, one line each: its
study, task, model, method, recipe label, status, main metric and wall time (newest first), so a
person can see what ran, what failed and where, without opening record.json files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_repro.record import iter_records

from .records import check_runs_dir, record_metric


def rows(root: Path, study: str | None = None) -> list[dict]:
    out = []
    for path, record, why in iter_records(check_runs_dir(root)):
        if record is None:
            out.append({"folder": str(path.parent.relative_to(root)), "status": f"unreadable ({why[:60]})"})
            continue
        if study and record.get("study") != study:
            continue
        metric = record_metric(record)
        value = (record.get("metrics") or {}).get(metric)
        out.append({"folder": str(path.parent.relative_to(root)), "study": record.get("study") or "-",
                    "recipe": " ".join(x for x in (record.get("experiment"), record.get("overrides")) if x) or "-",
                    "status": record.get("status") if record.get("status") != "failed" else f"failed: {record.get('error')}",
                    "main metric": f"{metric} {value:.4f}" if isinstance(value, (int, float)) else "-",
                    "wall (s)": f"{record['wall_s']:.0f}" if isinstance(record.get("wall_s"), (int, float)) else "-",
                    "mtime": path.stat().st_mtime})
    return sorted(out, key=lambda r: -r.get("mtime", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", nargs="?", default="outputs")
    parser.add_argument("--study", default=None, help="only the runs this study launched")
    args = parser.parse_args(argv)
    table = rows(Path(args.runs_dir), args.study)
    columns = ["folder", "study", "recipe", "status", "main metric", "wall (s)"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for r in table:
        print("| " + " | ".join(str(r.get(c, "-")) for c in columns) + " |")
    print(f"\n{len(table)} runs under {args.runs_dir}" + (f" launched by study {args.study}" if args.study else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
