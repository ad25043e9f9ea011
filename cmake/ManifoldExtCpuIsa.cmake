# Vectorised CPU kernels are compiled once per instruction set, the way ATen
# compiles its own CPU kernels: each copy gets its own CPU_CAPABILITY (so the
# inline at::vec code of the copies never collides at link time) and its own
# namespace for our entry points (MANIFOLD_EXT_CPU_NS). The dispatching code,
# compiled once with baseline flags, picks a copy at run time with torch's own
# at::native::get_cpu_capability() (which honours ATEN_CPU_CAPABILITY).
#
# Only the *_cpu_vec.cpp files, which hold nothing but inner loops over raw
# pointers, are compiled with wider instruction sets.

set(MANIFOLD_EXT_CPU_ISAS "DEFAULT")
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  list(APPEND MANIFOLD_EXT_CPU_ISAS "AVX2" "AVX512")
endif()

set(_isa_flags_DEFAULT "")
set(_isa_flags_AVX2 -mavx2 -mfma -mf16c)
set(_isa_flags_AVX512 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c)

function(manifold_ext_add_cpu_vec_kernels target)
  set(_sources ${ARGN})
  if(NOT _sources)
    return()
  endif()
  foreach(isa IN LISTS MANIFOLD_EXT_CPU_ISAS)
    string(TOLOWER "${isa}" _isa_lower)
    set(_obj "${target}_cpu_${_isa_lower}")
    add_library(${_obj} OBJECT ${_sources})
    set_target_properties(${_obj} PROPERTIES POSITION_INDEPENDENT_CODE ON)
    target_include_directories(${_obj} PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/csrc")
    manifold_ext_configure_target(${_obj})
    target_compile_definitions(${_obj} PRIVATE
      CPU_CAPABILITY=${isa} MANIFOLD_EXT_CPU_NS=cpu_${_isa_lower})
    if(NOT isa STREQUAL "DEFAULT")
      target_compile_definitions(${_obj} PRIVATE CPU_CAPABILITY_${isa})
    endif()
    target_compile_options(${_obj} PRIVATE ${_isa_flags_${isa}})
    # GCC 12 flags its own intrinsic headers (`__Y` in avx512fintrin.h) as
    # uninitialised, and notes the vector-argument ABI; torch's build silences
    # the same.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(${_obj} PRIVATE -Wno-uninitialized -Wno-maybe-uninitialized -Wno-psabi)
    endif()
    target_sources(${target} PRIVATE $<TARGET_OBJECTS:${_obj}>)
    target_compile_definitions(${target} PRIVATE MANIFOLD_EXT_HAVE_CPU_${isa}=1)
  endforeach()
endfunction()
