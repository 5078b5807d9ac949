# Included before find_package(Torch) by CMakeLists.txt and examples/CMakeLists.txt. Needs Python3_EXECUTABLE.
# A CUDA build of torch needs the toolkit even for a CPU-only library. Find it from CUDA_HOME or from
# the nvcc on PATH, reading through a wrapper script that execs the real compiler (as setup.py does).
if(NOT CUDA_TOOLKIT_ROOT_DIR)
  if(DEFINED ENV{CUDA_HOME})
    set(CUDA_TOOLKIT_ROOT_DIR "$ENV{CUDA_HOME}")
  else()
    find_program(PIMM_NVCC nvcc)
    if(PIMM_NVCC)
      get_filename_component(PIMM_NVCC_REAL "${PIMM_NVCC}" REALPATH)
      file(STRINGS "${PIMM_NVCC_REAL}" PIMM_NVCC_LINES LIMIT_COUNT 50 REGEX "/bin/nvcc")
      if(PIMM_NVCC_LINES MATCHES "(/[^ \t'\"]+)/bin/nvcc")
        set(CUDA_TOOLKIT_ROOT_DIR "${CMAKE_MATCH_1}")
      else()
        get_filename_component(CUDA_TOOLKIT_ROOT_DIR "${PIMM_NVCC_REAL}/../.." ABSOLUTE)
      endif()
    endif()
  endif()
endif()
if(CUDA_TOOLKIT_ROOT_DIR)
  message(STATUS "pimm_fast: CUDA toolkit ${CUDA_TOOLKIT_ROOT_DIR}")
  set(CMAKE_CUDA_COMPILER "${CUDA_TOOLKIT_ROOT_DIR}/bin/nvcc")
endif()
# pip's CUDA builds of torch ship nvrtc in the nvidia wheels, not in the system toolkit.
if(CUDA_TOOLKIT_ROOT_DIR AND NOT CUDA_nvrtc_LIBRARY)
  execute_process(COMMAND ${Python3_EXECUTABLE} -c
                  "import glob, os, nvidia; print(next(iter(sorted(glob.glob(os.path.join(nvidia.__path__[0], '*', 'lib', 'libnvrtc.so*')))), ''))"
                  OUTPUT_VARIABLE PIMM_NVRTC OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(PIMM_NVRTC)
    set(CUDA_nvrtc_LIBRARY "${PIMM_NVRTC}" CACHE FILEPATH "nvrtc from the nvidia pip wheels")
  endif()
endif()
# Without a visible GPU torch's CMake cannot detect the architectures: a default list.
if(NOT TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
endif()
