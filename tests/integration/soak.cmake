# Included by tests/CMakeLists.txt (IT_ENV and Python3 come from there).

# ---- load soak (issue 6): only in a sanitizer build, label soak ----
# ctest -L soak runs it for MAILMOAT_SOAK_SECONDS (300: the CI run; 1800:
# the full 30-minute soak). It starts its own Dovecot and mailmoat.
if(MAILMOAT_SANITIZE)
  if(DEFINED ENV{MAILMOAT_SOAK_SECONDS})
    set(_soak_default $ENV{MAILMOAT_SOAK_SECONDS})
  else()
    set(_soak_default 300)
  endif()
  set(MAILMOAT_SOAK_SECONDS ${_soak_default} CACHE STRING "Seconds the it_soak load soak lasts")
  math(EXPR _soak_timeout "${MAILMOAT_SOAK_SECONDS} + 300")
  add_test(NAME it_soak
    COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/soak.py
            --seconds ${MAILMOAT_SOAK_SECONDS})
  # COST: with ctest -j it starts first, beside the fuzzers, not after them
  set_tests_properties(it_soak PROPERTIES LABELS soak TIMEOUT ${_soak_timeout} COST 10000
    ENVIRONMENT "${IT_ENV}")
endif()

# ---- valgrind memcheck over the integration suite (label valgrind) ----
# -DMAILMOAT_VALGRIND=ON on a build without sanitizers (gcc is fine), then
# ctest -L valgrind: every integration test again as vg_NAME, each mailmoat
# the harness starts running under memcheck (deploy/lib/mmharness.py,
# MAILMOAT_WRAPPER); a memcheck error or a definite leak makes mailmoat exit
# 99 and fails the test. Slow (memcheck is ~20x): give it an hour or more.
option(MAILMOAT_VALGRIND "Register the integration suite under valgrind (ctest -L valgrind)" OFF)
if(MAILMOAT_VALGRIND)
  if(MAILMOAT_SANITIZE)
    message(FATAL_ERROR "MAILMOAT_VALGRIND needs a build without MAILMOAT_SANITIZE")
  endif()
  find_program(VALGRIND_BIN valgrind REQUIRED)
  set(MAILMOAT_VALGRIND_SLOWDOWN 20 CACHE STRING "Time-out factor for mailmoat under valgrind")
  set(MAILMOAT_VALGRIND_TIME_SCALE 5 CACHE STRING "Factor for the tests' client socket time-outs under valgrind")
  set(_vg_wrapper "${VALGRIND_BIN} --tool=memcheck --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite --num-callers=30 --suppressions=${CMAKE_CURRENT_SOURCE_DIR}/valgrind.supp")
  foreach(py ${IT_TESTS})
    get_filename_component(name ${py} NAME_WE)
    add_test(NAME vg_${name}
      COMMAND ${Python3_EXECUTABLE} -m unittest -v ${name}
      WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
    set_tests_properties(vg_${name} PROPERTIES FIXTURES_REQUIRED dovecot
      LABELS valgrind TIMEOUT 7200
      ENVIRONMENT "${IT_ENV};MAILMOAT_WRAPPER=${_vg_wrapper};MAILMOAT_WRAPPER_SLOWDOWN=${MAILMOAT_VALGRIND_SLOWDOWN};MAILMOAT_TIME_SCALE=${MAILMOAT_VALGRIND_TIME_SCALE}")
  endforeach()
endif()
