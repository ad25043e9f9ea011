# Locate the torch installed in the running Python environment and decide
# whether the CUDA kernels are built.
#
# MANIFOLD_EXT_CUDA (CMake cache variable or environment variable):
#   AUTO (default)  build CUDA kernels when torch was built with CUDA and nvcc is found
#   ON              require them (fail loudly if impossible)
#   OFF             CPU kernels only

set(MANIFOLD_EXT_CUDA "AUTO" CACHE STRING "Build CUDA kernels: AUTO, ON or OFF")
if(DEFINED ENV{MANIFOLD_EXT_CUDA} AND NOT "$ENV{MANIFOLD_EXT_CUDA}" STREQUAL "")
  set(MANIFOLD_EXT_CUDA "$ENV{MANIFOLD_EXT_CUDA}" CACHE STRING "" FORCE)
endif()
string(TOUPPER "${MANIFOLD_EXT_CUDA}" MANIFOLD_EXT_CUDA)
if(NOT MANIFOLD_EXT_CUDA MATCHES "^(AUTO|ON|OFF|1|0|TRUE|FALSE)$")
  message(FATAL_ERROR "MANIFOLD_EXT_CUDA must be AUTO, ON or OFF, got '${MANIFOLD_EXT_CUDA}'")
endif()

find_package(Python 3.9 REQUIRED COMPONENTS Interpreter Development.Module)

# Ask the interpreter that runs the build where its torch lives.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
          "import torch; print(torch.utils.cmake_prefix_path); print(torch.__version__); print(torch.version.cuda or '')"
  OUTPUT_VARIABLE _torch_info
  ERROR_VARIABLE _torch_error
  RESULT_VARIABLE _torch_result
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_result EQUAL 0)
  message(FATAL_ERROR
    "manifold_ext builds against the torch installed in your environment, but "
    "'${Python_EXECUTABLE}' cannot import torch:\n${_torch_error}\n"
    "Install torch first (e.g. `pip install torch`), then build without build "
    "isolation: `pip install --no-build-isolation .` (an isolated build "
    "environment would pull a second, multi-GB torch and may break the ABI).")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(GET _torch_info 0 _torch_prefix)
list(GET _torch_info 1 MANIFOLD_EXT_TORCH_VERSION)
list(LENGTH _torch_info _n)
set(_torch_cuda "")
if(_n GREATER 2)
  list(GET _torch_info 2 _torch_cuda)
endif()
list(PREPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
message(STATUS "manifold_ext: torch ${MANIFOLD_EXT_TORCH_VERSION} (CUDA: '${_torch_cuda}') at ${_torch_prefix}")

# ---- CUDA decision ---------------------------------------------------------
# nvcc is often not on PATH: look where CUDA toolkits live.
if(NOT _torch_cuda STREQUAL "" AND NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  foreach(_root "$ENV{CUDA_HOME}" "$ENV{CUDA_PATH}" "/usr/local/cuda")
    if(NOT _root STREQUAL "" AND EXISTS "${_root}/bin/nvcc")
      set(CMAKE_CUDA_COMPILER "${_root}/bin/nvcc")
      break()
    endif()
  endforeach()
endif()
set(MANIFOLD_EXT_WITH_CUDA OFF)
if(MANIFOLD_EXT_CUDA MATCHES "^(ON|1|TRUE)$")
  if(_torch_cuda STREQUAL "")
    message(FATAL_ERROR "MANIFOLD_EXT_CUDA=ON but the installed torch ${MANIFOLD_EXT_TORCH_VERSION} has no CUDA support")
  endif()
  set(MANIFOLD_EXT_WITH_CUDA ON)
elseif(MANIFOLD_EXT_CUDA STREQUAL "AUTO" AND NOT _torch_cuda STREQUAL "")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(MANIFOLD_EXT_WITH_CUDA ON)
  else()
    message(STATUS "manifold_ext: torch has CUDA ${_torch_cuda} but nvcc was not found: building CPU kernels only")
  endif()
endif()

# torch >= 2.14 headers need C++20; older ones are happy with C++17.
if(MANIFOLD_EXT_TORCH_VERSION VERSION_GREATER_EQUAL 2.14)
  set(MANIFOLD_EXT_CXX_STANDARD 20)
else()
  set(MANIFOLD_EXT_CXX_STANDARD 17)
endif()

if(MANIFOLD_EXT_WITH_CUDA)
  enable_language(CUDA)
  # Resolve links (e.g. /usr/local/cuda -> cuda-13.0) to find the toolkit root.
  get_filename_component(_nvcc_real "${CMAKE_CUDA_COMPILER}" REALPATH)
  execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" -v --version
                  ERROR_VARIABLE _nvcc_verbose OUTPUT_QUIET)
  if(_nvcc_verbose MATCHES "#\\$ TOP=([^\n]*)")
    get_filename_component(_cuda_root "${CMAKE_MATCH_1}" REALPATH)
  else()
    get_filename_component(_cuda_root "${_nvcc_real}/../.." REALPATH)
  endif()
  set(CUDA_TOOLKIT_ROOT_DIR "${_cuda_root}" CACHE PATH "CUDA toolkit used by torch's CMake config")
  set(CUDAToolkit_ROOT "${_cuda_root}")

  # A minimal toolkit may lack headers/libraries torch's CMake config asks for
  # (cusparse.h, libnvrtc). CUDA torch wheels ship them as NVIDIA pip packages:
  # point CMake at those when the toolkit has none.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
            "import nvidia, os; print(';'.join(sorted(set(os.path.realpath(p) for p in nvidia.__path__))))"
    OUTPUT_VARIABLE _nvidia_roots OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _nvidia_result ERROR_QUIET)
  set(MANIFOLD_EXT_CUDA_EXTRA_INCLUDES "")
  if(_nvidia_result EQUAL 0 AND NOT _nvidia_roots STREQUAL "")
    find_library(_toolkit_nvrtc nvrtc PATHS "${_cuda_root}/lib64" "${_cuda_root}/lib" NO_DEFAULT_PATH)
    if(NOT _toolkit_nvrtc AND NOT CUDA_nvrtc_LIBRARY)
      foreach(_r IN LISTS _nvidia_roots)
        file(GLOB _nvrtc_candidates "${_r}/*/lib/libnvrtc.so.[0-9]*")
        foreach(_c IN LISTS _nvrtc_candidates)
          if(NOT _c MATCHES "builtins|alt")
            set(CUDA_nvrtc_LIBRARY "${_c}" CACHE FILEPATH "nvrtc from the NVIDIA pip packages")
            break()
          endif()
        endforeach()
      endforeach()
    endif()
    if(NOT EXISTS "${_cuda_root}/include/cusparse.h")
      foreach(_r IN LISTS _nvidia_roots)
        file(GLOB _hdr_candidates "${_r}/*/include/cusparse.h")
        foreach(_h IN LISTS _hdr_candidates)
          get_filename_component(_inc "${_h}" DIRECTORY)
          list(APPEND MANIFOLD_EXT_CUDA_EXTRA_INCLUDES "${_inc}")
        endforeach()
      endforeach()
    endif()
  endif()
  if(MANIFOLD_EXT_CUDA_EXTRA_INCLUDES)
    list(REMOVE_DUPLICATES MANIFOLD_EXT_CUDA_EXTRA_INCLUDES)
    # torch's config includes these headers while it is being found.
    include_directories(${MANIFOLD_EXT_CUDA_EXTRA_INCLUDES})
    foreach(_inc IN LISTS MANIFOLD_EXT_CUDA_EXTRA_INCLUDES)
      string(APPEND CMAKE_CUDA_FLAGS " -I${_inc}")
    endforeach()
    message(STATUS "manifold_ext: extra CUDA headers from pip packages: ${MANIFOLD_EXT_CUDA_EXTRA_INCLUDES}")
  endif()
  if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    message(STATUS "manifold_ext: TORCH_CUDA_ARCH_LIST not set; torch picks the architectures "
                   "(the visible GPU's, or a long list without one). Set it, e.g. '9.0', to build faster.")
  endif()
endif()

find_package(Torch REQUIRED)
message(STATUS "manifold_ext: CUDA kernels ${MANIFOLD_EXT_WITH_CUDA}; C++${MANIFOLD_EXT_CXX_STANDARD}")

# Common settings for every target that includes torch headers.
function(manifold_ext_configure_target target)
  target_link_libraries(${target} PRIVATE ${TORCH_LIBRARIES})
  # TORCH_LIBRARIES does not carry torch's compile definitions (ABI flag etc.).
  separate_arguments(_torch_cxx_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${_torch_cxx_flags}>)
  target_compile_features(${target} PRIVATE cxx_std_${MANIFOLD_EXT_CXX_STANDARD})
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF)
  target_compile_definitions(${target} PRIVATE
    TORCH_EXTENSION_NAME=_C
    MANIFOLD_EXT_TORCH_VERSION="${MANIFOLD_EXT_TORCH_VERSION}")
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-O3 -Wall -Wextra -Wno-unused-parameter>)
    # No implicit fused multiply-add: GCC contracts a * b + c into an FMA where
    # the instruction set has one (the AVX2/AVX-512 copies of the kernels) and
    # not elsewhere (the default copy), so an overflow could give inf on one
    # ISA and NaN on another. Every ISA copy now evaluates the same IEEE
    # operations; the few places that want an FMA say so (hd_fmadd).
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-ffp-contract=off>)
  endif()
  if(MANIFOLD_EXT_WITH_CUDA)
    target_compile_definitions(${target} PRIVATE MANIFOLD_EXT_WITH_CUDA=1)
    set_target_properties(${target} PROPERTIES
      CUDA_STANDARD ${MANIFOLD_EXT_CXX_STANDARD} CUDA_STANDARD_REQUIRED ON)
    # --fmad=false: no implicit fused multiply-add in CUDA code either (nvcc
    # fuses a * b + c by default), so the element math rounds as in the CPU
    # kernels (-ffp-contract=off above): the same float32 terms, the same inf
    # or NaN on overflow. The kernels are memory-bound; hd_fmadd still fuses
    # where a formula asks for it.
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr --fmad=false>)
    if(MANIFOLD_EXT_CUDA_EXTRA_INCLUDES)
      target_include_directories(${target} PRIVATE ${MANIFOLD_EXT_CUDA_EXTRA_INCLUDES})
    endif()
  endif()
  # at::parallel_for is header code that uses OpenMP when torch does.
  find_package(OpenMP)
  if(OpenMP_CXX_FOUND)
    target_link_libraries(${target} PRIVATE OpenMP::OpenMP_CXX)
  endif()
endfunction()
