# clustr_fast: the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch 2.14.1 is the CUDA 13.0 build; with a CUDA toolkit present, the .cu kernels compile too.
TORCH_SPEC ?= torch==2.14.1
export MAX_JOBS ?= 2
export CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
DEMO_OUT ?= demo_out

.PHONY: install install-test install-attacks demo test test-gpu-versions bench gpu-check clean

install:
	$(PIP) install "$(TORCH_SPEC)" ninja "setuptools>=77" wheel
	$(PIP) install --no-build-isolation -e .

install-test:
	$(PIP) install "$(TORCH_SPEC)" ninja "setuptools>=77" wheel
	$(PIP) install --no-build-isolation -e ".[test,data]"
	$(MAKE) install-attacks

# AutoAttack, for the evaluation's cross-check (tests/test_autoattack.py). --no-deps: its pin
# requests~=2.25.1 would downgrade requests; it imports only torch, numpy, scipy and tqdm.
# It comes from PyPI; without a connection the cross-check skips (CI then says so).
install-attacks:
	$(PIP) install --no-deps "torchattacks==3.5.1" || echo "make: torchattacks not installed; tests/test_autoattack.py will skip"

demo: install
	clustr-fast demo --out $(DEMO_OUT)
	@echo "report: $(DEMO_OUT)/report.md (and report.json, PNG plots)"

test: install-test
	$(PYTHON) -m pytest

# The tests again on the GPU machine's versions (torch 2.11, Triton 3.6), in a venv over the
# installed packages (scripts/gpu_versions_check.sh); run after `make test`.
test-gpu-versions:
	PYTHON=$(PYTHON) bash scripts/gpu_versions_check.sh

bench: install-test
	$(PYTHON) -m pytest benchmarks --benchmark-only

gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build *.egg-info clustr_fast/_C*.so $(DEMO_OUT)
