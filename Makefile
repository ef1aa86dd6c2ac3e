# Everything sets itself up: `make test` on a fresh machine creates .venv, installs the pinned
# requirements and the Node ASL validator, then runs ruff, mypy and pytest.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: test lint typecheck pytest venv tools demo clean

test: lint typecheck pytest

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

tools: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	@echo "make demo needs the embedded AWS (localcloud/), which is not built yet: see issue 3." >&2
	@exit 2

clean:
	rm -rf $(VENV) node_modules
