# Two entry points, both from a fresh clone with nothing but Python 3.10+:
#   make study   installs into .venv and runs the study (`dvc repro`, active profile in params.yaml)
#   make test    installs into .venv (with test extras) and runs the test suite
# `make validate` checks every value of params.yaml at once (dvc repro's first stage does the same).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with other work, spinning
# threads ran 0.01-0.26x the speed of one thread (benchmarks/, `threads` section).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: study test validate release profile-smoke profile-mini profile-paper profile-paper-ci benchmarks lab

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (megafr)"
	touch $@

study: $(VENV)/.installed
	$(BIN)/dvc repro

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

validate: $(VENV)/.installed
	$(BIN)/python -m megafr validate

profile-%: $(VENV)/.installed
	$(BIN)/python -m megafr profile $*

benchmarks: $(VENV)/.installed
	$(BIN)/python -m benchmarks

lab: $(VENV)/.installed
	$(BIN)/jupyter lab

# Retrain the mini world's released networks (train_idnet, train_generator, train_inversion) from scratch
# with the active profile's recipe and rewrite release/<profile>/ (hours on a CPU; docs/mini_release.md).
release: $(VENV)/.installed
	$(BIN)/python -m megafr release
