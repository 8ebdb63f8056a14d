# CTest script (cmake -P): builds the Debian packages of BUILD_DIR with CPack into OUT and checks
# what they hold: the files a user expects where Debian puts them, the conffile, the maintainer
# scripts, and the development package's headers, libraries, CMake package and weldr.pc.
#   -DBUILD_DIR=... -DOUT=... -DCPACK=... -DVERSION=... -DHEADER_DIR=<source>/include/weldr
foreach(var IN ITEMS BUILD_DIR OUT CPACK VERSION HEADER_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "${var} is not set")
  endif()
endforeach()
file(REMOVE_RECURSE "${OUT}")
execute_process(COMMAND "${CPACK}" -G DEB -B "${OUT}" --config "${BUILD_DIR}/CPackConfig.cmake"
                RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cpack failed (${result}):\n${output}")
endif()

execute_process(COMMAND dpkg --print-architecture OUTPUT_VARIABLE arch OUTPUT_STRIP_TRAILING_WHITESPACE)

function(check_deb deb)
  set(path "${OUT}/${deb}_${VERSION}_${arch}.deb")
  if(NOT EXISTS "${path}")
    file(GLOB made "${OUT}/*.deb")
    message(FATAL_ERROR "${path} was not made; made: ${made}")
  endif()
  execute_process(COMMAND dpkg-deb -c "${path}" OUTPUT_VARIABLE listing RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "dpkg-deb -c ${path} failed")
  endif()
  foreach(entry IN LISTS ARGN)
    string(FIND "${listing}" " ./${entry}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "${deb}: no ${entry} in\n${listing}")
    endif()
  endforeach()
  string(FIND "${listing}" "/usr/local" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "${deb}: files under /usr/local:\n${listing}")
  endif()
  set(listing "${listing}" PARENT_SCOPE)
endfunction()

check_deb(weldr usr/bin/weldr-cli "usr/bin/weldr -> weldr-cli" usr/lib/systemd/system/weldr.service
          etc/weldr/weldr.conf usr/share/doc/weldr/README.md usr/share/doc/weldr/cluster.md
          usr/share/doc/weldr/operations.md usr/share/man/man1/weldr-cli.1)
execute_process(COMMAND dpkg-deb -I "${OUT}/weldr_${VERSION}_${arch}.deb" conffiles control postinst
                OUTPUT_VARIABLE info RESULT_VARIABLE result)
foreach(needle IN ITEMS "/etc/weldr/weldr.conf" "Package: weldr" "Depends: adduser" "adduser --system")
  string(FIND "${info}" "${needle}" at)
  if(NOT result EQUAL 0 OR at EQUAL -1)
    message(FATAL_ERROR "weldr's control files lack '${needle}':\n${info}")
  endif()
endforeach()

file(GLOB headers RELATIVE "${HEADER_DIR}" "${HEADER_DIR}/*.hpp")
set(dev_entries usr/lib/libweldr.a usr/lib/libweldr_asio.a usr/lib/libweldr_llhttp.a
                usr/lib/cmake/weldr/weldrConfig.cmake usr/lib/pkgconfig/weldr.pc)
foreach(header IN LISTS headers)
  list(APPEND dev_entries "usr/include/weldr/${header}")
endforeach()
check_deb(libweldr-dev ${dev_entries})
message(STATUS "packages in ${OUT}: weldr and libweldr-dev ${VERSION} (${arch}) hold what they should")
