# gptkit: `make demo` runs the whole job offline; `make test` passes the tests.
# Both install into .venv first. Override the torch build with e.g.
#   make install TORCH_SPEC='torch>=2.4'          (CUDA build from PyPI on a GPU machine)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: install test lint format demo bench clean

install: $(VENV)/.installed

# runtime only (what `make demo` needs), then the dev tools and test references on top
$(VENV)/.installed-runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-runtime
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check gptkit tests scripts
	$(BIN)/ruff format --check gptkit tests scripts

format: install
	$(BIN)/ruff check --fix gptkit tests scripts
	$(BIN)/ruff format gptkit tests scripts

demo: $(VENV)/.installed-runtime
	bash scripts/demo.sh

bench: install
	$(BIN)/python scripts/bench_prepare.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_sample.py

clean:
	rm -rf $(VENV) data/demo runs/demo
