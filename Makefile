# Two commands set up everything on a fresh machine (Python 3.10+ with venv, a C++ compiler):
#   make train   creates .venv, installs torch + pimm_fast (compiling its kernels), trains PIMM
#   make test    same set-up, then the whole test suite and one pass of every benchmark
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
MAX_JOBS ?= 2
ARGS ?=
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: install train test bench info clean

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==$(TORCH_VERSION)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	MAX_JOBS=$(MAX_JOBS) $(PY) -m pip install --no-build-isolation -e .
	touch $@

install: $(VENV)/.built

train: install
	$(PY) -m pimm_fast train $(ARGS)

test: install
	$(PY) -m pytest tests -q
	$(PY) -m pytest benchmarks -q --benchmark-disable

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds $(ARGS)

info: install
	$(PY) -m pimm_fast info

clean:
	rm -rf build *.egg-info pimm_fast/_C*.so pimm_fast/_build.json $(VENV)/.built
