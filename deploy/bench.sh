#!/usr/bin/env bash
# mailmoat benchmarks. On a fresh Debian 12 machine, as root, from a clone:
#
#   bash deploy/bench.sh [run.py options]     (e.g. --quick --sigdb test)
#
# Installs what it needs (apt-get; the packaged nginx and perdition services
# are never started: the bench runs its own on loopback ports), builds a
# Release tree in build-bench, then runs tests/bench/run.py, the one
# command that prints every figure and ratio of docs/performance.md in one
# table (default: --sigdb both, about 20 minutes on 2 cores).
set -euo pipefail

cd "$(dirname "$0")/.."
SRC=$(pwd)

PACKAGES=(build-essential cmake pkg-config libuv1-dev libssl-dev libclamav-dev check
          libyaml-dev libgmime-3.0-dev libsqlite3-dev libcurl4-openssl-dev dovecot-core
          dovecot-pop3d dovecot-imapd clamav-testfiles python3 isync openssl
          nginx-light libnginx-mod-mail perdition)

if [ "$(id -u)" -ne 0 ]; then
	echo "bench.sh: run as root (it installs packages and starts Dovecot)" >&2
	exit 1
fi

# shellcheck source=deploy/lib/install.sh
. "$SRC/deploy/lib/install.sh"
echo "== installing packages"
mm_install_packages "${PACKAGES[@]}"

echo "== build: Release, benchmarks registered"
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DMAILMOAT_BENCH=ON >/dev/null
cmake --build build-bench -j2 --target mailmoat bench_scan

echo "== tests/bench/run.py $*"
export MAILMOAT_BIN=$SRC/build-bench/mailmoat MAILMOAT_BENCH_SCAN=$SRC/build-bench/tests/bench_scan
exec nice python3 tests/bench/run.py "$@"
