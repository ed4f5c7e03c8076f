# Set-up is part of every target: .venv is created when missing and the project is (re)installed
# only when pyproject.toml or constraints.txt changed since the last install (a stamp file records it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.voxpipe-installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=
# Two workers, one test file each (module fixtures such as a trained model are built once per file).
PYTEST_WORKERS ?= -n 2 --dist loadfile

.PHONY: install demo test docs bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# test oracles for voxpipe's nnU-Net networks and rules, without their dependencies (timm pulls
	# torchvision, which breaks the CPU torch): the tests import only the modules that need none of them
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt dynamic-network-architectures nnunetv2 acvl-utils batchgenerators
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/voxpipe demo --output $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	@echo "benchmark scripts (run one at a time, nothing else on the machine; figures in benchmarks/README.md):"; ls benchmarks/*.py

lint: $(STAMP)
	$(BIN)/ruff check voxpipe tests benchmarks
	$(BIN)/ruff format --check voxpipe tests benchmarks

clean:
	rm -rf $(VENV) runs site .pytest_cache
