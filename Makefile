# The two commands of the README's contract: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: setup run test bench lint clean

# scripts/setup_venv.sh installs with uv (pip where uv cannot be had), torch 2.13.0 CPU first, then the
# project pinned by constraints.txt and the embedded base LLM; one line per step, installer output in a log.
$(STAMP): pyproject.toml constraints.txt scripts/setup_venv.sh
	scripts/setup_venv.sh $(VENV)
	touch $(STAMP)

# A local Dagster instance; telemetry off since these machines are offline by default.
setup: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || printf 'telemetry:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml

run: setup
	$(VENV)/bin/crypto-pipeline run $(ARGS)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run_all.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf warehouse/* mlruns/* .dagster_home
