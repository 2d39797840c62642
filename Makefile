# Two commands from a fresh clone: `make demo` (the main job on embedded Kafka and Redis)
# and `make test` (the whole suite). Both create .venv and install txwatch on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/txwatch demo

# System packages the tests need (chromium, PostgreSQL's server, fonts): installed with apt-get
# when root and something is missing, a no-op otherwise (.ci/system-deps says more).
system-deps:
	bash .ci/system-deps

test: system-deps $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
