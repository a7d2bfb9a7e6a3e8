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

# The main job (examples/README.md): train the three policies on the bundled logs with the
# offline encoder, evaluate them on held-out task types next to the baselines, show a few
# predictions. One torch thread: these small models gain nothing from a second one and lose
# a lot when the cores are shared.
DEMO_OUT ?= runs/demo
DEMO_DATA ?= examples/data/episodes.jsonl
DEMO_HELD_OUT ?= performance_tuning,refactor,data_analysis,security_audit
DEMO_TRAIN = --held-out-task-types $(DEMO_HELD_OUT) --max-steps 600 --eval-every 50 --lr 1e-3 \
	--max-seq-len 24 --batch-size 16 --threads 1 --overwrite --no-eval
demo: install
	$(PYTHON) -m agentfast embed $(DEMO_DATA)
	$(PYTHON) -m agentfast train $(DEMO_DATA) --model action --output $(DEMO_OUT)/action $(DEMO_TRAIN)
	$(PYTHON) -m agentfast train $(DEMO_DATA) --model multi_agent --output $(DEMO_OUT)/multi_agent $(DEMO_TRAIN)
	$(PYTHON) -m agentfast train $(DEMO_DATA) --model hierarchical --output $(DEMO_OUT)/hierarchical $(DEMO_TRAIN)
	$(PYTHON) -m agentfast evaluate $(DEMO_OUT)/action $(DEMO_OUT)/multi_agent $(DEMO_OUT)/hierarchical \
		--threads 1 --json $(DEMO_OUT)/report.json --log $(DEMO_OUT)/metrics.jsonl
	$(PYTHON) -m agentfast predict $(DEMO_OUT)/action --examples 2

# GPU tests and benchmarks in one go; results land in benchmarks/results/<device>/.
# Builds against the torch already installed (GPU machines have no network).
# Compiles for the present GPU's architecture only, to keep the visit short. On a slow visit,
# GPU_CHECK_ARGS="--quick" shortens the attention sweep and --skip drops steps.
gpu-check:
	@if ! $(PYTHON) -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then \
		echo "make gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing to do."; \
	else \
		TORCH_CUDA_ARCH_LIST=$$($(PYTHON) -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") \
			$(PYTHON) -m pip install --no-build-isolation --no-deps -e . && \
		$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS); \
	fi

bench:
	$(PYTHON) benchmarks/bench_attention.py --device cpu

clean:
	rm -rf build *.egg-info agentfast/_C*.so agentfast/_build_info.json
