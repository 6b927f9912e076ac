"""`make gpu-check` refuses where there is no GPU to measure (before any run), and its tables are
markdown without extra packages. Its toy-size pass on CPU (`--allow-cpu`) is run by hand:
python -m lora_repro.gpu_check --out /tmp/gpuchk --allow-cpu."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from lora_repro.gpu_check import main, table


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the check instead")
def test_without_cuda_nothing_runs_and_the_error_says_why(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "out")]) == 2
    assert "error: no CUDA device: make gpu-check measures a GPU, so nothing was run" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_summary_tables_are_markdown():
    df = pd.DataFrame([{"precision": "bf16", "tokens_per_s": 12345.678, "peak_memory_mib": None}])
    assert table(df).splitlines() == ["| precision | tokens_per_s | peak_memory_mib |", "|---|---|---|",
                                      "| bf16 | 12,346 | - |"]
