# `make demo` and `make test` set everything up from a fresh clone (Python 3.11 and pip are all they need).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision: these versions exist in this machine's local wheel store; elsewhere pip downloads them.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf demo_out
	$(BIN)/curator inspect sample_data/
	$(BIN)/curator embed sample_data/ -o demo_out --summary-json demo_out/_summary.json
	$(BIN)/curator show demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q

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
