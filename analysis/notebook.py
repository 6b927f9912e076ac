"""`make notebook` / `python -m analysis.notebook [RUNS_DIR | --study NAME]`: execute
notebooks/results.ipynb top to bottom on the records under RUNS_DIR (default outputs/) or on a
study's committed records, and save the executed copy as outputs/notebooks/<study or runs>.ipynb.
Also (re)writes the notebook source with `--write-source`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "results.ipynb"

CELLS = [
    ("markdown", "# lora-repro results\n\nLoads every `record.json` under the runs folder with the same code as "
                 "`make tables` and `make plots` (`analysis/`), and shows the Table 2 and Table 3 layouts beside the published "
                 "numbers, the plots, and a per-method summary. Runs offline; set `LORA_REPRO_RUNS` to read another folder."),
    ("code", "import os\nfrom pathlib import Path\n\nimport pandas as pd\nfrom IPython.display import Image, Markdown, display\n\n"
             "from analysis.plots import make_plots\nfrom analysis.records import load_records, load_study_records\n"
             "from analysis.plots import scores\nfrom analysis.table3 import build_table3, table3_markdown\n"
             "from analysis.tables import build_table2, to_markdown\n\n"
             "ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / 'pyproject.toml').is_file())\n"
             "STUDY = os.environ.get('LORA_REPRO_STUDY')  # one study's runs (experiments/<study>), else a runs folder\n"
             "RUNS = Path(os.environ.get('LORA_REPRO_RUNS', ROOT / 'outputs'))\n"
             "records = load_study_records(STUDY) if STUDY else load_records(RUNS)\n"
             "OUT = ROOT / 'outputs' / 'notebooks' / (STUDY or 'runs')  # this machine's: never a study's committed results/\nprint(records.summary())"),
    ("markdown", "## Table 2 layout\n\nMedian over seeds at the best evaluation (x100), ±std, number of seeds, and "
                 "the published value with the difference where the paper has the same model, method and size."),
    ("code", "table = build_table2(records)\ndisplay(Markdown(to_markdown(table, records)))"),
    ("markdown", "## Table 3 layout (E2E NLG)\n\nMean over seeds ±std of the five official metrics on the decoded "
                 "test set (BLEU, METEOR, ROUGE-L x100), beside the paper's row for the same model and method."),
    ("code", "display(Markdown(table3_markdown(build_table3(records))))"),
    ("markdown", "## Per-method summary\n\n`main` is each task's main metric x100 (GLUE: Table 2's metric at the best "
                 "evaluation; E2E: test BLEU)."),
    ("code", "ok = scores(records.ok)\nif ok.empty:\n    print('no finished runs yet')\nelse:\n"
             "    summary = ok.groupby(['model', 'task', 'method']).agg(\n"
             "        runs=('seed', 'count'), main=('score', 'median'), adapted=('params.adapted', 'median'),\n"
             "        peak_gib=('peak_memory_bytes', lambda b: b.median() / 2**30),\n"
             "        tokens_per_s=('throughput.train_tokens_per_s', 'median'))\n"
             "    display(summary.round(4))"),
    ("markdown", "## Plots"),
    ("code", "for path in make_plots(records, OUT / 'plots'):\n    display(Markdown(f'**{path.name}**'))\n"
             "    display(Image(filename=str(path)))"),
]


def write_source() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NOTEBOOK.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, NOTEBOOK)


def execute(runs_dir: str | Path | None, out: str | Path, timeout: int = 600, study: str | None = None) -> Path:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if study:
        os.environ["LORA_REPRO_STUDY"] = study
    else:
        os.environ.pop("LORA_REPRO_STUDY", None)
        os.environ["LORA_REPRO_RUNS"] = str(Path(runs_dir or "outputs").absolute())
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", nargs="?", default="outputs")
    parser.add_argument("--study", default=None, help="one study's runs; the executed copy goes to its results/")
    parser.add_argument("--out", default=None, help="default results/results.ipynb, or the study's results/")
    parser.add_argument("--write-source", action="store_true")
    args = parser.parse_args(argv)
    if args.write_source:
        write_source()
        print(f"wrote {NOTEBOOK}")
        return 0
    from lora_repro.errors import ConfigError
    from lora_repro.studyspec import load_study

    from .records import check_runs_dir

    # The source is checked here, in one line, before a kernel starts (probe F13).
    try:
        if args.study:
            load_study(args.study)
        else:
            check_runs_dir(args.runs_dir)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    # The executed copy is this machine's (git-ignored), never a file of a study's committed results/.
    out = args.out or ROOT / "outputs" / "notebooks" / f"{args.study or 'runs'}.ipynb"
    print(f"executed notebook written to {execute(args.runs_dir, out, study=args.study)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
