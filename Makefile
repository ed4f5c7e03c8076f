# Set-up is part of every target: .venv is created when missing and the project is (re)installed
# only when pyproject.toml or constraints.txt changed since the last install (a stamp file records it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.voxpipe-installed
# nnunetv2's predictor, the test oracle of voxpipe's nnU-Net path, with the packages it imports that
# voxpipe does not: installed apart (pip --target, --no-deps: nothing may replace the CPU torch) and
# put on the path of the child process that runs it (tests/oracles/nnunet_predict.py).
ORACLE := .oracle/nnunet
ORACLE_STAMP := $(ORACLE)/.installed
ORACLE_PACKAGES := scikit-image lazy-loader imageio tifffile networkx pillow pandas python-dateutil pytz \
	tzdata blosc2 ndindex msgpack numexpr platformdirs requests httpx batchgeneratorsv2 tqdm
# TotalSegmentator 2.18.0 itself, the test oracle of voxpipe's TotalSegmentator path, with the packages
# its imports need beyond nnunetv2's: installed apart the same way (tests/oracles/totalseg_run.py).
TS_ORACLE := .oracle/totalseg
TS_ORACLE_STAMP := $(TS_ORACLE)/.installed
TS_ORACLE_PACKAGES := totalsegmentator connected-components-3d seaborn dicom2nifti
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=
# Two workers, one test file each (module fixtures such as a trained model are built once per file).
# A worker that dies is not replaced: pytest-xdist 3.8 can wait forever for a replacement's work under
# --dist loadfile (pytest-xdist#1327); the run stops at once and names the test the worker died in.
PYTEST_WORKERS ?= -n 2 --dist loadfile --max-worker-restart=0

.PHONY: install oracle demo test docs bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# test oracles for voxpipe's nnU-Net networks and rules, without their dependencies (timm pulls
	# torchvision, which breaks the CPU torch): the tests import only the modules that need none of them
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt dynamic-network-architectures nnunetv2 acvl-utils batchgenerators
	@touch $(STAMP)

oracle: $(ORACLE_STAMP) $(TS_ORACLE_STAMP)

$(ORACLE_STAMP): constraints.txt | $(STAMP)
	rm -rf $(ORACLE)
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt --target $(ORACLE) $(ORACLE_PACKAGES)
	@touch $(ORACLE_STAMP)

$(TS_ORACLE_STAMP): constraints.txt | $(STAMP)
	rm -rf $(TS_ORACLE)
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt --target $(TS_ORACLE) $(TS_ORACLE_PACKAGES)
	@touch $(TS_ORACLE_STAMP)

demo: $(STAMP)
	$(BIN)/voxpipe demo --output $(DEMO_OUT)

test: $(STAMP) $(ORACLE_STAMP) $(TS_ORACLE_STAMP)
	$(BIN)/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	@echo "benchmark scripts (run one at a time, nothing else on the machine; figures in benchmarks/README.md):"; ls benchmarks/*.py

lint: $(STAMP)
	$(BIN)/ruff check voxpipe tests benchmarks
	$(BIN)/ruff format --check voxpipe tests benchmarks

clean:
	rm -rf $(VENV) .oracle runs site .pytest_cache
