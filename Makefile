# Set-up is part of every target: .venv is created when missing and the project is (re)installed
# only when pyproject.toml or constraints.txt changed since the last install (a stamp file records it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.voxpipe-installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/voxpipe demo --output $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@echo "benchmark scripts (run one at a time, nothing else on the machine; figures in benchmarks/README.md):"; ls benchmarks/*.py

lint: $(STAMP)
	$(BIN)/ruff check voxpipe tests benchmarks
	$(BIN)/ruff format --check voxpipe tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
