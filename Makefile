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

.PHONY: install demo test test-fast soak test-sqlite test-postgres lint bench bench-quick bench-large bench-1e6 bench-1e7 bench-scale bench-cold locomo serve up down provision deploy clean

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
	bash infra/ensure-chromium.sh
	$(BIN)/python -m pytest -q -ra --durations=20

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not reliability"

# The long variants of the `reliability` tests (tests/reliability): SOAK_TRIALS crash trials a flow, a sustained
# ingest of SOAK_EVENTS events while the flows run, more Hypothesis examples. Writes bench/results/reliability.json,
# then RELIABILITY.md from it, also when a test fails (the figures say so).
SOAK_TRIALS ?= 20
SOAK_EVENTS ?= 1000000
soak: $(STAMP)
	bash infra/ensure-postgres.sh "$(PG_URL)"
	ENGRAM_SOAK_TRIALS=$(SOAK_TRIALS) ENGRAM_LOAD_EVENTS=$(SOAK_EVENTS) ENGRAM_GATE_EXAMPLES=40 \
		$(BIN)/python -m pytest -q -ra -m reliability -p tests.reliability.figures; status=$$?; \
		$(BIN)/python tests/reliability/report.py; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .

locomo: $(STAMP)
	$(BIN)/python bench/locomo.py

# Performance benchmarks (bench/perf.py): bench-quick takes a few minutes; bench runs every size that fits in about an
# hour. Both rewrite BENCHMARKS.md from the JSON they write under bench/results/.
# The Prefect server they report to runs on a fresh database of the PostgreSQL server at PG_URL, as in a fleet.
bench-quick: $(STAMP)
	bash infra/ensure-postgres.sh "$(PG_URL)"
	$(BIN)/python bench/perf.py --quick --prefect-database "$(PG_URL)"
	$(BIN)/python bench/report.py

bench: $(STAMP)
	bash infra/ensure-postgres.sh "$(PG_URL)"
	$(BIN)/python bench/perf.py --full --prefect-database "$(PG_URL)"
	$(BIN)/python bench/report.py

# The pipeline past the full run's hour (bench/results/large.json): 2 x 10^6 events beside 10^5, in one run.
bench-large: $(STAMP)
	bash infra/ensure-postgres.sh "$(PG_URL)"
	$(BIN)/python bench/perf.py --sizes 100000 2000000 --prefect-database "$(PG_URL)"
	$(BIN)/python bench/report.py

# The pipeline at 10^6 events beside 10^5 (bench/results/large_1e6.json): about twenty minutes on two cores.
bench-1e6: $(STAMP)
	bash infra/ensure-postgres.sh "$(PG_URL)"
	$(BIN)/python bench/perf.py --sizes 100000 1000000 --out bench/results/large_1e6.json --prefect-database "$(PG_URL)"
	$(BIN)/python bench/report.py

# The pipeline at 10^7 events beside 10^5 (bench/results/large_1e7.json): about four hours on two cores.
bench-1e7: $(STAMP)
	bash infra/ensure-postgres.sh "$(PG_URL)"
	$(BIN)/python bench/perf.py --sizes 100000 10000000 --out bench/results/large_1e7.json --prefect-database "$(PG_URL)"
	$(BIN)/python bench/report.py

# One shard worker against two on the same backlog, on PostgreSQL (bench/results/scale.json), about two minutes.
bench-scale: $(STAMP)
	bash infra/ensure-postgres.sh "$(PG_URL)"
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/report.py

# Archival search over 10^7 archived items (bench/results/cold_search.json): the build alone takes most of an hour.
bench-cold: $(STAMP)
	$(BIN)/python bench/cold_search.py --items 10000000 --tenants 100 --compact --out bench/results/cold_search.json
	$(BIN)/python bench/report.py

# Service models (infra/README.md): the monolith serves every deployment from one process; `up`/`down` run a Prefect
# server and an S3 server on loopback without Docker; `provision` and `deploy` set a server up for the workers.
serve: $(STAMP)
	$(BIN)/python -m deployments.serve

up: $(STAMP)
	bash infra/local-stack.sh up

down:
	bash infra/local-stack.sh down

provision: $(STAMP)
	$(BIN)/python -c "from flows.provision import provision; print(provision())"

# The pools must exist before a deploy; the automations need the deployments, hence provision on both sides.
deploy: provision
	ENGRAM_HOME="$(CURDIR)" $(BIN)/prefect --no-prompt deploy --all
	$(BIN)/python -c "from flows.provision import provision; print(provision())"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
