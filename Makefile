# imitalign — the two commands of the README, each installing what it needs into .venv
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-all demo lint install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)  ## the main job: build the gym, train every method, evaluate, report (CPU, minutes)
	$(BIN)/imitalign quickstart $(ARGS)

test: $(STAMP)  ## the test suite (fast; `make test-all` adds the slow tests)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

demo: $(STAMP)  ## a tiny end-to-end DIL run on a model built from a config
	$(BIN)/imitalign train configs/tiny_dil_hh.yaml

lint: $(STAMP)
	$(BIN)/ruff check imitalign tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
