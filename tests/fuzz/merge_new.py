#!/usr/bin/env python3
"""Folds the inputs of a long fuzzing run into the committed seed corpus,
keeping it small: only inputs that reach coverage edges the committed seeds
do not, smallest first, each only if it still adds an edge.

  merge_new.py FUZZER COMMITTED_DIR NEW_DIR... [--max-files N] [--dry-run]

FUZZER is a libFuzzer binary (BUILD/tests/fuzz_X). libFuzzer's own
`-merge=1` keeps every input with a new *feature* (edge hit counts, value
profiles): hundreds of files after ten minutes. This runs the same merge
into a scratch directory only to get libFuzzer's per-input edge list (the
COV lines of -merge_control_file), then picks greedily by edges. New seeds
are named by their SHA-1, like libFuzzer names them. Prints what it added.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile


def run_merge(a, tmp, tag, dirs):
    """[(path, size, {edges first reached})] in libFuzzer's order."""
    cf = os.path.join(tmp, tag + ".control")
    out = os.path.join(tmp, tag + ".out")
    os.mkdir(out)
    r = subprocess.run(["nice", "-n", "19", a.fuzzer, "-merge=1", "-max_len=%d" % a.max_len,
                        "-merge_control_file=" + cf, out] + dirs,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.stderr.write(r.stderr.decode("utf-8", "replace")[-3000:])
        sys.exit("merge_new.py: the merge run failed (%d)" % r.returncode)
    with open(cf) as f:
        lines = f.read().splitlines()
    nfiles = int(lines[0])
    files = lines[2:2 + nfiles]
    cov = {}
    for line in lines[2 + nfiles:]:
        w = line.split()
        if w and w[0] == "COV":
            cov[int(w[1])] = set(map(int, w[2:]))
    return [(p, os.path.getsize(p), cov.get(i, set())) for i, p in enumerate(files)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fuzzer")
    ap.add_argument("committed")
    ap.add_argument("new", nargs="+")
    ap.add_argument("--max-files", type=int, default=100,
                    help="at most this many new seeds (default 100)")
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="mm-merge-")
    # libFuzzer's COV lines list the edges an input is the first to reach in
    # that run (inputs go smallest first): one run over the committed seeds
    # gives their edges, one over the new inputs each input's own.
    committed_cov = run_merge(a, tmp, "committed", [a.committed])
    new_cov = run_merge(a, tmp, "new", a.new)
    covered = set()
    for _, _, edges in committed_cov:
        covered |= edges
    before = len(covered)
    added = []
    left = 0
    for p, size, edges in new_cov:
        gain = edges - covered
        if not gain:
            continue
        if len(added) >= a.max_files:
            left += len(gain)
            continue
        covered |= gain
        with open(p, "rb") as f:
            data = f.read()
        name = hashlib.sha1(data).hexdigest()
        added.append((name, size, len(gain)))
        if not a.dry_run:
            shutil.copyfile(p, os.path.join(a.committed, name))
    if left:
        print("cap of %d new seeds reached: %d more edges left out" % (a.max_files, left))
    shutil.rmtree(tmp, ignore_errors=True)
    print("%s: %d committed edges, %d after the merge; %d new seeds (%d bytes)" % (
        os.path.basename(a.fuzzer), before, len(covered), len(added), sum(s for _, s, _ in added)))
    for name, size, gain in added:
        print("  + %s  %5d bytes  %3d new edges" % (name, size, gain))


if __name__ == "__main__":
    main()
