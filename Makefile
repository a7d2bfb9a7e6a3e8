# The README's two commands: `make demo` (the main job on the bundled example data) and
# `make test` (the test suite). Both install what they need into the current Python (a virtual
# environment is best): torch when there is none, then agentfast in editable mode with its
# compiled extension. Later runs reuse that: nothing is reinstalled or recompiled unless a
# source, a build switch, the Python or torch changed, and then ninja recompiles only what
# changed, showing its [n/m] progress.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
PIP = $(PYTHON) -m pip
PYTEST_ARGS ?=

# TORCH=cpu|cuda: which torch build to install when the Python has none, and whether to
# compile the CUDA kernels. Default: cuda where an NVIDIA GPU is present, else cpu (torch's
# CPU build, about 1 GB instead of 5 GB with the NVIDIA libraries, and the CPU extension only).
# TORCH_SPEC="..." installs torch with these pip arguments instead.
HAVE_NVIDIA_GPU := $(shell { command -v nvidia-smi || ls /dev/nvidia[0-9]*; } >/dev/null 2>&1 && echo yes)
TORCH ?= $(if $(HAVE_NVIDIA_GPU),cuda,cpu)
TORCH_VERSION ?= 2.14.1
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SPEC ?=
ifeq ($(TORCH),cuda)
export AGENTFAST_CUDA ?= auto
else ifeq ($(TORCH),cpu)
export AGENTFAST_CUDA ?= 0
else
$(error TORCH must be cpu or cuda, not '$(TORCH)')
endif
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

.PHONY: install install-test torch test demo gpu-check bench clean FORCE

install: build/stamps/pip-base
install-test: build/stamps/pip-test

test: install-test
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests

# The main job (examples/README.md): train the three policies on the bundled logs with the
# offline encoder, evaluate them on held-out task types next to the baselines, show a few
# predictions. One torch thread: these small models gain nothing from a second one and lose
# a lot when the cores are shared (embed's default is measured the same way).
DEMO_OUT ?= runs/demo
DEMO_DATA ?= examples/data/episodes.jsonl
DEMO_HELD_OUT ?= performance_tuning,refactor,data_analysis,security_audit
DEMO_TRAIN = --held-out-task-types $(DEMO_HELD_OUT) --max-steps 600 --eval-every 50 --lr 1e-3 \
	--max-seq-len 24 --batch-size 16 --threads 1 --overwrite --no-eval
demo: install
	$(PYTHON) -m agentfast embed $(DEMO_DATA) --threads 1
	$(PYTHON) -m agentfast train $(DEMO_DATA) --model action --output $(DEMO_OUT)/action $(DEMO_TRAIN)
	$(PYTHON) -m agentfast train $(DEMO_DATA) --model multi_agent --output $(DEMO_OUT)/multi_agent $(DEMO_TRAIN)
	$(PYTHON) -m agentfast train $(DEMO_DATA) --model hierarchical --output $(DEMO_OUT)/hierarchical $(DEMO_TRAIN)
	$(PYTHON) -m agentfast evaluate $(DEMO_OUT)/action $(DEMO_OUT)/multi_agent $(DEMO_OUT)/hierarchical \
		--threads 1 --json $(DEMO_OUT)/report.json --log $(DEMO_OUT)/metrics.jsonl
	$(PYTHON) -m agentfast predict $(DEMO_OUT)/action --examples 2

# ---------------------------------------------------------------------------- installing

torch:
	@if $(PYTHON) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then \
		:; \
	elif [ -n "$(TORCH_SPEC)" ]; then \
		$(PIP) install $(TORCH_SPEC); \
	elif [ "$(TORCH)" = cuda ]; then \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	else \
		echo "make: installing torch's CPU build (no NVIDIA GPU here; TORCH=cuda installs the CUDA build)"; \
		$(PIP) install --index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)+cpu" || $(MAKE) --no-print-directory torch-cpu-found; \
	fi

# When the CPU index cannot be reached: the newest CPU build pip finds elsewhere (a local wheel).
.PHONY: torch-cpu-found
torch-cpu-found:
	@version=$$($(PIP) index versions torch 2>/dev/null | sed -n 's/^Available versions: //p' \
		| tr ',' '\n' | tr -d ' ' | grep '+cpu$$' | head -n 1); \
	if [ -z "$$version" ]; then \
		echo "make: no CPU build of torch found ($(TORCH_CPU_INDEX) unreachable?)." \
			"Install torch first, or choose: TORCH_SPEC='torch==X+cpu --index-url URL', or TORCH=cuda." >&2; \
		exit 1; \
	fi; \
	echo "make: installing torch $$version, the newest CPU build pip finds"; \
	$(PIP) install "torch==$$version"

# What a build depends on besides the sources; rewritten only when it changes, so that its
# date says when the Python, torch or a build switch last changed.
build/stamps/config: FORCE | torch
	@mkdir -p $(@D)
	@{ $(PYTHON) -c 'import sys, importlib.metadata as m; print(sys.prefix, sys.version.split()[0], "torch", m.version("torch"))'; \
		echo "AGENTFAST_CUDA=$$AGENTFAST_CUDA TORCH_CUDA_ARCH_LIST=$$TORCH_CUDA_ARCH_LIST" \
			"AGENTFAST_MARCH=$$AGENTFAST_MARCH CUDA_HOME=$$CUDA_HOME CXX=$$CXX CC=$$CC"; } > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

# The extension, compiled in place. --force: this rule already decided that a build is due
# (setuptools would skip one whose sources are older than the extension, e.g. for a new torch);
# ninja still recompiles only what changed (objects kept in build/ninja/, see setup.py). ninja
# prints whole compiler command lines; they are shortened to "[n/m] compile csrc/...".
NINJA_PROGRESS = sed -u -E 's@^(\[[0-9]+/[0-9]+\]) .* -c ([^ ]*/)?(csrc/[^ ]+) .*@\1 compile \3@'
CSRC := $(shell find csrc -type f)
build/stamps/extension: $(CSRC) setup.py build/stamps/config
	@$(PYTHON) -c "import setuptools, wheel, ninja, numpy" 2>/dev/null || $(PIP) install -q "setuptools>=64" wheel ninja numpy
	$(PYTHON) setup.py -q build_ext --inplace --force 2>&1 | $(NINJA_PROGRESS)
	@touch $@

# The editable install with an extra (base: none; test: pytest and, on Linux, triton, whose
# interpreter runs the Triton kernels in the CPU tests). pip's own build of the extension finds
# every object up to date.
build/stamps/pip-%: pyproject.toml setup.py MANIFEST.in build/stamps/config | build/stamps/extension
	$(PIP) install -q --no-build-isolation -e ".$(if $(filter-out base,$*),[$*])"
	@touch $@

# A removed extension or an install that is not this checkout's (another venv, an uninstall)
# is redone whatever the dates say.
ifeq ($(wildcard agentfast/_C*.so),)
build/stamps/extension: FORCE
endif
INSTALLED_HERE := $(shell $(PYTHON) -c 'import importlib.metadata as m, json, pathlib, urllib.parse as u; \
	url = json.loads(m.distribution("agentfast").read_text("direct_url.json") or "{}").get("url", ""); \
	print(pathlib.Path(u.unquote(u.urlparse(url).path)).resolve() == pathlib.Path.cwd().resolve())' 2>/dev/null)
ifneq ($(INSTALLED_HERE),True)
build/stamps/pip-base build/stamps/pip-test: FORCE
endif

FORCE:

# ---------------------------------------------------------------------------- GPU and benchmarks

# The build, every GPU test and the GPU benchmarks in one command that fits one visit to a GPU
# machine (at most 8 minutes; each step on a time budget, see benchmarks/gpu_check.py). It builds
# against the torch already there (GPU machines have no network), for that GPU only, on every
# core. OUT=DIR packs every result into DIR/gpu-check.tar.gz; without it they land in
# benchmarks/results/<device>/. DRY_RUN=1 runs each step's setup only, on any machine, and
# prints the budgets. GPU_CHECK_ARGS="--skip tests" drops steps.
OUT ?=
DRY_RUN ?=
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py $(if $(OUT),--out $(OUT)) $(if $(filter-out 0,$(DRY_RUN)),--dry-run) $(GPU_CHECK_ARGS)

bench:
	$(PYTHON) benchmarks/bench_attention.py --device cpu

clean:
	rm -rf build *.egg-info agentfast/_C*.so agentfast/_build_info.json
