# `make demo` and `make test` set everything up from a fresh clone (Python 3.11 and pip are all they need).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision: pinned here for a reproducible venv; `pip install .` elsewhere keeps the torch you have.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# A second environment for tests/io/test_output_readers.py: what autofaiss users end up with (its numpy<2
# pin leads pip to pyarrow 25, which cannot read null fixed-size lists), plus embedding-reader and datasets.
# Inside $(VENV), so git ignores it and `rm -rf .venv` removes it. About 30 s and 400 MB.
READERS_VENV ?= $(VENV)/readers
READERS_STAMP := $(READERS_VENV)/.installed
READERS_PINS ?= 'pyarrow==25.0.1' 'numpy<2' 'embedding-reader>=1.8' autofaiss datasets pandas

.PHONY: install readers-env demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

readers-env: $(READERS_STAMP)

$(READERS_STAMP): Makefile
	test -x $(READERS_VENV)/bin/python || $(PYTHON) -m venv $(READERS_VENV)
	$(READERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(READERS_VENV)/bin/python -m pip install --quiet $(READERS_PINS)
	touch $@

demo: $(STAMP)
	rm -rf demo_out
	$(BIN)/curator inspect sample_data/
	$(BIN)/curator embed sample_data/ -o demo_out --summary-json demo_summary.json
	$(BIN)/curator show demo_out

test: $(STAMP) $(READERS_STAMP)
	CURATOR_READERS_PYTHON=$(READERS_VENV)/bin/python $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Bench-only dependencies (Ray Data, psutil) go into the venv here, never into pyproject's deps or extras.
# (psutil is imported first: Ray vendors a copy that only its own import puts on sys.path.)
BENCH_DEPS ?= 'ray[data]' psutil
bench: $(STAMP)
	$(BIN)/python -c "import psutil, ray.data" 2>/dev/null || $(BIN)/python -m pip install --quiet $(BENCH_DEPS)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf demo_out .pytest_cache
