"""Where `make tables` / `make plots` / `make weights` read their runs: a study (STUDY=, its
committed manifest and records) or a runs folder (RUNS=). Its own module so that the table, plot
and weights modules need nothing from analysis.study (which imports them: no import cycle)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lora_repro.errors import ConfigError
from lora_repro.studyspec import load_study, results_dir, split_args

from .records import Records, load_records, load_study_records


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
        if extra:
            raise SystemExit(f"error: {extra}: a study's results come from its committed runs; overrides change "
                             f"nothing here (give them to `python -m lora_repro.study {args.study}`)")
        return load_study_records(args.study, assignments), Path(args.out or results_dir(args.study))
    if rest:
        raise SystemExit(f"error: unexpected arguments {rest} (overrides go with --study)")
    return load_records(args.runs_dir or "outputs"), Path(args.out or "results")
