#!/bin/sh
# run_long.sh - runs every libFuzzer harness for N seconds, one at a time
# (nice 19: the CI and development machines have 2 shared cores), and prints
# a table: harness, executions, executions per second, coverage (cov: edges)
# and features (ft:) from libFuzzer's final status lines.
#
#   tests/fuzz/run_long.sh BUILD_DIR [SECONDS] [HARNESS...]
#
# BUILD_DIR is a clang build with -DMAILMOAT_FUZZ=ON (and, usually,
# -DMAILMOAT_SANITIZE=ON). SECONDS defaults to 600 (the issue's 10 minutes).
# New inputs go to BUILD_DIR/fuzz-long/HARNESS/corpus (the committed seeds in
# tests/fuzz/corpus/HARNESS are only read); logs and any crash-* files go to
# BUILD_DIR/fuzz-long/HARNESS/. To fold new coverage back into the committed
# corpus afterwards:
#   fuzz_X -merge=1 -max_len=4096 tests/fuzz/corpus/X BUILD_DIR/fuzz-long/X/corpus
# Exit status: 0 when no harness found anything, 1 otherwise.
set -u

here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run_long.sh BUILD_DIR [SECONDS] [HARNESS...]}
secs=${2:-600}
[ $# -ge 2 ] && shift 2 || shift $#
harnesses=${*:-"pop3_resp pop3_cmd imap_seg imap_fetch tls_hello http_req attach"}
out="$build/fuzz-long"
status=0
rows=""

for h in $harnesses; do
	bin="$build/tests/fuzz_$h"
	if [ ! -x "$bin" ]; then
		echo "run_long.sh: $bin not built (configure with -DMAILMOAT_FUZZ=ON)" >&2
		exit 2
	fi
	dir="$out/$h"
	mkdir -p "$dir/corpus"
	echo "== fuzz_$h for $secs s" >&2
	(cd "$dir" && nice -n 19 "$bin" -max_total_time="$secs" -max_len=4096 \
		-print_final_stats=1 -artifact_prefix="$dir/" \
		corpus "$here/corpus/$h") >"$dir/log" 2>&1
	rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log" | tail -1)
	# the last status line: "#N DONE cov: C ft: F corp: ..."
	last=$(grep -E '^#[0-9]+' "$dir/log" | tail -1)
	cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
	ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
	found=$(ls "$dir" | grep -E '^(crash|leak|timeout|oom)-' | wc -l)
	result=ok
	if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
		result="FOUND($found) rc=$rc"
		status=1
	fi
	rows="$rows$(printf '%-11s %12s %9s %6s %7s  %s' "$h" "${execs:-?}" "${rate:-?}" \
		"${cov:-?}" "${ft:-?}" "$result")
"
done

printf '%-11s %12s %9s %6s %7s  %s\n' harness execs execs/s cov ft result
printf '%s' "$rows"
exit $status
