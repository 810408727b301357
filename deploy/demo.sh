#!/usr/bin/env bash
# mailmoat demo. On a fresh Debian 12 machine, as root, from a clone:
#
#   bash deploy/demo.sh
#
# Installs what it needs (apt-get), builds mailmoat, starts a throwaway
# Dovecot on 127.0.0.1 with a mailbox of six messages (two malicious), and
# downloads it through mailmoat twice: with on_malicious: abort (the
# download stalls at the same message on every retry) and with quarantine
# (every message arrives, the malicious ones as notices). Uses only a temp
# directory and leaves nothing running.
set -euo pipefail

cd "$(dirname "$0")/.."
SRC=$(pwd)

PACKAGES=(build-essential cmake pkg-config libuv1-dev libssl-dev libclamav-dev check
          libyaml-dev libgmime-3.0-dev libsqlite3-dev libcurl4-openssl-dev dovecot-core dovecot-pop3d dovecot-imapd
          clamav-testfiles python3 fetchmail curl isync)

if [ "$(id -u)" -ne 0 ]; then
	echo "demo.sh: run as root (it installs packages and starts Dovecot)" >&2
	exit 1
fi

# shellcheck source=deploy/lib/install.sh
. "$SRC/deploy/lib/install.sh"
echo "== installing packages (quietly)"
mm_install_packages "${PACKAGES[@]}"

echo "== building mailmoat"
cmake -S . -B build >/dev/null
cmake --build build -j2 >/dev/null

WORK=$(mktemp -d /tmp/mailmoat-demo-XXXXXX)
chmod 755 "$WORK"
cleanup() {
	# demo.py stops everything itself; this is the safety net.
	for f in "$WORK/mailmoat.pid" "$WORK/dovecot.pid"; do
		if [ -s "$f" ]; then
			pid=$(cat "$f")
			if kill -0 "$pid" 2>/dev/null; then
				kill "$pid" 2>/dev/null || true
				for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			fi
		fi
	done
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

python3 "$SRC/deploy/demo.py" --workdir "$WORK" --bin "$SRC/build/mailmoat"
