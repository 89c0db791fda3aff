# The two commands of the README's quick start, plus a few helpers. Each target installs what it
# needs into .venv (ignored by git) the first time; only Python 3.11+ and make are required.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements/test.txt | cut -d' ' -f1)

.PHONY: demo test lint bench lock clean

## demo: generate a service with Sentry, run it, cause an error and show the captured event
demo: $(STAMP)
	$(PY) scripts/demo.py $(ARGS)

## test: the template's whole test suite (both variants generated, installed and tested for real)
test: $(STAMP)
	$(PY) -m pytest

## lint: ruff over the hooks, tests, scripts and benchmarks of the template itself
lint: $(STAMP)
	$(VENV)/bin/ruff check hooks tests scripts benchmarks local_extensions.py
	$(VENV)/bin/ruff format --check hooks tests scripts benchmarks local_extensions.py

## bench: what error tracking costs per request, yes against no, side by side (docs/performance.md):
## CPU per request in-process, every process on one CPU (INPROCESS_ARGS), then with the scheduler
## free (UNPINNED_ARGS), then throughput and latency under load (ARGS); each says which goals hold
bench: $(STAMP)
	$(PY) benchmarks/inprocess.py $(INPROCESS_ARGS)
	$(PY) benchmarks/inprocess.py --no-pin --routes auth+db --rounds 10 \
		--configs "yes tracing off,stock init(dsn),stock traces 0.1" $(UNPINNED_ARGS)
	$(PY) benchmarks/run.py $(ARGS)

## lock: refresh the generated projects' uv.lock (both variants) after changing their dependencies
lock: $(STAMP)
	$(PY) scripts/lock.py

$(STAMP): requirements/test.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed: run make PYTHON=python3.11 ..." or 0)'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/test.txt
	@rm -f $(VENV)/.installed-* && touch $@

clean:
	rm -rf $(VENV) demo .pytest_cache
