PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit lint bench bench-quick

setup:            ## install redis-server, Java/Maven, the package and Kafka jars
	bash scripts/setup.sh

demo: setup       ## local Kafka + Redis + worker + a content-pipeline scenario
	$(PYTHON) -m worker.demo

test: setup       ## the whole suite, real Redis, Redis Cluster and Kafka
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit:        ## pure logic only (no services)
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check cachebus worker tests bench
	$(PYTHON) -m mypy

bench: setup      ## benchmarks; report in bench/report.md
	$(PYTHON) -m bench.run

bench-quick: setup
	$(PYTHON) -m bench.run --quick
