# `make demo` and `make test` work on a fresh machine: they create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench-data

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned here (a CPU wheel); an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/modelzip demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# Full-size data for the benchmarks (not needed by `make test`): the 70,000-image Fashion-MNIST.
bench-data:
	@test -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz || \
		{ apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }
	@dpkg -L dataset-fashion-mnist | grep 'idx.-ubyte'

clean:
	rm -rf $(VENV) modelzip-demo .pytest_cache
