# Concurrency and memory benchmark (issue 6): idle IMAP sessions, active
# POP3 downloads with the added latency, peak RSS with 50 MiB messages.
# Included by tests/CMakeLists.txt; registered only with -DMAILMOAT_BENCH=ON.
if(MAILMOAT_BENCH)
  add_test(NAME bench_concurrency
    COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/bench/concurrency.py
            --json ${CMAKE_BINARY_DIR}/bench-concurrency.json)
  set_tests_properties(bench_concurrency PROPERTIES LABELS bench TIMEOUT 3600
    ENVIRONMENT "${IT_ENV}")
endif()
