"""E2E metrics on hand-checkable cases (identical, disjoint, multi-reference) and the scorer's
plain-text and CSV formats."""

import subprocess
import sys

import pytest

from lora_repro.metrics.e2e import bleu_nist, e2e_scores, read_refs

OUTPUTS = ["the vaults is a cheap pub near the river",
           "the eagle serves french food in the city centre",
           "zizzi is a family friendly coffee shop with a high rating"]


def test_identical_outputs_score_perfectly_on_every_metric():
    scores = e2e_scores([[o] for o in OUTPUTS], OUTPUTS)
    assert scores["BLEU"] == pytest.approx(1.0)
    assert scores["ROUGE_L"] == pytest.approx(1.0)
    assert scores["METEOR"] == pytest.approx(1.0, abs=1e-3)
    # CIDEr-D: identical sentences score 10 x (Gaussian length penalty 1) / number of n-gram orders summed
    assert scores["CIDEr"] == pytest.approx(10.0, rel=1e-6)
    assert scores["NIST"] > 3.0


def test_disjoint_outputs_score_zero():
    outputs = ["alpha beta gamma delta epsilon", "zeta eta theta iota kappa", "lambda mu nu xi omicron"]
    scores = e2e_scores([[o] for o in OUTPUTS], outputs)
    assert scores["BLEU"] == pytest.approx(0.0, abs=1e-6)
    assert scores["NIST"] == pytest.approx(0.0, abs=1e-6)
    assert scores["ROUGE_L"] == pytest.approx(0.0)
    assert scores["METEOR"] == pytest.approx(0.0, abs=1e-3)
    assert scores["CIDEr"] == pytest.approx(0.0)


def test_any_matching_reference_counts():
    refs = [["a totally different sentence here", o] for o in OUTPUTS]
    assert bleu_nist(refs, OUTPUTS)["BLEU"] == pytest.approx(1.0)
    # Half the words right: unigram precision 1, brevity penalty exp(1 - 8/4) for a 4-word output.
    one = bleu_nist([["the cat sat on the mat today ok"]], ["the cat sat on"])
    assert 0.0 < one["BLEU"] < 0.5


def test_plain_text_and_csv_reference_formats(tmp_path):
    text = tmp_path / "refs.txt"
    text.write_text("ref one a\nref one b\n\nref two a\n")
    assert read_refs(text) == [["ref one a", "ref one b"], ["ref two a"]]
    single = tmp_path / "single.txt"
    single.write_text("only one\nanother\n")
    assert read_refs(single) == [["only one"], ["another"]]
    table = tmp_path / "refs.csv"
    table.write_text('mr,ref\n"name[A], food[Thai]",A serves Thai.\n"name[B]",B is here.\n"name[A], food[Thai]",Thai food at A.\n')
    assert read_refs(table) == [["A serves Thai.", "Thai food at A."], ["B is here."]]


def test_command_line_prints_the_five_scores(tmp_path):
    refs, out = tmp_path / "refs.txt", tmp_path / "sys.txt"
    refs.write_text("\n\n".join(OUTPUTS) + "\n")
    out.write_text("\n".join(OUTPUTS) + "\n")
    proc = subprocess.run([sys.executable, "-m", "lora_repro.metrics.e2e", str(refs), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert [l.split(":")[0] for l in lines] == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    assert lines[0] == "BLEU: 1.0000" and lines[3] == "ROUGE_L: 1.0000"
    bad = subprocess.run([sys.executable, "-m", "lora_repro.metrics.e2e", str(refs), str(tmp_path / "none.txt")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: missing system output file {tmp_path / 'none.txt'}"
