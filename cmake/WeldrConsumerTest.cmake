# CTest script (cmake -P): configures, builds and runs a consumer project of libweldr
# (test/consumer/*) in a fresh build directory, with the compiler and sanitizers of weldr's build.
#   -DSOURCE_DIR=... -DBINARY_DIR=... -DGENERATOR=... [-DMAKE_PROGRAM=...]
#   -DC_COMPILER=... -DCXX_COMPILER=... [-DBUILD_TYPE=...] [-DCXX_FLAGS=...] [-DC_FLAGS=...]
#   [-DLINKER_FLAGS=...] [-DSANITIZE=address,undefined] [-DPREFIX_PATH=...]
#   [-DWELDR_SOURCE_DIR=...] [-DJOBS=2]
foreach(var IN ITEMS SOURCE_DIR BINARY_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "${var} is not set")
  endif()
endforeach()
if(NOT JOBS)
  set(JOBS 2)
endif()

file(REMOVE_RECURSE "${BINARY_DIR}")
set(args -S "${SOURCE_DIR}" -B "${BINARY_DIR}" -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
         "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}" "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" "-DCMAKE_C_FLAGS=${C_FLAGS}"
         "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}")
if(MAKE_PROGRAM)
  list(APPEND args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(C_COMPILER)
  list(APPEND args "-DCMAKE_C_COMPILER=${C_COMPILER}")
endif()
if(PREFIX_PATH)
  # Only the freshly installed weldr, not one installed elsewhere on the machine.
  list(APPEND args "-DCMAKE_PREFIX_PATH=${PREFIX_PATH}" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
endif()
if(DEFINED SANITIZE)
  list(APPEND args "-DWELDR_SANITIZE=${SANITIZE}")
endif()
if(WELDR_SOURCE_DIR)
  list(APPEND args "-DWELDR_SOURCE_DIR=${WELDR_SOURCE_DIR}")
endif()

function(run step)
  string(TIMESTAMP start "%s")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  string(TIMESTAMP end "%s")
  math(EXPR seconds "${end} - ${start}")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${step} failed (${result}) after ${seconds} s: ${ARGN}")
  endif()
  message(STATUS "${step}: ${seconds} s")
endfunction()

run(configure "${CMAKE_COMMAND}" ${args})
run(build "${CMAKE_COMMAND}" --build "${BINARY_DIR}" --parallel ${JOBS})
run(run "${BINARY_DIR}/weldr_consumer")
