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

.PHONY: install readers-env browser demo demo-screenshot test test-fast bench bench-report clean

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

# Headless Chromium for tests/cli/test_show_report.py: Debian's package, installed when make runs as root with
# apt-get (about 15 s); elsewhere that test is skipped, saying why. Never fails the build.
CHROMIUM_FLAGS := --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
	--disable-component-update --disable-sync --hide-scrollbars
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; }; } || \
	  echo "make: headless Chromium could not be installed (needs root and apt-get): the report's browser test will be skipped"

demo: $(STAMP)
	rm -rf demo_out
	$(BIN)/curator inspect sample_data/
	$(BIN)/curator embed sample_data/ -o demo_out --summary-json demo_summary.json
	$(BIN)/curator show demo_out --html demo_report.html --summary-json demo_summary.json

# The screenshot the README shows: make demo's report, rendered by headless Chromium (the window's last
# ~110 pixel rows are not painted in headless mode: cut off, down to the summary, map and two neighbour rows).
demo-screenshot: demo browser
	chromium $(CHROMIUM_FLAGS) --user-data-dir=$$(mktemp -d) --window-size=1280,2400 \
	  --screenshot=docs/report-demo.png "file://$(CURDIR)/demo_report.html"
	$(BIN)/python -c "from PIL import Image; Image.open('docs/report-demo.png').crop((0, 0, 1280, 2160)).save('docs/report-demo.png', optimize=True)"

test: $(STAMP) $(READERS_STAMP) browser
	CURATOR_READERS_PYTHON=$(READERS_VENV)/bin/python $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Bench-only dependencies (Ray Data, psutil) go into the venv here, never into pyproject's deps or extras.
# (psutil is imported first: Ray vendors a copy that only its own import puts on sys.path.)
BENCH_DEPS ?= 'ray[data]' psutil
bench: $(STAMP)
	$(BIN)/python -c "import psutil, ray.data" 2>/dev/null || $(BIN)/python -m pip install --quiet $(BENCH_DEPS)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# curator show --html on a synthetic output of a million rows (written once, about 4 GB, under bench/data/)
bench-report: $(STAMP)
	$(BIN)/python bench/report.py $(BENCH_ARGS)

clean:
	rm -rf demo_out demo_report.html .pytest_cache
