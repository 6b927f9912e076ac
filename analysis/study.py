"""`python -m analysis.study NAME [param=value ...]`: build experiments/NAME/results/ from the study's
own runs (the run folders its study.yaml plans, read where they are), as its `results:` list says:

  table2        table2.{md,csv} and table3.{md,csv} (analysis.tables)
  table3        the same files (E2E studies list this one)
  plots         plots/*.png (analysis.plots)
  method_table  methods.md: one line per run, the demo's comparison table
  e2e_vs_paper  e2e_vs_paper.md: each E2E run's five metrics beside the paper's GPT-2 M LoRA row
  weights       weights/: Section 7's subspace similarity, Table 7 and spectra (analysis.weights)

and always summary.json: the runs planned / ok / failed / missing, the code versions they ran at,
and one row per recipe with its median main metric. The files hold no timestamps, so rebuilding
from the same records gives the same bytes. Command studies (efficiency, param_counts) write their
results/ themselves; their summary lists the files.

Also the source options of `make tables` / `make plots`: a runs folder (RUNS=) or a study (STUDY=)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from lora_repro.errors import ConfigError
from lora_repro.record import RECORD_NAME, read_record
from lora_repro.study import PROJECT_ROOT, Study, load_study, results_dir, split_args

from .plots import make_plots, scores
from .records import Records, load_records, load_study_records
from .table3 import E2E_METRICS, SCALE, published_table3
from .tables import millions, write_stats, write_table2, write_table3

# The published row the offline E2E demo is set beside (Table 3, GPT-2 M + LoRA).
E2E_REFERENCE_ROW = ("gpt2_medium", "lora")


def source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_dir", nargs="?", default=None, help="a folder of run records (default outputs/)")
    parser.add_argument("--study", default=None, help="read exactly this study's runs; write to its results/")
    parser.add_argument("--out", default=None, help="results folder (default results/, or the study's)")


def source_records(args: argparse.Namespace, rest: list[str]) -> tuple[Records, Path]:
    """Records and output folder for `make tables` / `make plots`: STUDY= or RUNS=, not both."""
    if args.study and args.runs_dir:
        raise SystemExit("error: give a runs folder (RUNS=) or a study (STUDY=), not both")
    if args.study:
        try:
            assignments, extra = split_args(args.study, rest)
            load_study(args.study, assignments)
        except ConfigError as exc:
            raise SystemExit(f"error: {exc}") from None
        return load_study_records(args.study, assignments, extra), Path(args.out or results_dir(args.study))
    if rest:
        raise SystemExit(f"error: unexpected arguments {rest} (overrides go with --study)")
    return load_records(args.runs_dir or "outputs"), Path(args.out or "results")


def mib(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{value / 2**20:,.0f}"


def method_table(records: Records) -> str:
    """One line per run: method, its own and trainable parameters, the main metric, peak memory,
    tokens/s and wall time (the demo's table)."""
    df = scores(records.ok)
    columns = ["method", "adapted params", "trainable params", "main metric", "peak memory (MiB)",
               "peak tensors (MiB)", "tokens/s", "wall time (s)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in df.sort_values(["task", "model", "params.adapted"], ascending=[True, True, False]).to_dict("records"):
        metric = r["main_metric"]
        lines.append(f"| {r['method']} | {int(r['params.adapted']):,} | {int(r['params.trainable']):,} | "
                     f"{metric} {r['score'] / 100:.4f} | {r['peak_memory_bytes'] / 2**20:,.0f} | "
                     f"{mib(r.get('peak_tensor_bytes'))} | "
                     f"{r['throughput.train_tokens_per_s']:,.0f} | {r['wall_s']:.1f} |")
    for path, error in records.failed:
        lines.append(f"| FAILED: {Path(path).parent.name} | - | - | {error} | - | - | - | - |")
    return "\n".join(lines) + "\n"


def e2e_vs_paper(records: Records) -> str:
    """Each E2E run's five metrics beside the published GPT-2 M LoRA row (analysis/paper/table3.csv)."""
    paper = published_table3()
    model, method = E2E_REFERENCE_ROW
    ref = paper[(paper.model == model) & (paper.method == method)]
    published = {m: v / SCALE[m] for m, v in zip(ref.metric, ref.value)}
    ok = records.ok[records.ok.task == "e2e"] if not records.ok.empty else records.ok
    if ok.empty:
        return "No finished E2E run yet.\n"
    lines = []
    for r in ok.to_dict("records"):
        folder = Path(r["path"])
        record = read_record(folder / RECORD_NAME)
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
        if decoded.get("mrs") and decoded.get("outputs"):
            mrs = (folder / decoded["mrs"]).read_text(encoding="utf-8").splitlines()
            outputs = (folder / decoded["outputs"]).read_text(encoding="utf-8").splitlines()
            lines += ["", "First outputs:", ""] + [f"* `{mr}` -> \"{out}\"" for mr, out in list(zip(mrs, outputs))[:2]]
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
    commits = sorted(set(records.ok.get("git_commit", pd.Series(dtype=str)).dropna())) if not records.ok.empty else []
    return {"study": name, "params": params,
            "runs": {"ok": len(records.ok), "failed": len(records.failed), "unreadable": len(records.unreadable),
                     "missing": len(records.missing)},
            "code_versions": commits, "rows": rows}


def build(name: str, args: list[str]) -> list[Path]:
    assignments, extra = split_args(name, args)
    study = load_study(name, assignments)
    out = results_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    if study.is_command:
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "summary.json")
        payload = {"study": name, "params": study.params, "files": files}
        (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
        return [out / "summary.json"]
    records = load_study_records(name, assignments, extra)
    written: list[Path] = []
    wanted = list(study.spec.get("results") or [])
    unknown = sorted(set(wanted) - set(BUILDERS))
    if unknown:
        raise SystemExit(f"error: experiments/{name}/study.yaml asks for results {unknown}; known: {', '.join(BUILDERS)}")
    for item in dict.fromkeys(BUILDERS[w] for w in wanted):
        written += item(records, out, study)
    # A study whose results are written per choice of a param (claims: results/<scale>/) keeps its
    # summary there too, so `make claims-quick` never rewrites the committed full report's summary.
    per_choice = [PER_CHOICE[w] for w in wanted if w in PER_CHOICE and PER_CHOICE[w] in study.params]
    home, counted = out, records
    if per_choice:
        key = per_choice[0]
        home = out / study.params[key]
        column = f"param.{key}"
        if not records.ok.empty and column in records.ok:  # built for every choice: this one's runs only
            counted = replace(records, ok=records.ok[records.ok[column] == study.params[key]])
    home.mkdir(parents=True, exist_ok=True)
    (home / "summary.json").write_text(json.dumps(summary(name, study.params, counted), indent=2) + "\n")
    print(records.summary())
    return written + [home / "summary.json"]


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
    print(text)
    return [out / "methods.md"]


def _e2e_vs_paper(records: Records, out: Path, study: Study) -> list[Path]:
    text = e2e_vs_paper(records)
    (out / "e2e_vs_paper.md").write_text(text)
    print(text)
    return [out / "e2e_vs_paper.md"]


def _weights(records: Records, out: Path, study: Study) -> list[Path]:
    from .weights import analyse_records

    return analyse_records(records, out / "weights")


def _table5(records: Records, out: Path, study: Study) -> list[Path]:
    from .table5 import write_table5

    print(write_table5(records, out))
    return [out / "table5.md", out / "table5.csv"]


def _claims(records: Records, out: Path, study: Study) -> list[Path]:
    """results/<scale>/claims.md etc. for each scale that has runs (analysis/claims.py)."""
    from .claims import build_report

    written = []
    scales = sorted(set(records.ok["param.scale"])) if not records.ok.empty and "param.scale" in records.ok else []
    for scale in scales:
        seeds = len(load_study(study.name, {"scale": scale}).seeds())
        written += build_report(records, out / scale, scale, seeds)
        print((out / scale / "verdicts.md").read_text())
    return written


# Results written into results/<value of this param>/ rather than results/.
PER_CHOICE = {"claims": "scale"}
BUILDERS = {"claims": _claims, "table2": _table2, "table5": _table5, "table3": _table3, "weights": _weights, "plots": _plots, "method_table": _method_table,
            "e2e_vs_paper": _e2e_vs_paper}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    args, rest = parser.parse_known_args(argv)
    try:
        written = build(args.name, rest)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        path = Path(path).resolve()
        print(f"wrote {path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
