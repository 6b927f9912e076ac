"""The E2E NLG Challenge's five metrics, computed as its official scorer (tuetschek/e2e-metrics,
`measure_scores.py --python`) computes them:

  BLEU, NIST           its Python port of mteval-v13a (pymteval), case-insensitive, document level;
                       taken from the copy the GEM benchmark ships (PyPI gem-metrics-fork)
  METEOR, ROUGE_L, CIDEr   the MS-COCO caption code (PyPI pycocoevalcap: METEOR 1.5 jar, Java), on
                       text tokenized by its PTB tokenizer, as COCOEvalCap does

    python -m lora_repro.metrics.e2e REFS SYS

SYS: one output per line. REFS: references one per line, instances separated by blank lines; or a
CSV with `mr`/`ref` columns (several rows per MR, grouped in order of first appearance). Prints
`BLEU`, `NIST`, `METEOR`, `ROUGE_L`, `CIDEr` as `NAME: value` with 4 decimals (fractions, like the
official scorer; the paper's tables show METEOR, ROUGE-L and BLEU x100)."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import shutil
import sys
from functools import lru_cache
from pathlib import Path

from ..errors import DataError

METRIC_NAMES = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
# Which scorer mode the numbers come from (recorded with every E2E run). The official scorer has two
# BLEU/NIST modes: `--python` (this one, pymteval; the LoRA authors' evaluation used it) and its
# default, the Perl mteval-v13a-sig.pl, whose NIST differs slightly (7.8212 vs 7.7889 on the
# challenge's example files). The Perl mode is not offered: no package registry ships the script.
SCORER_MODE = "measure_scores.py --python (pymteval BLEU/NIST; pycocoevalcap METEOR 1.5, ROUGE-L, CIDEr)"


@lru_cache(maxsize=1)
def pymteval():
    """The e2e-metrics pymteval module, loaded from its file: importing the gem_metrics_fork package
    itself would pull in the whole GEM suite (nltk, diskcache, ...), which this module does not use."""
    spec = importlib.util.find_spec("gem_metrics_fork")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("E2E BLEU/NIST need the 'gem-metrics-fork' wheel (make setup, or pip install --no-deps gem-metrics-fork)")
    path = Path(list(spec.submodule_search_locations)[0]) / "impl" / "pymteval.py"
    module_spec = importlib.util.spec_from_file_location("lora_repro_pymteval", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def read_lines(path: str | Path, multi_ref: bool = False) -> list:
    """The official scorer's plain-text formats: one item per line, or (multi_ref) blocks of lines
    separated by blank lines."""
    blocks: list = [[]] if multi_ref else []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if multi_ref:
                if line:
                    blocks[-1].append(line)
                elif blocks[-1]:
                    blocks.append([])
            else:
                blocks.append(line)
    if multi_ref and blocks and not blocks[-1]:
        blocks.pop()
    return blocks


def read_refs(path: str | Path) -> list[list[str]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing references file {path}")
    if path.suffix.lower() == ".csv":
        return group_csv_refs(path)
    refs = read_lines(path, multi_ref=True)
    if len(refs) == 1:  # a single-reference file: one reference per line
        refs = [[r] for r in refs[0]]
    return refs


def group_csv_refs(path: Path) -> list[list[str]]:
    """References of a CSV with mr/ref columns, one list per distinct MR in order of appearance."""
    grouped: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {c.lower(): c for c in reader.fieldnames or []}
        if "mr" not in columns or "ref" not in columns:
            raise DataError(f"{path}: expected columns mr and ref, found {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            mr, ref = row[columns["mr"]], row[columns["ref"]]
            if mr is None or ref is None:
                raise DataError(f"{path}:{line_no}: row has fewer fields than the header")
            grouped.setdefault(mr.strip(), []).append(ref.strip())
    return list(grouped.values())


def bleu_nist(refs: list[list[str]], outputs: list[str]) -> dict[str, float]:
    module = pymteval()
    bleu, nist = module.BLEUScore(), module.NISTScore()
    for ref_group, output in zip(refs, outputs):
        bleu.append(output, ref_group)
        nist.append(output, ref_group)
    return {"BLEU": bleu.score(), "NIST": nist.score()}


def coco_metrics(refs: list[list[str]], outputs: list[str]) -> dict[str, float]:
    """METEOR, ROUGE_L and CIDEr exactly as COCOEvalCap runs them (PTB tokenizer first)."""
    if shutil.which("java") is None:
        raise DataError("METEOR needs Java (the METEOR 1.5 jar); install a JRE, e.g. apt-get install default-jre-headless")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in group] for i, group in enumerate(refs)})
    res = tokenizer.tokenize({i: [{"caption": out}] for i, out in enumerate(outputs)})
    scores = {}
    for name, scorer in (("METEOR", Meteor()), ("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        scores[name] = float(scorer.compute_score(gts, res)[0])
        if name == "METEOR":  # its Java subprocess stays alive until the scorer is dropped
            with scorer.lock:
                scorer.meteor_p.stdin.close()
                scorer.meteor_p.kill()
                scorer.meteor_p.wait()
    return scores


def e2e_scores(refs: list[list[str]], outputs: list[str]) -> dict[str, float]:
    if len(refs) != len(outputs):
        raise DataError(f"{len(outputs)} system outputs but {len(refs)} reference groups")
    if any(not group for group in refs):
        raise DataError("an instance has no reference")
    scores = {**bleu_nist(refs, outputs), **coco_metrics(refs, outputs)}
    return {name: scores[name] for name in METRIC_NAMES}


def format_scores(scores: dict[str, float]) -> str:
    return "\n".join(f"{name}: {scores[name]:.4f}" for name in METRIC_NAMES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="E2E NLG metrics as the official scorer computes them")
    parser.add_argument("refs", help="references: blank-line-separated blocks, or a CSV with mr/ref columns")
    parser.add_argument("sys", help="system outputs, one per line")
    args = parser.parse_args(argv)
    try:
        if not Path(args.sys).is_file():
            raise DataError(f"missing system output file {args.sys}")
        outputs = read_lines(args.sys)
        print(format_scores(e2e_scores(read_refs(args.refs), outputs)))
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
