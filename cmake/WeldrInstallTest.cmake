# CTest script (cmake -P): installs the build tree BUILD_DIR into a fresh PREFIX with
# `cmake --install` and checks what was installed.
#   -DBUILD_DIR=... -DPREFIX=... [-DCONFIG=...] -DHEADER_DIR=<source>/include/weldr
#   -DLIBDIR=lib -DINCLUDEDIR=include -DCMAKEDIR=lib/cmake/weldr -DPKGCONFIGDIR=lib/pkgconfig
foreach(var IN ITEMS BUILD_DIR PREFIX HEADER_DIR LIBDIR INCLUDEDIR CMAKEDIR PKGCONFIGDIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "${var} is not set")
  endif()
endforeach()

file(REMOVE_RECURSE "${PREFIX}")
set(config_args)
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args}
                RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cmake --install failed: ${result}")
endif()

set(expected
  "${LIBDIR}/libweldr.a" "${LIBDIR}/libweldr_asio.a" "${LIBDIR}/libweldr_llhttp.a"
  "${CMAKEDIR}/weldrConfig.cmake" "${CMAKEDIR}/weldrConfigVersion.cmake" "${CMAKEDIR}/weldrTargets.cmake"
  "${PKGCONFIGDIR}/weldr.pc")
file(GLOB headers RELATIVE "${HEADER_DIR}" "${HEADER_DIR}/*.hpp")
foreach(header IN LISTS headers)
  list(APPEND expected "${INCLUDEDIR}/weldr/${header}")
endforeach()
set(missing)
foreach(file IN LISTS expected)
  if(NOT EXISTS "${PREFIX}/${file}")
    list(APPEND missing "${file}")
  endif()
endforeach()
if(missing)
  message(FATAL_ERROR "not installed: ${missing}")
endif()

# Build-only helper targets and flags must not reach the exported targets.
file(GLOB exports "${PREFIX}/${CMAKEDIR}/weldrTargets*.cmake")
foreach(file IN LISTS exports)
  file(READ "${file}" text)
  foreach(word IN ITEMS weldr_warnings weldr_sanitizers -Werror -Wall "${BUILD_DIR}")
    string(FIND "${text}" "${word}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "${file} mentions ${word}")
    endif()
  endforeach()
endforeach()
file(READ "${PREFIX}/${PKGCONFIGDIR}/weldr.pc" pc)
string(FIND "${pc}" "prefix=${PREFIX}\n" at)
if(at EQUAL -1)
  message(FATAL_ERROR "weldr.pc does not have the install prefix ${PREFIX}:\n${pc}")
endif()

file(GLOB_RECURSE installed RELATIVE "${PREFIX}" "${PREFIX}/*")
list(SORT installed)
list(JOIN installed "\n  " listing)
message(STATUS "installed in ${PREFIX}:\n  ${listing}")
