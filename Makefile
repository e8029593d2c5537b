# The project's commands. `make smoke` runs the pipeline on CPU with no network; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SMOKE := data/smoke

.PHONY: install lint test smoke bench relock clean

install: $(VENV)/.installed

# Same two steps as the image's dependency layer (issue: one lock, proved by CI): torch first, taking its own
# dependencies at the locked versions (CPU build here, CUDA build in the image), then the lock without resolution.
$(VENV)/.installed: docker/container.lock docker/host.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c docker/container.lock torch==2.13.0
	$(PY) -m pip install --quiet --no-deps -r docker/container.lock -r docker/host.lock
	@$(PY) -c "import importlib.util as u, sys; bad=[m for m in ('torchvision','torchaudio') if u.find_spec(m)]; sys.exit(f'remove {bad}: they break transformer_lens next to this torch' if bad else 0)"
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pyright

test: install
	$(PY) -m pytest -q

# A tiny CPU run of the real pipeline, offline: a random GPT-Neo in hub-cache layout stands in for
# TinyStories-33M, a generated story set for TinyStories, and the shipped sample prompts are the prompts channel.
# It has its own tree, so its stand-in model never ends up in the compose tree (data/opt_ml).
smoke: install
	rm -rf $(SMOKE)/checkpoints $(SMOKE)/model $(SMOKE)/output
	@if [ ! -d $(SMOKE)/input/data/model ]; then $(PY) -m container_src.synthetic --out $(SMOKE)/input/data; fi
	@if [ ! -d $(SMOKE)/input/data/prompts ]; then cp -r data/sample_prompts $(SMOKE)/input/data/prompts; fi
	SAGEMAKER_BASE_DIR=$(SMOKE) WANDB_MODE=offline $(PY) -m container_src train --preset smoke
	@echo "SAE, metrics.json, resolved_config.json and plots/ are in $(SMOKE)/model"

# Speed on CPU, offline: train's code path against bare SAE-Lens on random models of the tiny and of the real
# TinyStories-33M shape (seed configuration). Figures on stdout and in $(BENCH)/*.json; see docs/BENCHMARKS.md.
BENCH := data/bench
bench: install
	SAGEMAKER_BASE_DIR=$(BENCH) $(PY) -m container_src bench --model_shape tiny --repeats 2 --json $(BENCH)/cpu-tiny.json
	SAGEMAKER_BASE_DIR=$(BENCH) $(PY) -m container_src bench --model_shape tinystories-33m --steps 6 --warmup_steps 2 --lm_batches 2 \
		--json $(BENCH)/cpu-tinystories-33m.json

relock:
	bash docker/relock.sh

clean:
	rm -rf $(SMOKE) .pytest_cache .ruff_cache
