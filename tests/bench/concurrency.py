#!/usr/bin/env python3
"""Concurrency and memory of mailmoat (issue 6): many sessions, one process.

  python3 tests/bench/concurrency.py [--json OUT.json] [--quick]
          [--only idle,pop3,big] [--idle N] [--active N] [--big N]

Measures, each part against a fresh mailmoat (scanning on, the test
signatures) in front of a scripted asyncio upstream (fakeupstream.py: one
process holds 10,000 sessions; a real Dovecot forks one process per IMAP
session, and the memory measured here is the proxy's):

  idle      N IMAP sessions (LOGIN, SELECT, IDLE) held open at once; RSS per
            idle session = (mailmoat's VmRSS with N sessions - VmRSS with none,
            after a warm-up of a few sessions opened and closed) / N. Twice
            or three times: plaintext on both legs, TLS on both legs
            (implicit TLS client -> mailmoat and mailmoat -> upstream,
            verified), and TLS to the client with a plaintext upstream.
            Targets: <= 16 KiB plaintext, <= 64 KiB TLS.
  pop3      N POP3 clients downloading continuously (RETR of a 64 KiB message
            in a loop, a separate process); meanwhile a probe alternates RETR
            of a 10 KiB message directly from the upstream and through
            mailmoat on logged-in connections: p50 / p99 of the difference
            (added latency), also without load for reference.
  big       N clients each download a 50 MiB message through mailmoat at
            once. Peak RSS (VmHWM) against the bound the configuration
            gives: RSS at rest + N x (limits.readahead x spool.memory_limit
            + the session's fixed buffers) + the scan workers' working set
            (4 libuv workers x the peak added by one 50 MiB download alone,
            measured first in the same run). The messages' total size is
            printed next to it.

--quick: 1,000 idle, 100 active, 10 x 50 MiB. --json writes a list of
{name, value, unit, target, ok}. Exit status 0 also when a target is
missed; non-zero only when the benchmark itself failed.
Environment: MAILMOAT_BIN (else the build's binary, see mmharness).
"""
import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "deploy", "lib"))
import mmharness as h  # noqa: E402

KIB = 1024
MIB = 1024 * 1024
SMALL = 10 * KIB
LOAD_MSG = 64 * KIB
BIG = 50 * MIB
MEMORY_LIMIT = 4 * MIB   # spool.memory_limit for every part (the default)
READAHEAD = 2            # limits.readahead (the default)
SCAN_WORKERS = 4         # libuv's default thread pool
SESSION_FIXED = 400 * KIB  # POP3 input buffers + the 256 KiB output high-water mark
NOFILE = 65536
VERBOSE = os.environ.get("MM_BENCH_VERBOSE") == "1"


def log(msg):
    sys.stderr.write("[concurrency %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def raise_nofile(n=NOFILE):
    """Soft NOFILE up to n, and the hard limit up to n when allowed
    (CAP_SYS_RESOURCE; a container may not have it). Returns the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(n, hard), max(n, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def proc_status(pid):
    """(VmRSS, VmHWM) of pid in KiB."""
    rss = hwm = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def proc_limits_nofile(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                p = line.split()
                return int(p[3]), int(p[4])
    return None, None


def rss_by_mapping(pid):
    """{mapping name: Rss KiB} from /proc/PID/smaps (anonymous ones as
    "[anon]"), for --verbose."""
    out = {}
    name = None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            p = line.split()
            if "-" in p[0] and len(p) >= 5 and ":" not in p[0]:
                name = p[5] if len(p) > 5 else "[anon]"
            elif p[0] == "Rss:":
                out[name] = out.get(name, 0) + int(p[1])
    return out


def cpu_seconds(pid):
    """utime + stime of pid (all its threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        p = f.read().rsplit(")", 1)[1].split()
    return (int(p[11]) + int(p[12])) / os.sysconf("SC_CLK_TCK")


def settle_rss(pid, seconds=2.0):
    """VmRSS once it stops moving (the loop may still be freeing)."""
    last = None
    deadline = time.monotonic() + seconds * 4
    while time.monotonic() < deadline:
        time.sleep(seconds / 4)
        r = proc_status(pid)[0]
        if last is not None and abs(r - last) < 64:
            return r
        last = r
    return last


# ------------------------------------------------------------ upstream ----

class Upstream:
    """fakeupstream.py in its own process."""

    def __init__(self, workdir, tls=None, messages=None):
        self.imap_port, self.pop3_port = h.free_ports(2)
        self.ready = os.path.join(workdir, "upstream-%d.ready" % self.imap_port)
        cmd = [sys.executable, os.path.join(HERE, "fakeupstream.py"),
               "--imap-port", str(self.imap_port), "--pop3-port", str(self.pop3_port),
               "--ready", self.ready]
        if tls:
            cmd += ["--tls", tls[0], tls[1]]
        for name, size in (messages or {}).items():
            cmd += ["--message", "%s=%s" % (name, size)]
        self.log = open(os.path.join(workdir, "upstream-%d.log" % self.imap_port), "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


LOAD_PROCS = 2  # processes of POP3 load clients
PROBE_BUDGET_S = 90  # the probe under load stops after this long (>= 20 pairs)
LOAD_COUNT = 200  # messages in each load client's mailbox, RETR'd in turn
SOFT_NOFILE = 1024  # --soft-nofile: mailmoat's soft limit at start


def start_mailmoat(workdir, listeners, max_sessions, scan=True, soft_nofile=None):
    """A mailmoat whose listeners are listeners [(proto, upstream_port, keys)],
    started with a soft NOFILE limit of soft_nofile and a hard one of NOFILE
    (as systemd starts services: the daemon must raise its own soft limit)."""
    pol = {} if scan else {"scan": False}
    m = h.Mailmoat(workdir, [(p, port, h.HOST, keys) for p, port, keys in listeners],
                   memory_limit="%dM" % (MEMORY_LIMIT // MIB), log_level="warn",
                   timeouts={"client_idle": 3600, "upstream_idle": 3600, "connect": 60},
                   limits={"max_sessions": max_sessions, "readahead": READAHEAD},
                   policy=pol)
    hard = raise_nofile()
    soft_nofile = soft_nofile or SOFT_NOFILE
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft_nofile, hard), hard))
    try:
        m.start(timeout=60)
    finally:
        raise_nofile()
    return m


# ---------------------------------------------------------- IMAP idle ----

async def imap_open_idle(port, user, ctx, sni, timeout=120):
    r, w = await asyncio.wait_for(
        asyncio.open_connection(h.HOST, port, ssl=ctx, server_hostname=sni if ctx else None,
                                ssl_handshake_timeout=timeout if ctx else None),
        timeout)

    async def until(tag):
        while True:
            line = await asyncio.wait_for(r.readline(), timeout)
            if not line:
                raise ConnectionError("closed")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise ConnectionError(line.decode("latin-1").strip())
                return

    greet = await asyncio.wait_for(r.readline(), timeout)
    if not greet.startswith(b"* OK"):
        raise ConnectionError("greeting %r" % greet)
    w.write(b"a1 LOGIN %s secret\r\n" % user.encode())
    await until(b"a1")
    w.write(b"a2 SELECT INBOX\r\n")
    await until(b"a2")
    w.write(b"a3 IDLE\r\n")
    while True:
        line = await asyncio.wait_for(r.readline(), timeout)
        if not line:
            raise ConnectionError("closed in IDLE")
        if line.startswith(b"+"):
            break
    return r, w


async def imap_idle_many(port, n, ctx, sni, parallel=100):
    sem = asyncio.Semaphore(parallel)
    conns, errors = [], []

    async def one(i):
        async with sem:
            try:
                conns.append(await imap_open_idle(port, "idle%d" % i, ctx, sni))
            except (OSError, ConnectionError, asyncio.TimeoutError, ssl.SSLError) as e:
                errors.append(repr(e))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return conns, errors, time.monotonic() - t0


async def close_all(conns):
    for r, w in conns:
        try:
            w.write(b"DONE\r\na4 LOGOUT\r\n")
            w.close()
        except (OSError, RuntimeError):
            pass
    await asyncio.sleep(0.5)


def idle_part(workdir, n, mode, pki, results):
    """mode: plain (both legs plaintext), tls (both legs TLS), tls-plain
    (TLS to the client, plaintext upstream)."""
    tls_client = mode in ("tls", "tls-plain")
    tls_up = mode == "tls"
    up = Upstream(os.path.join(workdir), tls=(pki["upstream_cert"], pki["upstream_key"])
                  if tls_up else None)
    keys = {}
    if tls_client:
        keys.update(tls="implicit", certificate=pki["proxy_fullchain"], key=pki["proxy_key"])
    if tls_up:
        keys.update(upstream_tls="implicit", upstream_ca=pki["ca"],
                    upstream_name=pki["names"]["upstream"])
    m = None
    try:
        m = start_mailmoat(os.path.join(workdir, "mm-idle-" + mode),
                           [("imap", up.imap_port, keys)], max_sessions=n + 1000)
        soft, hard = proc_limits_nofile(m.pid)
        ctx = None
        if tls_client:
            ctx = ssl.create_default_context(cafile=pki["ca"])
        sni = pki["names"]["proxy"]

        async def run():
            # warm-up: what every first session initialises once
            w, errs, _ = await imap_idle_many(m.port, 50, ctx, sni)
            await close_all(w)
            if errs:
                raise RuntimeError("warm-up failed: %s" % errs[:3])
            await asyncio.sleep(1.0)
            rss0 = settle_rss(m.pid)
            conns, errs, secs = await imap_idle_many(m.port, n, ctx, sni)
            # idle buffers are given back after a quiet second (next tick)
            await asyncio.sleep(3.0)
            rssn = settle_rss(m.pid)
            if VERBOSE:
                top = sorted(rss_by_mapping(m.pid).items(), key=lambda kv: -kv[1])[:6]
                log("idle %s: RSS by mapping %s" % (mode, top))
            alive = m.alive()
            await close_all(conns)
            return rss0, rssn, len(conns), errs, secs, alive

        rss0, rssn, ok_n, errs, secs, alive = asyncio.run(run())
        if errs:
            log("idle %s: %d sessions failed, e.g. %s" % (mode, len(errs), errs[:3]))
        if not alive or ok_n == 0:
            raise RuntimeError("idle %s: mailmoat died or no session came up" % mode)
        per = (rssn - rss0) / ok_n
        target = 64.0 if tls_client else 16.0
        label = {"plain": "plaintext->plaintext", "tls": "TLS->TLS",
                 "tls-plain": "TLS->plaintext"}[mode]
        log("idle %s: %d sessions in %.1f s, RSS %d -> %d KiB, %.1f KiB/session "
            "(mailmoat NOFILE soft at start %s, hard %s)"
            % (mode, ok_n, secs, rss0, rssn, per, soft, hard))
        results.append(res("idle IMAP sessions held (%s)" % label, ok_n, "sessions",
                           ">= %d" % n, ok_n >= n))
        results.append(res("RSS per idle IMAP session (%s)" % label, round(per, 1), "KiB",
                           "<= %d" % target, per <= target))
        results.append(res("mailmoat RSS with %d idle IMAP (%s)" % (ok_n, label),
                           round(rssn / 1024, 1), "MiB", None, None))
        return soft
    finally:
        if m is not None:
            m.stop()
        up.stop()


# --------------------------------------------------------- POP3 load ----

async def pop3_read_retr(r):
    """Reads one RETR response (status line + body + dot line); returns octets."""
    line = await r.readline()
    if not line.startswith(b"+OK"):
        raise ConnectionError("RETR: %r" % line[:80])
    n = 0
    tail = b""
    while True:
        chunk = await r.read(262144)
        if not chunk:
            raise ConnectionError("closed in RETR")
        n += len(chunk)
        tail = (tail + chunk)[-5:]
        if tail.endswith(b"\r\n.\r\n") or (n == 3 and chunk == b".\r\n"):
            return n


async def pop3_login(port, user, timeout=120):
    r, w = await asyncio.wait_for(asyncio.open_connection(h.HOST, port, limit=1 << 20),
                                  timeout)
    greet = await asyncio.wait_for(r.readline(), timeout)
    if not greet.startswith(b"+OK"):
        raise ConnectionError("greeting %r" % greet)
    for cmd in (b"USER %s\r\n" % user.encode(), b"PASS secret\r\n"):
        w.write(cmd)
        line = await asyncio.wait_for(r.readline(), timeout)
        if not line.startswith(b"+OK"):
            raise ConnectionError("%r -> %r" % (cmd[:4], line))
    return r, w


def role_pop3_load(args):
    """Subprocess: args.n clients RETR their 64 KiB message in a loop until
    SIGTERM; writes {"ready"} then {"retrs", "bytes", "errors"} files."""
    raise_nofile()

    async def run():
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        stats = {"retrs": 0, "bytes": 0, "errors": 0, "err_sample": []}
        sem = asyncio.Semaphore(100)
        up = [0]

        async def client(i):
            try:
                async with sem:
                    r, w = await pop3_login(args.port, "load%d" % (args.first + i))
                up[0] += 1
                if up[0] == args.n:
                    with open(args.ready, "w") as f:
                        f.write("ready\n")
                k = 0
                while not stop.is_set():
                    if k == LOAD_COUNT:  # all seen: a new session, new messages
                        w.write(b"QUIT\r\n")
                        w.close()
                        r, w = await pop3_login(args.port, "load%d" % (args.first + i))
                        k = 0
                    k += 1
                    w.write(b"RETR %d\r\n" % k)
                    got = await asyncio.wait_for(pop3_read_retr(r), 300)
                    stats["bytes"] += got
                    stats["retrs"] += 1
                w.write(b"QUIT\r\n")
                w.close()
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                stats["errors"] += 1
                if len(stats["err_sample"]) < 3:
                    stats["err_sample"].append(repr(e))
                if up[0] < args.n:
                    up[0] += 1
                    if up[0] == args.n:
                        with open(args.ready, "w") as f:
                            f.write("ready\n")

        await asyncio.gather(*(client(i) for i in range(args.n)))
        with open(args.out, "w") as f:
            json.dump(stats, f)

    asyncio.run(run())
    return 0


async def probe_latency(direct_port, proxy_port, samples, first=1, budget_s=None):
    """Alternating RETRs of 10 KiB messages (first, first + 1, ...: each
    new to the session, so the proxy captures and scans it), direct and
    through the proxy, on logged-in connections; returns (direct ms list,
    proxy ms list). With budget_s: stops after that many seconds (at least
    20 pairs), for loads where one RETR takes a second."""
    d = await pop3_login(direct_port, "small-probe")
    p = await pop3_login(proxy_port, "small-probe")
    out = {"d": [], "p": []}
    t_start = time.monotonic()
    for i in range(samples):
        if budget_s is not None and i >= 20 and time.monotonic() - t_start > budget_s:
            break
        for key, (r, w) in (("d", d), ("p", p)) if i % 2 == 0 else (("p", p), ("d", d)):
            t0 = time.perf_counter()
            w.write(b"RETR %d\r\n" % (first + i))
            await asyncio.wait_for(pop3_read_retr(r), 120)
            out[key].append((time.perf_counter() - t0) * 1000.0)
    for r, w in (d, p):
        w.write(b"QUIT\r\n")
        w.close()
    return out["d"], out["p"]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100.0 * (len(xs) - 1))))]


def pop3_part(workdir, n, samples, results, scan=True):
    # distinct messages: a message a session already downloaded is relayed
    # from the session's verdict without a new scan; every RETR here is a
    # first one (captured and scanned)
    up = Upstream(workdir, messages={"small": "%dx%d" % (SMALL, 2 * samples + 100),
                                     "load": "%dx%d" % (LOAD_MSG, LOAD_COUNT)})
    m = None
    loads = []
    try:
        tag = "scanning" if scan else "scan: false"
        m = start_mailmoat(os.path.join(workdir, "mm-pop3-%d" % scan),
                           [("pop3", up.pop3_port, {})], max_sessions=n + 100, scan=scan)
        # reference: no load
        d0, p0 = asyncio.run(probe_latency(up.pop3_port, m.port, max(20, samples // 4)))
        ready = os.path.join(workdir, "load-%d.ready" % scan)
        outf = os.path.join(workdir, "load-%d.json" % scan)
        llog = open(os.path.join(workdir, "load-%d.log" % scan), "wb")
        # the clients in LOAD_PROCS processes (one Python process cannot
        # keep 1,000 downloads busy)
        first = 0
        for k in range(LOAD_PROCS):
            share = n // LOAD_PROCS + (1 if k < n % LOAD_PROCS else 0)
            loads.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--role", "pop3-load",
                 "--port", str(m.port), "--n", str(share), "--first", str(first),
                 "--ready", "%s.%d" % (ready, k), "--out", "%s.%d" % (outf, k)],
                stdin=subprocess.DEVNULL, stdout=llog, stderr=llog))
            first += share
        t0 = time.monotonic()
        while not all(os.path.exists("%s.%d" % (ready, k)) for k in range(LOAD_PROCS)):
            if any(x.poll() is not None for x in loads) or time.monotonic() - t0 > 600:
                raise RuntimeError("POP3 load did not start")
            time.sleep(0.2)
        log("pop3: %d load clients up in %.1f s" % (n, time.monotonic() - t0))
        time.sleep(2.0)
        active_n = count_established(m.port)
        t1 = time.monotonic()
        c1 = cpu_seconds(m.pid)
        d1, p1 = asyncio.run(probe_latency(up.pop3_port, m.port, samples,
                                           budget_s=PROBE_BUDGET_S))
        probe_s = time.monotonic() - t1
        cpu_pct = 100.0 * (cpu_seconds(m.pid) - c1) / probe_s
        rss, hwm = proc_status(m.pid)
        active_after = count_established(m.port)
        for x in loads:
            x.send_signal(signal.SIGTERM)
        for x in loads:
            x.wait(300)
        llog.close()
        st = {"retrs": 0, "bytes": 0, "errors": 0, "err_sample": []}
        for k in range(LOAD_PROCS):
            with open("%s.%d" % (outf, k)) as f:
                one = json.load(f)
            for key in st:
                st[key] += one[key]
        if st["errors"]:
            log("pop3 load errors: %d, e.g. %s" % (st["errors"], st["err_sample"]))
        tot_s = time.monotonic() - t0
        # paired: each proxy sample minus the direct one taken next to it
        diff0 = [b - a for a, b in zip(d0, p0)]
        diff1 = [b - a for a, b in zip(d1, p1)]
        add0 = [pct(diff0, 50), pct(diff0, 99)]
        add1 = [pct(diff1, 50), pct(diff1, 99)]
        log("pop3 (%s): added p50/p99 no load %.2f/%.2f ms, under load %.2f/%.2f ms "
            "(%d pairs)" % (tag, add0[0], add0[1], add1[0], add1[1], len(diff1)))
        log("pop3: no load direct p50/p99 %.2f/%.2f ms, proxy %.2f/%.2f ms"
            % (pct(d0, 50), pct(d0, 99), pct(p0, 50), pct(p0, 99)))
        log("pop3: under load (%d/%d client connections established before/after the "
            "probe) direct p50/p99 %.2f/%.2f ms, proxy %.2f/%.2f ms; load did %d RETRs "
            "(%.1f MiB) in %.0f s, %d errors; mailmoat used %.0f %% of a core during "
            "the probe (%.1f s)"
            % (active_n, active_after, pct(d1, 50), pct(d1, 99), pct(p1, 50), pct(p1, 99),
               st["retrs"], st["bytes"] / MIB, tot_s, st["errors"], cpu_pct, probe_s))
        results.append(res("active POP3 downloads held (%s)" % tag, min(active_n, active_after),
                           "sessions", ">= %d" % n, min(active_n, active_after) >= n
                           and st["errors"] == 0))
        results.append(res("POP3 load throughput through mailmoat (%s)" % tag,
                           round(st["bytes"] / MIB / tot_s, 1), "MiB/s", None, None))
        results.append(res("added latency p50, 10 KiB RETR, no load (%s)" % tag, round(add0[0], 2),
                           "ms", None, None))
        results.append(res("added latency p99, 10 KiB RETR, no load (%s)" % tag, round(add0[1], 2),
                           "ms", None, None))
        results.append(res("added latency p50, 10 KiB RETR, %d active (%s)" % (n, tag),
                           round(add1[0], 2), "ms", None, None))
        results.append(res("added latency p99, 10 KiB RETR, %d active (%s)" % (n, tag),
                           round(add1[1], 2), "ms", None, None))
        results.append(res("direct latency p50, 10 KiB RETR, %d active (%s run)" % (n, tag),
                           round(pct(d1, 50), 2), "ms", None, None))
        results.append(res("direct latency p99, 10 KiB RETR, %d active (%s run)" % (n, tag),
                           round(pct(d1, 99), 2), "ms", None, None))
        results.append(res("mailmoat RSS with %d active POP3 (%s)" % (n, tag), round(rss / 1024, 1),
                           "MiB", None, None))
        results.append(res("mailmoat CPU during the probe, %d active (%s)" % (n, tag),
                           round(cpu_pct), "% of a core", None, None))
        del hwm
    finally:
        for x in loads:
            if x.poll() is None:
                x.kill()
                x.wait()
        if m is not None:
            m.stop()
        up.stop()


def count_established(port):
    """Established TCP connections to 127.0.0.1:port (from /proc/net/tcp)."""
    want = ":%04X" % port
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            if p[1].endswith(want) and p[3] == "01":
                n += 1
    return n


# --------------------------------------------------------------- big ----

async def big_downloads(port, n):
    async def one(i):
        r, w = await pop3_login(port, "big%d" % i, timeout=600)
        w.write(b"RETR 1\r\n")
        got = await asyncio.wait_for(pop3_read_retr(r), 3600)
        w.write(b"QUIT\r\n")
        w.close()
        return got

    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


def big_run(port, pid, n):
    """Runs n concurrent 50 MiB downloads; samples VmRSS; returns (results,
    peak VmHWM KiB, seconds)."""
    import threading
    peak = [0]
    done = threading.Event()

    def sampler():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], proc_status(pid)[0])
            except OSError:
                return
            time.sleep(0.1)

    t = threading.Thread(target=sampler, daemon=True)
    t.start()
    t0 = time.monotonic()
    got = asyncio.run(big_downloads(port, n))
    secs = time.monotonic() - t0
    done.set()
    t.join()
    hwm = proc_status(pid)[1]
    return got, max(hwm, peak[0]), secs


def big_part(workdir, n, results):
    up = Upstream(workdir, messages={"big": BIG})
    m = None
    try:
        m = start_mailmoat(os.path.join(workdir, "mm-big"), [("pop3", up.pop3_port, {})],
                           max_sessions=n + 100)
        rss0 = settle_rss(m.pid)
        got1, peak1, s1 = big_run(m.port, m.pid, 1)
        bad = [g for g in got1 if not isinstance(g, int)]
        if bad:
            raise RuntimeError("one 50 MiB download failed: %r" % bad[0])
        log("big: one 50 MiB download in %.1f s, peak RSS %d KiB (at rest %d KiB)"
            % (s1, peak1, rss0))
        gotn, peakn, sn = big_run(m.port, m.pid, n)
        bad = [g for g in gotn if not isinstance(g, int)]
        good = [g for g in gotn if isinstance(g, int) and g >= BIG]
        if bad:
            log("big: %d downloads failed, e.g. %r" % (len(bad), bad[0]))
        scan_ws = max(0, peak1 - rss0)
        bound = rss0 + n * (READAHEAD * MEMORY_LIMIT + SESSION_FIXED) // KIB \
            + SCAN_WORKERS * scan_ws
        log("big: %d x 50 MiB in %.1f s (%d complete), peak RSS %d KiB, bound %d KiB "
            "(at rest %d + %d x (%d x %d KiB + %d KiB) + %d x %d KiB); the messages "
            "total %d MiB" % (n, sn, len(good), peakn, bound, rss0, n, READAHEAD,
                              MEMORY_LIMIT // KIB, SESSION_FIXED // KIB, SCAN_WORKERS,
                              scan_ws, n * BIG // MIB))
        results.append(res("50 MiB downloads completed (%d at once)" % n, len(good),
                           "downloads", ">= %d" % n, len(good) >= n))
        results.append(res("peak RSS, %d x 50 MiB at once" % n, round(peakn / 1024, 1),
                           "MiB", "<= %.0f (memory_limit bound)" % (bound / 1024),
                           peakn <= bound))
        results.append(res("peak RSS, one 50 MiB download", round(peak1 / 1024, 1), "MiB",
                           None, None))
        results.append(res("messages downloaded at once (total size)", n * BIG // MIB,
                           "MiB", None, None))
    finally:
        if m is not None:
            m.stop()
        up.stop()


# -------------------------------------------------------------- main ----

def res(name, value, unit, target, ok):
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok}


def print_table(results):
    w = max(len(r["name"]) for r in results) + 2
    print("%-*s %14s  %-10s %-30s %s" % (w, "figure", "value", "unit", "target", "ok"))
    for r in results:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print("%-*s %14s  %-10s %-30s %s" % (w, r["name"], r["value"], r["unit"],
                                              r["target"] or "", ok))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="idle,pop3,big")
    ap.add_argument("--idle-modes", default="plain,tls,tls-plain")
    ap.add_argument("--idle", type=int)
    ap.add_argument("--active", type=int)
    ap.add_argument("--big", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--soft-nofile", type=int, default=1024,
                    help="mailmoat's soft NOFILE limit at start (the hard one is ours)")
    # internal: the POP3 load generator
    ap.add_argument("--role")
    ap.add_argument("--port", type=int)
    ap.add_argument("--n", type=int)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--ready")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.role == "pop3-load":
        return role_pop3_load(args)

    hard = raise_nofile()
    n_idle = args.idle or (1000 if args.quick else 10000)
    # two descriptors per session in one mailmoat: a hard NOFILE limit
    # below 2 x 10,000 (a container without CAP_SYS_RESOURCE) caps the count
    if 2 * n_idle + 64 > hard:
        log("hard NOFILE limit %d (cannot be raised here): %d idle sessions, not %d"
            % (hard, (hard - 64) // 2, n_idle))
        n_idle = (hard - 64) // 2
    n_active = args.active or (100 if args.quick else 1000)
    n_big = args.big or (10 if args.quick else 100)
    samples = args.samples or (100 if args.quick else 400)
    parts = set(args.only.split(","))
    global SOFT_NOFILE
    SOFT_NOFILE = args.soft_nofile
    raise_nofile()
    workdir = tempfile.mkdtemp(prefix="mm-bench-conc-")
    os.chmod(workdir, 0o755)
    results = []
    try:
        if "idle" in parts:
            pki = h.make_test_pki(os.path.join(workdir, "pki"))
            for mode in args.idle_modes.split(","):
                idle_part(workdir, n_idle, mode, pki, results)
        if "pop3" in parts:
            pop3_part(workdir, n_active, samples, results, scan=True)
            pop3_part(workdir, n_active, samples, results, scan=False)
        if "big" in parts:
            big_part(workdir, n_big, results)
    except Exception as e:  # the bench itself broke
        log("FAILED: %r" % e)
        import traceback
        traceback.print_exc()
        if results:
            print_table(results)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log("work directory kept: %s" % workdir)
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
