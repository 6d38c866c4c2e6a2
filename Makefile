# The README's commands. Each one creates what it needs: the venv, Python packages and,
# as root on Debian, the Debian packages the .deb build and the system tests use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Extra pytest arguments (.ci/run passes --junitxml for its count of skipped tests).
PYTEST_ARGS ?=

.PHONY: demo test test-prerequisites lint unit dist bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || bash packaging/apt-install.sh python3-venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m devtools.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check agent devtools tests bench
	$(VENV)/bin/ruff format --check agent devtools tests bench
	$(VENV)/bin/mypy

# As root on Debian, installs every tool a test runs first (packaging/test-prerequisites.sh).
test-prerequisites:
	bash packaging/test-prerequisites.sh

test: lint test-prerequisites
	$(PY) -m pytest tests $(PYTEST_ARGS)

dist: $(STAMP)
	bash packaging/build-dist.sh

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) dist build *.egg-info .pytest_cache .mypy_cache .ruff_cache
