#!/usr/bin/env python3
"""mailmoat's benchmark suite: one command, one table of figures and ratios
measured in the same run (absolute times on a shared machine are noise;
the ratios are the result).

  python3 tests/bench/run.py [--quick] [--sigdb test|2m|both]
                             [--check-baseline] [--update-baseline] [--json OUT]
Environment: MAILMOAT_BIN (default build/mailmoat), MAILMOAT_BENCH_SCAN
(the bench_scan binary; default: tests/bench_scan next to MAILMOAT_BIN).

A real Dovecot on loopback serves USERS mailboxes made by corpus.py (each
user its own seed: different messages, so no scan is ever answered from a
cache). For each signature database (the shipped test set; a synthetic one
of about 2 million signatures made by make_sigdb.py and cached in
CACHE_DIR between runs):

  overhead   user 0's whole mailbox, ROUNDS (3) times, the contenders
             interleaved (the order rotates each round): direct to Dovecot,
             through mailmoat with `scan: false`, through the nginx mail
             proxy and through perdition (peers.py). Three clients: POP3
             (login, STAT, then RETR 1..n one at a time, each response read
             whole before the next command), IMAP serial (EXAMINE INBOX,
             FETCH n (BODY.PEEK[]) one at a time) and mbsync (isync, a full
             pull into a new maildir). Ratio: direct time / contender time
             (median of the rounds); mailmoat against each peer likewise.
  scan       mailmoat with scanning, USERS (4) POP3 clients downloading
             their own mailboxes at once (both cores busy), against
             bench_scan (libclamav in one process, RAW_THREADS threads: 4, as
             many as mailmoat's scan workers (libuv's pool), so that neither
             gets a bigger share of a shared machine; the engine limits the
             daemon uses) on the same messages (CRLF .eml files: the bytes
             Dovecot serves). Also their CPU time (the proxy process's,
             from /proc, against bench_scan's own): what the same scans
             cost, whatever else runs on the machine. libclamav keeps a cache of clean files'
             hashes per engine, so every round starts a fresh mailmoat and a
             fresh bench_scan: each message is scanned cold, as new mail is.
             Ratios: mailmoat MB/s / raw MB/s; raw CPU / mailmoat CPU.
  (scan and latency: SCAN_ROUNDS rounds, 3, quick 1)
  latency    one serial POP3 client, user 0's mailbox through a fresh
             mailmoat with scanning: its time against max(direct download,
             raw one-thread scan of the same messages) (target <= 1.15) and
             against their sum.

Then tests/bench/concurrency.py --json (when that file exists) adds its
rows. --check-baseline compares the ratios with tests/bench/baseline.json
(per mode, full or quick) and exits 1 when one is more than 10 % worse;
--update-baseline writes the run's ratios there.
"""
import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "deploy", "lib"))
sys.path.insert(0, HERE)
import mmharness as h  # noqa: E402
import corpus  # noqa: E402
import make_sigdb  # noqa: E402
import peers  # noqa: E402

PASSWORD = "benchpw"
BASELINE = os.path.join(HERE, "baseline.json")
CACHE_DIR = os.environ.get("MAILMOAT_BENCH_CACHE", "/tmp/mailmoat-bench-cache")
TOLERANCE = 0.10
MEMORY_LIMIT = 4 << 20          # spool.memory_limit of the mailmoat under test
CONTENDERS = ("direct", "mailmoat", "nginx", "perdition")


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# ------------------------------------------------------------- clients ----

class Conn:
    """A plain socket with a read buffer (the fast client side: no line
    splitting of message bodies, so the client costs little CPU)."""

    def __init__(self, port, timeout=600):
        self.s = socket.create_connection((h.HOST, port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self):
        self.s.close()

    def send(self, line):
        self.s.sendall(line.encode() + b"\r\n")

    def _more(self):
        d = self.s.recv(1 << 18)
        if not d:
            raise RuntimeError("connection closed")
        self.buf += d

    def line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return out
            self._more()

    def exact(self, n):
        """Reads n bytes (discarded); returns n."""
        got = min(n, len(self.buf))
        del self.buf[:got]
        while got < n:
            d = self.s.recv(min(1 << 18, n - got))
            if not d:
                raise RuntimeError("connection closed in a literal")
            got += len(d)
        return n

    def multi(self):
        """The body of a POP3 multi-line response up to and with the final
        CRLF.CRLF; returns its length."""
        total = 0
        tail = b"\r\n"
        buf = bytes(self.buf)
        self.buf = bytearray()
        while True:
            w = tail + buf
            j = w.find(b"\r\n.\r\n")
            if j >= 0:
                end = j + 5 - len(tail)
                self.buf = bytearray(buf[end:])
                return total + end
            total += len(buf)
            tail = w[-4:]
            buf = self.s.recv(1 << 18)
            if not buf:
                raise RuntimeError("connection closed in a multi-line response")


def pop3_download(port, user):
    """Logs in, STAT, RETR 1..n serially, QUIT. Returns (messages, bytes)."""
    c = Conn(port)
    try:
        if not c.line().startswith(b"+OK"):
            raise RuntimeError("no POP3 greeting")
        for cmd in ("USER " + user, "PASS " + PASSWORD):
            c.send(cmd)
            st = c.line()
            if not st.startswith(b"+OK"):
                raise RuntimeError("%s: %r" % (cmd.split()[0], st))
        c.send("STAT")
        st = c.line()
        n = int(st.split()[1])
        total = 0
        for i in range(1, n + 1):
            c.send("RETR %d" % i)
            st = c.line()
            if not st.startswith(b"+OK"):
                raise RuntimeError("RETR %d: %r" % (i, st))
            total += c.multi()
        c.send("QUIT")
        c.line()
        return n, total
    finally:
        c.close()


def imap_download(port, user):
    """LOGIN, EXAMINE INBOX, FETCH i (BODY.PEEK[]) for every message one at
    a time, LOGOUT. Returns (messages, literal bytes)."""
    c = Conn(port)
    tagn = [0]

    def command(cmd):
        tagn[0] += 1
        tag = b"t%d" % tagn[0]
        c.send(tag.decode() + " " + cmd)
        lits = 0
        exists = None
        while True:
            ln = c.line()
            if ln.startswith(tag + b" "):
                if not ln.startswith(tag + b" OK"):
                    raise RuntimeError("%s: %r" % (cmd.split()[0], ln))
                return lits, exists
            if ln.endswith(b" EXISTS"):
                exists = int(ln.split()[1])
            while ln.endswith(b"}"):
                n = int(ln[ln.rindex(b"{") + 1:-1])
                lits += c.exact(n)
                ln = c.line()
    try:
        if not c.line().startswith(b"* OK"):
            raise RuntimeError("no IMAP greeting")
        command("LOGIN %s %s" % (user, PASSWORD))
        _, n = command("EXAMINE INBOX")
        total = 0
        for i in range(1, (n or 0) + 1):
            total += command("FETCH %d (BODY.PEEK[])" % i)[0]
        command("LOGOUT")
        return n or 0, total
    finally:
        c.close()


def mbsync_download(port, user, work):
    home = tempfile.mkdtemp(prefix="mbsync-", dir=work)
    os.rmdir(home)
    try:
        r = h.run_mbsync(home, port, user, PASSWORD, timeout=900)
        if r is None:
            raise RuntimeError("mbsync not installed (Debian: isync)")
        rc, out, msgs, took = r
        if rc != 0:
            raise RuntimeError("mbsync failed (%d): %s" % (rc, out[-500:]))
        return len(msgs), sum(len(m) for m in msgs.values()), took
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --------------------------------------------------------------- helpers ----

def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except OSError:
        mem = 0

    def first_line(argv):
        return peers.version(argv) or "?"
    mm = h.mailmoat_bin()
    return [("nproc", str(os.cpu_count())), ("cpu", cpu), ("ram", "%d MiB" % mem),
            ("kernel", platform.release()),
            ("mailmoat", "%s (%s)%s" % (first_line([mm, "--version"]), mm,
                                       ", ASan build" if h.binary_is_sanitized(mm) else "")),
            ("dovecot", first_line(["dovecot", "--version"])),
            ("nginx", peers.nginx_version() or "not installed"),
            ("perdition", peers.perdition_version() or "not installed"),
            ("libclamav", peers.package_version("libclamav12") or "?"),
            ("isync", peers.package_version("isync") or "not installed"),
            ("python", platform.python_version()),
            ("load average", open("/proc/loadavg").read().split(" ", 3)[:3].__str__())]


def scan_bin():
    b = os.environ.get("MAILMOAT_BENCH_SCAN")
    if b:
        return b
    return os.path.join(os.path.dirname(os.path.abspath(h.mailmoat_bin())), "tests", "bench_scan")


def bench_scan(dbdir, threads, files):
    """One fresh bench_scan process, one pass (a cold libclamav cache).
    Returns a dict of its figures."""
    r = subprocess.run(["nice", "-n", "0", scan_bin(), "-t", str(threads), "-m", str(MEMORY_LIMIT),
                        dbdir, "1"] + files, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError("bench_scan failed: %s" % r.stderr.decode()[-2000:])
    line = r.stdout.decode().strip().splitlines()[-1]
    return {k: float(v) for k, v in (w.split("=", 1) for w in line.split()[1:])}


def sigdb_dir(label, work):
    if label == "test":
        d = os.path.join(work, "db-test")
        if not os.path.isdir(d):
            os.makedirs(d)
            for fn in ("mailmoat-test.hdb", "mailmoat-test.ndb"):
                shutil.copy(os.path.join(h.testsigs_dir(), fn), d)
        return d
    d = os.path.join(CACHE_DIR, "sigdb-2m")
    stamp = os.path.join(d, ".complete.json")
    want = {"hashes": 1900000, "bodies": 100000, "seed": "20261129"}
    try:
        with open(stamp) as f:
            if json.load(f) == want:
                return d
    except (OSError, ValueError):
        pass
    log("generating the 2 M signature database in %s" % d)
    g = make_sigdb.make(d, want["hashes"], want["bodies"], want["seed"])
    h.make_traversable(d)
    # the stamp is a dot file: libclamav ignores it
    with open(stamp, "w") as f:
        json.dump(want, f)
    log("sigdb: %d signatures, %.0f MB, %.1f s" % (g["signatures"], g["bytes"] / 1e6, g["seconds"]))
    return d


def median(xs):
    return statistics.median(xs) if xs else float("nan")


class Table:
    def __init__(self):
        self.rows = []

    def add(self, name, value, unit, ratio=None, target=None, ok=None, better=None, note=""):
        self.rows.append({"name": name, "value": value, "unit": unit, "ratio": ratio,
                          "target": target, "ok": ok, "better": better, "note": note})

    def fail(self, name, err):
        self.add(name, None, "", note="FAILED: %s" % err, ok=False)


def fmt(v, unit):
    if v is None:
        return "-"
    if isinstance(v, float):
        if unit == "s":
            return "%.3f s" % v
        return ("%.2f %s" % (v, unit)).strip()
    return ("%s %s" % (v, unit)).strip()


# ----------------------------------------------------------- the benches ----

def start_mailmoat(work, tag, dv, dbdir, scan, limits=None):
    mm = h.Mailmoat(os.path.join(work, "mm-%s" % tag), [("pop3", dv.pop3_port), ("imap", dv.imap_port)],
                    database=dbdir, memory_limit="4M", log_level="info",
                    policy=None if scan else {"scan": False}, limits=limits)
    return mm.start(timeout=300)


def overhead(tbl, label, work, dv, dbdir, users, rounds, peer_ports, expect):
    """Proxy overhead, scanning off. Returns the direct POP3 median (s)."""
    mm = start_mailmoat(work, label + "-off", dv, dbdir, scan=False)
    try:
        ports = {"direct": (dv.pop3_port, dv.imap_port),
                 "mailmoat": (mm.ports[0], mm.ports[1])}
        ports.update(peer_ports)
        names = [c for c in CONTENDERS if c in ports]
        workloads = ("pop3", "imap", "mbsync")
        times = {(w, c): [] for w in workloads for c in names}
        errors = {}
        user = users[0]
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for w in workloads:
                for c in order:
                    if (w, c) in errors:
                        continue
                    p3, im = ports[c]
                    try:
                        t0 = time.monotonic()
                        if w == "pop3":
                            n, b = pop3_download(p3, user)
                            dt = time.monotonic() - t0
                        elif w == "imap":
                            n, b = imap_download(im, user)
                            dt = time.monotonic() - t0
                        else:
                            n, b, dt = mbsync_download(im, user, work)
                        if n != expect:
                            raise RuntimeError("%d messages, expected %d" % (n, expect))
                        times[(w, c)].append(dt)
                    except Exception as e:  # noqa: BLE001 - shown in the table
                        errors[(w, c)] = "%s: %s" % (type(e).__name__, e)
            log("%s overhead round %d/%d done" % (label, r + 1, rounds))
        nbytes = corpus_bytes[user]
        for w in workloads:
            d = median(times[(w, "direct")])
            for c in names:
                key = "%s.overhead.%s.%s" % (label, w, c)
                if (w, c) in errors:
                    tbl.fail(key, errors[(w, c)])
                    continue
                t = median(times[(w, c)])
                if c == "direct":
                    tbl.add(key, t, "s", note="%.1f MB/s" % (nbytes / 1e6 / t))
                elif c == "mailmoat":
                    ratio = d / t
                    tbl.add(key + "_vs_direct", t, "s", ratio, ">= 0.90", ratio >= 0.9, "higher",
                            note="%.1f MB/s" % (nbytes / 1e6 / t))
                else:
                    tbl.add(key + "_vs_direct", t, "s", d / t, None, None, None,
                            note="%.1f MB/s" % (nbytes / 1e6 / t))
            tm = median(times[(w, "mailmoat")]) if (w, "mailmoat") not in errors else None
            for c in names:
                if c in ("direct", "mailmoat") or tm is None or (w, c) in errors:
                    continue
                ratio = median(times[(w, c)]) / tm
                tbl.add("%s.overhead.%s.mailmoat_vs_%s" % (label, w, c), None, "", ratio, "> 1.00",
                        ratio > 1.0, "higher", note="peer time / mailmoat time")
        return median(times[("pop3", "direct")])
    finally:
        rc = mm.stop()
        if rc not in (0, None):
            tbl.fail("%s.overhead.mailmoat_exit" % label, "mailmoat exited %s" % rc)


def infected_in_log(mm):
    return sum(1 for l in mm.log_text().splitlines() if "verdict=infected" in l)


def proc_cpu(pid):
    """User + system CPU seconds of a process so far."""
    with open("/proc/%d/stat" % pid) as f:
        w = f.read().rsplit(")", 1)[1].split()
    return (int(w[11]) + int(w[12])) / os.sysconf("SC_CLK_TCK")


def serial_download(work, tag, dv, dbdir, user, limits=None):
    """Seconds one serial POP3 client takes for user's mailbox through a
    fresh mailmoat with scanning."""
    mm = start_mailmoat(work, tag, dv, dbdir, scan=True, limits=limits)
    try:
        t0 = time.monotonic()
        pop3_download(mm.port, user)
        return time.monotonic() - t0
    finally:
        mm.stop()


def scanning(tbl, label, work, dv, dbdir, users, rounds, direct_pop3, expect_mal, raw_threads):
    """Scan efficiency (all users at once) and latency hiding (user 0)."""
    par_t, raw_t, lat_t, raw1_t, mm_cpu, raw_cpu = [], [], [], [], [], []
    lat0_t = []  # the same with limits.prefetch: 0 (what the prefetch hides)
    all_files = [f for u in users for f in corpus_files[u]]
    total_bytes = sum(corpus_bytes[u] for u in users)
    mal_ok = True
    for r in range(rounds):
        # scan efficiency: every user's mailbox at once through a fresh mailmoat
        mm = start_mailmoat(work, "%s-scan%d" % (label, r), dv, dbdir, scan=True)
        try:
            res, errs = {}, []

            def one(u):
                try:
                    res[u] = pop3_download(mm.port, u)
                except Exception as e:  # noqa: BLE001
                    errs.append("%s: %s" % (u, e))
            ths = [threading.Thread(target=one, args=(u,)) for u in users]
            c0 = proc_cpu(mm.pid)
            t0 = time.monotonic()
            for t in ths:
                t.start()
            for t in ths:
                t.join()
            par_t.append(time.monotonic() - t0)
            mm_cpu.append(proc_cpu(mm.pid) - c0)
            if errs:
                raise RuntimeError("; ".join(errs))
            got = infected_in_log(mm)
            if got != expect_mal * len(users):
                mal_ok = False
                log("%s: %d infected verdicts in the log, expected %d"
                    % (label, got, expect_mal * len(users)))
        finally:
            mm.stop()
        b = bench_scan(dbdir, raw_threads, all_files)
        raw_t.append(b["seconds"])
        raw_cpu.append(b["cpu_seconds"])
        if int(b["malicious"]) != expect_mal * len(users) or int(b["errors"]):
            mal_ok = False
            log("%s: bench_scan found %d malicious, %d errors" % (label, b["malicious"], b["errors"]))
        # latency hiding: one serial client, a fresh mailmoat (cold cache),
        # with the default prefetch and with none
        lat_t.append(serial_download(work, "%s-lat%d" % (label, r), dv, dbdir, users[0]))
        lat0_t.append(serial_download(work, "%s-lat0-%d" % (label, r), dv, dbdir, users[0],
                                      limits={"prefetch": 0}))
        raw1_t.append(bench_scan(dbdir, 1, corpus_files[users[0]])["seconds"])
        log("%s scan round %d/%d: parallel %.2f s (cpu %.2f s), raw %.2f s (cpu %.2f s), "
            "serial %.2f s, raw1 %.2f s" % (label, r + 1, rounds, par_t[-1], mm_cpu[-1],
                                           raw_t[-1], raw_cpu[-1], lat_t[-1], raw1_t[-1]))
    mb = total_bytes / 1e6
    tp, tr = median(par_t), median(raw_t)
    cm, cr = median(mm_cpu), median(raw_cpu)
    tbl.add("%s.scan.raw_libclamav_%dthreads" % (label, raw_threads), mb / tr, "MB/s",
            note="%.1f msgs/s, %.2f s; CPU %.2f s (%.3f s/MB)" % (len(all_files) / tr, tr, cr, cr / mb))
    ratio = (mb / tp) / (mb / tr)
    tbl.add("%s.scan.mailmoat_%dclients_vs_raw" % (label, len(users)), mb / tp, "MB/s", ratio,
            ">= 0.90", ratio >= 0.9, "higher",
            note="%.1f msgs/s, %.2f s (throughput ratio)" % (len(all_files) / tp, tp))
    ratio = cr / cm
    tbl.add("%s.scan.mailmoat_cpu_vs_raw" % label, cm, "s", ratio, ">= 0.90", ratio >= 0.9,
            "higher", note="CPU s of the proxy process; raw/proxy CPU per MB")
    tbl.add("%s.scan.malicious_caught" % label, expect_mal * len(users), "msgs", None,
            "all", mal_ok, None, note="proxy and raw" if mal_ok else "see stderr")
    tl, t1 = median(lat_t), median(raw1_t)
    tbl.add("%s.latency.direct_pop3" % label, direct_pop3, "s")
    tbl.add("%s.latency.raw_scan_1thread" % label, t1, "s")
    r_max = tl / max(direct_pop3, t1)
    tbl.add("%s.latency.mailmoat_vs_max" % label, tl, "s", r_max, "<= 1.15", r_max <= 1.15,
            "lower", note="max(direct, scan) = %.3f s" % max(direct_pop3, t1))
    tbl.add("%s.latency.mailmoat_vs_sum" % label, tl, "s", tl / (direct_pop3 + t1), None, None,
            None, note="direct + scan = %.3f s" % (direct_pop3 + t1))
    t0 = median(lat0_t)
    tbl.add("%s.latency.prefetch_off_vs_max" % label, t0, "s", t0 / max(direct_pop3, t1), None,
            None, None, note="limits.prefetch: 0, the same client and mailbox")


def concurrency(tbl, quick, work, timeout):
    script = os.path.join(HERE, "concurrency.py")
    if not os.path.exists(script):
        return
    out = os.path.join(work, "concurrency.json")
    log("running concurrency.py%s" % (" --quick" if quick else ""))
    prefix = "concurrency%s." % ("_quick" if quick else "")
    try:
        # its own process group: on a time-out, the loads and the mailmoat
        # it started go too
        p = subprocess.Popen([sys.executable, script, "--json", out] + (["--quick"] if quick else []),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            said = p.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 15)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
            raise RuntimeError("no result after %d s" % timeout)
        if p.returncode != 0 and not os.path.exists(out):
            raise RuntimeError("exit %d: %s" % (p.returncode, said.decode("utf-8", "replace")
                                                [-300:].replace("\n", " | ")))
        with open(out) as f:
            rows = json.load(f)
        for row in rows:
            tbl.add(prefix + row["name"], row.get("value"), row.get("unit") or "",
                    target=row.get("target"), ok=row.get("ok"))
        if p.returncode != 0:
            tbl.fail(prefix + "exit", "exit %d" % p.returncode)
    except Exception as e:  # noqa: BLE001 - shown in the table
        tbl.fail(prefix.rstrip("."), "%s: %s" % (type(e).__name__, e))


# ----------------------------------------------------------- the output ----

def table_lines(tbl, base):
    w = max([len(r["name"]) for r in tbl.rows] + [10])
    out = ["%-*s  %14s  %7s  %8s  %-6s  %8s  %s" % (w, "measure", "value", "ratio", "target",
                                                   "result", "baseline", "note"),
           "-" * (w + 70)]
    for r in tbl.rows:
        b = base.get(r["name"])
        res = {True: "ok", False: "MISS", None: ""}[r["ok"]]
        if r["note"].startswith("FAILED"):
            res = "FAIL"
        out.append("%-*s  %14s  %7s  %8s  %-6s  %8s  %s" % (
            w, r["name"], fmt(r["value"], r["unit"]),
            "%.2fx" % r["ratio"] if r["ratio"] is not None else "",
            r["target"] or "", res, "%.2fx" % b["ratio"] if b else "", r["note"]))
    return out


def print_table(tbl, base):
    for line in table_lines(tbl, base):
        print(line)


def check_baseline(tbl, base):
    """Ratios more than TOLERANCE worse than the baseline's."""
    bad = []
    for r in tbl.rows:
        b = base.get(r["name"])
        if not b or r["ratio"] is None:
            continue
        if b["better"] == "higher" and r["ratio"] < b["ratio"] * (1 - TOLERANCE):
            bad.append("%s: %.2fx < %.2fx - 10%%" % (r["name"], r["ratio"], b["ratio"]))
        elif b["better"] == "lower" and r["ratio"] > b["ratio"] * (1 + TOLERANCE):
            bad.append("%s: %.2fx > %.2fx + 10%%" % (r["name"], r["ratio"], b["ratio"]))
    return bad


corpus_files = {}
corpus_bytes = {}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small corpus, fewer rounds (a smoke)")
    ap.add_argument("--sigdb", choices=("test", "2m", "both"), default="both")
    ap.add_argument("--check-baseline", action="store_true")
    ap.add_argument("--update-baseline", action="store_true")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--users", type=int, default=4, help="mailboxes scanned at once")
    ap.add_argument("--rounds", type=int, help="overhead rounds (default 3)")
    ap.add_argument("--scan-rounds", type=int, help="scan/latency rounds (default 3, quick 1)")
    ap.add_argument("--count", type=int, help="messages per mailbox")
    ap.add_argument("--raw-threads", type=int, default=4,
                    help="bench_scan threads (4: as many as mailmoat's scan workers)")
    ap.add_argument("--no-peers", action="store_true", help="leave nginx and perdition out")
    ap.add_argument("--no-concurrency", action="store_true")
    ap.add_argument("--concurrency-timeout", type=int, default=2400,
                    help="seconds concurrency.py may take")
    ap.add_argument("--concurrency-quick", action="store_true",
                    help="concurrency.py --quick in a full run")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    mode = "quick" if a.quick else "full"
    count = a.count or (corpus.QUICK_COUNT if a.quick else corpus.DEFAULT_COUNT)
    rounds = a.rounds or 3
    srounds = a.scan_rounds or (1 if a.quick else 3)
    labels = {"test": ["test"], "2m": ["2m"], "both": ["test", "2m"]}[a.sigdb]

    t_start = time.monotonic()
    for k, v in machine():
        print("%-13s %s" % (k + ":", v))
    if not os.path.exists(scan_bin()):
        print("bench_scan not found at %s (set MAILMOAT_BENCH_SCAN)" % scan_bin())
        return 2
    work = tempfile.mkdtemp(prefix="mailmoat-bench-run-")
    h.make_traversable(work)
    users = ["bench%d" % i for i in range(a.users)]
    dv = h.Dovecot(os.path.join(work, "dovecot"), {u: PASSWORD for u in users})
    tbl = Table()
    started = []
    try:
        log("corpus: %d users x %d messages" % (len(users), count))
        mal = None
        for i, u in enumerate(users):
            c = corpus.fill(dv, [u], count, seed=20261129 + i, eml_dir=os.path.join(work, "eml", u))
            corpus_files[u] = c.eml
            corpus_bytes[u] = c.bytes
            if i == 0:
                st = c.stats()
                mal = c.malicious
                print("corpus:       %d mailboxes x %d messages; mailbox 0: %.1f MiB, median %.1f KiB, "
                      "p90 %.0f KiB, max %.1f MiB, %d over 1 MiB, %d malicious; kinds %s" % (
                          len(users), st["messages"], st["bytes"] / 1048576.0, st["median"] / 1024.0,
                          st["p90"] / 1024.0, st["max"] / 1048576.0, st["over_1mib"],
                          st["malicious"], " ".join("%s=%d" % kv for kv in sorted(st["kinds"].items()))))
            elif c.malicious != mal:
                raise RuntimeError("mailbox %s has %d malicious messages, not %d" % (u, c.malicious, mal))
        print("total:        %.1f MiB in %d messages" % (sum(corpus_bytes.values()) / 1048576.0,
                                                         count * len(users)), flush=True)
        dv.start()
        for u in users:         # Dovecot's indexes and the page cache
            pop3_download(dv.pop3_port, u)
        peer_ports = {}
        if not a.no_peers:
            for cls in (peers.Nginx, peers.Perdition):
                try:
                    p = cls(work, dv).start()
                    started.append(p)
                    peer_ports[p.name] = (p.pop3_port, p.imap_port)
                except Exception as e:  # noqa: BLE001 - shown in the table
                    tbl.fail("peer.%s" % cls.name, e)
        for k, label in enumerate(labels):
            dbdir = sigdb_dir(label, work)
            log("%s: overhead" % label)
            # the peers never scan: the signature set changes nothing for
            # them, so they run once, with the first set
            d = overhead(tbl, label, work, dv, dbdir, users, rounds,
                         peer_ports if k == 0 else {}, count)
            log("%s: scanning and latency" % label)
            scanning(tbl, label, work, dv, dbdir, users, srounds, d, mal, a.raw_threads)
    except Exception as e:  # noqa: BLE001 - the table shows what was measured
        tbl.fail("run", "%s: %s" % (type(e).__name__, e))
    finally:
        for p in started:
            p.stop()
        dv.stop()
    if not a.no_concurrency:
        if os.path.exists(os.path.join(HERE, "concurrency.py")):
            # the proxy benches' rows now, in case the long part fails
            for line in table_lines(tbl, {}):
                log(line)
        concurrency(tbl, a.quick or a.concurrency_quick, work, a.concurrency_timeout)

    try:
        with open(BASELINE) as f:
            allbase = json.load(f)
    except (OSError, ValueError):
        allbase = {}
    base = allbase.get(mode, {}).get("ratios", {})
    print()
    print("mailmoat benchmark (%s corpus, sigdb %s, %d overhead rounds, %d scan rounds; "
          "medians; ratio = direct/contender time, or as named)" % (mode, a.sigdb, rounds, srounds))
    print_table(tbl, base)
    print("load average at the end: %s; run took %.0f s" % (
        " ".join(open("/proc/loadavg").read().split()[:3]), time.monotonic() - t_start))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(tbl.rows, f, indent=1)
    status = 0
    failed = [r["name"] for r in tbl.rows if r["note"].startswith("FAILED")]
    if failed:
        print("failed: %s" % ", ".join(failed))
        status = 1
    if a.check_baseline:
        if not base:
            print("baseline: none for the %s mode in %s" % (mode, BASELINE))
        else:
            bad = check_baseline(tbl, base)
            for b in bad:
                print("REGRESSION %s" % b)
            print("baseline check: %s (%d ratios compared, tolerance 10%%)" % (
                "FAILED" if bad else "ok",
                sum(1 for r in tbl.rows if r["name"] in base and r["ratio"] is not None)))
            if bad:
                status = 1
    if a.update_baseline:
        ratios = {r["name"]: {"ratio": round(r["ratio"], 3), "better": r["better"]}
                  for r in tbl.rows if r["ratio"] is not None and r["better"]}
        if a.sigdb != "both":       # keep the other set's ratios
            ratios = dict(((k, v) for k, v in base.items()
                           if not any(k.startswith(l + ".") for l in labels)), **ratios)
        allbase[mode] = {"ratios": ratios, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "machine": "%s cores, %s" % (os.cpu_count(), dict(machine())["cpu"])}
        with open(BASELINE, "w") as f:
            json.dump(allbase, f, indent=1, sort_keys=True)
            f.write("\n")
        print("baseline: %d ratios written to %s (%s)" % (len(ratios), BASELINE, mode))
    if a.keep:
        print("work directory: %s" % work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
