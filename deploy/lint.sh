#!/usr/bin/env bash
# Static analysis of mailmoat's C code, as CI runs it:
#
#   bash deploy/lint.sh [BUILD_DIR]        (default: build-lint)
#
# 1. configures BUILD_DIR (Debug: assert() is visible to the analyzer; tests
#    off: only the daemon's own sources) with a compile database;
# 2. clang-tidy (.clang-tidy at the root: the checks and why) on every .c
#    file in proxy/, policy/ and scanners/, one process per file, $LINT_JOBS
#    (default 2) at a time;
# 3. cppcheck (deploy/lint/cppcheck.supp: the suppressions and why) on the
#    same compile database.
# Exits non-zero on any finding of either tool, after a summary.
# Needs: clang-tidy (14, Debian 12 package clang-tidy), cppcheck (2.10).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
SRC=$(pwd)
BUILD=${1:-build-lint}
JOBS=${LINT_JOBS:-2}
OUT=$(mktemp -d /tmp/mailmoat-lint-XXXXXX)
trap 'rm -rf "$OUT"' EXIT

for tool in clang-tidy cppcheck cmake; do
	if ! command -v "$tool" >/dev/null; then
		echo "lint.sh: $tool not found (apt-get install clang-tidy cppcheck)" >&2
		exit 2
	fi
done

T0=$(date +%s)
echo "== lint: configure $BUILD (compile database)"
if ! cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug -DMAILMOAT_TESTS=OFF \
	-DCMAKE_EXPORT_COMPILE_COMMANDS=ON >"$OUT/cmake.log" 2>&1; then
	cat "$OUT/cmake.log" >&2
	exit 2
fi
DB="$BUILD/compile_commands.json"

mapfile -t FILES < <(find proxy policy scanners -name '*.c' | sort)
# every file must be in the database: clang-tidy would guess its flags
for f in "${FILES[@]}"; do
	if ! grep -q "\"file\": \"$SRC/$f\"" "$DB"; then
		echo "lint.sh: $f is not in $DB (not built by CMakeLists.txt?)" >&2
		exit 2
	fi
done

echo "== lint: clang-tidy $(clang-tidy --version | sed -n 's/.*version \([0-9.]*\).*/\1/p' | head -1)," \
	"${#FILES[@]} files, $JOBS at a time"
T1=$(date +%s)
# One file per process: clang-tidy 14 given several files in one run
# carries analyzer state across them (a va_list false positive appears).
# shellcheck disable=SC2016 # $1..$3 are the inner shell's arguments
printf '%s\n' "${FILES[@]}" |
	xargs -P "$JOBS" -I{} sh -c 'o="$3/tidy.$(echo "$2" | tr / _)"
		clang-tidy -p "$1" --quiet "$2" >"$o.txt" 2>&1
		echo $? >"$o.rc"' _ "$BUILD" {} "$OUT"
cat "$OUT"/tidy.*.txt >"$OUT/tidy.txt"
# a file that made clang-tidy fail (a crash, a compile error) counts too
TIDY_FAILED=$(grep -Lx 0 "$OUT"/tidy.*.rc | wc -l)
TIDY_S=$(($(date +%s) - T1))
# "file:line:col: error: message [check,-warnings-as-errors]" (WarningsAsErrors
# turns every finding into an error); also compiler errors (no check name)
TIDY_N=$(grep -cE '^[^ ]+:[0-9]+:[0-9]+: (warning|error):' "$OUT/tidy.txt")
if [ "$TIDY_N" -gt 0 ] || [ "$TIDY_FAILED" -gt 0 ]; then
	grep -vE '^[0-9]+ (warnings?|errors?) (generated|treated as errors)|^Suppressed [0-9]+ warnings|^Use -header-filter|^Error while processing' \
		"$OUT/tidy.txt"
fi

echo "== lint: cppcheck $(cppcheck --version | sed 's/^Cppcheck //')"
T2=$(date +%s)
cppcheck --project="$DB" --std=c11 --library=posix \
	--enable=warning,performance,portability --inline-suppr \
	--suppressions-list=deploy/lint/cppcheck.supp -j "$JOBS" --quiet \
	--template='{file}:{line}:{column}: {severity}: {message} [{id}]' \
	--error-exitcode=1 >"$OUT/cppcheck.txt" 2>&1
CPPCHECK_RC=$?
CPPCHECK_S=$(($(date +%s) - T2))
CPPCHECK_N=$(grep -cE '^[^ ]+:[0-9]+:[0-9]+: ' "$OUT/cppcheck.txt")
if [ "$CPPCHECK_N" -gt 0 ] || [ "$CPPCHECK_RC" -ne 0 ]; then
	cat "$OUT/cppcheck.txt"
fi

echo "== lint summary ($(($(date +%s) - T0)) s)"
echo "   clang-tidy: $TIDY_N finding(s) in ${#FILES[@]} files, $TIDY_FAILED file(s) failed (${TIDY_S} s)"
if [ "$TIDY_N" -gt 0 ]; then
	grep -oE '^[^ ]+:[0-9]+:[0-9]+: (warning|error): .*\[[^],]+' "$OUT/tidy.txt" |
		sed 's/.*\[//' | sort | uniq -c | sort -rn | sed 's/^/     /'
fi
echo "   cppcheck:   $CPPCHECK_N finding(s) (${CPPCHECK_S} s)"
if [ "$CPPCHECK_N" -gt 0 ]; then
	grep -oE '\[[A-Za-z0-9_]+\]$' "$OUT/cppcheck.txt" | sort | uniq -c | sort -rn |
		sed 's/^/     /'
fi
if [ "$TIDY_N" -gt 0 ] || [ "$TIDY_FAILED" -gt 0 ] || [ "$CPPCHECK_N" -gt 0 ] ||
	[ "$CPPCHECK_RC" -ne 0 ]; then
	echo "== lint: FAILED"
	exit 1
fi
echo "== lint: clean"
