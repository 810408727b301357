#!/usr/bin/env python3
"""What a signature reload costs while mail flows: engine build and swap
times, RETR latency during the swap against before it, and the proxy's RSS
(two engines coexist until the swap).

For each database, the test set (scanners/testsigs, 45 signatures) and a
synthetic one of about 2,000,000 signatures (make_sigdb.py: 1.9 M MD5 hash
signatures and 100 k body signatures), a mailmoat starts in front of a real
Dovecot (its own, on loopback) and:

  start-up   the initial engine load, from the log (the first
             `clamav database file=` line to `clamav engine loaded`): the
             baseline, one thread, nothing else running;
  idle HUP   SIGHUP with no client: the build on a pool thread alone;
  HUP        SIGHUP while CLIENTS POP3 clients download the mailbox over
             and over;
  new file   a new .ndb renamed into the signature directory (as freshclam
             does) while the clients download: the directory watcher's
             delay (5 to 10 s) plus the build.

Times come from the log's millisecond stamps: trigger -> `signatures
reloaded` (the swap), the build (`clamav database file=` ... `clamav engine
loaded`), and the tail (engine loaded -> signatures reloaded: on the event
loop, the configuration and certificate swap and the old engine's release).
RETR latencies are per command (sent -> whole response read), before the
trigger (PRE seconds) against those in flight from the start of the load
to the swap. RSS is sampled every 50 ms from /proc.

  engine_swap.py [--clients N] [--skip-big] [--sigdb DIR] [--hashes N] [--bodies M]
Environment: MAILMOAT_BIN.
"""
import argparse
import datetime
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "deploy", "lib"))
sys.path.insert(0, HERE)
import mmharness as h  # noqa: E402
import make_sigdb  # noqa: E402

USER, PASSWORD = "swap", "swappw"


def log_time(line):
    stamp = line.split(" ", 1)[0]
    dt = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))]


def corpus(n, seed=11):
    """n messages of 2 to 64 KiB (log-uniform), every 20th with EICAR."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        if i % 20 == 10:
            out.append(h.msg_eicar_attachment(to="swap@example.test", n=i, pad_text=4000))
            continue
        size = int(2048 * (32 ** rnd.random()))
        words = ("invoice", "meeting", "report", "budget", "schedule", "the", "and", "of",
                 "please", "review", "attached", "figures", "quarter", "thanks")
        body, k = [], 0
        while k < size:
            line = " ".join(rnd.choice(words) for _ in range(12)) + "\n"
            body.append(line)
            k += len(line)
        out.append(h.msg_plain(to="swap@example.test", n=i, subject="swap bench %d" % i,
                               body="".join(body)))
    return out


class LogTail:
    """Reads a growing log file incrementally; keeps the process lines
    (session id "-"), which are the ones this bench looks at."""

    def __init__(self, path):
        self.path = path
        self.off = 0
        self.partial = b""
        self.lines = []

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except OSError:
            return self.lines
        self.off += len(data)
        data = self.partial + data
        parts = data.split(b"\n")
        self.partial = parts.pop()
        for p in parts:
            line = p.decode("utf-8", "replace")
            w = line.split(" ", 3)
            if len(w) >= 3 and w[2] == "-":
                self.lines.append(line)
        return self.lines

    def count(self, needle):
        return sum(1 for l in self.poll() if needle in l)

    def wait(self, needle, n, timeout, proc=None):
        deadline = time.monotonic() + timeout
        while self.count(needle) < n:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("mailmoat exited (status %s)" % proc.returncode)
            if time.monotonic() > deadline:
                raise RuntimeError("no %r in the log after %.0f s" % (needle, timeout))
            time.sleep(0.05)


class Clients:
    """n threads downloading the whole mailbox through port, over and over
    (login, STAT, RETR each, QUIT); every RETR's (sent at, seconds)."""

    def __init__(self, port, n, count):
        self.port, self.n, self.count = port, n, count
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.retrs = []
        self.errors = []
        self.downloads = 0
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def run(self):
        while not self.stop.is_set():
            mine = []
            try:
                with h.RawPop3(self.port, timeout=120) as c:
                    c.login(USER, PASSWORD)
                    st = c.cmd("STAT")
                    if not st.startswith(b"+OK") or int(st.split()[1]) != self.count:
                        raise RuntimeError("STAT %r" % st)
                    for i in range(1, self.count + 1):
                        t0 = time.time()
                        st, body = c.cmd_multi("RETR %d" % i)
                        mine.append((t0, time.time() - t0))
                        if not st.startswith(b"+OK") or not body:
                            raise RuntimeError("RETR %d: %r" % (i, st))
                        if self.stop.is_set():
                            break
                    c.cmd("QUIT")
                with self.lock:
                    self.downloads += 1
            except Exception as e:  # noqa: BLE001 - counted and printed
                with self.lock:
                    self.errors.append("%s: %s" % (type(e).__name__, e))
                time.sleep(0.2)
            with self.lock:
                self.retrs.extend(mine)

    def window(self, lo, hi):
        """Latencies of the RETRs in flight at some time in [lo, hi]."""
        with self.lock:
            return [dt for t0, dt in self.retrs if t0 + dt >= lo and t0 <= hi]


class NoopProbe:
    """One logged-in session sending NOOP every 10 ms: its round trip is the
    proxy's event-loop responsiveness, apart from any scan."""

    def __init__(self, port):
        self.port = port
        self.samples = []           # (sent at, seconds)
        self.errors = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.t.start()
        return self

    def finish(self):
        self.stop.set()
        self.t.join(60)

    def run(self):
        try:
            with h.RawPop3(self.port, timeout=120) as c:
                c.login(USER, PASSWORD)
                while not self.stop.is_set():
                    t0 = time.time()
                    st = c.cmd("NOOP")
                    self.samples.append((t0, time.time() - t0))
                    if not st.startswith(b"+OK"):
                        raise RuntimeError("NOOP %r" % st)
                    time.sleep(0.01)
                c.cmd("QUIT")
        except Exception as e:  # noqa: BLE001 - counted and printed
            self.errors.append("noop probe %s: %s" % (type(e).__name__, e))

    def worst(self, lo, hi):
        """(seconds, sent at) of the slowest NOOP in flight in [lo, hi]."""
        w = [(dt, t0) for t0, dt in list(self.samples) if t0 + dt >= lo and t0 <= hi]
        return max(w) if w else (float("nan"), float("nan"))


class RssSampler:
    def __init__(self, pid, every=0.05):
        self.pid, self.every = pid, every
        self.samples = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.t.start()
        return self

    def finish(self):
        self.stop.set()
        self.t.join(5)

    def run(self):
        path = "/proc/%d/status" % self.pid
        while not self.stop.is_set():
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.samples.append((time.time(), int(line.split()[1])))
                            break
            except OSError:
                return
            time.sleep(self.every)

    def between(self, lo, hi):
        return [k for t, k in self.samples if lo <= t <= hi]


def build_times(lines):
    """(first `clamav database file=` time, `clamav engine loaded` time) of
    the last load in lines."""
    loaded = [i for i, l in enumerate(lines) if "clamav engine loaded" in l]
    if not loaded:
        return None, None
    j = loaded[-1]
    i = j
    while i > 0 and "clamav database file=" in lines[i - 1]:
        i -= 1
    first = lines[i] if "clamav database file=" in lines[i] else lines[j]
    return log_time(first), log_time(lines[j])


def swap(mm, tail, trigger, start_marker, clients=None, rss=None, pre=6.0, post=4.0,
         timeout=900.0, probe=None):
    """Runs one reload: waits pre seconds (the baseline), calls trigger(),
    waits for the swap and post seconds more. Returns a dict of figures."""
    done = tail.count("signatures reloaded") + tail.count("signature reload failed")
    seen = len(tail.poll())
    if pre:
        time.sleep(pre)
    t_trig = time.time()
    trigger()
    deadline = time.monotonic() + timeout
    while tail.count("signatures reloaded") + tail.count("signature reload failed") <= done:
        if mm.proc.poll() is not None:
            raise RuntimeError("mailmoat exited (status %s) during the reload:\n%s"
                               % (mm.proc.returncode, mm.log_text()[-3000:]))
        if time.monotonic() > deadline:
            raise RuntimeError("no reload %.0f s after the trigger" % timeout)
        time.sleep(0.05)
    if post:
        time.sleep(post)
    new = tail.poll()[seen:]
    if any("signature reload failed" in l for l in new):
        raise RuntimeError("reload failed: %s" % [l for l in new if "failed" in l])
    t_start = log_time([l for l in new if start_marker in l][0])
    swap_line = [l for l in new if "signatures reloaded" in l][0]
    t_swap = log_time(swap_line)
    b0, b1 = build_times(new[:new.index(swap_line)])
    r = {"trigger_to_swap": t_swap - t_trig, "start_to_swap": t_swap - t_start,
         "build": b1 - b0, "tail": t_swap - b1,
         "signatures": int(swap_line.split("signatures=")[1].split()[0])}
    if clients is not None:
        r["before"] = clients.window(t_trig - pre + 0.3, t_trig)
        r["during"] = clients.window(t_start, t_swap)
        r["after"] = clients.window(t_swap + 0.5, t_swap + post)
    if probe is not None:
        r["noop_before"] = probe.worst(t_trig - pre + 0.3, t_trig)[0]
        dt, at = probe.worst(t_start, t_swap + post)
        r["noop_worst"], r["noop_worst_at"] = dt, at - t_swap
    if clients is not None:
        w = [(d, t0) for t0, d in clients.retrs if t0 + d >= t_start and t0 <= t_swap + post]
        if w:
            d, t0 = max(w)
            r["retr_worst"], r["retr_worst_at"] = d, t0 - t_swap
    if rss is not None:
        r["rss_before"] = max(rss.between(t_trig - pre + 0.3, t_trig) or [0])
        r["rss_peak"] = max(rss.between(t_start, t_swap + 0.5) or [0])
        r["rss_after"] = (rss.between(t_swap + post - 0.5, t_swap + post + 1) or [0])[-1]
    return r


def run_db(label, dbdir, dovecot_port, count, work, nclients, pre, post):
    """All measurements for one database directory; returns (rows, notes)."""
    mm = h.Mailmoat(os.path.join(work, "mm-" + label), [("pop3", dovecot_port)],
                    database=dbdir, log_level="info")
    rows, notes = [], {}
    t0 = time.time()
    mm.start(timeout=900)
    notes["start_wall"] = time.time() - t0
    tail = LogTail(mm.log_path)
    lines = tail.poll()
    b0, b1 = build_times(lines)
    notes["initial_load"] = b1 - b0
    notes["signatures"] = int([l for l in lines if "clamav engine loaded" in l][0]
                              .split("signatures=")[1].split()[0])
    notes["rss_idle"] = mm.read_rss()[0]
    clients = rss = probe = None
    try:
        rss = RssSampler(mm.pid).start()
        # the pool alone: SIGHUP with no mail flowing
        r = swap(mm, tail, lambda: mm.proc.send_signal(signal.SIGHUP), "signal=HUP", rss=rss,
                 pre=1.0, post=2.0)
        r["trigger"] = "idle HUP"
        rows.append(r)
        probe = NoopProbe(mm.port).start()
        clients = Clients(mm.port, nclients, count).start()
        time.sleep(2.0)             # warm-up: logins, page cache
        r = swap(mm, tail, lambda: mm.proc.send_signal(signal.SIGHUP), "signal=HUP",
                 clients, rss, pre, post, probe=probe)
        r["trigger"] = "HUP"
        rows.append(r)

        def new_file():
            tmp = os.path.join(dbdir, ".bench-extra.ndb.tmp")
            with open(tmp, "w") as f:
                f.write("Mailmoat.Bench.Extra.%d:0:*:%s\n"
                        % (int(time.time()), os.urandom(24).hex()))
            os.rename(tmp, os.path.join(dbdir, "bench-extra-%d.ndb" % int(time.time() * 1000)))

        r = swap(mm, tail, new_file, "signature files changed", clients, rss, pre, post,
                 probe=probe)
        r["trigger"] = "new file"
        rows.append(r)
    finally:
        if clients is not None:
            clients.finish()
        if probe is not None:
            probe.finish()
        if rss is not None:
            rss.finish()
        notes["hwm"] = mm.read_rss()[1]
        rc = mm.stop()
    notes["errors"] = (list(clients.errors) if clients else []) + \
        (list(probe.errors) if probe else [])
    notes["downloads"] = clients.downloads if clients else 0
    notes["retrs"] = len(clients.retrs) if clients else 0
    notes["exit"] = rc
    if not mm.proc or rc != 0:
        notes["log_tail"] = mm.log_text()[-3000:]
    return rows, notes


def print_table(results, nclients, post_s):
    mb = lambda k: "%7.1f" % (k / 1024.0) if k else "      -"  # noqa: E731
    ms = lambda s: "%8.1f" % (s * 1000.0) if s == s else "       -"  # noqa: E731
    print()
    print("engine swap: %d POP3 clients downloading during HUP / new file; "
          "times from the log's ms stamps" % nclients)
    print("%-9s %-9s %10s %9s %8s %8s | %-26s | %-26s | %6s %6s | %-23s"
          % ("db", "trigger", "signatures", "trig>swap", "build", "tail",
             "RETR ms before p50/p99/max", "RETR ms during p50/p99/max", "max x", "p99 x",
             "RSS MB before/peak/after"))
    for label, rows, notes in results:
        print("%-9s %-9s %10d %9s %8s %8s | %-26s | %-26s | %6s %6s | %-23s" % (
            label, "start-up", notes["signatures"], "-", "%.3fs" % notes["initial_load"], "-",
            "-", "-", "-", "-", "%s (idle)" % mb(notes["rss_idle"]).strip()))
        for r in rows:
            if "before" in r:
                bef, dur = r["before"], r["during"]
                lat_b = "%s/%s/%s" % (ms(pct(bef, 50)).strip(), ms(pct(bef, 99)).strip(),
                                      ms(max(bef) if bef else float("nan")).strip())
                lat_d = "%s/%s/%s" % (ms(pct(dur, 50)).strip(), ms(pct(dur, 99)).strip(),
                                      ms(max(dur) if dur else float("nan")).strip())
                rmax = "%6.1f" % (max(dur) / max(bef)) if bef and dur else "     -"
                rp99 = "%6.1f" % (pct(dur, 99) / pct(bef, 99)) if bef and dur else "     -"
            else:
                lat_b = lat_d = "(no clients)"
                rmax = rp99 = "     -"
            rss_s = "%s/%s/%s" % (mb(r.get("rss_before")).strip(), mb(r.get("rss_peak")).strip(),
                                  mb(r.get("rss_after")).strip())
            print("%-9s %-9s %10d %8.3fs %7.3fs %6.0fms | %-26s | %-26s | %6s %6s | %-23s" % (
                label, r["trigger"], r["signatures"], r["trigger_to_swap"], r["build"],
                r["tail"] * 1000, lat_b, lat_d, rmax, rp99, rss_s))
    print()
    for label, rows, notes in results:
        print("%s: start-up (exec to listening) %.2f s, initial engine load %.2f s; "
              "peak RSS (VmHWM) %.1f MB; %d downloads, %d RETRs, client errors %d, exit %s"
              % (label, notes["start_wall"], notes["initial_load"], (notes["hwm"] or 0) / 1024.0,
                 notes["downloads"], notes["retrs"], len(notes["errors"]), notes["exit"]))
        for r in rows:
            if "during" in r:
                print("  %-8s RETRs before=%d during=%d after=%d; after p50/p99/max %.1f/%.1f/%.1f ms"
                      % (r["trigger"], len(r["before"]), len(r["during"]), len(r["after"]),
                         pct(r["after"], 50) * 1000, pct(r["after"], 99) * 1000,
                         (max(r["after"]) if r["after"] else float("nan")) * 1000))
            if "noop_worst" in r:
                print("  %-8s event loop (NOOP every 10 ms on an idle session): max %.1f ms "
                      "before, %.1f ms from the load to swap+%.0fs, at swap%+.2f s; "
                      "slowest RETR then %.1f ms at swap%+.2f s"
                      % (r["trigger"], r["noop_before"] * 1000, r["noop_worst"] * 1000, post_s,
                         r["noop_worst_at"], r.get("retr_worst", float("nan")) * 1000,
                         r.get("retr_worst_at", float("nan"))))
        for e in notes["errors"][:5]:
            print("  client error: %s" % e)
        if "log_tail" in notes:
            print("  mailmoat log tail:\n%s" % notes["log_tail"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--messages", type=int, default=40)
    ap.add_argument("--pre", type=float, default=6.0, help="baseline seconds before a trigger")
    ap.add_argument("--post", type=float, default=4.0, help="seconds measured after a swap")
    ap.add_argument("--skip-big", action="store_true", help="the test set only")
    ap.add_argument("--sigdb", help="an existing make_sigdb.py directory (copied, not changed)")
    ap.add_argument("--hashes", type=int, default=1900000)
    ap.add_argument("--bodies", type=int, default=100000)
    ap.add_argument("--seed", default="20261129")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="mailmoat-bench-swap-")
    h.make_traversable(work)
    msgs = corpus(a.messages)
    dv = h.Dovecot(os.path.join(work, "dovecot"), {USER: PASSWORD})
    for m in msgs:
        dv.add_message(USER, m)
    dv.start()
    results = []
    failed = False
    try:
        h.fetch_all_raw(dv.pop3_port, USER, PASSWORD)   # Dovecot's indexes, page cache
        dbs = [("testsigs", None)]
        if not a.skip_big:
            dbs.append(("synth-2M", a.sigdb or ""))
        for label, src in dbs:
            dbdir = os.path.join(work, "db-" + label)
            if src is None:
                os.makedirs(dbdir)
                for fn in ("mailmoat-test.hdb", "mailmoat-test.ndb"):
                    shutil.copy(os.path.join(h.testsigs_dir(), fn), dbdir)
            elif src:
                shutil.copytree(src, dbdir)
            else:
                g = make_sigdb.make(dbdir, a.hashes, a.bodies, a.seed)
                print("make_sigdb: %d signatures (%d MD5 + %d body + %d test), %.1f MB, "
                      "generated in %.1f s" % (g["signatures"], g["hashes"], g["bodies"],
                                               g["testsigs"], g["bytes"] / 1e6, g["seconds"]),
                      flush=True)
            t0 = time.monotonic()
            rows, notes = run_db(label, dbdir, dv.pop3_port, len(msgs), work, a.clients,
                                 a.pre, a.post)
            print("%s: measured in %.0f s" % (label, time.monotonic() - t0), flush=True)
            results.append((label, rows, notes))
            if notes["errors"] or notes["exit"] != 0:
                failed = True
            shutil.rmtree(dbdir, ignore_errors=True)
    finally:
        dv.stop()
        if results:
            print_table(results, a.clients, a.post)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
