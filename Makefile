# Development entry points. The README's Quickstart is `make demo` and `make test`.
#
#   make demo        set up .venv, build the extension, run the main demo
#   make test        set up .venv, build the extension, run the whole test suite
#   make bench       benchmark every op family, write benchmarks/results/ (this ISA path)
#   make bench-isas  the same for every CPU ISA path (avx512, avx2, default)
#   make cuda-check  compile the CUDA kernels against CUDA torch (needs nvcc)
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

.PHONY: setup demo test test-slow bench bench-isas cuda-check clean

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

clean:
	rm -rf build demo_out
