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
	$(PIP) install --quiet -c $(LOCK) -e ".[test]"
	touch $@

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The main job on the default model: fetch it, prune 30% with data-free (self) calibration,
# and evaluate dense vs pruned on WikiText-2 when the shared test text is at hand.
demo: install
	$(VENV)/bin/grasp-deploy models --fetch smollm2-135m
	$(VENV)/bin/grasp-deploy prune smollm2-135m --prune-ratio 0.3 --calib self \
		--num-samples 32 --seq-len 256 --epochs 1 --out $(DEMO)/plan-30 --force
	@if [ -f $(WIKI)/wiki.test.raw ]; then \
		$(VENV)/bin/grasp-deploy eval smollm2-135m --data file:$(WIKI)/wiki.test.raw --max-windows 4 -q && \
		$(VENV)/bin/grasp-deploy eval smollm2-135m --plan $(DEMO)/plan-30 --data file:$(WIKI)/wiki.test.raw --max-windows 4 -q; \
	else \
		echo "($(WIKI)/wiki.test.raw not found: evaluating on wikitext2 from the dataset hub)"; \
		$(VENV)/bin/grasp-deploy eval smollm2-135m --max-windows 4 -q && \
		$(VENV)/bin/grasp-deploy eval smollm2-135m --plan $(DEMO)/plan-30 --max-windows 4 -q; \
	fi

# Regenerate the lock from the current environment (after changing dependencies).
lock:
	$(PIP) freeze --exclude-editable | sed -e 's/+cpu//' > $(LOCK)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
