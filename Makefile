# Two commands set up everything on a fresh machine (Python 3.10+ with venv, a C++ compiler):
#   make train   creates .venv, installs torch + pimm_fast (compiling its kernels), trains PIMM
#   make test    same set-up, then the whole test suite and one pass of every benchmark
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
TORCHREC_VERSION ?= 1.9.2
FBGEMM_VERSION ?= 1.9.0
MAX_JOBS ?= 2
ARGS ?=
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: install torchrec train test bench info clean

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==$(TORCH_VERSION)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	MAX_JOBS=$(MAX_JOBS) $(PY) -m pip install --no-build-isolation -e .
	touch $@

# TorchRec for pimm_fast.distributed (docs/distributed.md). Its fbgemm-gpu dependency is the CUDA build,
# which fails to load without the NVIDIA driver: on a machine without an NVIDIA GPU it is replaced by
# fbgemm-gpu-cpu. torch stays pinned at $(TORCH_VERSION).
$(VENV)/.torchrec: $(VENV)/.deps
	$(PY) -m pip install torch==$(TORCH_VERSION) torchrec==$(TORCHREC_VERSION)
	if [ -e /dev/nvidia0 ] || nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: keeping fbgemm-gpu (CUDA)"; \
	else \
		$(PY) -m pip uninstall -y fbgemm-gpu; \
		$(PY) -m pip install --no-deps --force-reinstall fbgemm-gpu-cpu==$(FBGEMM_VERSION); \
	fi
	$(PY) -c "import torch, fbgemm_gpu, torchrec; v = torch.__version__.split('+')[0]; \
		assert v == '$(TORCH_VERSION)', f'torch changed to {v}'; print('torchrec', torchrec.__version__, 'torch', v)"
	touch $@

torchrec: $(VENV)/.torchrec

install: $(VENV)/.built $(VENV)/.torchrec

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
