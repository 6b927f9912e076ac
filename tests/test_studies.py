"""Studies (experiments/<study>/study.yaml): every study plans; a study's runs land in the canonical
run folders and a re-run skips them; the library never imports the analysis layer; a LoRA variant
is one yaml file; every method in conf/method/ declares what it is; the README quotes results only
from committed study outputs."""

from __future__ import annotations

import math

import ast
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from lora_repro import CONF_DIR, PROJECT_ROOT
from lora_repro.assembly import build
from lora_repro.config import compose_config, instantiate_method, validate
from lora_repro.errors import ConfigError
from lora_repro.methods import Method
from lora_repro.rundir import HASH_VERSION, config_hash, run_dir
from lora_repro.study import load_study, param_choices, plan, study_names
from lora_repro.trainer import run

from .conftest import TINY, run_study, write_sst2_dir
from .test_methods import TINY_ROBERTA

# Discovered, not listed: a new study is one folder and this test takes it in. The ones the README
# and the Makefile name must be among them.
STUDIES = study_names()
NAMED = {"claims", "demo", "demo_e2e", "efficiency", "loraplus_glue", "loraplus_ratio", "mini", "param_counts",
         "rank_sweep", "table2_glue", "table3_e2e", "table5_targets"}


def test_every_named_study_is_there():
    assert NAMED <= set(STUDIES)


# One case per study and choice of its params, so the pytest-xdist workers share the planning.
@pytest.mark.parametrize("name, choice", [(n, c) for n in STUDIES for c in param_choices(n)],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()) or "-")
def test_every_study_plans_for_every_choice_of_its_params(name, choice):
    study = load_study(name, choice)
    assert str(study.spec["description"]).strip() and study.spec.get("cost"), name
    runs = plan(study, [])
    if study.is_command:
        assert not runs and "{results}" in study.spec["command"]
        return
    assert runs, name
    # Two rows may share a run only where their recipes are the same (one folder, one run).
    planned = [r for r in runs if r.run_dir is not None]  # tuned studies: the rest wait for a choice
    assert len({(r.run_dir, r.experiment) for r in planned}) == len(planned), name
    assert study.spec.get("results"), name


def test_planned_folders_are_the_canonical_run_folders():
    study = load_study("table2_glue", {"model": "roberta_base"})
    runs = plan(study, [])
    assert len(runs) == 8 * 5  # one paper row x 8 tasks x 5 seeds
    assert [r.task for r in runs[:5]] == ["mnli"] * 5  # MNLI first: later rows start from it
    for r in runs[::7]:
        assert r.run_dir == run_dir(compose_config(r.overrides))
    # The manifest's hash is the folder's, seed by seed, also where the recipe reads the seed (MRPC
    # starts from the MNLI run of its own seed): it once listed seed 1's hash for every seed.
    assert all(r.run_dir.name == f"{r.hash}_seed{r.seed}" for r in runs)
    mrpc = [r for r in runs if r.task == "mrpc"]
    assert len({r.hash for r in mrpc}) == 5 and all(f"_seed{r.seed}" in r.recipe["init_from"] for r in mrpc)


def test_a_run_two_paper_rows_share_counts_in_both_rows(tmp_path, monkeypatch):
    """Table 2's RoBERTa-large LoRA and LoRA-dagger rows have the same MNLI recipe (Table 9): the
    study plans one folder for both, the manifest lists it under both rows, and the analysis counts
    the one committed record in each row."""
    from analysis.records import load_study_records
    from analysis.tables import build_table2
    from lora_repro import studyspec
    from lora_repro.evidence import committed_path, write_manifest
    from lora_repro.record import new_record
    from lora_repro.study import manifest_rows

    study = load_study("table2_glue", {"model": "roberta_large"})
    runs = plan(study, [f"output_root={tmp_path}"])
    mnli = [r for r in runs if r.task == "mnli" and r.experiment.startswith("paper_roberta_large_lora") and r.values]
    shared = {r.run for r in mnli if r.seed == 1}
    assert len(shared) == 1 and {r.paper_setting for r in mnli} == {"paper", "houlsby"}
    monkeypatch.setattr(studyspec, "EXPERIMENTS_DIR", tmp_path)
    (tmp_path / "table2_glue").mkdir()
    shutil.copy(PROJECT_ROOT / "experiments" / "table2_glue" / "study.yaml", tmp_path / "table2_glue")
    write_manifest(tmp_path / "table2_glue", manifest_rows(study, runs, [], "abc"), {})
    record = new_record(status="ok", task="mnli", model="roberta_large", method="lora", seed=1, overrides="",
                        experiment="paper_roberta_large_lora", paper_setting="paper", git_commit="c" * 40,
                        metrics={"matched_accuracy": 0.906}, best_metrics={"matched_accuracy": 0.906},
                        params={"adapted": 786_432, "trainable": 786_432 + 1_051_650, "total": 356_000_000})
    path = committed_path(tmp_path / "table2_glue", shared.pop())
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    records = load_study_records("table2_glue", {"model": "roberta_large"})
    table = build_table2(records)
    rows = table[(table.task == "mnli") & table["median"].notna()]
    assert sorted(rows.published_row) == ["RoB_large (LoRA)", "RoB_large (LoRA)†"]
    assert list(rows["median"]) == [pytest.approx(90.6)] * 2 and list(rows.published) == [90.6, 90.6]


def test_a_param_value_without_rows_is_one_error_naming_the_choices():
    from lora_repro.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model=bert is not one of its choices \(model: roberta_base, roberta_large, deberta_v2_xxlarge\)"):
        load_study("table2_glue", {"model": "bert"})


def test_the_library_never_imports_the_analysis_layer():
    for path in (PROJECT_ROOT / "lora_repro").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "analysis" or n.startswith("analysis.") for n in names), path


def test_run_folder_hash_is_pinned_and_ignores_new_null_defaults(tmp_path):
    # A change of the hashing rules must bump HASH_VERSION (README: "Run folders"); this pins v2.
    assert HASH_VERSION == 2
    assert config_hash(compose_config([])) == "e9e5e81c"
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    with open(conf / "method" / "lora.yaml", "a") as handle:
        handle.write("some_new_option: null\nanother_new_table: {}\nand_a_list: []\n")
    with open(conf / "train" / "default.yaml", "a") as handle:
        handle.write("new_logging_knob: null\n")
    assert config_hash(compose_config([], conf_dir=str(conf))) == config_hash(compose_config([]))
    assert config_hash(compose_config(["train.logging_steps=3", "train.num_workers=2"])) == config_hash(compose_config([]))
    assert config_hash(compose_config(["method.r=4"])) != config_hash(compose_config([]))


def test_a_lora_variant_is_one_yaml_file_and_trains_with_no_code_change(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "method" / "my_rslora.yaml").write_text(
        "defaults:\n  - lora\n  - _self_\nname: my_rslora\npeft_config: {use_rslora: true}\n")
    data = write_sst2_dir(tmp_path / "SST-2")
    cfg = compose_config([*TINY, "method=my_rslora", "method.r=4", "method.alpha=8", f"task.data_dir={data}",
                          "train.lr=2e-2", "train.epochs=2", "save_checkpoint=false"], conf_dir=str(conf))
    method = validate(cfg)
    built = build(cfg, method)
    scalings = {m.scaling["default"] for m in built.model.modules() if hasattr(m, "lora_A") and hasattr(m, "scaling")}
    assert scalings == {8 / 4 ** 0.5}  # rsLoRA: alpha / sqrt(r), not alpha / r
    record = run(cfg, method, tmp_path / "run")
    assert record["status"] == "ok" and record["method"] == "my_rslora"
    assert record["hparams"]["peft_config"] == {"use_rslora": True}
    assert record["method_info"]["family"] == "lora"
    losses = [loss for _, loss in record["train_loss_curve"]]
    assert losses[-1] < losses[0]


def test_an_unknown_peft_argument_is_one_line():
    from lora_repro.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\['use_rsloraa'\] is not a peft LoraConfig argument"):
        instantiate_method(compose_config(["+method.peft_config.use_rsloraa=true"]).method)


def method_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


@pytest.mark.parametrize("name", method_names())
def test_every_method_in_conf_declares_what_it_is_and_trains_its_own_parameters(name):
    """Discovered from conf/method/: a new method family is one module + one yaml, and this test
    covers it without being edited."""
    small = {"adapter_d": ["method.drop_lowest=1"], "ft_top2": ["method.top_k=1"],
             "lora_plus_authors": TINY_ROBERTA}  # its recipe freezes RoBERTa's classifier.dense
    cfg = compose_config([*TINY, f"method={name}", *small.get(name, [])])
    method = validate(cfg)
    assert isinstance(method, Method) and method.name == name
    info = method.info()
    assert set(info) == {"family", "rank_key", "lr_ratio_key", "paper_setting"}
    assert info["family"] != "other", f"{type(method).__name__} declares no family"
    assert info["paper_setting"] in ("paper", "houlsby")
    for key in ("rank_key", "lr_ratio_key"):
        assert info[key] is None or info[key] in method.hparams()
    torch.manual_seed(0)
    built = build(cfg, method)
    params = built.params()
    # adapted is 0 only for the head-only control (tests/test_methods.py checks it trains the head alone)
    assert 0 <= params["adapted"] <= params["trainable"] <= params["total"] and params["trainable"] > 0
    assert params["adapted"] > 0 or method.hparams().get("top_k") == 0
    formula = method.formula_params(32, 2, cfg.model)
    assert formula is None or formula > 0


@pytest.mark.slow
def tiny_study(tmp_path, seeds: list[int]) -> tuple[list[str], dict[str, str]]:
    """A study `tiny` of LoRA and BitFit on the tiny model (2 steps a run) under tmp_path: the
    launcher's command (--scratch: a user's own runs, outputs/ only) and its environment."""
    experiments = tmp_path / "experiments"
    (experiments / "tiny").mkdir(parents=True)
    data = write_sst2_dir(tmp_path / "SST-2", n_train=64, n_dev=32)
    common = [*TINY, f"task.data_dir={data}", "train.max_steps=2", "save_checkpoint=false",
              f"output_root={tmp_path / 'outputs'}"]
    (experiments / "tiny" / "study.yaml").write_text(json.dumps({
        "description": "two methods on the tiny model", "cost": "seconds",
        "common": common, "variants": {"lora": ["method=lora"], "bitfit": ["method=bitfit", "train.lr=1e-2"]},
        "seeds": seeds, "results": ["method_table"]}))
    env = {**os.environ, "LORA_REPRO_EXPERIMENTS": str(experiments), "HF_HUB_OFFLINE": "1"}
    return [sys.executable, "-m", "lora_repro.study", "tiny", "--scratch"], env


def test_a_study_lands_in_run_folders_records_its_name_and_a_rerun_skips(tmp_path):
    cmd, env = tiny_study(tmp_path, seeds=[1])
    experiments = tmp_path / "experiments"
    first = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 runs planned (2 distinct run folders): 0 already done (skipped), 2 to run." in first.stdout
    records = sorted((tmp_path / "outputs" / "runs").rglob("record.json"))
    assert [p.parent.parent.name for p in records] == ["bitfit", "lora"]
    for path in records:
        record = json.loads(path.read_text())
        assert record["status"] == "ok" and record["study"] == "tiny"
    results = tmp_path / "outputs" / "scratch" / "tiny" / "results"
    table = (results / "methods.md").read_text()
    assert "| lora |" in table and "| bitfit |" in table
    summary = json.loads((results / "summary.json").read_text())
    assert summary["runs"] == {"ok": 2, "failed": 0, "unreadable": 0, "missing": 0, "unreleased": 0}
    assert sorted(p.name for p in (experiments / "tiny").iterdir()) == ["study.yaml"]  # nothing committed changed
    stamps = [p.stat().st_mtime_ns for p in records]

    second = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "2 runs planned (2 distinct run folders): 2 already done (skipped), 0 to run." in second.stdout
    assert "lora_repro.train" not in second.stdout  # nothing launched
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert (results / "methods.md").read_text() == table  # same records, same bytes


def test_only_starts_the_selected_arm_and_names_bad_choices(tmp_path, monkeypatch, capsys):
    """--only arm=lora: the plan still counts both arms, only LoRA trains; a field or value the
    plan does not have is one error naming the choices, before anything runs."""
    cmd, env = tiny_study(tmp_path, seeds=[1, 2])
    out = subprocess.run([*cmd, "--only", "arm=lora", "--only", "seed=2"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "4 runs planned (4 distinct run folders): 0 already done (skipped), 4 to run." in out.stdout
    assert "--only arm=lora seed=2: 1 of the 4 to run are selected" in out.stdout
    records = sorted((tmp_path / "outputs" / "runs").rglob("record.json"))
    assert [(p.parent.parent.name, p.parent.name.rsplit("_", 1)[1]) for p in records] == [("lora", "seed2")]
    for bad, message in [("arm=dora", "no planned run has arm dora; this plan's arms: bitfit, lora"),
                         ("rank=8", "give FIELD=VALUE[,VALUE...] with FIELD one of arm, task, model, method, seed"),
                         ("seed=3", "no planned run has seed 3; this plan's seeds: 1, 2")]:
        code, _, err = run_study(monkeypatch, capsys, tmp_path / "experiments", "tiny", "--scratch", "--dry-run",
                                 "--only", bad)
        assert code == 2 and message in err, err[-1000:]
        assert len(err.strip().splitlines()) == 1


def test_a_model_this_machine_lacks_stops_the_launch_before_any_run(tmp_path, monkeypatch, capsys):
    """MPNet's weights are an opt-in set-up (`make setup-mpnet`): a study that needs them where they
    are missing refuses at once, naming the step, and leaves nothing behind; --dry-run says so; the
    runs that do not need them start when --only leaves the others out."""
    tiny_study(tmp_path, seeds=[1])  # asked in this process: its command line is not needed
    spec_path = tmp_path / "experiments" / "tiny" / "study.yaml"
    spec = json.loads(spec_path.read_text())
    spec["common"] = [o for o in spec["common"] if not o.startswith("model=")]
    spec["variants"] = {"lora": ["model=tiny_bert", "method=lora"],
                        "mpnet": ["model=mpnet_base", f"model.path={tmp_path / 'no_assets'}", "method=lora"]}
    spec_path.write_text(json.dumps(spec))
    experiments = tmp_path / "experiments"
    code, out, err = run_study(monkeypatch, capsys, experiments, "tiny", "--scratch", "--dry-run")
    assert code == 0 and "1 of the runs to start cannot load their model here (mpnet_base)" in out
    assert "make setup-mpnet" in out
    code, out, err = run_study(monkeypatch, capsys, experiments, "tiny", "--scratch")
    assert code == 2 and err.startswith("error: 1 of the runs to start cannot load their model here: model.path=")
    assert "make setup-mpnet" in err and "--only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs" / "runs").exists() and not (tmp_path / "outputs" / "launch_logs").exists()
    code, out, err = run_study(monkeypatch, capsys, experiments, "tiny", "--scratch", "--dry-run", "--only", "arm=lora")
    assert code == 0 and "cannot load their model" not in out


@pytest.mark.slow
def test_a_study_fans_out_one_job_per_device(tmp_path, monkeypatch, capsys):
    """--devices 0,1: every run in its own process, at most two at once, each told its device
    (CUDA_VISIBLE_DEVICES); a tuned study's rounds go through the same pool."""
    experiments = tmp_path / "experiments"
    (experiments / "fan").mkdir(parents=True)
    data = write_sst2_dir(tmp_path / "SST-2", n_train=64, n_dev=32)
    common = [*TINY, f"task.data_dir={data}", "train.max_steps=2", "save_checkpoint=false",
              f"output_root={tmp_path / 'outputs'}", "task.heldout_rows=16"]
    (experiments / "fan" / "study.yaml").write_text(json.dumps({
        "description": "a tuned tiny study", "cost": "seconds", "common": common,
        "variants": {"lora": ["method=lora"]}, "seeds": [1],
        "tune": {"key": "train.lr", "values": {"lora": [1e-3, 1e-2]}, "seed": 0},
        "results": ["method_table"]}))
    env = {**os.environ, "LORA_REPRO_EXPERIMENTS": str(experiments), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lora_repro.study", "fan", "--scratch", "--devices", "0,1"]
    out = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "outputs" / "runs").rglob("record.json")]
    assert len(records) == 2 + 1 and all(r["status"] == "ok" for r in records)  # 2 candidates, then the final
    starts = [line for line in out.stdout.splitlines() if "] start " in line]
    assert len(starts) == 3 and {line.split("]")[0] for line in starts} == {"[device 0", "[device 1"}
    running, peak = 0, 0
    for line in out.stdout.splitlines():
        running += 1 if "] start " in line else -1 if "] done " in line else 0
        peak = max(peak, running)
    assert peak <= 2
    logs = list((tmp_path / "outputs" / "launch_logs").glob("*.log"))
    assert len(logs) == 3
    code, _, err = run_study(monkeypatch, capsys, experiments, "fan", "--devices", "0,0", "--dry-run")
    assert code == 2 and "give 'auto' or distinct device ids" in err


def test_the_device_pool_gives_out_new_runs_as_each_one_finishes(tmp_path, monkeypatch):
    """--devices with a tuned study: after every finished run the plan is made again and what can run
    now starts on the free device (no round waits for its slowest run); never more jobs at once than
    devices; a refill that fails (e.g. drift) stops the pool and is raised."""
    import threading
    import time

    import lora_repro.study as study_module
    from lora_repro.study import PlannedRun, run_on_devices

    running, peak, started = [0], [0], []
    lock = threading.Lock()

    class FakeChild:  # stands for `python -m lora_repro.train ...`: a run of 0.05 s
        def __init__(self, cmd, **kwargs):
            self.run = next(o for o in cmd if o.startswith("seed="))
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                started.append(self.run)

        def wait(self):
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            return 0

        def send_signal(self, signum):
            pass

    monkeypatch.setattr(study_module.subprocess, "Popen", FakeChild)
    job = lambda seed: PlannedRun([f"seed={seed}"], tmp_path / str(seed), "m", "lora", "sst2", 1.0, True, False,  # noqa: E731
                                  (0, "a"), {}, None, "p", run=f"runs/x/{seed}")
    later = {1: [job(3), job(4)], 2: [job(5)]}  # what each finished run makes runnable (the finals)
    calls = []

    def refill():
        calls.append(len(calls) + 1)
        return later.get(len(calls), [])

    study = load_study("mini")
    assert run_on_devices(study, [job(1), job(2)], ["cpu0", "cpu1"], tmp_path, refill) == 0
    assert sorted(started) == [f"seed={s}" for s in range(1, 6)] and peak[0] == 2
    assert len(calls) == 5  # planned again after each of the five runs
    started.clear(), calls.clear()
    assert run_on_devices(study, [job(1), job(2)], ["cpu0"], tmp_path, refill) == 0
    assert started == ["seed=1", "seed=3", "seed=5", "seed=4", "seed=2"]  # what a run unlocks goes first

    def broken():
        raise ConfigError("drift: choose --keep or --rerun")

    started.clear()
    with pytest.raises(ConfigError, match="drift"):
        run_on_devices(study, [job(1), job(2), job(3)], ["cpu0"], tmp_path, broken)
    assert started == ["seed=1"]  # nothing starts after the failed refill


def test_the_pool_runs_final_seeds_first_then_the_arms_with_the_fewest_candidates_left(tmp_path):
    from lora_repro.study import PlannedRun, nearest_first

    def job(arm, task, role, seed):
        return PlannedRun([f"seed={seed}"], tmp_path, "m", "lora", task, 1.0, True, False, (0, arm), {"task": task},
                          None, "p", role=role, seed=seed)

    runs = [job("a", "sst2", "tune", 0), job("a", "sst2", "tune", 0), job("b", "sst2", "tune", 0),
            job("a", "cola", "final", 1), job("a", "cola", "final", 2)]
    order = [(r.group[1], r.task, r.role, r.seed) for r in nearest_first(runs)]
    assert order == [("a", "cola", "final", 1), ("a", "cola", "final", 2), ("b", "sst2", "tune", 0),
                     ("a", "sst2", "tune", 0), ("a", "sst2", "tune", 0)]


def test_cpu_slots_share_the_cores_and_gpu_ids_pin_one_gpu(monkeypatch):
    """--devices cpu0,cpu1: each job sees no GPU and gets half the cores as torch threads, unless the
    caller set OMP_NUM_THREADS; a GPU id is the job's only visible GPU, threads untouched."""
    import lora_repro.study as study_module
    from lora_repro.study import device_env

    monkeypatch.setattr(study_module, "cpu_count", lambda: 8)
    base = {"PATH": "/bin"}
    env = device_env("cpu1", ["cpu0", "cpu1"], base)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4"
    assert device_env("cpu0", ["cpu0", "cpu1", "cpu2"], base)["OMP_NUM_THREADS"] == "2"
    assert device_env("cpu0", [f"cpu{i}" for i in range(16)], base)["OMP_NUM_THREADS"] == "1"  # never 0
    assert device_env("cpu0", ["cpu0", "cpu1"], {**base, "OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    gpu = device_env("2", ["0", "2"], base)
    assert gpu == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2"} and base == {"PATH": "/bin"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA record names its GPU")
def test_a_cpu_record_names_its_torch_threads():
    """On CPU the thread count changes the order of sums, so a record says how many threads it used
    (the tests run on one)."""
    from lora_repro.provenance import device

    device.cache_clear()
    name = device()
    assert name.startswith("cpu: ") and name.endswith(f"cores, {torch.get_num_threads()} torch thread"
                                                      + ("s)" if torch.get_num_threads() != 1 else ")"))


@pytest.mark.slow
def test_a_stopped_study_stops_its_training_and_starts_nothing_more(tmp_path):
    """SIGTERM to the launcher reaches the running multirun, and the launcher then exits (130)
    instead of starting the next variant's (probe C15; seen: a killed child, the study went on)."""
    import signal
    import time

    experiments = tmp_path / "experiments"
    (experiments / "long").mkdir(parents=True)
    data = write_sst2_dir(tmp_path / "SST-2", n_train=64, n_dev=32)
    common = [*TINY, f"task.data_dir={data}", "train.max_steps=100000", "train.checkpoint_every=0",
              "train.eval_every=100000", "save_checkpoint=false", f"output_root={tmp_path / 'outputs'}"]
    (experiments / "long" / "study.yaml").write_text(json.dumps({
        "description": "two long runs", "cost": "long", "common": common,
        "variants": {"a": ["method=lora"], "b": ["method=bitfit"]}, "seeds": [1], "results": ["method_table"]}))
    env = {**os.environ, "LORA_REPRO_EXPERIMENTS": str(experiments), "HF_HUB_OFFLINE": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "lora_repro.study", "long", "--scratch"], cwd=PROJECT_ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / "outputs" / "runs").rglob(".lock")) and time.time() < deadline:
        time.sleep(0.5)
    assert list((tmp_path / "outputs" / "runs").rglob(".lock")), "the first run never started"
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130 and "the same command continues where it stopped" in err
    assert not list((tmp_path / "outputs" / "runs").rglob("bitfit"))   # the second variant never started
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps                                     # no training left running


def test_the_readme_quotes_only_committed_study_results():
    from analysis.readme import BLOCK, README, refill

    text = README.read_text()
    quoted = [m["path"] for m in BLOCK.finditer(text)]
    assert any(p.startswith("experiments/demo/results/") for p in quoted)
    assert all(p.startswith("experiments/") and "/results/" in p for p in quoted)
    assert refill(text)[1] == [], "README blocks differ from the study results: run `make readme`"


def test_table2_wires_each_seed_to_the_mnli_run_it_planned(tmp_path):
    """Issue #21 item 7: MRPC/RTE/STS-B start from exactly the MNLI run of the same row and seed
    (not any finished MNLI run of the model and method); an extra MNLI run changes nothing, and a
    run folder that kept its best weights gives those (the paper starts from the best checkpoint)."""
    from lora_repro.record import BEST_FILE, CHECKPOINT_FILE
    from lora_repro.rundir import resolve_init_from

    runs = plan(load_study("table2_glue", {"model": "roberta_base"}), [f"output_root={tmp_path}"])
    mnli = {r.seed: r for r in runs if r.task == "mnli"}
    for r in (r for r in runs if r.task in ("mrpc", "rte", "stsb")):
        assert f"init_from={mnli[r.seed].run.rsplit('_seed', 1)[0]}_seed${{seed}}" in r.overrides
    mrpc = next(r for r in runs if r.task == "mrpc" and r.seed == 2)
    cfg = compose_config([*mrpc.overrides, f"output_root={tmp_path}"])
    assert cfg.init_from == mnli[2].run
    folder = tmp_path / mnli[2].run
    (folder / "checkpoint").mkdir(parents=True)
    (folder / CHECKPOINT_FILE).write_bytes(b"")
    (tmp_path / "runs" / "mnli" / "roberta_base" / "lora" / "ffffffff_seed2" / "checkpoint").mkdir(parents=True)  # another MNLI run
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(folder / BEST_FILE))
    assert resolve_init_from(cfg) == folder / BEST_FILE
    assert all(o.startswith("init_from=") is False for o in next(r for r in runs if r.task == "sst2").overrides)


def test_a_cost_line_counts_samples_and_optimizer_steps_per_model_before_any_throughput():
    """Issue: the table2_glue cost line was one sentence for base, large and XXL. RoBERTa-base's
    Table 9 recipe: per seed MNLI 392,702 x 30 + SST-2 67,349 x 60 + MRPC 3,668 x 30 + CoLA 8,551 x 80
    + QNLI 104,743 x 25 + QQP 363,846 x 25 + RTE 2,490 x 80 + STS-B 5,749 x 40 = 28,760,005 samples."""
    from lora_repro.study import work_by_model

    runs = plan(load_study("table2_glue", {"model": "roberta_base"}), [])
    samples, steps = work_by_model(runs)["roberta_base"]
    assert samples == 5 * 28_760_005
    per_seed_steps = sum(math.ceil(n * e / b) for n, e, b in (
        (392_702, 30, 16), (67_349, 60, 16), (3_668, 30, 16), (8_551, 80, 32), (104_743, 25, 32), (363_846, 25, 16),
        (2_490, 80, 32), (5_749, 40, 16)))
    assert steps == 5 * per_seed_steps


def test_the_cost_estimate_reads_committed_records_and_counts_a_run_in_both_places_once(tmp_path):
    """A fresh clone has the study's committed records but no outputs/: its --dry-run still prices the
    runs left from their samples/s; a run both committed and in output_root counts once."""
    from lora_repro.record import write_json
    from lora_repro.study import measured_throughput

    def record(rate, method="lora", status="ok"):
        return {"status": status, "model": "minilm_l6", "method": method, "throughput": {"train_samples_per_s": rate}}

    committed, root = tmp_path / "records", tmp_path / "outputs"
    write_json(committed / "sst2/minilm_l6/lora/aaaa_seed1.json", record(10.0))
    write_json(committed / "sst2/minilm_l6/lora/bbbb_seed1.json", record(20.0))
    write_json(committed / "sst2/minilm_l6/full_ft/cccc_seed1.json", record(5.0, "full_ft"))
    write_json(committed / "sst2/minilm_l6/full_ft/dddd_seed1.json", record(99.0, "full_ft", status="failed"))
    # the same run as aaaa_seed1 in its run folder (it wins: 12, 20, 40), and one not committed yet
    write_json(root / "runs/sst2/minilm_l6/lora/aaaa_seed1/record.json", record(12.0))
    write_json(root / "runs/sst2/minilm_l6/lora/eeee_seed1/record.json", record(40.0))
    assert measured_throughput(root) == {("minilm_l6", "lora"): 26.0}
    assert measured_throughput(root, committed) == {("minilm_l6", "lora"): 20.0, ("minilm_l6", "full_ft"): 5.0}
    assert measured_throughput(tmp_path / "none", committed) == {("minilm_l6", "lora"): 15.0,
                                                                  ("minilm_l6", "full_ft"): 5.0}
