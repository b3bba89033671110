# md-kstep: set-up, tests and the demo pipeline. Only pip + venv are needed (no conda).
SHELL := /bin/bash
PY_SYS ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.setup-stamp
TORCH_VERSION := 2.13.0
export PYTHONPATH := $(CURDIR)/src:$(PYTHONPATH)
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-fast quickstart demo one-jump bench bench-full bench-generalization models models-gpu models-smoke models-foundation clean-outputs help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# The stamp depends on the pin file: re-running `make setup` is a no-op unless pins change.
$(STAMP): requirements.txt pyproject.toml
	@command -v $(PY_SYS) >/dev/null || { echo "error: $(PY_SYS) not found (Python 3.11 is required)"; exit 1; }
	@test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	@echo "[setup] installing torch==$(TORCH_VERSION) first, alone (the CPU build where one is on disk)"
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	@echo "[setup] installing pinned requirements"
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)
	@echo "[setup] done: $(VENV)"

setup: $(STAMP)  ## create .venv and install everything (idempotent)

test: setup  ## run the test suite (pytest's "no tests collected" exit 5 is not a failure)
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

test-fast: setup  ## tests without the slow ones
	$(PY) -m pytest -q -m "not slow" tests

quickstart: setup  ## the product working: shipped models vs plain MD, MM aspirin + QM ethanol, one table (~2 min on 2 cores)
	$(PY) -m mdkstep.cli.quickstart

demo: setup  ## a demo of the stages (00 -> 06 -> 05) with a tiny model trained here (not meant to be faithful)
	bash scripts/demo_pipeline.sh

one-jump: setup  ## one-jump accuracy study (k = 4, 8, 12; time and molecule splits) on data/md
	bash studies/one_jump/one_jump_study.sh

bench: setup  ## hybrid vs every plain-MD alternative, MM + QM, equal simulated time (~20 min on 2 CPU cores)
	$(PY) benchmarks/bench.py --update-readme

models: setup  ## training data + the shipped models under models/ (configs/models.yaml; ~2 h on 2 CPU cores, resumable)
	$(PY) scripts/make_models.py

models-gpu: setup  ## the shipped models with longer training, for a GPU machine (configs/models_gpu.yaml)
	$(PY) scripts/make_models.py --config configs/models_gpu.yaml

models-smoke: setup  ## the whole models pipeline on tiny settings (configs/models_smoke.yaml; minutes)
	$(PY) scripts/make_models.py --smoke

models-foundation: setup  ## foundation models for any molecule (configs/models_foundation.yaml): MM and QM side by side, one core each (~1.5 h, resumable)
	OMP_NUM_THREADS=1 $(PY) scripts/make_models.py --config configs/models_foundation.yaml --only mm_k8 & pid=$$!; \
	OMP_NUM_THREADS=1 $(PY) scripts/make_models.py --config configs/models_foundation.yaml --only qm_k16; \
	rc=$$?; wait $$pid || rc=1; exit $$rc

bench-generalization: setup  ## foundation models zero-shot on held-out molecules (configs/bench_generalization.yaml; ~2 h on 2 cores)
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench.py --config configs/bench_generalization.yaml --set qm_smiles=null & pid=$$!; \
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench.py --config configs/bench_generalization.yaml --set mm_smiles=null \
	  --out-dir outputs/bench_generalization_qm; rc=$$?; wait $$pid || rc=1; exit $$rc

bench-full: setup  ## the long benchmark (configs/bench_full.yaml), for a GPU machine
	$(PY) benchmarks/bench.py --full

clean-outputs:  ## remove generated data and outputs
	rm -rf outputs data/raw data/md data/datasets data/splits
