"""Bad config values stop with one clear line before any model or data is loaded."""

import pytest

from lora_repro.config import check_group_overrides, group_options, validate
from lora_repro import CONF_DIR
from lora_repro.errors import ConfigError

from .conftest import compose_cfg


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method=lora", "method.r=0"], "method.r must be > 0, got 0"),
        (["method=lora", "method.r=-4"], "method.r must be > 0, got -4"),
        (["method=lora", "method.r=2.5"], "method.r must be a positive integer"),
        (["method=lora", "method.dropout=1.5"], "method.dropout must be in [0, 1)"),
        (["method=lora", "method.init=zeros"], "method.init='zeros'; valid: a_random, b_random"),
        (["method=lora_plus", "method.loraplus_lr_ratio=-1"], "method.loraplus_lr_ratio must be > 0, got -1"),
        (["method=lora_plus", "method.loraplus_lr_ratio=0"], "method.loraplus_lr_ratio must be > 0, got 0"),
        (["train.batch_size=0"], "train.batch_size must be a positive integer, got 0"),
        (["train.lr=-1e-4"], "train.lr must be > 0"),
        (["train.precision=fp8"], "train.precision='fp8'; valid: fp32, bf16, fp16"),
        (["train.max_steps=-1", "train.epochs=0"], "train.epochs must be > 0"),
        (["task.data_dir=/nonexistent/glue/SST-2"], "task.data_dir=/nonexistent/glue/SST-2 does not exist"),
        (["model.path=/nonexistent/model"], "model.path=/nonexistent/model is not a model folder"),
        (["logger.wandb.mode=sometimes"], "logger.wandb.mode='sometimes'; valid: online, offline, disabled"),
        (["model=gpt2_medium", "method=prefix_layer"], "prefix_layer on decoder gpt2_medium supports language-modelling tasks only"),
        (["method=prefix_embed", "method.n_prefix=500", "task.max_length=64"], "64 + 500 prefix + 0 infix tokens = 564 exceeds minilm_l6's 512 positions"),
        (["method=prefix_embed", "method.n_prefix=-1"], "method.n_prefix must be an integer >= 0, got -1"),
        (["method=adapter_p", "method.r=0"], "method.r must be > 0, got 0"),
        (["method=adapter_d", "method.drop_lowest=6"], "method.drop_lowest=6 removes every adapter (minilm_l6 has 6 blocks)"),
        (["method=ft_top2", "method.top_k=-1"], "method.top_k must be an integer >= 0 (0: the task head alone), got -1"),
        (["+method.rank=8"], "unexpected keyword argument 'rank'"),
    ],
)
def test_bad_values_raise_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(*overrides))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_data_dir_without_the_split_files(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nok\t1\n")
    with pytest.raises(ConfigError, match="has no dev.tsv"):
        validate(compose_cfg("task=sst2", f"task.data_dir={tmp_path}"))
    (tmp_path / "dev.tsv").write_text("")
    with pytest.raises(ConfigError, match="dev.tsv is empty"):
        validate(compose_cfg("task=sst2", f"task.data_dir={tmp_path}"))


@pytest.mark.parametrize("override,group", [("method=lorra", "method"), ("task=sst3", "task"), ("model=bert_huge", "model")])
def test_unknown_group_names_list_the_valid_ones(override, group):
    """Every yaml of the group is listed, in order (discovered, not a hand list: adding a method,
    task or model changes no test)."""
    with pytest.raises(ConfigError, match="unknown") as info:
        check_group_overrides([override])
    assert str(info.value).endswith("valid: " + ", ".join(group_options(group)))
    assert len(group_options(group)) == len([p for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_")])


def test_multirun_values_are_checked_one_by_one():
    check_group_overrides(["method=lora,bitfit", "seed=1,2"])
    with pytest.raises(ConfigError, match="unknown method 'lora_pls'"):
        check_group_overrides(["method=lora,lora_pls"])


def test_defaults_are_valid():
    method = validate(compose_cfg())
    assert method.name == "lora" and method.r == 8


def test_command_line_prints_one_error_line_and_loads_nothing(tmp_path, monkeypatch):
    from .conftest import run_train

    for args, expected in [
        (["method.r=0"], "error: method.r must be > 0, got 0"),
        (["method=nope"], "error: unknown method 'nope'; valid: " + ", ".join(group_options("method"))),
    ]:
        with pytest.raises(SystemExit) as exc:
            run_train(monkeypatch, f"output_root={tmp_path}", *args)
        assert exc.value.code == expected
        assert not any(tmp_path.iterdir())


def test_paper_experiment_looks_up_table_9_settings_per_task():
    cfg = compose_cfg("experiment=paper_roberta_base_lora", "task=sst2")
    method = validate(cfg)
    assert (cfg.model.name, cfg.task.name, method.name) == ("roberta_base", "sst2", "lora")
    assert (method.r, method.alpha, method.targets(cfg.model)) == (8, 8, ["query", "value"])
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lr, cfg.task.max_length) == (16, 60, 5e-4, 512)
    cola = compose_cfg("experiment=paper_roberta_base_lora", "task=cola")
    assert (cola.train.batch_size, cola.train.epochs, cola.train.lr, cola.init_from) == (32, 80, 4e-4, None)
    # A command-line override still wins over the experiment (the authors' script value).
    assert compose_cfg("experiment=paper_roberta_base_lora", "task=sst2", "method.alpha=16").method.alpha == 16
    large = compose_cfg("experiment=paper_roberta_large_lora", "task=mrpc")
    assert (large.train.batch_size, large.train.epochs, large.task.max_length, large.method.alpha) == (4, 20, 512, 16)
    deberta = compose_cfg("experiment=paper_deberta_xxl_lora", "task=stsb")
    assert (deberta.train.weight_decay, deberta.task.max_length, deberta.train.warmup_ratio) == (0.1, 128, 0.1)


def test_mnli_initialised_rows_need_the_mnli_run_first(tmp_path):
    cfg = compose_cfg("experiment=paper_roberta_base_lora", "task=rte", f"output_root={tmp_path}")
    assert cfg.init_from == "mnli"
    with pytest.raises(ConfigError, match="init_from=mnli: no finished mnli run of roberta_base \\+ lora seed 42"):
        validate(cfg)
    assert compose_cfg("experiment=paper_roberta_large_lora_houlsby", "task=rte").get("init_from") is None


@pytest.mark.parametrize("name", [p.stem for p in (CONF_DIR / "experiment").glob("paper_*.yaml")])
@pytest.mark.parametrize("task", ["mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb"])
def test_every_paper_experiment_resolves_for_every_task(name, task):
    from omegaconf import OmegaConf

    cfg = compose_cfg(f"experiment={name}", f"task={task}")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["train"]["lr"] > 0 and resolved["train"]["batch_size"] > 0 and resolved["task"]["max_length"] >= 64


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lora_repro import CONF_DIR
    from lora_repro.rundir import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "method=lora"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    # Hydra makes no run folder and saves nothing of its own: its output dir is output_root, and the
    # job (lora_repro.job.execute) makes the canonical run folder once the config is validated.
    assert cfg.hydra.run.dir == cfg.hydra.sweep.dir == str(cfg.output_root) and cfg.hydra.sweep.subdir == "."
    assert cfg.hydra.output_subdir is None and cfg.hydra.job_logging.root is None


def test_a_null_split_is_not_an_evaluation_split():
    """With MNLI's mismatched split dropped, one split is evaluated, so metrics carry no split prefix."""
    validate(compose_cfg("model=tiny_bert", "task=mnli", "task.splits.mismatched=null", "task.main_metric=accuracy"))
    with pytest.raises(ConfigError, match="task.main_metric='matched_accuracy'"):
        validate(compose_cfg("model=tiny_bert", "task=mnli", "task.splits.mismatched=null"))
