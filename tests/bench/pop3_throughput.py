#!/usr/bin/env python3
"""POP3 throughput through mailmoat against baselines measured in the same run.

A real Dovecot on loopback serves one mailbox (MESSAGES messages, sizes from
2 KiB to 256 KiB, a few malicious). The same client downloads the whole
mailbox (every message RETR'd, one after the other, and again pipelined)
directly from Dovecot and through mailmoat; the raw scan rate is libclamav
on the same corpus in one process (bench_scan). Figures are printed as
ratios against those baselines, best of ROUNDS.

  python3 tests/bench/pop3_throughput.py [--messages N] [--rounds R]
Environment: MAILMOAT_BIN, MAILMOAT_BENCH_SCAN (the bench_scan binary).

Caveat: libclamav keeps a cache of clean files' hashes per engine, so from
the second round on, both bench_scan's passes and mailmoat's scans of the
same messages are mostly cache hits; the scan figures here are warm-cache
figures. tests/bench/run.py (the suite) scans every message cold.
"""
import argparse
import os
import poplib
import random
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "deploy", "lib"))
import mmharness as h  # noqa: E402


def corpus(n, seed=7):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        if i % 25 == 12:
            out.append(h.msg_eicar_attachment(to="bench@example.test", n=i))
            continue
        size = int(2048 * (128 ** rnd.random()))  # 2 KiB .. 256 KiB, log-uniform
        body = "".join(rnd.choice("abcdefghij klmnopqrstuvwxyz.,\n") for _ in range(size))
        out.append(h.msg_plain(to="bench@example.test", n=i, subject="bench %d" % i,
                               body=body))
    return out


def download_serial(port):
    p = poplib.POP3(h.HOST, port, timeout=120)
    p.user("bench")
    p.pass_("benchpw")
    count, _ = p.stat()
    total = 0
    for i in range(1, count + 1):
        total += sum(len(x) + 2 for x in p.retr(i)[1])
    p.quit()
    return count, total


def download_pipelined(port, count):
    s = socket.create_connection((h.HOST, port))
    s.settimeout(120)
    cmds = b"USER bench\r\nPASS benchpw\r\n" + b"".join(
        b"RETR %d\r\n" % i for i in range(1, count + 1)) + b"QUIT\r\n"
    s.sendall(cmds)
    total = 0
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        total += len(d)
    s.close()
    return total


def best_of(rounds, fn):
    best = None
    for _ in range(rounds):
        t0 = time.monotonic()
        fn()
        dt = time.monotonic() - t0
        best = dt if best is None or dt < best else best
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="mailmoat-bench-")
    h.make_traversable(work)
    msgs = corpus(a.messages)
    dv = h.Dovecot(os.path.join(work, "dovecot"), {"bench": "benchpw"})
    for m in msgs:
        dv.add_message("bench", m)
    # the scan baseline reads the bytes the proxy scans: CRLF lines, as served
    cdir = os.path.join(work, "corpus")
    os.makedirs(cdir)
    files = []
    for i, m in enumerate(msgs):
        files.append(os.path.join(cdir, "%04d.eml" % i))
        with open(files[-1], "wb") as f:
            f.write(m.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    dv.start()
    mm = None
    try:
        mm = h.Mailmoat(os.path.join(work, "mailmoat"), [("pop3", dv.pop3_port)],
                        log_level="warn").start()
        count, size = download_serial(dv.pop3_port)  # warm-up: page cache, indexes
        download_serial(mm.port)
        t_direct = best_of(a.rounds, lambda: download_serial(dv.pop3_port))
        t_proxy = best_of(a.rounds, lambda: download_serial(mm.port))
        t_direct_p = best_of(a.rounds, lambda: download_pipelined(dv.pop3_port, count))
        t_proxy_p = best_of(a.rounds, lambda: download_pipelined(mm.port, count))
        scan_bin = os.environ.get("MAILMOAT_BENCH_SCAN")
        scan_line = None
        if scan_bin:
            r = subprocess.run([scan_bin, h.testsigs_dir(), str(a.rounds)] + files,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if r.returncode != 0:
                raise RuntimeError("bench_scan failed: %s" % r.stderr.decode()[-2000:])
            scan_line = r.stdout.decode().strip()
        print("corpus messages=%d bytes=%d" % (count, size))
        print("direct_serial   msgs_per_s=%.1f" % (count / t_direct))
        print("proxy_serial    msgs_per_s=%.1f ratio_vs_direct=%.2f" % (
            count / t_proxy, t_direct / t_proxy))
        print("direct_pipelined msgs_per_s=%.1f" % (count / t_direct_p))
        print("proxy_pipelined  msgs_per_s=%.1f ratio_vs_direct=%.2f" % (
            count / t_proxy_p, t_direct_p / t_proxy_p))
        if scan_line:
            print(scan_line)
            rate = float(scan_line.rsplit("msgs_per_s=", 1)[1])
            print("proxy_serial ratio_vs_raw_scan=%.2f" % ((count / t_proxy) / rate))
        rss, hwm = mm.read_rss()
        print("proxy peak_rss_kib=%s" % hwm)
    finally:
        if mm:
            mm.stop()
        dv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
