"""Paper rows as data (analysis/paper/hparams.yaml read through ${paper:<key>}), task facts read by
the offline recipes (${shared_data:}, task.fit_length), methods' short_run_lr: no recipe keeps a
table keyed by task, model or method names, so every recipe composes with every task, model and
method, and a run says which published row it stands for."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from analysis.records import load_records
from analysis.table3 import build_table3
from analysis.tables import build_table2
from lora_repro import CONF_DIR
from lora_repro.config import compose_config
from lora_repro.errors import ConfigError
from lora_repro.paper_rows import HPARAMS_FILE, paper_fit, paper_rows, published_row
from lora_repro.record import write_record
from lora_repro.rundir import canonical_recipe, register_resolvers

PAPER = Path(HPARAMS_FILE).parent


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml") if not p.stem.startswith("_"))


def resolved(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_config(list(overrides)), resolve=True)


def test_the_five_probed_compositions_compose_with_the_values_they_should_get():
    cola = resolved("experiment=mini", "task=cola")
    assert cola["train"]["lr"] == 2.0e-3 and cola["task"]["max_length"] == 48
    assert cola["task"]["data_dir"] is None or cola["task"]["data_dir"].endswith("glue/CoLA")
    assert resolved("experiment=mini", "method=ia3")["train"]["lr"] == 3.0e-3   # ia3.yaml's short_run_lr
    boolq = resolved("experiment=claims", "task=boolq")
    assert boolq["task"]["max_length"] == 256 and boolq["task"]["data_dir"] is None   # no offline copy: the hub
    rob = compose_config(["experiment=paper_roberta_base_lora", "task=boolq"])
    assert (rob.train.lr, rob.train.batch_size, rob.train.epochs, rob.task.max_length) == (5.0e-4, 16, 30, 512)
    assert rob.init_from is None
    assert paper_fit(rob) == ("task boolq is not in paper row roberta_base_lora "
                              "(LoRA Table 9, RoBERTa-base LoRA (authors' roberta_base_*.sh)): it takes mnli's values")
    llama = compose_config(["experiment=paper_gpt2_adapter_l_small", "model=llama32_1b"])
    assert llama.method.r == 6 and "model llama32_1b is not in paper row gpt2_adapter_l_small" in paper_fit(llama)


@pytest.mark.parametrize("overrides, expected", [
    # LoRA Table 9, RoBERTa-base RTE: batch 32, 80 epochs, lr 5e-4, max length 512, from MNLI (D.1)
    (["experiment=paper_roberta_base_lora", "task=rte"],
     {"train.batch_size": 32, "train.epochs": 80, "train.lr": 5.0e-4, "task.max_length": 512, "init_from": "mnli",
      "method.r": 8, "method.alpha": 8, "method.dropout": 0.0, "train.warmup_ratio": 0.06}),
    # DeBERTa XXL CoLA: batch 4, 10 epochs, lr 1e-4, max length 64, weight decay 0, warmup 0.1
    (["experiment=paper_deberta_xxl_lora", "task=cola"],
     {"train.batch_size": 4, "train.epochs": 10, "train.lr": 1.0e-4, "task.max_length": 64, "train.weight_decay": 0.0,
      "train.warmup_ratio": 0.1, "init_from": None}),
    # RoBERTa-large Adapter^P 3M on SST-2: lr 3e-5 (Table 10's exception), 20 epochs
    (["experiment=paper_roberta_large_adapter_p_3m", "task=sst2"], {"train.lr": 3.0e-5, "train.epochs": 20, "method.r": 64}),
    # GPT-2 L Adapter^L 0.88M: r=8; GPT-2 L PreLayer: l_p 12, l_i 4, lr 8e-5
    (["experiment=paper_gpt2_adapter_l_small", "model=gpt2_large"], {"method.r": 8}),
    (["experiment=paper_gpt2_prelayer", "model=gpt2_large"], {"method.n_prefix": 12, "method.n_infix": 4, "train.lr": 8.0e-5}),
    (["experiment=paper_gpt2_lora"], {"method.r": 4, "method.alpha": 32, "method.dropout": 0.1, "train.lr": 2.0e-4}),
])
def test_a_paper_recipe_reads_the_papers_values(overrides, expected):
    cfg = compose_config(overrides)
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected
    assert paper_fit(cfg) == "exact"


def test_a_value_the_row_does_not_give_is_one_error_naming_row_task_and_key():
    cfg = compose_config(["experiment=paper_roberta_base_lora", "task=rte", "train.max_steps=${paper:max_steps}"])
    with pytest.raises(Exception, match=r"paper row roberta_base_lora gives no 'max_steps' for task rte, model "
                                        r"roberta_base \(it gives: alpha, batch_size, .*\); set the value on the command line"):
        OmegaConf.to_container(cfg, resolve=True)
    with pytest.raises(ConfigError, match=r"paper_row=nope is not a row of analysis/paper/hparams.yaml; rows: roberta_base_lora, "):
        paper_fit(compose_config(["experiment=paper_roberta_base_lora", "paper_row=nope"]))


def test_every_paper_recipe_names_a_row_and_every_published_entry_is_a_line_of_the_papers_tables():
    rows = paper_rows()
    for name in (n for n in names("experiment") if n.startswith("paper_")):
        assert compose_config([f"experiment={name}"]).paper_row in rows, name
    printed = set()
    for table in ("table2.csv", "table3.csv"):
        with open(PAPER / table) as handle:
            printed |= {(line["row"], line["params"]) for line in csv.DictReader(handle)}
    for name, row in rows.items():
        for model in row.get("published") or {}:
            assert published_row(name, model) in printed, (name, model)


def records_of(tmp_path: Path, task: str, metrics: dict, paper_row: str, fit: str, model: str, method: str, adapted: int):
    for seed in (1, 2):
        write_record(tmp_path / f"{fit}{seed}", {
            "status": "ok", "task": task, "model": model, "method": method, "seed": seed, "hparams": {"r": 8},
            "metrics": metrics, "best_metrics": metrics, "experiment": f"paper_{paper_row}", "paper_row": paper_row,
            "paper_fit": fit, "params": {"adapted": adapted, "trainable": adapted, "total": 10**8},
            "config": {"train": {"lr": 5e-4}}})
    return load_records(tmp_path)


def test_tables_join_the_published_row_the_record_names_and_none_for_a_stand_in(tmp_path):
    # 0.39M adapted is not the printed 0.3M: the size heuristic would find nothing; the row name does.
    table = build_table2(records_of(tmp_path / "a", "rte", {"accuracy": 0.85}, "roberta_base_lora", "exact",
                                    "roberta_base", "lora", 390_000)).set_index("task")
    assert table.loc["rte", "published"] == 86.6 and table.loc["rte", "published_row"] == "RoB_base (LoRA)"
    stand_in = build_table2(records_of(tmp_path / "b", "rte", {"accuracy": 0.85}, "roberta_base_lora",
                                       "task rte is not ...", "roberta_base", "lora", 294_912)).set_index("task")
    assert stand_in.loc["rte", "published_row"] is None and stand_in.dropna(subset=["published"]).empty
    e2e = build_table3(records_of(tmp_path / "c", "e2e", {"BLEU": 0.70}, "gpt2_adapter_l_small", "exact",
                                  "gpt2_large", "adapter_l", 1_000_000)).set_index("metric")
    assert e2e.loc["BLEU", "published_row"] == "GPT-2 L (Adapter^L)" and e2e.loc["BLEU", "published"] == 69.1


def _open_method(experiments: list[str]) -> list[str]:
    return [e for e in experiments if not any("/method" in str(d) for d in _defaults(e))]


@pytest.mark.parametrize("experiment", names("experiment"))
def test_every_recipe_composes_with_every_task_model_and_method(experiment):
    """lightning-hydra-template's experiment=glob(*) test, along each axis a recipe could look a value
    up by: every experiment with every task and every model, and the recipes that leave the method
    open (mini, claims) with every method; each resolves to a recipe. One case per recipe, so the
    pytest-xdist workers share the walk."""
    register_resolvers()
    GlobalHydra.instance().clear()
    assert {"mini", "claims"} <= set(_open_method(names("experiment")))
    combos = ([(experiment, f"task={t}") for t in names("task")]
              + [(experiment, f"model={m}") for m in names("model")]
              + [(experiment, f"method={m}") for m in (names("method") if experiment in _open_method([experiment]) else [])])
    failures = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for experiment, override in combos:
            try:
                canonical_recipe(compose(config_name="config", overrides=[f"experiment={experiment}", override]))
            except Exception as exc:  # collected: one assertion lists them all
                failures.append(f"experiment={experiment} {override}: {' '.join(str(exc).split())[:160]}")
    assert not failures, "\n".join(failures)


def _defaults(experiment: str) -> list:
    import yaml

    return yaml.safe_load((Path(CONF_DIR) / "experiment" / f"{experiment}.yaml").read_text()).get("defaults") or []
