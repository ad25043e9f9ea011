#!/usr/bin/env bash
# Compile the CUDA kernels against CUDA torch and check they registered.
# Usage: .ci/cuda_compile_check.sh VENV TORCH_SPEC "ARCH;LIST"
# Works without a GPU: kernels compile and register, they just cannot run.
set -euo pipefail
venv=$1; torch_spec=$2; archs=$3
# Absolute: the kernel check and the tests run from a temporary directory.
case $venv in /*) ;; *) venv=$PWD/$venv ;; esac
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3.11}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet "$torch_spec" numpy "scikit-build-core>=0.10" "cmake>=3.30" ninja
echo "-- building with MANIFOLD_EXT_CUDA=ON TORCH_CUDA_ARCH_LIST=$archs against $("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
cd "$repo"
MANIFOLD_EXT_CUDA=ON TORCH_CUDA_ARCH_LIST="$archs" \
  "$venv/bin/pip" install --quiet --no-build-isolation -C build-dir=build/cuda-check ".[test]"

# Outside the source tree, so the installed package is imported.
cd "$(mktemp -d)"
"$venv/bin/python" "$repo/.ci/check_cuda_kernels.py" "$repo"
echo "-- test suite under $torch_spec (CPU paths of the C++20 build)"
"$venv/bin/python" -m pytest "$repo/python_tests" -q -p no:cacheprovider --rootdir "$repo"
