# Install rules of libweldr: headers, the static libraries, a CMake package (weldrConfig.cmake,
# exporting weldr::weldr) and a pkg-config file. Included from the top-level CMakeLists.txt
# when WELDR_INSTALL is ON.
include(CMakePackageConfigHelpers)

set(WELDR_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/weldr" CACHE STRING
    "Where weldrConfig.cmake is installed, relative to the prefix")
set(WELDR_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig" CACHE STRING
    "Where weldr.pc is installed, relative to the prefix")
mark_as_advanced(WELDR_INSTALL_CMAKEDIR WELDR_INSTALL_PKGCONFIGDIR)

# Public headers: every include/weldr/*.hpp, whatever exists at install time.
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/weldr" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        COMPONENT weldr_development FILES_MATCHING PATTERN "*.hpp")

# weldr is static: its static PRIVATE dependencies (weldr_asio, weldr_llhttp) must be linked by
# its consumers too, so they are installed and exported with it (as weldr::asio, weldr::llhttp).
install(TARGETS weldr weldr_asio weldr_llhttp EXPORT weldrTargets
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT weldr_development
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT weldr_development)
install(EXPORT weldrTargets NAMESPACE weldr:: DESTINATION "${WELDR_INSTALL_CMAKEDIR}"
        COMPONENT weldr_development)

configure_package_config_file("${CMAKE_CURRENT_LIST_DIR}/weldrConfig.cmake.in"
                              "${PROJECT_BINARY_DIR}/weldrConfig.cmake"
                              INSTALL_DESTINATION "${WELDR_INSTALL_CMAKEDIR}")
# 0.x: a minor release may break the API.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/weldrConfigVersion.cmake"
                                 COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/weldrConfig.cmake" "${PROJECT_BINARY_DIR}/weldrConfigVersion.cmake"
        DESTINATION "${WELDR_INSTALL_CMAKEDIR}" COMPONENT weldr_development)

# pkg-config. Cflags: the Asio definitions that weldr_asio was compiled with, which every
# translation unit that includes Asio must share. Libs: weldr and its static dependencies.
get_target_property(_weldr_asio_defs weldr_asio INTERFACE_COMPILE_DEFINITIONS)
set(WELDR_PC_CFLAGS "")
foreach(_def IN LISTS _weldr_asio_defs)
  string(APPEND WELDR_PC_CFLAGS " -D${_def}")
endforeach()
if(NOT ASIO_INCLUDE_DIR IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
  string(APPEND WELDR_PC_CFLAGS " -I${ASIO_INCLUDE_DIR}")
endif()
set(WELDR_PC_LIBS "-lweldr -lweldr_asio -lweldr_llhttp -lfmt -pthread")
if(WELDR_SANITIZE)
  string(APPEND WELDR_PC_LIBS " -fsanitize=${WELDR_SANITIZE}")
endif()
# The prefix is the one given at install time (cmake --install --prefix), so weldr.pc is
# written by the install script itself, then installed (and listed in install_manifest.txt).
set(WELDR_PC_PREFIX "@WELDR_PC_PREFIX@")  # substituted at install time
foreach(_dir IN ITEMS LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${_dir}}")
    set(WELDR_PC_${_dir} "${CMAKE_INSTALL_${_dir}}")
  else()
    set(WELDR_PC_${_dir} "\${prefix}/${CMAKE_INSTALL_${_dir}}")
  endif()
endforeach()
configure_file("${CMAKE_CURRENT_LIST_DIR}/weldr.pc.in" "${PROJECT_BINARY_DIR}/weldr.pc.in" @ONLY)
install(CODE "
  set(WELDR_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  configure_file(\"${PROJECT_BINARY_DIR}/weldr.pc.in\" \"${PROJECT_BINARY_DIR}/weldr.pc\" @ONLY)
" COMPONENT weldr_development)
install(FILES "${PROJECT_BINARY_DIR}/weldr.pc" DESTINATION "${WELDR_INSTALL_PKGCONFIGDIR}"
        COMPONENT weldr_development)

if(WELDR_BUILD_CLI)
  install(TARGETS weldr-cli RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}" COMPONENT weldr_runtime)
endif()
