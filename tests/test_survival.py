"""Runs that survive: resume after SIGKILL, skip finished runs, no mixed or partial results,
determinism."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_repro.record import write_record
from lora_repro.rundir import RunDirLock, config_hash
from lora_repro.errors import ConfigError

from .conftest import TINY, compose_cfg

BASE = [*TINY, "logger.wandb.mode=disabled", "train.max_steps=16", "train.checkpoint_every=4",
        "train.eval_every=8", "train.lr=5e-3", "method=lora"]


def launch(output_root: Path, sst2_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lora_repro.train", *BASE, f"task.data_dir={sst2_dir}", f"output_root={output_root}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def only_run_dir(output_root: Path) -> Path:
    dirs = [p.parent for p in output_root.rglob("train.log")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_sigkill_then_resume_gives_the_uninterrupted_result_exactly(tmp_path, sst2_dir):
    clean = launch(tmp_path / "clean", sst2_dir)
    assert clean.returncode == 0, clean.stderr[-2000:]
    # Fault injection through config, as any callback (train.callbacks is not part of the recipe:
    # the killed run and its resumption share one run folder).
    killed = launch(tmp_path / "killed", sst2_dir, "train.callbacks=[{_target_:lora_repro.trainer.KillAtStep,step:10}]")
    assert killed.returncode == -9  # SIGKILL after step 10; the last checkpoint is step 8
    run_dir = only_run_dir(tmp_path / "killed")
    assert not (run_dir / "record.json").exists() or json.loads((run_dir / "record.json").read_text())["status"] != "ok"
    assert (run_dir / "trainer" / "checkpoint-8").is_dir()
    wall_before = json.loads((run_dir / "trainer" / "checkpoint-8" / "wall.json").read_text())["wall_s"]

    resumed = launch(tmp_path / "killed", sst2_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((only_run_dir(tmp_path / "clean") / "record.json").read_text())
    b = json.loads((run_dir / "record.json").read_text())
    assert b["status"] == "ok" and b["resumed_from_step"] == 8
    assert b["wall_s"] > wall_before > 0  # the whole run's time, not the second process's alone
    assert a["metrics"] == b["metrics"] and a["best_metrics"] == b["best_metrics"]
    assert a["train_loss_curve"] == b["train_loss_curve"]
    wa = load_file(only_run_dir(tmp_path / "clean") / "checkpoint" / "trainable.safetensors")
    wb = load_file(run_dir / "checkpoint" / "trainable.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert not (run_dir / "trainer").exists()  # resumable state removed once the run is ok


def test_finished_run_is_skipped_and_overwrite_reruns_it(tmp_path, sst2_dir):
    first = launch(tmp_path, sst2_dir, "train.max_steps=2")
    assert first.returncode == 0, first.stderr[-2000:]
    record_path = only_run_dir(tmp_path) / "record.json"
    stamp = record_path.stat().st_mtime_ns
    again = launch(tmp_path, sst2_dir, "train.max_steps=2")
    assert "already done" in again.stdout + again.stderr and record_path.stat().st_mtime_ns == stamp
    forced = launch(tmp_path, sst2_dir, "train.max_steps=2", "overwrite=true")
    assert forced.returncode == 0 and record_path.stat().st_mtime_ns != stamp


def test_a_finished_run_without_the_weights_a_later_config_asks_for_trains_again_to_save_them(tmp_path, sst2_dir):
    from lora_repro.record import CHECKPOINT_FILE

    first = launch(tmp_path, sst2_dir, "train.max_steps=2", "save_checkpoint=false")
    assert first.returncode == 0, first.stderr[-2000:]
    folder = only_run_dir(tmp_path)  # save_checkpoint is no part of the recipe: the same folder below
    assert not (folder / CHECKPOINT_FILE).exists()
    wanted = launch(tmp_path, sst2_dir, "train.max_steps=2", "save_checkpoint=true")
    assert wanted.returncode == 0 and "training it again" in wanted.stdout + wanted.stderr
    assert only_run_dir(tmp_path) == folder and (folder / CHECKPOINT_FILE).is_file()
    again = launch(tmp_path, sst2_dir, "train.max_steps=2", "save_checkpoint=true")
    assert "already done" in again.stdout + again.stderr


def test_run_folder_is_unique_per_config_and_seed(tmp_path, sst2_dir):
    from lora_repro.rundir import register_resolvers

    register_resolvers()
    base = compose_cfg(*BASE, f"task.data_dir={sst2_dir}")
    assert config_hash(base) == config_hash(compose_cfg(*BASE, f"task.data_dir={sst2_dir}", "seed=7", "overwrite=true"))
    # The same value typed as an int or a float names the same folder.
    ratio = [*BASE[:-1], "method=lora_plus", f"task.data_dir={sst2_dir}"]
    assert config_hash(compose_cfg(*ratio, "method.loraplus_lr_ratio=16")) == config_hash(compose_cfg(*ratio))
    for change in ["method.r=4", "train.lr=1e-3", "task.max_length=32", "method=bitfit"]:
        assert config_hash(compose_cfg(*BASE, f"task.data_dir={sst2_dir}", change)) != config_hash(base), change


def test_a_live_lock_keeps_a_second_job_out(tmp_path):
    with RunDirLock(tmp_path):
        with pytest.raises(ConfigError, match=f"in use by process {os.getpid()}"):
            with RunDirLock(tmp_path):
                pass
    (tmp_path / ".lock").write_text(f"{os.uname().nodename} 999999999\n")  # a dead process's lock
    with RunDirLock(tmp_path):
        assert (tmp_path / ".lock").read_text().split()[1] == str(os.getpid())


def test_record_write_is_atomic(tmp_path, monkeypatch):
    write_record(tmp_path, {"status": "ok", "metrics": {"accuracy": 0.9}})
    import lora_repro.record as record_module

    def broken_dump(obj, handle, **kw):
        handle.write('{"status": "ok", "metr')  # half written, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record_module.json, "dump", broken_dump)
    with pytest.raises(OSError, match="No space left"):
        write_record(tmp_path, {"status": "ok", "metrics": {"accuracy": 0.1}})
    assert json.loads((tmp_path / "record.json").read_text())["metrics"] == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temp file left


def test_unwritable_output_root_is_one_line_before_anything_runs(tmp_path, sst2_dir):
    # A regular file where a folder is needed: no process, root included, can create runs there.
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    proc = launch(blocker / "out", sst2_dir)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: output_root={blocker / 'out'} is not writable ({blocker} does not accept new files)")
    assert not list(tmp_path.rglob("record.json"))


def test_same_config_and_seed_twice_is_bit_identical(tmp_path, sst2_dir):
    from lora_repro.config import validate
    from lora_repro.trainer import run

    records, weights = [], []
    for name in ("a", "b"):
        cfg = compose_cfg(*BASE, f"task.data_dir={sst2_dir}", "train.checkpoint_every=0")
        records.append(run(cfg, validate(cfg), tmp_path / name))
        weights.append(load_file(tmp_path / name / "checkpoint" / "trainable.safetensors"))
    assert records[0]["metrics"] == records[1]["metrics"]
    assert records[0]["train_loss_curve"] == records[1]["train_loss_curve"]
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])


@pytest.mark.slow
def test_two_process_data_parallel_on_cpu_agrees_and_only_rank_0_writes(tmp_path, sst2_dir):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29577",
           "-m", "lora_repro.train", *BASE, "train.checkpoint_every=0", f"task.data_dir={sst2_dir}",
           f"output_root={tmp_path}", "train.max_steps=4", "train.batch_size=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = dict(
        line.split("rank ")[1].split(": trainable_sha256=")
        for line in (proc.stdout + proc.stderr).splitlines() if "trainable_sha256=" in line
    )
    assert set(digests) == {"0 of 2", "1 of 2"}
    assert digests["0 of 2"] == digests["1 of 2"]  # DDP kept the replicas identical
    records = list(tmp_path.rglob("record.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    assert record["trainable_sha256"] == digests["0 of 2"]


def test_init_from_a_finished_run_of_another_task_copies_the_method_weights_only(tmp_path, sst2_dir):
    first = launch(tmp_path, sst2_dir, "train.max_steps=3")
    assert first.returncode == 0, first.stderr[-2000:]
    source = only_run_dir(tmp_path) / "checkpoint" / "trainable.safetensors"
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    stsb = tmp_path / "STS-B"
    stsb.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        rows = [f"{i}\tg\tf\t2012\t{i}\ts\ts\tgood film {i}\tbad film\t{i % 5}.0" for i in range(16)]
        (stsb / name).write_text(header + "\n" + "\n".join(rows) + "\n")
    # init_from=sst2: the finished sst2 run of the same model, method and seed (a 2-class head
    # there, a 1-output regression head here: only the LoRA factors are copied).
    second = launch(tmp_path, sst2_dir, "task=stsb", f"task.data_dir={stsb}", "init_from=sst2", "train.max_steps=1")
    assert second.returncode == 0, second.stderr[-2000:]
    record = json.loads(next((tmp_path / "runs" / "stsb").rglob("record.json")).read_text())
    assert record["status"] == "ok" and record["init_from"] == str(source)

    from lora_repro.config import validate
    from lora_repro.backbone import build_classifier, set_trainable
    from lora_repro.trainer import load_method_weights

    cfg = compose_cfg(*BASE, "task=stsb", f"task.data_dir={stsb}")
    model = validate(cfg).apply(build_classifier(cfg.model, cfg.task), cfg.model)
    set_trainable(model, list(cfg.model.head_modules))
    head_before = model.base_model.model.classifier.weight.detach().clone()
    load_method_weights(model, source, list(cfg.model.head_modules))
    saved = load_file(source)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(torch.equal(p.detach(), saved[n]) for n, p in lora.items())
    assert torch.equal(model.base_model.model.classifier.weight, head_before)
