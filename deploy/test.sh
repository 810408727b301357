#!/usr/bin/env bash
# mailmoat tests. On a fresh Debian 12 machine, as root, from a clone:
#
#   bash deploy/test.sh
#
# Installs what it needs (apt-get), then:
#   lint:    clang-tidy and cppcheck with the project's configuration
#   build 1: gcc, RelWithDebInfo        -> ctest (unit, fuzz-smoke, integration)
#   build 2: clang, ASan+UBSan, libFuzzer -> ctest (unit, integration), then
#            the 60-second libFuzzer run of every harness and the 5-minute
#            load soak side by side
# Exits non-zero on any failure. .ci/run calls exactly this script.
set -euo pipefail

cd "$(dirname "$0")/.."
SRC=$(pwd)

PACKAGES=(build-essential dpkg-dev cmake pkg-config libuv1-dev libssl-dev libclamav-dev check
          libyaml-dev libgmime-3.0-dev libsqlite3-dev libcurl4-openssl-dev dovecot-core dovecot-pop3d dovecot-imapd
          clamav-testfiles python3 fetchmail curl isync clang libclang-rt-14-dev zip openssl nftables iproute2
          clang-tidy cppcheck util-linux)

if [ "$(id -u)" -ne 0 ]; then
	echo "test.sh: run as root (it installs packages and starts Dovecot)" >&2
	exit 1
fi

# shellcheck source=deploy/lib/install.sh
. "$SRC/deploy/lib/install.sh"
T0=$(date +%s)
echo "== installing packages"
mm_install_packages "${PACKAGES[@]}"

# The static analysis (CPU only, no timing) runs while build 1 compiles;
# the tests wait for it.
echo "== lint: clang-tidy, cppcheck (in the background, log: build-lint.log)"
bash deploy/lint.sh build-lint >build-lint.log 2>&1 &
LINT_PID=$!

echo "== build 1: gcc"
cmake -S . -B build
cmake --build build -j2
if ! wait "$LINT_PID"; then
	cat build-lint.log
	echo "== lint failed" >&2
	exit 1
fi
sed -n '/== lint summary/,$p' build-lint.log
ctest --test-dir build --output-on-failure

echo "== build 2: clang, AddressSanitizer + UndefinedBehaviorSanitizer, libFuzzer"
# A build directory configured with another compiler keeps it: start over.
if [ -f build-asan/CMakeCache.txt ] &&
	! grep -q '^CMAKE_C_COMPILER:[A-Z]*=.*clang' build-asan/CMakeCache.txt; then
	rm -rf build-asan
fi
CC=clang cmake -S . -B build-asan -DMAILMOAT_SANITIZE=ON -DMAILMOAT_FUZZ=ON
cmake --build build-asan -j2

# LeakSanitizer needs ptrace-like access that some sandboxes deny: probe it.
PROBE=$(mktemp -d /tmp/mailmoat-lsan-XXXXXX)
printf 'int main(void) { return 0; }\n' >"$PROBE/p.c"
LEAKS=0
if clang -fsanitize=address "$PROBE/p.c" -o "$PROBE/p" 2>/dev/null &&
	ASAN_OPTIONS=detect_leaks=1 "$PROBE/p" >/dev/null 2>&1; then
	LEAKS=1
fi
rm -rf "$PROBE"
echo "   LeakSanitizer: $([ "$LEAKS" = 1 ] && echo on || echo 'off (does not work here)')"
export ASAN_OPTIONS="detect_leaks=$LEAKS:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ctest --test-dir build-asan --output-on-failure -LE 'fuzz-smoke|soak'
# Time-bound runs, side by side on the 2 cores: the fuzzers (60 s each, two
# at a time) and the soak (mixed POP3/IMAP clients for 5 minutes).
ctest --test-dir build-asan --output-on-failure -L 'fuzz-smoke|soak' -j3

echo "== all tests passed in both builds ($(($(date +%s) - T0)) s)"
