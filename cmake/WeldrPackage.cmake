# Debian packages with CPack (`cpack -G DEB` in a build tree, or the `package` target):
#   weldr_<version>_<arch>.deb         weldr-cli (also as /usr/bin/weldr), its systemd unit, the
#                                      default configuration (a conffile), the docs, a man page
#   libweldr-dev_<version>_<arch>.deb  the headers, the static libraries, the CMake package, weldr.pc
# CPack rather than a debian/ directory: the install rules that `cmake --install` already uses
# (tested by test/consumer) are the package's contents, with no second list to keep in step, and
# building needs no debhelper. Included from the top-level CMakeLists.txt when WELDR_INSTALL is ON.

if(WELDR_BUILD_CLI)
  # /usr/bin/weldr: the short name, a link to weldr-cli.
  file(CREATE_LINK weldr-cli "${PROJECT_BINARY_DIR}/weldr" SYMBOLIC)
  install(FILES "${PROJECT_BINARY_DIR}/weldr" DESTINATION "${CMAKE_INSTALL_BINDIR}" COMPONENT weldr_runtime)
  # The unit and the configuration are for the package only (EXCLUDE_FROM_ALL: CPack installs the
  # component by name, a plain `cmake --install` leaves them out): /etc/weldr/weldr.conf is an
  # absolute destination, which a `cmake --install --prefix ...` must never overwrite.
  install(FILES "${PROJECT_SOURCE_DIR}/packaging/weldr.service" DESTINATION "lib/systemd/system"
          COMPONENT weldr_runtime EXCLUDE_FROM_ALL)
  install(FILES "${PROJECT_SOURCE_DIR}/packaging/weldr.conf" DESTINATION "/etc/weldr" COMPONENT weldr_runtime
          EXCLUDE_FROM_ALL)
  install(FILES "${PROJECT_SOURCE_DIR}/README.md" "${PROJECT_SOURCE_DIR}/LICENSE-MIT"
          DESTINATION "${CMAKE_INSTALL_DOCDIR}" COMPONENT weldr_runtime)
  install(DIRECTORY "${PROJECT_SOURCE_DIR}/docs/" DESTINATION "${CMAKE_INSTALL_DOCDIR}" COMPONENT weldr_runtime
          FILES_MATCHING PATTERN "*.md")
  # The man page, from --help and --version (help2man), when help2man is installed.
  find_program(WELDR_HELP2MAN help2man)
  if(WELDR_HELP2MAN)
    add_custom_command(
      OUTPUT "${PROJECT_BINARY_DIR}/weldr-cli.1"
      COMMAND "${WELDR_HELP2MAN}" --no-info --name "HTTP/1.1 reverse proxy and load balancer for dynamic fleets"
              --section 1 --output "${PROJECT_BINARY_DIR}/weldr-cli.1" "$<TARGET_FILE:weldr-cli>"
      DEPENDS weldr-cli VERBATIM)
    add_custom_target(weldr_man ALL DEPENDS "${PROJECT_BINARY_DIR}/weldr-cli.1")
    install(FILES "${PROJECT_BINARY_DIR}/weldr-cli.1" DESTINATION "${CMAKE_INSTALL_MANDIR}/man1"
            COMPONENT weldr_runtime)
  endif()
endif()

if(NOT WELDR_TOP_LEVEL)
  return()  # a parent project's own CPack configuration is not ours to replace
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME weldr)
set(CPACK_PACKAGE_VENDOR "weldr")
set(CPACK_PACKAGE_CONTACT "weldr developers <weldr@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "HTTP/1.1 reverse proxy and load balancer for dynamic fleets")
# Installed under /usr whatever the build tree's own prefix is (/usr/local by default).
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_SET_DESTDIR ON)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL weldr_runtime weldr_development)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_WELDR_RUNTIME_PACKAGE_NAME weldr)
set(CPACK_DEBIAN_WELDR_RUNTIME_PACKAGE_SECTION net)
set(CPACK_DEBIAN_WELDR_RUNTIME_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_WELDR_RUNTIME_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_WELDR_RUNTIME_PACKAGE_CONTROL_EXTRA
    "${PROJECT_SOURCE_DIR}/packaging/debian/conffiles;${PROJECT_SOURCE_DIR}/packaging/debian/postinst;${PROJECT_SOURCE_DIR}/packaging/debian/prerm;${PROJECT_SOURCE_DIR}/packaging/debian/postrm")
set(CPACK_DEBIAN_WELDR_RUNTIME_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_WELDR_DEVELOPMENT_PACKAGE_NAME libweldr-dev)
set(CPACK_DEBIAN_WELDR_DEVELOPMENT_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_WELDR_DEVELOPMENT_PACKAGE_DEPENDS "libasio-dev, libfmt-dev")
set(CPACK_COMPONENT_WELDR_RUNTIME_DESCRIPTION
    "HTTP/1.1 reverse proxy and load balancer for dynamic fleets\n weldr-cli: origins register and leave at runtime through a management API;\n health checks, balancing policies, and a cluster mode over etcd.")
set(CPACK_COMPONENT_WELDR_DEVELOPMENT_DESCRIPTION
    "libweldr: embed weldr's proxy in your own program\n Headers, static libraries, a CMake package and a pkg-config file.")
include(CPack)
