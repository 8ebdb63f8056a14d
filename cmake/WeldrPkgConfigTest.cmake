# CTest script (cmake -P): compiles the consumer program with nothing but the flags that
# `pkg-config --cflags --libs weldr` gives for an installed weldr, then runs it.
#   -DPKG_CONFIG=... -DPKGCONFIG_PATH=<prefix>/lib/pkgconfig -DCXX_COMPILER=...
#   -DSOURCES=a.cpp,b.cpp -DBINARY_DIR=...
foreach(var IN ITEMS PKG_CONFIG PKGCONFIG_PATH CXX_COMPILER SOURCES BINARY_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "${var} is not set")
  endif()
endforeach()
string(REPLACE "," ";" sources "${SOURCES}")

set(ENV{PKG_CONFIG_PATH} "${PKGCONFIG_PATH}")
foreach(what IN ITEMS cflags libs)
  execute_process(COMMAND "${PKG_CONFIG}" --${what} weldr RESULT_VARIABLE result OUTPUT_VARIABLE ${what}
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "pkg-config --${what} weldr failed")
  endif()
  message(STATUS "pkg-config --${what} weldr: ${${what}}")
endforeach()
foreach(flag IN ITEMS -DASIO_STANDALONE -DASIO_SEPARATE_COMPILATION -DASIO_NO_DEPRECATED
                      -DASIO_DISABLE_STD_ALIGNED_ALLOC -DASIO_RECYCLING_ALLOCATOR_CACHE_SIZE=16)
  if(NOT " ${cflags} " MATCHES " ${flag} ")
    message(FATAL_ERROR "pkg-config --cflags weldr lacks ${flag}")
  endif()
endforeach()
separate_arguments(cflags UNIX_COMMAND "${cflags}")
separate_arguments(libs UNIX_COMMAND "${libs}")

file(REMOVE_RECURSE "${BINARY_DIR}")
file(MAKE_DIRECTORY "${BINARY_DIR}")
set(program "${BINARY_DIR}/weldr_consumer")
execute_process(COMMAND "${CXX_COMPILER}" -std=c++20 -Werror ${cflags} ${sources} -o "${program}" ${libs}
                RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "compiling with the pkg-config flags failed")
endif()
execute_process(COMMAND "${program}" RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "${program} failed: ${result}")
endif()
