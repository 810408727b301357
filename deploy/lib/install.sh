# shellcheck shell=bash
# Sourced by deploy/demo.sh and deploy/test.sh (bash).
#
# mm_install_packages PKG...
#   Installs the packages that are not installed yet, quietly. Runs
#   `apt-get update` only when the install fails (a fresh machine's package
#   lists may be missing or stale), then tries once more. Packaged services
#   (Dovecot) are kept from starting during the install: the demo and the
#   tests start their own throwaway instance on loopback ports.
mm_install_packages() {
	local missing=() p
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
	if [ ${#missing[@]} -eq 0 ]; then
		echo "   all $# packages are installed"
		return 0
	fi
	echo "   installing: ${missing[*]}"
	local log prc=/usr/sbin/policy-rc.d made_prc=0 rc=0
	log=$(mktemp /tmp/mailmoat-apt-XXXXXX.log)
	if [ ! -e "$prc" ]; then
		printf '#!/bin/sh\n# mailmoat install: no service starts\nexit 101\n' >"$prc"
		chmod 755 "$prc"
		made_prc=1
	fi
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -q "${missing[@]}" </dev/null >"$log" 2>&1; then
		echo "   first try failed; apt-get update and again"
		if ! { apt-get update -q </dev/null >>"$log" 2>&1 &&
			apt-get install -y -q "${missing[@]}" </dev/null >>"$log" 2>&1; }; then
			rc=1
		fi
	fi
	[ "$made_prc" = 1 ] && rm -f "$prc"
	if [ "$rc" -ne 0 ]; then
		echo "package installation failed; the end of apt-get's output:" >&2
		tail -n 30 "$log" >&2
		rm -f "$log"
		return 1
	fi
	rm -f "$log"
	return 0
}
