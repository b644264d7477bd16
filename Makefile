# Everything a fresh clone needs: `make run` and `make test` create .venv and install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DAGSTER_HOME: set it to override; unset, every `affwh` command (so every target here) uses the one
# default declared in pipelines/settings.py (.dagster_home in the project). See README, "Operations".

.PHONY: run test ui status bench bench-quick bench-profile sandbox query report clean install

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

## make run: sync every configured source (the built-in sandbox when no credentials are set)
run: $(STAMP)
	$(PY) -m pipelines.cli run $(ARGS)

## make test: the whole test suite against the sandbox, two test files at a time (most tests wait
## on processes, HTTP and the sandbox's clock, so two workers fill two cores; TEST_WORKERS=0: one process)
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup) $(PYTEST_ARGS)

## make ui: the Dagster UI on this code location (sandbox-backed when no credentials are set)
ui: $(STAMP)
	$(PY) -m pipelines.cli ui $(ARGS)

## make status: per stream, what the last sync did, its last failure, quarantine, freshness (ARGS="--json")
status: $(STAMP)
	$(PY) -m pipelines.cli status $(ARGS)

## make query SQL="select ...": run SQL against the warehouse (read-only) and print a table
query: $(STAMP)
	@$(PY) -m pipelines.cli query "$(SQL)" $(ARGS)

## make report: write the warehouse as one self-contained HTML page (data/report.html; ARGS="--output FILE")
report: $(STAMP)
	$(PY) -m pipelines.cli report $(ARGS)

## make sandbox: serve the API sandbox alone and print every variable that points a sync at it
sandbox: $(STAMP)
	$(PY) -m pipelines.cli sandbox $(ARGS)

## make bench: the performance harness (large preset); make bench-quick: the medium preset;
## make bench-profile: py-spy profile of one full sync (medium; installs the bench extra). See bench/README.md
bench: $(STAMP)
	$(PY) -m bench.run --preset large $(ARGS)

bench-quick: $(STAMP)
	$(PY) -m bench.run --preset medium $(ARGS)

bench-profile: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,bench]"
	$(PY) -m bench.profile --preset medium $(ARGS)

clean:
	rm -rf $(VENV) .dagster_home data/.staging .pytest_cache
