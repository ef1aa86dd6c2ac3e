# Everything sets itself up: `make demo` and `make test` create .venv and install the pinned
# requirements they need on a fresh machine (make test also installs the Node ASL validator).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# --no-compile: byte-compiling all of pulumi-aws doubles install time; Python compiles what it imports.
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile
LOCAL_STAMP := $(VENV)/.installed-local
DEV_STAMP := $(VENV)/.installed-dev
NODE_STAMP := node_modules/.installed
OUT := out

.PHONY: test lint typecheck pytest venv tools demo bench bench-capacity bench-scale bench-fairness bench-explain clean

test: lint typecheck pytest

venv: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs only the runtime and the embedded AWS; tests add linters and type stubs.
$(LOCAL_STAMP): requirements.txt requirements-local.txt | $(BIN)/python
	$(PIP) -r requirements-local.txt
	touch $@

$(DEV_STAMP): requirements-dev.txt $(LOCAL_STAMP)
	$(PIP) -r requirements-dev.txt
	touch $@

tools: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

pytest: $(DEV_STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest

demo: $(LOCAL_STAMP)
	mkdir -p $(OUT)
	$(BIN)/python -m localcloud demo --report $(OUT)/demo-report.json --plot $(OUT)/demo.png

# The dispatch and fairness benchmarks behind BENCHMARKS.md (about 15 minutes on 2 cores).
bench: $(LOCAL_STAMP) bench-fairness
	mkdir -p $(OUT)
	$(BIN)/python -m localcloud bench --out $(OUT)/bench.json --markdown $(OUT)/bench.md --plot $(OUT)/bench.png

# The capacity benchmark behind BENCHMARKS.md's adaptive section (about 12 minutes on 2 cores).
bench-capacity: $(LOCAL_STAMP)
	mkdir -p $(OUT)
	$(BIN)/python -m localcloud capacity --out $(OUT)/capacity.json --markdown $(OUT)/capacity.md --plot $(OUT)/capacity.png

# The fairness benchmark behind BENCHMARKS.md's keys section: 5,000 noisy and 50 quiet items,
# keys off, on, and the quiet tenant alone (about 10 minutes on 2 cores).
bench-fairness: $(LOCAL_STAMP)
	mkdir -p $(OUT)
	$(BIN)/python -m localcloud fairness --out $(OUT)/fairness.json --markdown $(OUT)/fairness.md --plot $(OUT)/fairness.png

# The scale benchmark behind BENCHMARKS.md's scale section: one execution each of 1,000, 10,000
# and 100,000 items from S3 (sizes: make bench-scale SCALE_SIZES="1000 10000").
SCALE_SIZES ?= 1000 10000 100000
bench-scale: $(LOCAL_STAMP)
	mkdir -p $(OUT)
	$(BIN)/python -m localcloud scale --sizes $(SCALE_SIZES) --out $(OUT)/scale.json --markdown $(OUT)/scale.md --plot $(OUT)/scale.png

# How long `sluice explain` takes in a running batch of 1,000 and of 100,000 items from S3
# (BENCHMARKS.md, "How long `sluice explain` takes"; about 4 minutes on 2 cores).
bench-explain: $(LOCAL_STAMP)
	mkdir -p $(OUT)
	$(BIN)/python -m localcloud explain-bench --out $(OUT)/explain.json --markdown $(OUT)/explain.md

clean:
	rm -rf $(VENV) node_modules $(OUT)
