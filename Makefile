# The README's commands. Each one creates what it needs: the venv, Python packages and,
# as root on Debian, the Debian packages the .deb build and the system tests use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Extra pytest arguments (.ci/run passes --junitxml for its count of skipped tests).
PYTEST_ARGS ?=

.PHONY: demo test test-prerequisites lint unit dist release version bench clean

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

# Unit and integration tests beside the system and packaging tests, in two pytest processes
# (devtools/test_layers.py); PYTEST_ARGS naming test paths runs one pytest on them.
test: lint test-prerequisites
	$(PY) -m devtools.test_layers $(PYTEST_ARGS)

dist: $(STAMP)
	bash packaging/build-dist.sh

# SIGNING_KEY=FILE: an armored OpenPGP private key; without it, a throwaway key (for testing).
# No venv needed: any user, Debian's python3 (release.sh says which packages it needs).
release:
	bash packaging/release.sh $(if $(SIGNING_KEY),--signing-key $(SIGNING_KEY))

# Writes CHANGELOG.md's version into the files that repeat it.
version:
	python3 packaging/version.py

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) dist build *.egg-info .pytest_cache .mypy_cache .ruff_cache
