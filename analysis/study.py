"""`python -m analysis.study NAME [param=value ...]` (or `--all`): build experiments/NAME/results/ from
the study's committed manifest (runs.csv) and records (records/), as its `results:` list says:

  table2        table2.{md,csv} and table3.{md,csv} (analysis.tables)
  table3        the same files (E2E studies list this one)
  plots         plots/*.png (analysis.plots)
  method_table  methods.md: one line per run, the demo's comparison table
  e2e_vs_paper  e2e_vs_paper.md: each E2E run's five metrics beside the paper's GPT-2 M LoRA row
  weights       weights/: Section 7's subspace similarity, Table 7 and spectra (analysis.weights)
  <table>       a paper table of the pivot layout in analysis/paper/tables.yaml (table5): <table>.{md,csv}
                (analysis.layouts)

and always summary.json: the runs planned / ok / failed / missing, the code versions and devices they
ran on, and one row per recipe with its median main metric. A study with no finished run yet gets
NO_RUNS.md instead of empty tables. The files hold no timestamps, so rebuilding from the same
records gives the same bytes (`--check` compares a rebuild with what is committed). Records from
uncommitted code or another branch count only with --allow-unreleased, under results/unreleased/.
weights/ needs the saved weights (not committed): it is rebuilt only where they are. Command studies
(efficiency, param_counts) write their results/ themselves; their summary lists the files.

Also the source options of `make tables` / `make plots`: a runs folder (RUNS=) or a study (STUDY=)."""

from __future__ import annotations

import argparse
import filecmp
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from lora_repro.errors import ConfigError
from lora_repro.evidence import manifest_path
from lora_repro.record import CHECKPOINT_FILE, read_run_record
from lora_repro.studyspec import (experiments_dir, PROJECT_ROOT, RESULT_KINDS, Study, load_study, results_dir,
                                  split_args, study_names)

from .plots import make_plots, scores
from .layouts import write_pivot
from .published import is_row, of_kinds, table_spec
from .records import Records, load_study_records
from .table3 import E2E_METRICS, SCALE, published_table3
from .tables import millions, write_stats, write_table2, write_table3



def mib(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{value / 2**20:,.0f}"


def method_table(records: Records) -> str:
    """One line per run: method, its own and trainable parameters, the main metric, peak memory
    (the demo's table). Timings depend on the machine and what else ran on it: timing_table."""
    df = scores(records.ok)
    columns = ["method", "adapted params", "trainable params", "main metric", "peak memory (MiB)",
               "peak tensors (MiB)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in df.sort_values(["task", "model", "params.adapted"], ascending=[True, True, False]).to_dict("records"):
        lines.append(f"| {r['method']} | {int(r['params.adapted']):,} | {int(r['params.trainable']):,} | "
                     f"{r['main_metric']} {r['score'] / 100:.4f} | {r['peak_memory_bytes'] / 2**20:,.0f} | "
                     f"{mib(r.get('peak_tensor_bytes'))} |")
    for path, error in records.failed:
        lines.append(f"| FAILED: {Path(path).parent.name} | - | - | {error} | - | - |")
    return "\n".join(lines) + "\n"


def timing_table(records: Records) -> str:
    """Training tokens/s and wall time per run, with the device: what one machine measured once
    (other jobs on it slow both), so the README never quotes it."""
    df = scores(records.ok)
    lines = ["| method | tokens/s | wall time (s) | device |", "|---|---|---|---|"]
    for r in df.sort_values(["task", "model", "params.adapted"], ascending=[True, True, False]).to_dict("records"):
        lines.append(f"| {r['method']} | {r['throughput.train_tokens_per_s']:,.0f} | {r['wall_s']:.1f} | {r['device']} |")
    return "\n".join(lines) + "\n"


def e2e_vs_paper(records: Records) -> str:
    """Each E2E run's five metrics beside the published GPT-2 M LoRA row (analysis/paper/table3.csv)."""
    paper = published_table3()
    reference = table_spec("table3")["reference"]  # the published row an offline E2E run is set beside
    ref = paper[[is_row(r, reference) for r in paper.to_dict("records")]]
    published = {m: v / SCALE[m] for m, v in zip(ref.metric, ref.value)}
    ok = of_kinds(records.ok, "table3")
    if ok.empty:
        return "No finished E2E run yet.\n"
    lines = []
    for r in ok.to_dict("records"):
        record, _ = read_run_record(r["record_file"])
        record = record or {}
        decoded = (record.get("decoding") or {}).get("test") or {}
        forgetting = record.get("forgetting") or {}
        lines += [f"{r['model']} + {r['method']}, seed {r['seed']}: {int(r['params.adapted']):,} trained parameters, "
                  f"{int(r['throughput.train_steps'])} steps in {r['throughput.train_runtime_s']:.0f} s; "
                  f"{decoded.get('mrs_decoded', 0):,} test MRs / {decoded.get('n_references', 0):,} references decoded "
                  f"in {decoded.get('decode_s', float('nan')):.0f} s; wall {r['wall_s']:.0f} s, "
                  f"peak memory {r['peak_memory_bytes'] / 2**30:.1f} GiB", "",
                  f"| metric | this run | paper (Table 3, {ref.row.iloc[0] if len(ref) else '-'}) |",
                  "|---|---|---|"]
        for metric in E2E_METRICS:
            lines.append(f"| {metric} | {r[f'metric.{metric}']:.4f} | {published.get(metric, float('nan')):.4f} |")
        if forgetting.get("lm_loss_after") is not None:
            lines += ["", f"Forgetting: LM loss on general text ({forgetting['text']}) {forgetting['lm_loss_before']:.3f} "
                      f"before training, {forgetting['lm_loss_after']:.3f} after ({forgetting['increase']:+.3f} nats/token)."]
        quoted = decoded.get("first_outputs") or []
        if quoted:
            lines += ["", "First outputs:", ""] + [f"* `{mr}` -> \"{out}\"" for mr, out in quoted[:2]]
        lines.append("")
    return "\n".join(lines)


def summary(name: str, params: dict[str, str], records: Records) -> dict[str, Any]:
    df = scores(records.ok)
    rows = []
    if not df.empty:
        keys = ["model", "task", "method", "experiment", "variant", "params.adapted"]
        for key, group in df.groupby(keys, sort=True):
            rows.append({**dict(zip(["model", "task", "method", "experiment", "variant", "adapted"], key)),
                         "params": millions(key[-1]), "main_metric": group.main_metric.iloc[0],
                         "median_x100": round(float(group.score.median()), 4), "n_seeds": int(group.seed.nunique()),
                         "seeds": sorted(int(s) for s in group.seed)})
    for row in rows:
        row["adapted"] = int(row["adapted"])
    ok = records.ok
    commits = sorted(set(ok["git_commit"].dropna())) if "git_commit" in ok else []
    devices = sorted(set(ok["device"].dropna())) if "device" in ok else []
    return {"study": name, "params": params,
            "runs": {"ok": len(ok), "failed": len(records.failed), "unreadable": len(records.unreadable),
                     "missing": len(records.missing), "unreleased": len(records.unreleased)},
            "code_versions": commits, "devices": devices, "rows": rows}


def no_runs_note(name: str, records: Records, planned: bool) -> str:
    if not planned:
        return (f"# {name}: not planned yet\n\nNo manifest (experiments/{name}/runs.csv). Plan it with "
                f"`python -m lora_repro.study {name} --plan-only`, run it with `make study NAME={name}`.\n")
    return (f"# {name}: no runs yet\n\n{len(records.missing)} runs are planned (experiments/{name}/runs.csv) and "
            f"none has a committed record yet"
            + (f" ({len(records.failed)} failed)" if records.failed else "")
            + (f"; {len(records.unreleased)} records from uncommitted code or another branch are left out"
               if records.unreleased else "")
            + f". Run it with `make study NAME={name}`; it continues from whatever records are committed.\n")


def build(name: str, args: list[str], out: Path | None = None, allow_unreleased: bool = False,
          scratch_root: Path | None = None, skip: tuple[str, ...] = ()) -> list[Path]:
    """Write the study's results into `out` (default: its results/, or results/unreleased/ with
    allow_unreleased; a scratch run's: <root>/scratch/<name>/results/). The files are made in a
    fresh folder that then replaces the old one, so no file of an earlier build survives (weights/
    is kept when there are no saved weights here to rebuild it from). `skip` names results kinds not
    to build (a check skips weights/, which it does not compare and which needs torch)."""
    assignments, extra = split_args(name, args)
    study = load_study(name, assignments)
    default = results_dir(name) / "unreleased" if allow_unreleased else results_dir(name)
    if scratch_root is not None:
        default = Path(scratch_root) / "scratch" / name / "results"
    final = Path(out) if out is not None else default
    if study.is_command:
        final.mkdir(parents=True, exist_ok=True)
        files = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file() and p.name != "summary.json")
        payload = {"study": name, "params": study.params, "files": files}
        (final / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
        return [final / "summary.json"]
    # Every choice of the study's params is read: results/ holds them all (claims: results/<scale>/).
    records = load_study_records(name, None, allow_unreleased=allow_unreleased, scratch_root=scratch_root)
    planned = scratch_root is not None or manifest_path(experiments_dir() / name).is_file()
    # Built in the system's temporary folder: a build that is killed leaves nothing in the repository.
    work = Path(tempfile.mkdtemp(prefix=f"{name}-results-"))
    try:
        written = _build_into(name, study, records, work, planned, skip)
        rebuilt_weights = (work / "weights").is_dir()
        if final.is_dir():
            for item in final.iterdir():
                if item.name == "weights" and not rebuilt_weights:
                    continue  # built from saved weights that are not here
                if item.name == "unreleased" and final == results_dir(name):
                    continue
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        final.mkdir(parents=True, exist_ok=True)
        for item in work.iterdir():
            shutil.move(str(item), final / item.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(records.summary())
    return [final / p.relative_to(work) for p in written]


def _build_into(name: str, study: Study, records: Records, out: Path, planned: bool,
                skip: tuple[str, ...] = ()) -> list[Path]:
    written: list[Path] = []
    wanted = [kind for kind in study.spec.get("results") or [] if kind not in skip]
    if records.ok.empty and not records.failed:
        (out / "NO_RUNS.md").write_text(no_runs_note(name, records, planned))
        written.append(out / "NO_RUNS.md")
    else:
        for item in dict.fromkeys(builder(w) for w in wanted):
            written += item(records, out, study)
    # A study whose results are written per choice of a param (claims: results/<scale>/) keeps a
    # summary there for each choice that has runs (the default choice when none has), counting that
    # choice's runs only: building never drops another choice's results.
    per_choice = [PER_CHOICE[w] for w in wanted if w in PER_CHOICE and PER_CHOICE[w] in study.params]
    if not per_choice:
        (out / "summary.json").write_text(json.dumps(summary(name, study.params, records), indent=2) + "\n")
        return written + [out / "summary.json"]
    key, column = per_choice[0], f"param.{per_choice[0]}"
    values = sorted(set(records.ok[column])) if not records.ok.empty and column in records.ok else [study.params[key]]
    for value in values:
        counted = replace(records, ok=records.ok[records.ok[column] == value]) if column in records.ok else records
        (out / value).mkdir(parents=True, exist_ok=True)
        (out / value / "summary.json").write_text(
            json.dumps(summary(name, {**study.params, key: value}, counted), indent=2) + "\n")
        written.append(out / value / "summary.json")
    return written


def tracked(path: Path) -> bool:
    """Whether git would commit this path (not ignored); outside a checkout everything counts."""
    try:
        out = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=PROJECT_ROOT, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return True
    return out.returncode != 0


def check(name: str) -> list[str]:
    """How the committed results/ differ from a rebuild from the committed manifest and records:
    one line per file ([] when identical). weights/ and git-ignored files are not compared, nor
    command studies (efficiency, param_counts), whose tool writes results/ and keeps no records."""
    if load_study(name).is_command:
        return []
    committed = results_dir(name)
    with tempfile.TemporaryDirectory(prefix=f"check-{name}-") as tmp:
        fresh = Path(tmp) / "results"
        build(name, [], out=fresh, skip=("weights",))
        produced = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
        existing = {p.relative_to(committed) for p in committed.rglob("*") if p.is_file()} if committed.is_dir() else set()
        problems = []
        for rel in sorted(produced | existing):
            if rel.parts[0] in ("weights", "unreleased") or not tracked(committed / rel):
                continue
            if rel not in existing:
                problems.append(f"{name}: results/{rel} is missing (run `make results`)")
            elif rel not in produced:
                problems.append(f"{name}: results/{rel} is not built from the committed records (stale; `make results` removes it)")
            elif not filecmp.cmp(fresh / rel, committed / rel, shallow=False):
                problems.append(f"{name}: results/{rel} differs from what the committed records give (`make results`)")
        return problems


def _table2(records: Records, out: Path, study: Study) -> list[Path]:
    print(write_table2(records, out))
    print(write_stats(records, out))
    return [out / "table2.md", out / "table2.csv", out / "stats.md", out / "stats_ci.csv", out / "stats_paired.csv"]


def _table3(records: Records, out: Path, study: Study) -> list[Path]:
    print(write_table3(records, out))
    return [out / "table3.md", out / "table3.csv"]


def _plots(records: Records, out: Path, study: Study) -> list[Path]:
    return make_plots(records, out / "plots")


def _method_table(records: Records, out: Path, study: Study) -> list[Path]:
    text = method_table(records)
    (out / "methods.md").write_text(text)
    (out / "timings.md").write_text(timing_table(records))
    print(text)
    return [out / "methods.md", out / "timings.md"]


def _e2e_vs_paper(records: Records, out: Path, study: Study) -> list[Path]:
    text = e2e_vs_paper(records)
    (out / "e2e_vs_paper.md").write_text(text)
    print(text)
    return [out / "e2e_vs_paper.md"]


def _weights(records: Records, out: Path, study: Study) -> list[Path]:
    # Saved weights are not committed: where none are here (a fresh clone) there is nothing to
    # rebuild, and torch is not imported for nothing.
    folders = [PROJECT_ROOT / p for p in records.ok.path] if not records.ok.empty else []
    if not any((folder / CHECKPOINT_FILE).is_file() for folder in folders):
        return []
    from .weights import analyse_records

    return analyse_records(records, out / "weights")


def _pivot(name: str, records: Records, out: Path, study: Study) -> list[Path]:
    """A paper table of the pivot layout (analysis/paper/tables.yaml; e.g. table5)."""
    print(write_pivot(records, out, name))
    return [out / f"{name}.md", out / f"{name}.csv"]


def _claims(records: Records, out: Path, study: Study) -> list[Path]:
    """results/<scale>/claims.md etc. for each scale that has runs (analysis/claims.py)."""
    from .claims import build_report

    written = []
    scales = sorted(set(records.ok["param.scale"])) if not records.ok.empty and "param.scale" in records.ok else []
    for scale in scales:
        at_scale = load_study(study.name, {"scale": scale})
        written += build_report(records, out / scale, scale, len(at_scale.seeds()), at_scale.spec)
        print((out / scale / "verdicts.md").read_text())
    return written


# Results written into results/<value of this param>/ rather than results/.
PER_CHOICE = {"claims": "scale"}
BUILDERS = {"claims": _claims, "table2": _table2, "table3": _table3, "weights": _weights, "plots": _plots,
            "method_table": _method_table, "e2e_vs_paper": _e2e_vs_paper}
assert set(BUILDERS) == set(RESULT_KINDS), "lora_repro.studyspec.RESULT_KINDS lists what BUILDERS builds"


def builder(name: str):
    """The builder of a result kind: its own, or the pivot layout's for a paper table of that layout."""
    return BUILDERS[name] if name in BUILDERS else functools.partial(_pivot, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help="a study of experiments/ (or --all)")
    parser.add_argument("--all", action="store_true", help="every study, in one process")
    parser.add_argument("--check", action="store_true",
                        help="rebuild into a temporary folder and list what differs from the committed results/")
    parser.add_argument("--allow-unreleased", action="store_true",
                        help="count records from uncommitted code or other branches (written to results/unreleased/)")
    parser.add_argument("--scratch", default=None, metavar="OUTPUT_ROOT",
                        help="a study run with --scratch: its manifest and records under this output_root")
    parser.add_argument("--skip", action="append", default=[], choices=["weights"],
                        help="do not rebuild results/weights/ (the SVDs of every saved checkpoint here take "
                             "minutes); its committed files are kept")
    args, rest = parser.parse_known_args(argv)
    names = study_names() if args.all else [args.name] if args.name else []
    if not names:
        parser.error("name a study, or give --all")
    start = time.perf_counter()
    try:
        if args.check:
            problems = [line for name in names for line in check(name)]
            print("\n".join(problems) if problems else f"{len(names)} studies: results/ are what their committed records give")
            return 1 if problems else 0
        for name in names:
            written = build(name, rest, allow_unreleased=args.allow_unreleased,
                            scratch_root=Path(args.scratch) if args.scratch else None, skip=tuple(args.skip))
            for path in written:
                path = Path(path).resolve()
                print(f"wrote {path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"built {len(names)} studies' results in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
