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

.PHONY: install torchrec train test test-torch211 bench info clean

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

# The GPU machines run torch 2.11 (with Triton 3.6): build a copy of the tree against torch 2.11 in its own
# venv and build folder (the .so of `make install` stays untouched) and run the op tests there.
VENV_211 ?= .venv-211
BUILD_211 ?= .build-211
PY211 := $(abspath $(VENV_211))/bin/python
OP_TESTS ?= tests/test_ops.py tests/test_embedding.py tests/test_triton_ops.py tests/test_cuda_ops.py tests/test_build.py \
	tests/test_triton_compile.py

$(VENV_211)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV_211)
	$(PY211) -m pip install --upgrade pip
	$(PY211) -m pip install torch==2.11.0
	$(PY211) -m pip install -r requirements-dev.txt
	# Triton 3.6's interpreter reads loop bounds with int() of a 1-element array, an error since numpy 2.4
	$(PY211) -m pip install "numpy<2.4"
	touch $@

test-torch211: $(VENV_211)/.deps
	rm -rf $(BUILD_211) && mkdir -p $(BUILD_211)
	git ls-files -co --exclude-standard | grep -v '^$(BUILD_211)/' | tar -cf - -T - | tar -xf - -C $(BUILD_211)
	cd $(BUILD_211) && MAX_JOBS=$(MAX_JOBS) $(PY211) setup.py build_ext --inplace
	cd $(BUILD_211) && PYTHONPATH=$$PWD $(PY211) -m pytest $(OP_TESTS) -q -p no:cacheprovider

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds $(ARGS)

info: install
	$(PY) -m pimm_fast info

clean:
	rm -rf build *.egg-info pimm_fast/_C*.so pimm_fast/_build.json $(VENV)/.built $(BUILD_211)
