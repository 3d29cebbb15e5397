# imitalign — the two commands of the README, each installing what it needs into .venv
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: quickstart test test-all demo lint install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# the tests also install the `bench` extra (TRL, psutil), so the DPO-vs-TRL parity test runs in CI
# (`pip install --dry-run torch==2.13.0 -e ".[dev,bench]"` resolves exactly one torch: the one installed first)
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[dev,bench]"
	touch $(TEST_STAMP)

install: $(STAMP)

quickstart: $(STAMP)  ## the main job: build the gym, train every method, evaluate, report (CPU, minutes)
	$(BIN)/imitalign quickstart $(ARGS)

test: $(TEST_STAMP)  ## the test suite (fast; `make test-all` adds the slow tests)
	$(BIN)/python -m pytest -q

test-all: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m ""

demo: $(STAMP)  ## a tiny end-to-end DIL run on a model built from a config
	$(BIN)/imitalign train configs/tiny_dil_hh.yaml

lint: $(STAMP)
	$(BIN)/ruff check imitalign tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
