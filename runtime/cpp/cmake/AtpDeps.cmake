# Build-time dependencies of atp_runtime. Each is looked up on the system first (apt packages on a Jetson:
# nlohmann-json3-dev, libstb-dev, TensorRT from JetPack); when missing and ATP_FETCH_DEPS is ON, it is
# fetched by tools/fetch_deps.py into ATP_DEPS_DIR (a build/cache dir, never the source tree).
find_package(Python3 COMPONENTS Interpreter)

function(atp_fetch what)
  if(NOT ATP_FETCH_DEPS)
    return()
  endif()
  if(NOT Python3_Interpreter_FOUND)
    message(WARNING "atp: python3 not found, cannot fetch ${what}")
    return()
  endif()
  message(STATUS "atp: fetching ${what} into ${ATP_DEPS_DIR}")
  execute_process(COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/tools/fetch_deps.py --dest ${ATP_DEPS_DIR} --what ${what}
    OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  message(STATUS "atp: ${out}")
endfunction()

# atp_find_header(<var> <header> <what> <error message> [PATH_SUFFIXES ...]): <var> = the folder holding <header>,
# from the system (or -D<var>=...) first, else from a copy atp_fetch(<what>) puts under ATP_DEPS_DIR/<what>/include;
# a fatal error with <error message> when neither has it.
function(atp_find_header var header what error)
  cmake_parse_arguments(ARG "" "" "PATH_SUFFIXES" ${ARGN})
  find_path(${var} ${header} PATH_SUFFIXES ${ARG_PATH_SUFFIXES} HINTS ${ATP_DEPS_DIR}/${what}/include)
  if(NOT ${var})
    atp_fetch(${what})
    find_path(${var} ${header} PATH_SUFFIXES ${ARG_PATH_SUFFIXES} HINTS ${ATP_DEPS_DIR}/${what}/include NO_CACHE)
  endif()
  if(NOT ${var})
    message(FATAL_ERROR "atp: ${error}")
  endif()
  set(${var} "${${var}}" PARENT_SCOPE)
endfunction()

atp_find_header(ATP_JSON_INCLUDE_DIR nlohmann/json.hpp json
                "nlohmann/json.hpp not found (apt install nlohmann-json3-dev, or -DATP_JSON_INCLUDE_DIR=...)")
atp_find_header(ATP_STB_INCLUDE_DIR stb/stb_image.h stb
                "stb/stb_image.h not found (apt install libstb-dev, or -DATP_STB_INCLUDE_DIR=...)")
# ONNX Runtime C/C++ headers (the library itself is dlopen'ed at run time)
if(ATP_WITH_ORT)
  atp_find_header(ATP_ORT_INCLUDE_DIR onnxruntime_cxx_api.h ort
                  "ONNX Runtime headers not found (Debian libonnxruntime-dev, or -DATP_ORT_INCLUDE_DIR=...; or -DATP_WITH_ORT=OFF)"
                  PATH_SUFFIXES onnxruntime)
endif()

# TensorRT 10 headers + runtime library, CUDA runtime headers + library
if(ATP_WITH_TRT)
  find_path(ATP_TRT_INCLUDE_DIR NvInfer.h PATH_SUFFIXES include/x86_64-linux-gnu include/aarch64-linux-gnu
            HINTS ${ATP_DEPS_DIR}/trt/include)
  find_library(ATP_TRT_LIBRARY NAMES nvinfer nvinfer_lean HINTS ${ATP_DEPS_DIR}/trt/lib)
  if(NOT ATP_TRT_INCLUDE_DIR OR NOT ATP_TRT_LIBRARY)
    atp_fetch(trt)
    find_path(ATP_TRT_INCLUDE_DIR NvInfer.h HINTS ${ATP_DEPS_DIR}/trt/include NO_CACHE)
    find_library(ATP_TRT_LIBRARY NAMES nvinfer_lean nvinfer HINTS ${ATP_DEPS_DIR}/trt/lib NO_CACHE)
  endif()
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    set(ATP_CUDA_INCLUDE_DIR ${CUDAToolkit_INCLUDE_DIRS} CACHE PATH "")
    set(ATP_CUDART_LIBRARY CUDA::cudart CACHE STRING "")
  else()  # the nvidia-cuda-runtime wheel (pulled in by torch's CUDA build) has headers + libcudart.so.13
    if(Python3_Interpreter_FOUND AND NOT ATP_CUDA_INCLUDE_DIR)
      execute_process(COMMAND ${Python3_EXECUTABLE} -c
        "import nvidia, os; p=[os.path.join(d, s) for d in nvidia.__path__ for s in ('cu13', 'cuda_runtime') if os.path.isfile(os.path.join(d, s, 'include', 'cuda_runtime_api.h'))]; print(p[0] if p else '')"
        OUTPUT_VARIABLE _cuda_wheel OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    endif()
    find_path(ATP_CUDA_INCLUDE_DIR cuda_runtime_api.h HINTS ${_cuda_wheel}/include)
    find_library(ATP_CUDART_LIBRARY NAMES cudart libcudart.so.13 libcudart.so.12 HINTS ${_cuda_wheel}/lib)
  endif()
  if(NOT ATP_TRT_INCLUDE_DIR OR NOT ATP_TRT_LIBRARY OR NOT ATP_CUDA_INCLUDE_DIR OR NOT ATP_CUDART_LIBRARY)
    message(FATAL_ERROR "atp: ATP_WITH_TRT needs TensorRT 10 (NvInfer.h: ${ATP_TRT_INCLUDE_DIR}, libnvinfer: ${ATP_TRT_LIBRARY}) "
                        "and the CUDA runtime (cuda_runtime_api.h: ${ATP_CUDA_INCLUDE_DIR}, cudart: ${ATP_CUDART_LIBRARY})")
  endif()
endif()
