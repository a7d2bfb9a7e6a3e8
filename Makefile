# The README's two commands: `make demo` (the main job on the bundled example data) and
# `make test` (the test suite). Both install what they need into the current Python.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1
PYTEST_ARGS ?=
export CUDA_HOME ?= /usr/local/cuda

.PHONY: install test demo gpu-check bench clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q setuptools wheel ninja
	$(PYTHON) -m pip install --no-build-isolation -e ".[test]"

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests

demo: install
	$(PYTHON) examples/run_models.py

# GPU tests and benchmarks in one go; results land in benchmarks/results/<device>/.
# Builds against the torch already installed (GPU machines have no network).
gpu-check:
	$(PYTHON) -m pip install --no-build-isolation --no-deps -e .
	$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

bench:
	$(PYTHON) benchmarks/bench_attention.py --device cpu

clean:
	rm -rf build *.egg-info agentfast/_C*.so agentfast/_build_info.json
