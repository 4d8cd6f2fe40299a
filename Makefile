# Two commands do all the set-up on a fresh machine with python3 and pip:
#   make demo   - the main job (offline model unless FLOCK_LLM_MODEL / an API key is set)
#   make test   - the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-flock-core lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# the real-model tests need the `local` extra; its llama.cpp build takes 10-15 min the first time (then pip's
	@# wheel cache has it). Where it cannot be built, those tests skip and say why.
	$(PY) -m pip install --quiet -e '.[local]' || echo "WARNING: the local extra (llama.cpp) could not be installed; tests/e2e/test_local_model.py will skip"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/flock-llm reviews examples/data/reviews.jsonl --output reviews.out.jsonl --report report.html

test: $(VENV)/.installed
	tests/start_redis.sh
	tests/install_chromium.sh
	tests/run_all.sh

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
	rm -rf $(VENV) .venv-flock-core
