#!/usr/bin/env python3
"""Builds a synthetic ClamAV signature database for load and swap benchmarks.

  make_sigdb.py DIR [--hashes N] [--bodies M] [--seed S] [--no-testsigs]

DIR gets (created if needed, files replaced):

  synth.hdb  N MD5 hash signatures, `md5:size:Name`: the MD5 of 32 random
             bytes each, with a random file size from 1 KiB to 8 MiB (so
             most scanned objects fall in a size bucket and get hashed,
             as with the real main/daily databases);
  synth.ndb  M body signatures, `Name:0:*:HEX`, each a random string of
             16 to 32 bytes (static patterns: real Aho-Corasick trie work
             for cl_engine_compile);
  mailmoat-test.hdb, mailmoat-test.ndb  a copy of scanners/testsigs (EICAR
             and the clamav-testfiles hashes), so malicious test mail is
             still caught; --no-testsigs leaves them out.

The defaults (1,900,000 + 100,000) make about 2,000,000 signatures. The same
seed gives the same files byte for byte. Generation streams to the files
(about 130 MB for the defaults). Prints the counts, sizes and time taken.
"""
import argparse
import hashlib
import os
import random
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("MAILMOAT_SRC") or os.path.abspath(os.path.join(HERE, "..", ".."))
TESTSIGS = os.path.join(SRC, "scanners", "testsigs")

CHUNK = 65536       # signatures per write


def _write_atomic(path, produce):
    """produce(file) writes the content; the file appears under its name
    only when complete (a temp name, then a rename, as freshclam does)."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w", encoding="ascii", newline="\n") as f:
        produce(f)
    os.replace(tmp, path)
    return os.path.getsize(path)


def write_hdb(path, n, rnd):
    md5 = hashlib.md5
    randbytes = rnd.randbytes
    randint = rnd.randint

    def produce(f):
        i = 0
        while i < n:
            k = min(CHUNK, n - i)
            f.write("".join("%s:%d:Mailmoat.Synth.Hash.%07d\n"
                            % (md5(randbytes(32)).hexdigest(), randint(1024, 8 << 20), i + j)
                            for j in range(k)))
            i += k
    return _write_atomic(path, produce)


def write_ndb(path, m, rnd):
    randbytes = rnd.randbytes
    randint = rnd.randint

    def produce(f):
        i = 0
        while i < m:
            k = min(CHUNK, m - i)
            f.write("".join("Mailmoat.Synth.Body.%07d:0:*:%s\n"
                            % (i + j, randbytes(randint(16, 32)).hex())
                            for j in range(k)))
            i += k
    return _write_atomic(path, produce)


def make(dirpath, hashes=1900000, bodies=100000, seed=20261129, testsigs=True):
    """Builds the database in dirpath; returns a dict of figures."""
    os.makedirs(dirpath, exist_ok=True)
    t0 = time.monotonic()
    # two independent streams, so changing one count keeps the other file
    hdb_size = write_hdb(os.path.join(dirpath, "synth.hdb"), hashes,
                         random.Random("%s-hdb" % seed))
    ndb_size = write_ndb(os.path.join(dirpath, "synth.ndb"), bodies,
                         random.Random("%s-ndb" % seed))
    extra = 0
    extra_bytes = 0
    for fn in ("mailmoat-test.hdb", "mailmoat-test.ndb"):
        dst = os.path.join(dirpath, fn)
        if testsigs:
            shutil.copyfile(os.path.join(TESTSIGS, fn), dst)
            with open(dst) as f:
                extra += sum(1 for line in f if line.strip())
            extra_bytes += os.path.getsize(dst)
        elif os.path.exists(dst):
            os.unlink(dst)
    return {"dir": dirpath, "hashes": hashes, "bodies": bodies, "testsigs": extra,
            "signatures": hashes + bodies + extra, "hdb_bytes": hdb_size,
            "ndb_bytes": ndb_size, "bytes": hdb_size + ndb_size + extra_bytes,
            "seconds": time.monotonic() - t0, "seed": seed}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--hashes", type=int, default=1900000, help="MD5 signatures (.hdb)")
    ap.add_argument("--bodies", type=int, default=100000, help="body signatures (.ndb)")
    ap.add_argument("--seed", default="20261129")
    ap.add_argument("--no-testsigs", action="store_true",
                    help="leave out the copy of scanners/testsigs")
    a = ap.parse_args()
    r = make(a.dir, a.hashes, a.bodies, a.seed, not a.no_testsigs)
    print("sigdb dir=%s seed=%s" % (r["dir"], r["seed"]))
    print("sigdb hdb_signatures=%d hdb_bytes=%d" % (r["hashes"], r["hdb_bytes"]))
    print("sigdb ndb_signatures=%d ndb_bytes=%d" % (r["bodies"], r["ndb_bytes"]))
    print("sigdb testsigs=%d" % r["testsigs"])
    print("sigdb signatures=%d bytes=%d seconds=%.1f" % (r["signatures"], r["bytes"], r["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
