# Two entry points, both from a fresh clone with nothing but Python 3.10+:
#   make study   installs into .venv and runs the study (`dvc repro`, active profile in params.yaml)
#   make test    installs into .venv (with test extras) and runs the test suite
# `make validate` checks every value of params.yaml at once (dvc repro's first stage does the same).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# OpenMP's wait policy (read when torch starts; a value you set yourself is kept). Tests, benchmarks and the
# release's long trainings share the machine with other work, so their idle OpenMP threads sleep instead of
# spinning: on a busy 2-core machine spinning threads ran 0.01-0.26x the speed of one thread. `make study`
# runs its stages one at a time and keeps OpenMP's default (a short spin before sleeping): on an idle machine
# the 3D network's 2-thread step is then about 1.3x as fast. Measured side by side: benchmarks/, `threads`
# section. On a machine busy with other work, run `OMP_WAIT_POLICY=PASSIVE make study`.
test benchmarks release release-mini: export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: study test validate release release-mini profile-smoke profile-mini profile-paper profile-paper-ci benchmarks lab

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
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --dist loadfile  # one worker per core, up to 4; a file's tests stay together (their module fixtures run once)

validate: $(VENV)/.installed
	$(BIN)/python -m megafr validate

profile-%: $(VENV)/.installed
	$(BIN)/python -m megafr profile $*

benchmarks: $(VENV)/.installed
	$(BIN)/python -m benchmarks

lab: $(VENV)/.installed
	$(BIN)/jupyter lab

# Retrain the released networks (train_idnet, train_generator, train_inversion) with the active profile's
# recipe and rewrite release/<profile>/ (smoke: minutes; the mini profile's recipe starts from its chain's
# third release, see release-mini).
release: $(VENV)/.installed
	$(BIN)/python -m megafr release

# The mini release from scratch (about 3 hours on 2 CPU cores, estimated; docs/mini_release.md): a chain of four
# runs, each starting from the files the one before exported: the first release's 14000 steps, a fine-tune
# with the 3D network's perceptual distance at 0.2, a longer one at 0.04, and the profile's own fine-tune that
# adds 1 - SSIM. Needs the mini profile's data (`make profile-mini`, then `dvc repro prepare`). Each export's
# release.json (written last) marks a finished run, so an interrupted chain continues with the run it stopped in.
# Only the generator starts from the run before, so runs 1 to 3 train pSp for a single step (the last run
# trains it in full against the final generator).
MINI_FIRST := --set train_generator.steps=14000 --set train_generator.init_from= \
	--set train_generator.finetune_steps=0 --set train_generator.finetune_face3d=0 \
	--set train_generator.finetune_ssim=0 --set train_inversion.steps=1
MINI_SECOND := --set train_generator.steps=0 --set train_generator.init_from=data/release/mini-v1 \
	--set train_generator.finetune_steps=1800 --set train_generator.finetune_face3d=0.2 \
	--set train_generator.finetune_ssim=0 --set train_inversion.steps=1
MINI_THIRD := --set train_generator.steps=0 --set train_generator.init_from=data/release/mini-v2 \
	--set train_generator.finetune_steps=3600 --set train_generator.finetune_face3d=0.04 \
	--set train_generator.finetune_ssim=0 --set train_inversion.steps=1
data/release/mini-v1/release.json: | $(VENV)/.installed
	$(BIN)/python -m megafr release --params profiles/mini.yaml $(MINI_FIRST) --out data/release/mini-v1
data/release/mini-v2/release.json: data/release/mini-v1/release.json | $(VENV)/.installed
	$(BIN)/python -m megafr release --params profiles/mini.yaml $(MINI_SECOND) --out data/release/mini-v2
data/release/mini-v3/release.json: data/release/mini-v2/release.json | $(VENV)/.installed
	$(BIN)/python -m megafr release --params profiles/mini.yaml $(MINI_THIRD) --out data/release/mini-v3
release-mini: data/release/mini-v3/release.json | $(VENV)/.installed
	$(BIN)/python -m megafr release --params profiles/mini.yaml
