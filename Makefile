# Two commands do all the set-up on a fresh machine with python3 and pip:
#   make demo   - the main job (offline model unless FLOCK_LLM_MODEL / an API key is set)
#   make test   - the whole test suite
#   make docs   - the documentation site, into site/ (make docs-serve serves it on 127.0.0.1:8000)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-flock-core lint bench clean docs docs-serve

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# the real-model tests need the `local` extra (make test installs it; make demo does not): its llama.cpp build
# takes 10-15 min the first time, then pip's wheel cache has it. Where it cannot be built, those tests skip and
# say why.
$(VENV)/.installed-local: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[local]' || echo "WARNING: the local extra (llama.cpp) could not be installed; tests/e2e/test_local_model.py will skip"
	touch $@

# the docs site's own dependencies (the `docs` extra; `make test` has them through the dev extra)
$(VENV)/.installed-docs: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/flock-llm reviews examples/data/reviews.jsonl --output reviews.out.jsonl --report report.html

test: $(VENV)/.installed-local
	tests/start_redis.sh
	tests/install_chromium.sh
	tests/run_all.sh

# the documentation site, into site/: --strict makes a broken link or a missing reference an error
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

test-flock-core:
	tests_flock_core/run.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check flock_llm tests examples benchmarks
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) benchmarks/core_throughput.py
	$(PY) benchmarks/llm_batching.py
	tests/start_redis.sh
	$(PY) benchmarks/redis_workers.py

clean:
	rm -rf $(VENV) .venv-flock-core site
