# The benchmark suite of tests/bench/run.py (issue 6): proxy overhead against
# direct Dovecot, nginx and perdition; scanning efficiency against raw
# libclamav; latency hiding; the test set and a synthetic 2 M signature
# database. (run.py alone also runs tests/bench/concurrency.py; here that has
# its own ctest entry, bench_concurrency, so bench_suite leaves it out.)
# Fails when a ratio is more than 10 % worse than tests/bench/baseline.json.
# Included by tests/CMakeLists.txt; registered only with -DMAILMOAT_BENCH=ON
# (ctest -L bench). Needs the Debian packages nginx-light (or nginx),
# libnginx-mod-mail, perdition and isync (peer rows fail without them).
if(MAILMOAT_BENCH)
  add_test(NAME bench_suite
    COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/bench/run.py --check-baseline --no-concurrency)
  set_tests_properties(bench_suite PROPERTIES LABELS bench TIMEOUT 5400
    ENVIRONMENT "${IT_ENV};MAILMOAT_BENCH_SCAN=$<TARGET_FILE:bench_scan>")
  # the corpus generator and the peers alone (quick checks of the tools)
  add_test(NAME bench_corpus
    COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/bench/corpus.py --quick)
  add_test(NAME bench_peers
    COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/bench/peers.py)
  set_tests_properties(bench_corpus bench_peers PROPERTIES LABELS bench TIMEOUT 300
    ENVIRONMENT "${IT_ENV}")
endif()
