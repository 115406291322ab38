# engram: two commands get you going. `make demo` runs the main job on the embedded defaults; `make test` runs the
# whole suite. Both create the virtualenv and install everything first.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_URL ?= postgresql://postgres@127.0.0.1:5432/test
export ENGRAM_TEST_PG_URL ?= $(PG_URL)
# The CPU build of torch lies on these machines' disk; pip looks there before the index.
export PIP_FIND_LINKS ?= /opt/wheels

.PHONY: install demo test test-fast test-sqlite test-postgres lint bench bench-quick locomo serve up down clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,embeddings]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/engram demo

test: $(STAMP)
	bash infra/ensure-postgres.sh "$(PG_URL)"
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not reliability"

lint: $(STAMP)
	$(BIN)/ruff check .

locomo: $(STAMP)
	$(BIN)/python bench/locomo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
