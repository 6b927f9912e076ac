"""The defects of the 2026-11-25 reliability probe (../shared/reliability/probe-2026-11-25.md, row
numbers in brackets) and more of our own: each bad input is one line naming the problem and the way
out, before hours are spent, with nothing lost and no junk left."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from analysis.records import load_records
from analysis.tables import build_table2, to_markdown
from lora_repro.config import compose_job, validate
from lora_repro.data import load_task, read_tsv
from lora_repro.errors import ConfigError, DataError
from lora_repro.record import new_record, write_record
from lora_repro.rundir import RunDirLock
from lora_repro.trainer import WallClock, resume_point, save_record

from .conftest import TINY, compose_cfg, write_sst2_dir


def tsv(path: Path, lines: list[str], encoding_prefix: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoding_prefix + ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def sst2_dir_with(tmp_path: Path, train_extra: list[str] = (), dev_extra: list[str] = ()) -> Path:
    folder = write_sst2_dir(tmp_path / "SST-2", n_train=32, n_dev=16)
    for name, extra in (("train.tsv", train_extra), ("dev.tsv", dev_extra)):
        with open(folder / name, "a", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in extra)
    return folder


# ------------------------------------------------------------------------------------- data files
def test_a_byte_order_mark_is_dropped_as_the_official_mrpc_files_need(tmp_path):  # [2], [10]
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    path = tsv(tmp_path / "train.tsv", [header, "1\t1\t2\tA man runs .\tA man is running ."], b"\xef\xbb\xbf")
    ds = read_tsv(path, compose_cfg("task=mrpc").task)
    assert ds["sentence1"] == ["A man runs ."] and ds["label"] == [1]


@pytest.mark.parametrize("split,label", [("train", "2"), ("train", "-1"), ("dev", "2")])
def test_a_label_outside_the_tasks_classes_names_file_and_line_when_read(tmp_path, split, label):  # [5] [6] [7]
    folder = sst2_dir_with(tmp_path, **{f"{split}_extra": [f"a bad row\t{label}"]})
    lines = 1 + (32 if split == "train" else 16) + 1
    with pytest.raises(DataError, match=rf"{split if split == 'dev' else 'train'}\.tsv:{lines}: label {label} is outside "
                                        r"the task's classes 0\.\.1"):
        load_task(compose_cfg("task=sst2", f"task.data_dir={folder}").task)


def test_a_latin1_byte_names_file_line_and_the_fix(tmp_path):  # [13]
    folder = write_sst2_dir(tmp_path / "SST-2", n_train=4, n_dev=4)
    with open(folder / "train.tsv", "ab") as handle:
        handle.write("caf\xe9 cr\xe8me is great\t1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"train\.tsv:6: byte 0xe9 at column 4 is not UTF-8 \(save the file as UTF-8"):
        load_task(compose_cfg("task=sst2", f"task.data_dir={folder}").task)


def test_the_wrong_folder_for_a_task_says_so(tmp_path):  # [16]
    folder = write_sst2_dir(tmp_path / "SST-2", n_train=4, n_dev=4)
    with pytest.raises(DataError, match=r"train\.tsv:1: 2 tab-separated fields, but task cola reads column 3 .*is .*SST-2 "
                                        r"the cola data\?"):
        load_task(compose_cfg("task=cola", f"task.data_dir={folder}").task)


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("override,message", [
    ("seed=-1", r"seed must be an integer in \[0, 2\*\*32\), got -1"),                                     # [21]
    ("task.max_train_samples=0", r"task.max_train_samples must be a positive integer, or null"),          # [27]
    ("task.max_eval_samples=-5", r"task.max_eval_samples must be a positive integer, or null"),
    ("task.max_length=1", r"task.max_length must be an integer >= 8 \(room for the special tokens\), got 1"),  # [28]
    ("init_from=README.md", r"init_from=README.md: .*README.md is not a readable safetensors file"),      # [37]
])
def test_bad_values_are_one_line_before_anything_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*TINY, override))


@pytest.mark.parametrize("overrides,message", [
    # [38], [39] (experiment=mini task=cola; a paper recipe on a task it has no entry for) compose now:
    # tests/test_paper_rows.py. What is still refused: a value the paper row does not give, a row that is not one.
    (["experiment=paper_gpt2_ft", "train.max_steps=${paper:max_steps}"],
     r"^paper row gpt2_ft gives no 'max_steps' for task e2e, model gpt2_medium \(it gives: lr\); set the value"),
    (["experiment=paper_roberta_base_lora", "paper_row=nope"], r"^paper_row=nope is not a row of analysis/paper/hparams.yaml; rows: "),
    (["+train.learning_rate=1e-3"], r"train.learning_rate is not a setting of this config, so nothing would read it; "
                                    r"train has: .*\blr\b"),                                                    # [42]
    (["+foo=1"], r"foo is not a setting of this config"),
    (["train.learning_rate=1e-3"], r"train.learning_rate is not a setting; did you mean train.lr\?"),          # [41]
])
def test_configs_that_do_not_compose_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        compose_job(overrides)
    assert "\n" not in str(info.value)


def test_free_form_mappings_still_take_added_keys():
    cfg = compose_job(["+method.peft_config.use_rslora=true", "+model.arch.layer_norm_eps=1e-6"])
    assert cfg.method.peft_config.use_rslora is True


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lora_repro.train", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def test_a_config_error_leaves_no_folder(tmp_path, monkeypatch):  # [65]
    from .conftest import run_train

    with pytest.raises(SystemExit) as exc:
        run_train(monkeypatch, f"output_root={tmp_path}", "method.r=0")
    assert exc.value.code == "error: method.r must be > 0, got 0"
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exc:
        run_train(monkeypatch, f"output_root={tmp_path}", "experiment=paper_roberta_base_lora", "paper_row=nope")
    assert "\n" not in exc.value.code and "paper_row=nope is not a row of analysis/paper/hparams.yaml" in exc.value.code
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_one_bad_value_in_a_sweep_is_recorded_and_the_sweep_goes_on(tmp_path):  # [52]
    folder = write_sst2_dir(tmp_path / "SST-2", n_train=32, n_dev=16)
    out = tmp_path / "out"
    proc = run_cli("-m", *TINY, f"task.data_dir={folder}", "train.max_steps=2", "save_checkpoint=false",
                   f"output_root={out}", "method.r=2,0,4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in out.rglob("record.json")]
    by_r = {r["config"]["method"]["r"]: r for r in records}
    assert sorted(by_r) == [0, 2, 4]
    assert by_r[0]["status"] == "failed" and by_r[0]["error"] == "config: method.r must be > 0, got 0"
    assert by_r[2]["status"] == by_r[4]["status"] == "ok"
    # A sweep with a job whose config cannot even be composed stops before anything runs.
    proc = run_cli("-m", f"output_root={tmp_path / 'out2'}", "experiment=paper_roberta_base_lora",
                   "paper_row=roberta_base_lora,nope")
    assert proc.returncode != 0 and "sweep job [" in proc.stderr and "nothing was run" in proc.stderr
    assert not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_already_done_is_decided_before_hydra_touches_the_folder(tmp_path):  # [57]
    folder = write_sst2_dir(tmp_path / "SST-2", n_train=32, n_dev=16)
    args = [*TINY, f"task.data_dir={folder}", "train.max_steps=2", f"output_root={tmp_path / 'out'}"]
    assert run_cli(*args).returncode == 0
    run_dir = next((tmp_path / "out").rglob("record.json")).parent
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    proc = run_cli(*args)
    assert proc.returncode == 0 and "already done (status ok), skipping" in proc.stdout
    # Nothing in the folder is opened for writing (train.log, .hydra/), so a read-only archive works.
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_a_job_refused_for_a_live_lock_leaves_the_running_jobs_files_alone(tmp_path):
    """Probe D7: `overwrite=true` while another process runs the folder used to rewrite that run's
    .hydra/overrides.yaml before being refused; now nothing of the folder is written before its
    lock is taken (Hydra writes no files there at all)."""
    import socket

    folder = write_sst2_dir(tmp_path / "SST-2", n_train=32, n_dev=16)
    args = [*TINY, f"task.data_dir={folder}", "train.max_steps=2", f"output_root={tmp_path / 'out'}"]
    assert run_cli(*args).returncode == 0
    run_dir = next((tmp_path / "out").rglob("record.json")).parent
    (run_dir / ".lock").write_text(f"{socket.gethostname()} {os.getppid()}\n")  # a live process holds it
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*") if p.is_file()}
    proc = run_cli(*args, "overwrite=true")
    assert proc.returncode != 0 and "is in use by process" in proc.stderr
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*") if p.is_file()} == before
    assert not (run_dir / ".hydra").exists()


def test_a_sweep_job_another_launcher_is_running_is_skipped_without_an_error(tmp_path):
    """Probe C14: two launchers of one study split the work through the locks; the one that finds a
    folder held logs that it skipped it (not "error"), and the sweep goes on."""
    import socket

    from lora_repro.rundir import register_resolvers, run_dir

    register_resolvers()
    folder = write_sst2_dir(tmp_path / "SST-2", n_train=32, n_dev=16)
    args = [*TINY, f"task.data_dir={folder}", "train.max_steps=2", f"output_root={tmp_path / 'out'}"]
    held = run_dir(compose_cfg(*args, "seed=1"))
    held.mkdir(parents=True)
    (held / ".lock").write_text(f"{socket.gethostname()} {os.getppid()}\n")  # a live process holds seed 1
    proc = run_cli("-m", *args, "seed=1,2")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "skipped, another job is running it" in text and "error" not in text.lower()
    assert not (held / "record.json").exists() and (run_dir(compose_cfg(*args, "seed=2")) / "record.json").is_file()


def test_a_hub_that_does_not_answer_is_one_line_before_anything_loads(tmp_path):
    """Probes E3/E5: on a network that drops packets the hub clients waited minutes with nothing
    printed. Online, one HEAD request with a short timeout decides first (here a closed port)."""
    folder = write_sst2_dir(tmp_path / "SST-2", n_train=32, n_dev=16)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    proc = subprocess.run([sys.executable, "-m", "lora_repro.train", "model=roberta_base", f"task.data_dir={folder}",
                           f"output_root={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300,
                          env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("error: model roberta_base (FacebookAI/roberta-base) comes from "
                                                    "the Hugging Face Hub, and http://127.0.0.1:9 did not answer")
    assert "model.path=DIR" in last and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ faults
def fake_checkpoint(folder: Path, step: int, complete: bool = True, wall_s: float = 0.0) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"w": torch.ones(64)}, str(path / "trainable.safetensors"))
    torch.save({"state": {}}, path / "optimizer.pt")
    (path / WallClock.FILE).write_text(json.dumps({"wall_s": wall_s}))
    if not complete:
        data = (path / "trainable.safetensors").read_bytes()
        (path / "trainable.safetensors").write_bytes(data[: len(data) // 2])
    return path


def test_resume_skips_a_truncated_or_partial_newest_checkpoint(tmp_path):  # [48] [49]
    cfg = compose_cfg(*TINY)
    root = tmp_path / "trainer"
    fake_checkpoint(root, 2, wall_s=12.5)
    fake_checkpoint(root, 4, complete=False)
    partial = fake_checkpoint(root, 6)
    (partial / "trainer_state.json").unlink()  # the disk filled before the state was written
    assert resume_point(cfg, tmp_path) == str(root / "checkpoint-2")
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2"]  # the broken ones are gone
    assert WallClock.prior(str(root / "checkpoint-2")) == 12.5  # wall time carries across the resume [45]
    (root / "checkpoint-2" / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")
    assert resume_point(cfg, tmp_path) is None  # nothing complete: start over, never fail the same way again


def test_an_empty_lock_of_a_starting_job_is_not_taken_over(tmp_path):  # [51]
    (tmp_path / ".lock").write_text("")
    with pytest.raises(ConfigError, match=r"in use by process \(starting\)"):
        with RunDirLock(tmp_path):
            pass
    os.utime(tmp_path / ".lock", (0, 0))  # an old empty lock is stale
    with RunDirLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip()


def test_a_record_that_cannot_be_written_is_never_claimed(tmp_path, monkeypatch):  # [58]
    import lora_repro.trainer as trainer

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer, "write_record", full_disk)
    try:
        raise RuntimeError("training failed")
    except RuntimeError as exc:
        save_record(tmp_path, new_record())
        assert exc.record_written is False
    from lora_repro.errors import RecordNotWritten

    with pytest.raises(RecordNotWritten, match="could not write .*record.json .*No space left on device.*not recorded"):
        save_record(tmp_path, new_record())


# ---------------------------------------------------------------------------------------- analysis
def test_a_nan_metric_run_is_named_not_silently_dropped(tmp_path):  # [62]
    base = dict(status="ok", task="stsb", model="roberta_base", method="lora", seed=1, hparams={"r": 8},
                params={"adapted": 294_912, "trainable": 300_000, "total": 10**8}, config={"train": {"lr": 5e-4}})
    write_record(tmp_path / "nan", {**base, "metrics": {"pearson": math.nan, "spearman": math.nan}})
    write_record(tmp_path / "good", {**base, "seed": 2, "metrics": {"pearson": 0.9}, "best_metrics": {"pearson": 0.9}})
    records = load_records(tmp_path)
    assert [p for p, _ in records.no_score] == [str(tmp_path / "nan")]
    text = to_markdown(build_table2(records), records)
    assert "1 ok runs have no usable main metric" in text and f"no main metric: {tmp_path / 'nan'}: pearson is nan" in text


# ------------------------------------------------------------------------- our own probe, 20 more
@pytest.mark.parametrize("overrides,message", [
    (["train.lr=nan"], r"train.lr must be a finite number, got nan"),
    (["train.lr=abc"], r"train.lr must be a finite number, got 'abc'"),
    # probe 2026-11-29 A1, A3, A6, A16: non-numbers, inf and strings named, before anything loads
    (["train.max_steps=abc"], r"train.max_steps must be an integer, got 'abc'"),
    (["train.weight_decay=abc"], r"train.weight_decay must be a finite number, got 'abc'"),
    (["train.warmup_ratio=abc"], r"train.warmup_ratio must be a finite number, got 'abc'"),
    (["train.lr=inf"], r"train.lr must be a finite number, got inf"),
    (["method=lora_plus", "method.loraplus_lr_ratio=inf"], r"method.loraplus_lr_ratio must be a finite number, got inf"),
    (["train.checkpoint_every=abc"], r"train.checkpoint_every must be 'epoch', a positive number of steps, or 0"),
    (["train.adam_beta1=2"], r"train.adam_beta1 must be >= 0 and < 1, got 2"),
    (["train.warmup_steps=-3"], r"train.warmup_steps must be >= 0, got -3"),
    (["method.alpha=abc"], r"method.alpha must be a finite number, got 'abc'"),
    (["train.schedule=cosine_wrong"], r"train.schedule='cosine_wrong'; valid: linear, cosine"),
    (["task.max_length=100000"], r"task.max_length=100000 exceeds minilm_l6's 512 positions"),
    (["model=roberta_base", "model.init=random", "task=sst2", "task.max_length=514"], r"exceeds roberta_base's 512 positions"),
    (["task=sst2", "task.data_dir=README.md"], r"task.data_dir=README.md does not exist or is not a directory"),
    (["model.path=/nonexistent"], r"model.path=/nonexistent is not a model folder \(no config.json in it\)"),
    (["seed=1.5"], r"seed must be an integer in \[0, 2\*\*32\), got 1.5"),
    (["train.batch_size=2.5"], r"train.batch_size must be a positive integer, got 2.5"),
    (["logger.wandb.mode=onlin"], r"logger.wandb.mode='onlin'; valid: online, offline, disabled"),
    (["task.splits.validation=null"], r"task rotten_tomatoes has no evaluation split left .* needs one to measure accuracy"),
    (["task.max_eval_samples=abc"], r"task.max_eval_samples must be a positive integer, or null"),
    (["train.warmup_ratio=1.5"], r"train.warmup_ratio must be >= 0 and < 1, got 1.5"),
    (["method=lora_plus", "method.loraplus_weight_decay=-0.1"], r"loraplus_weight_decay must be >= 0 or null"),
    (["method=adapter_h", "method.placement=sideways"], r"method.placement='sideways'; valid: projection, after_dropout, post_ln"),
    (["model=gpt2_medium", "model.init=random", "task=e2e", "+method.peft_config.use_dora=true"],
     r"\['use_dora'\] cannot be applied to gpt2_medium: its q, k, v share one fused projection"),
    (["task=e2e", "model=smollm2_135m", "task.generation.num_beams=0"], r"task.generation.num_beams must be a positive integer"),
    (["task=e2e", "model=smollm2_135m", "task.decode_splits=[validation2]"], r"task.decode_splits \['validation2'\] must name evaluation splits"),
])
def test_our_own_probe_config_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_job(overrides))


@pytest.mark.parametrize("field,value,message", [
    ("seeds", ["a"], r"seeds must be a list of integers >= 0, got \['a'\]"),
    ("grid", {"method.r": 4}, r"grid must map names to non-empty lists"),
    ("variants", {"lora": "method=lora"}, r"variants must map names to non-empty lists"),
    ("common", "model=tiny_bert", r"common must be a list"),
    ("colour", "blue", r"unknown key\(s\) \['colour'\]"),
])
def test_a_malformed_study_yaml_is_one_line_naming_the_key(tmp_path, monkeypatch, field, value, message):
    import lora_repro.study as study
    import lora_repro.studyspec as studyspec

    (tmp_path / "mine").mkdir()
    spec = {"description": "x", "cost": "x", "common": [*TINY], "seeds": [1], field: value}
    (tmp_path / "mine" / "study.yaml").write_text(json.dumps(spec))
    monkeypatch.setattr(studyspec, "EXPERIMENTS_DIR", tmp_path)
    with pytest.raises(ConfigError, match=message):
        study.load_study("mine")
    assert study.main(["mine", "--dry-run"]) == 2


def test_a_study_override_that_does_not_fit_a_variant_is_one_line(capsys):
    import lora_repro.study as study

    # full_ft has no rank: the demo's full_ft variant cannot take method.r=0.
    assert study.main(["demo", "--dry-run", "method.r=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: study demo: ") and "method.r" in err[0]


def test_tables_from_both_a_study_and_a_runs_folder_is_refused(tmp_path):
    from analysis.tables import main as tables

    with pytest.raises(SystemExit, match="not both"):
        tables([str(tmp_path), "--study", "demo"])


# ------------------------------------------------------------------------- probe 2026-11-29
def test_a_lock_naming_this_process_left_before_a_restart_is_stale_and_a_silent_one_from_another_host_too(tmp_path, capsys):
    """D9: a restarted container gets the same PID; issue #21 item 11: a pre-empted job requeued
    on another node. A live lock is one line naming the lock file."""
    import socket
    import time

    lock = tmp_path / ".lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}\n")  # not held: written before a "restart"
    with RunDirLock(tmp_path):
        assert lock.read_text().split()[1] == str(os.getpid())
    assert "taking over a stale lock of process" in capsys.readouterr().err
    lock.write_text("other-node 12345\n")
    with pytest.raises(ConfigError, match=rf"in use by process 12345 on other-node \(lock file {lock}; if no job"):
        with RunDirLock(tmp_path):
            pass
    old = time.time() - RunDirLock.STALE_S - 60
    os.utime(lock, (old, old))  # its heartbeat stopped 11 minutes ago
    with RunDirLock(tmp_path):
        assert lock.read_text().startswith(socket.gethostname())


def test_e2e_readers_name_the_physical_line(tmp_path):
    """B13: a reference holding U+2028 is one line, not two; B14: after a quoted two-line field
    the next rows' line numbers are physical lines."""
    from omegaconf import OmegaConf

    from lora_repro.data import read_lora_txt, read_mr_ref_csv

    (tmp_path / "train.txt").write_text("name : A||one\nname : B||two\u2028parts\nname : C three\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.txt:3: expected one 'MR\|\|reference' per line, found 0"):
        read_lora_txt(tmp_path / "train.txt", None)
    (tmp_path / "t.csv").write_text('mr,ref\n"a","x\ny"\n"c","z"\n"b",""\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"t.csv:5: empty ref field"):
        read_mr_ref_csv(tmp_path / "t.csv", OmegaConf.create({"csv_columns": {"mr": "mr", "ref": "ref"}}))


def test_a_runaway_line_and_a_utf16_file_are_named_before_parsing(tmp_path):
    """Probe B9: one line of many MB (a missing newline) OOM-killed the job silently; B7: UTF-16
    was diagnosed with latin-1 advice."""
    from lora_repro.data import MAX_LINE_BYTES, read_text

    (tmp_path / "big.tsv").write_bytes(b"sentence\tlabel\nfine\t1\n" + b"x" * (MAX_LINE_BYTES + 10) + b"\t0\n")
    with pytest.raises(DataError, match=r"big.tsv:3: a line of 1,048,588 bytes .*a newline is probably missing"):
        read_text(tmp_path / "big.tsv")
    (tmp_path / "u16.tsv").write_bytes("sentence\tlabel\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"u16.tsv: UTF-16 .*iconv -f utf-16 -t utf-8"):
        read_text(tmp_path / "u16.tsv")


def test_a_run_folder_that_cannot_be_written_is_one_line_before_its_log_is_opened(tmp_path, monkeypatch):
    """Probe 2026-11-29 row 57: overwrite=true on a read-only finished folder gave two tracebacks
    from the logging set-up. Read-only is simulated (these tests may run as root, where chmod
    does not stop writes)."""
    import lora_repro.rundir as rundir
    from lora_repro.config import compose_job_with_choices
    from lora_repro.job import execute, prepare

    args = [*TINY, f"task.data_dir={write_sst2_dir(tmp_path / 'data')}", f"output_root={tmp_path}", "overwrite=true"]
    job = prepare(*compose_job_with_choices(args), args)
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "train.log").write_text("an earlier run\n")
    real_access = os.access
    monkeypatch.setattr(rundir.os, "access", lambda p, mode: Path(p).name != "train.log" and real_access(p, mode))
    with pytest.raises(ConfigError, match=r"run folder .* is not writable \(.*train.log is read-only\): make it "
                                          r"writable \(chmod -R u\+w\), or run into another output_root="):
        execute(job)
    assert (job.run_dir / "train.log").read_text() == "an earlier run\n" and not (job.run_dir / ".lock").exists()
    monkeypatch.setattr(rundir.os, "access", real_access)
    assert rundir.check_run_dir_writable(job.run_dir) is None  # writable: nothing to say


@pytest.mark.parametrize("override, message", [
    ("train.watch=[nope]", r"train.watch=\['nope'\]: no split named nope \(this task evaluates validation\)"),
    ("task.train_sample_seed=-1", r"task.train_sample_seed must be an integer in \[0, 2\*\*32\) or null, got -1"),
    ("train.early_stopping={metric: nope_accuracy, patience: 2}",
     r"train.early_stopping.metric='nope_accuracy' is not a metric this run reports during training; valid: accuracy"),
    ("train.keep_predictions=maybe", r"train.keep_predictions must be true or false, got 'maybe'"),
])
def test_own_probe_settings_that_would_fail_late_or_silently_are_one_line_up_front(override, message):
    """Probes of our own (2026-11-30): an unknown watched split failed after the model loaded; an
    early-stopping metric the Trainer never reports never stopped a run and selected nothing,
    silently; a negative sampling seed and a non-boolean keep_predictions were taken as given."""
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*TINY, override))


def test_the_claims_recipe_stops_mnli_on_the_metric_the_trainer_reports():
    """MNLI's main metric names its split (matched_accuracy): `heldout_${task.main_metric}` gave
    heldout_matched_accuracy, which the Trainer never reports, so early stopping never fired."""
    for task, key in (("mnli", "heldout_accuracy"), ("cola", "heldout_mcc"), ("stsb", "heldout_pearson")):
        cfg = compose_job(["experiment=claims", f"task={task}"])
        assert cfg.train.early_stopping.metric == key
        validate(cfg)


def test_a_missing_user_config_folder_is_named(tmp_path):
    env = {**os.environ, "LORA_REPRO_CONF_DIRS": str(tmp_path / "nope"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "lora_repro.train", *TINY], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (f"error: LORA_REPRO_CONF_DIRS names {tmp_path / 'nope'}, which is not "
                                                   f"a folder; fix the path or unset it")


def test_a_study_param_value_it_does_not_list_and_an_unknown_extra_override_are_one_line():
    """Own probes: `claims scale=huge` said "Interpolation key 'lookup.common.huge' not found";
    `demo scale=huge` (a study without that param) printed two tracebacks from the planner."""
    from lora_repro.study import load_study

    with pytest.raises(ConfigError, match=r"^study claims: scale=huge is not one of its choices \(scale: core, full, "
                                          r"quick\)$"):
        load_study("claims", {"scale": "huge"})
    out = subprocess.run([sys.executable, "-m", "lora_repro.study", "demo", "scale=huge", "--dry-run"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: scale is not a setting the root has: ")
