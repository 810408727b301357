"""Observability: the Prometheus endpoint (metrics.listen) and `mailmoat
status` over the control socket.

One mailmoat with a POP3 and an IMAP listener in front of the fixture's
Dovecot, metrics on a free loopback port, its control socket in the test's
temporary directory. bob's mailbox (clean and malicious messages) is
downloaded once through each protocol; the figures scraped with curl, and
those `mailmoat status` and `status --json` print, must match what was done.
The endpoint's HTTP edges (404, 405, HEAD, HTTP/1.0, bad requests, a slow
or oversized request, more clients than it serves at once) and the control
socket's (mode, bad requests, a stale socket, a second daemon) follow, and
a signature reload is counted; the daemon keeps serving throughout.

The exposition text is checked strictly, as promtool would: HELP and TYPE
once per family before its samples, families not interleaved, counters
ending in _total, histogram buckets cumulative up to le="+Inf" equal to
_count, well-formed names, labels and values.
"""

import json
import math
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
import unittest

from itbase import ImapCase, mh, out

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def parse_value(s):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    if not re.match(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z", s):
        raise AssertionError("bad sample value %r" % s)
    return float(s)


def parse_labels(s):
    """'a="x",b="y"' -> {a: x, b: y}; raises on anything malformed."""
    labels, pos = {}, 0
    while pos < len(s):
        m = LABEL_RE.match(s, pos)
        if not m:
            raise AssertionError("bad labels %r at %d" % (s, pos))
        if m.group(1) in labels:
            raise AssertionError("label %s twice in %r" % (m.group(1), s))
        labels[m.group(1)] = m.group(2)
        pos = m.end()
        if pos < len(s):
            if s[pos] != ",":
                raise AssertionError("bad labels %r at %d" % (s, pos))
            pos += 1
    return labels


def parse_prometheus(text):
    """Parses the text format 0.0.4 strictly. Returns {family: {"type",
    "help", "samples": [(name, {labels}, value)]}}."""
    if not text.endswith("\n"):
        raise AssertionError("exposition does not end with a newline")
    fams, order, cur = {}, [], None
    for line in text.split("\n")[:-1]:
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 3 or parts[1] not in ("HELP", "TYPE"):
                continue  # a plain comment
            name = parts[2]
            if not NAME_RE.match(name):
                raise AssertionError("bad metric name in %r" % line)
            f = fams.get(name)
            if f is None:
                if name in order:
                    raise AssertionError("family %s interleaved" % name)
                f = fams[name] = {"type": None, "help": None, "samples": []}
                order.append(name)
            elif cur != name:
                raise AssertionError("family %s interleaved" % name)
            if f["samples"]:
                raise AssertionError("%s %s after its samples" % (parts[1], name))
            key = parts[1].lower()
            if f[key] is not None:
                raise AssertionError("two %s lines for %s" % (parts[1], name))
            f[key] = parts[3] if len(parts) > 3 else ""
            if key == "type" and f["type"] not in TYPES:
                raise AssertionError("bad type %r" % line)
            cur = name
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)\Z", line)
        if not m:
            raise AssertionError("bad sample line %r" % line)
        name, labels, value = m.group(1), parse_labels(m.group(3) or ""), parse_value(m.group(4))
        fam = cur
        if fam is None or not (name == fam or (fams[fam]["type"] == "histogram" and
                                               name in (fam + "_bucket", fam + "_sum",
                                                        fam + "_count"))):
            raise AssertionError("sample %r outside its family (%s)" % (line, fam))
        fams[fam]["samples"].append((name, labels, value))
    for name, f in fams.items():
        if f["help"] is None or f["type"] is None:
            raise AssertionError("%s lacks HELP or TYPE" % name)
        if not f["samples"]:
            raise AssertionError("%s has no samples" % name)
        seen = set()
        for s in f["samples"]:
            key = (s[0], tuple(sorted(s[1].items())))
            if key in seen:
                raise AssertionError("duplicate sample %r" % (key,))
            seen.add(key)
        t = f["type"]
        if t == "counter":
            if not name.endswith("_total"):
                raise AssertionError("counter %s without _total" % name)
            if any(s[2] < 0 for s in f["samples"]):
                raise AssertionError("negative counter %s" % name)
        elif re.search(r"_(total|count|sum|bucket)\Z", name):
            raise AssertionError("%s %s has a reserved suffix" % (t, name))
        if t == "histogram":
            check_histogram(name, f["samples"])
    return fams


def check_histogram(name, samples):
    buckets = [s for s in samples if s[0] == name + "_bucket"]
    sums = [s for s in samples if s[0] == name + "_sum"]
    counts = [s for s in samples if s[0] == name + "_count"]
    if len(sums) != 1 or len(counts) != 1 or not buckets:
        raise AssertionError("histogram %s needs buckets, one _sum, one _count" % name)
    les = [parse_value(b[1]["le"]) for b in buckets]
    if les != sorted(les) or len(set(les)) != len(les) or les[-1] != math.inf:
        raise AssertionError("histogram %s: le not ascending up to +Inf: %r" % (name, les))
    vals = [b[2] for b in buckets]
    if vals != sorted(vals):
        raise AssertionError("histogram %s: buckets not cumulative: %r" % (name, vals))
    if vals[-1] != counts[0][2]:
        raise AssertionError("histogram %s: +Inf bucket %s != _count %s"
                             % (name, vals[-1], counts[0][2]))


def value(fams, family, sample=None, **labels):
    for name, lab, v in fams[family]["samples"]:
        if name == (sample or family) and lab == {k: str(x) for k, x in labels.items()}:
            return v
    raise KeyError("%s%r" % (family, labels))


def curl(*args, timeout=30):
    """Runs curl -s ARGS; returns (exit status, stdout as text)."""
    r = subprocess.run(["curl", "-s", "--max-time", str(timeout)] + list(args),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout + 10)
    return r.returncode, r.stdout.decode("utf-8", "replace")


def raw_http(port, data, timeout=20.0, close_write=False):
    """Sends data on a new connection and reads until the server closes;
    returns (bytes received, seconds it took)."""
    t0 = time.monotonic()
    with socket.create_connection((mh.HOST, port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            got += chunk
    return bytes(got), time.monotonic() - t0


def status_code(resp):
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", resp)
    return int(m.group(1)) if m else None


def wait_log(proxy, pattern, timeout=15.0):
    """Waits until the proxy's log matches pattern; returns the log."""
    deadline = time.monotonic() + timeout
    while True:
        text = proxy.log_text()
        if re.search(pattern, text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def unix_ask(path, data, timeout=20.0):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        got = bytearray()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return bytes(got)
            got += chunk


class Observability(ImapCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = mh.Mailmoat(os.path.join(cls._tmp, "obs"),
                                [("pop3", cls.up), ("imap", cls.imap_up)],
                                metrics_port=True).start()
        cls._class_proxies.append(cls.proxy)
        cls.url = "http://%s:%d/metrics" % (mh.HOST, cls.proxy.metrics_port)

    def scrape(self):
        rc, text = curl(self.url)
        self.assertEqual(rc, 0, "curl %s failed (%d)" % (self.url, rc))
        return parse_prometheus(text)

    def wait_sessions_closed(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            fams = self.scrape()
            open_ = sum(s[2] for s in fams["mailmoat_sessions_open"]["samples"])
            if open_ == 0 or time.monotonic() > deadline:
                return fams
            time.sleep(0.1)

    def quarantine_files(self):
        entries, size = 0, 0
        for fn in os.listdir(self.proxy.quarantine_dir):
            if fn.startswith(".") or not (fn.endswith(".json") or fn.endswith(".eml")):
                continue
            entries += fn.endswith(".json")
            size += os.path.getsize(os.path.join(self.proxy.quarantine_dir, fn))
        return entries, size

    def test_1_figures_match_what_was_done(self):
        p = self.proxy
        before = self.scrape()
        self.assertEqual(value(before, "mailmoat_messages_scanned_total"), 0)
        self.assertGreater(value(before, "mailmoat_engine_signatures"), 0)

        # the originals' sizes (what is scanned), straight from Dovecot
        sizes = [len(m) for m in self.direct_whole("bob").values()]
        self.assertEqual(len(sizes), len(self.messages("bob")))
        # bob through POP3: every message RETRieved once
        u, pw = self.user("bob")
        got = mh.fetch_all_raw(p.ports[0], u, pw)
        self.assertEqual(len(got["RETR"]), len(sizes))
        # and through IMAP: every message FETCHed whole once
        c = self.imap(p.ports[1], "bob")
        whole = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
        c.logout()
        self.assertEqual(len(whole), len(sizes))
        n = 2 * len(sizes)
        scanned_bytes = 2 * sum(sizes)
        infected = 2 * len(self.infected_nums("bob"))

        fams = self.wait_sessions_closed()
        val = lambda *a, **k: value(fams, *a, **k)  # noqa: E731
        self.assertEqual(val("mailmoat_messages_scanned_total"), n)
        self.assertEqual(val("mailmoat_verdicts_total", verdict="infected"), infected)
        self.assertEqual(val("mailmoat_verdicts_total", verdict="clean"), n - infected)
        self.assertEqual(val("mailmoat_verdicts_total", verdict="error"), 0)
        self.assertEqual(sum(s[2] for s in fams["mailmoat_verdicts_total"]["samples"]), n)
        # the log's verdict lines say the same
        logged = {}
        for e in p.log_events():
            if e.get("user") == "bob" and e.get("verdict") in ("clean", "infected", "error"):
                logged[e["verdict"]] = logged.get(e["verdict"], 0) + 1
        self.assertEqual(logged.get("infected", 0), infected, logged)
        self.assertEqual(logged.get("clean", 0), n - infected, logged)
        self.assertEqual(val("mailmoat_scanned_bytes_total"), scanned_bytes)
        # sessions: one of each, none left open
        self.assertEqual(val("mailmoat_sessions_total", protocol="pop3"), 1)
        self.assertEqual(val("mailmoat_sessions_total", protocol="imap"), 1)
        self.assertEqual(val("mailmoat_sessions_total", protocol="relay"), 0)
        for proto in ("pop3", "imap", "relay"):
            self.assertEqual(val("mailmoat_sessions_open", protocol=proto), 0)
        # the histogram counts every scan
        self.assertEqual(val("mailmoat_scan_duration_seconds",
                             "mailmoat_scan_duration_seconds_count"), n)
        self.assertEqual(val("mailmoat_scan_duration_seconds",
                             "mailmoat_scan_duration_seconds_bucket", le="+Inf"), n)
        self.assertGreaterEqual(val("mailmoat_scan_duration_seconds",
                                    "mailmoat_scan_duration_seconds_sum"), 0)
        # traffic: at least the messages came down, commands went up
        self.assertGreater(val("mailmoat_traffic_bytes_total", direction="down"),
                           scanned_bytes)
        self.assertGreater(val("mailmoat_traffic_bytes_total", direction="up"), 0)
        # the quarantine as it is on disk
        q_entries, q_bytes = self.quarantine_files()
        self.assertEqual(q_entries, infected, "one entry per infected message and protocol")
        self.assertEqual(len(p.quarantine()), q_entries)
        self.assertEqual(val("mailmoat_quarantine_entries"), q_entries)
        self.assertEqual(val("mailmoat_quarantine_bytes"), q_bytes)
        for s in fams["mailmoat_errors_total"]["samples"]:
            self.assertEqual(s[2], 0, "error counted: %r" % (s,))
        self.assertEqual(val("mailmoat_engine_reloads_total"), 0)
        self.assertGreaterEqual(val("mailmoat_engine_generation"), 1)
        signatures = val("mailmoat_engine_signatures")

        # `mailmoat status`
        rc, text, err = p.status()
        self.assertEqual(rc, 0, err)
        out("status:\n" + text)
        self.assertIn("\nsessions:    pop3 0 open, 1 total; imap 0 open, 1 total; "
                      "relay 0 open, 0 total\n", text)
        self.assertRegex(text, r"\nmessages:    %d scanned, %d bytes, average scan \d+ ms\n"
                         % (n, scanned_bytes))
        self.assertIn("\nverdicts:    clean %d, infected %d, error 0" % (n - infected, infected),
                      text)
        self.assertIn("\nquarantine:  %d entries, %d bytes in %s\n"
                      % (q_entries, q_bytes, p.quarantine_dir), text)
        self.assertRegex(text, r"\ndatabase:    generation \d+, version \d+, %d signatures; reloads 0, "
                         r"failed 0\n" % signatures)
        self.assertIn("\nerrors:      none\n", text)
        self.assertRegex(text.splitlines()[0], r"^mailmoat \S+, up \d+d \d\d:\d\d:\d\d \(since ")

        # `mailmoat status --json`
        rc, text, err = p.status(json_output=True)
        self.assertEqual(rc, 0, err)
        j = json.loads(text)
        self.assertEqual(j["messages"]["scanned"], n)
        self.assertEqual(j["messages"]["bytes"], scanned_bytes)
        self.assertEqual(j["verdicts"]["infected"], infected)
        self.assertEqual(j["verdicts"]["clean"], n - infected)
        self.assertEqual(j["sessions"]["pop3"], {"open": 0, "total": 1})
        self.assertEqual(j["sessions"]["imap"], {"open": 0, "total": 1})
        self.assertEqual(j["quarantine"], {"dir": p.quarantine_dir, "entries": q_entries,
                                           "bytes": q_bytes})
        self.assertEqual(j["database"]["signatures"], signatures)
        self.assertEqual(j["database"]["reloads"], 0)
        self.assertEqual(set(j["errors"].values()), {0})
        self.assertGreaterEqual(j["uptime_seconds"], 0)

    def test_2_http_edges(self):
        port = self.proxy.metrics_port
        base = "http://%s:%d" % (mh.HOST, port)
        code = lambda *a: curl("-o", "/dev/null", "-w", "%{http_code}", *a)[1]  # noqa: E731
        self.assertEqual(code(base + "/"), "404")
        self.assertEqual(code(base + "/metricsx"), "404")
        self.assertEqual(code(base + "/metrics?x=1"), "200")
        self.assertEqual(code("-X", "POST", "-d", "x=1", self.url), "405")
        self.assertEqual(code("-X", "DELETE", self.url), "405")
        rc, head = curl("-I", self.url)
        self.assertEqual(rc, 0)
        self.assertRegex(head, r"^HTTP/1\.1 200 OK\r\n")
        self.assertIn("Content-Type: text/plain; version=0.0.4", head)
        self.assertIn("Connection: close", head)
        rc, allow = curl("-i", "-X", "PUT", self.url)
        self.assertRegex(allow, r"^HTTP/1\.1 405 ")
        self.assertIn("Allow: GET, HEAD\r\n", allow)
        # HTTP/1.0 without Host, LF line ends, a body behind the request
        resp, _ = raw_http(port, b"GET /metrics HTTP/1.0\n\n")
        self.assertEqual(status_code(resp), 200, resp[:200])
        body = resp.split(b"\r\n\r\n", 1)[1]
        m = re.search(rb"\r\nContent-Length: (\d+)\r\n", resp)
        self.assertEqual(int(m.group(1)), len(body))
        parse_prometheus(body.decode())
        resp, _ = raw_http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
                                 b"hello", close_write=True)
        self.assertEqual(status_code(resp), 200)
        for req, want in ((b"GET /metrics HTTP/1.1\r\n\r\n", 400),       # no Host
                          (b"BLAH\r\n\r\n", 400),
                          (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
                          (b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", 400),
                          (b"\x16\x03\x01\x00\xa5\x01\x00", 400)):       # TLS
            resp, _ = raw_http(port, req)
            self.assertEqual(status_code(resp), want, "%r -> %r" % (req, resp[:100]))
        self.assertProxyAlive(self.proxy)

    def test_3_slow_and_oversized_requests_are_cut_off(self):
        port = self.proxy.metrics_port
        # too large: 431 at the bound, without reading on
        resp, _ = raw_http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 9000
                           + b"\r\n\r\n")
        self.assertEqual(status_code(resp), 431, resp[:100])
        resp, _ = raw_http(port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status_code(resp), 414, resp[:100])
        # a field that never ends is cut at the bound too, the rest unread
        with socket.create_connection((mh.HOST, port), timeout=20) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: ")
            try:
                for _ in range(256):
                    s.sendall(b"v" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                pass
            got = b""
            try:
                got = s.recv(4096)
            except ConnectionResetError:
                pass
            # the answer, unless the client's own flood made the kernel reset
            self.assertIn(status_code(got), (431, None))

        # the endpoint serves METRICS_MAX_CONNS (16) at once: fill every slot
        # with a client that never finishes its request; a scrape waits in
        # the backlog until the slow ones are answered 408 and closed
        results = []

        def slow():
            results.append(raw_http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
                                    timeout=30))

        threads = [threading.Thread(target=slow) for _ in range(16)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        rc, text = curl(self.url, timeout=30)
        waited = time.monotonic() - t0
        for t in threads:
            t.join(40)
        self.assertEqual(rc, 0)
        parse_prometheus(text)
        self.assertEqual(len(results), 16)
        for resp, took in results:
            self.assertEqual(status_code(resp), 408, resp[:100])
            self.assertGreater(took, 3.0)
            self.assertLess(took, 15.0)
        out("16 slow clients cut off after %.1f-%.1f s; a scrape behind them waited %.1f s"
            % (min(r[1] for r in results), max(r[1] for r in results), waited))
        # and afterwards at once
        t0 = time.monotonic()
        self.assertEqual(curl(self.url)[0], 0)
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertProxyAlive(self.proxy)

    def test_4_control_socket(self):
        p = self.proxy
        st = os.stat(p.control_socket)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        self.assertEqual(st.st_uid, os.geteuid())
        self.assertEqual(unix_ask(p.control_socket, b"bogus\n"), b"error: unknown request\n")
        self.assertEqual(unix_ask(p.control_socket, b"status yaml\n"),
                         b"error: usage: status [json]\n")
        self.assertEqual(unix_ask(p.control_socket, b"status\tjson\n"),
                         b"error: control character\n")
        self.assertEqual(unix_ask(p.control_socket, b"s" * 300 + b"\n"),
                         b"error: line too long\n")
        self.assertTrue(unix_ask(p.control_socket, b"status\r\n").startswith(b"mailmoat "))
        j = json.loads(unix_ask(p.control_socket, b"status json\n"))
        self.assertIn("verdicts", j)
        # a second daemon on the same socket leaves it alone and runs without one
        other = mh.Mailmoat(os.path.join(self._tmp, "obs-second"), [("pop3", self.up)],
                            control_socket=p.control_socket).start()
        try:
            # listening comes first, the control socket after
            self.assertRegex(wait_log(other, r" ready\n"), r"control socket disabled: "
                                                             r"another process answers on ")
            self.assertTrue(other.alive())
        finally:
            self.assertEqual(other.stop(), 0)
        rc, text, err = p.status()
        self.assertEqual(rc, 0, err)

    def test_5_stale_socket_and_no_daemon(self):
        d = os.path.join(self._tmp, "stale")
        os.makedirs(d)
        path = os.path.join(d, "control.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.close()  # left behind, as after a crash
        proxy = self.start_proxy("stale-proxy", control_socket=path)
        wait_log(proxy, r" ready\n")
        rc, text, err = proxy.status()
        self.assertEqual(rc, 0, err + proxy.log_text()[-2000:])
        self.assertIn("sessions:    pop3 0 open, 0 total", text)
        self.assertEqual(proxy.stop(), 0)
        self.assertFalse(os.path.exists(path), "the socket outlived the daemon")
        rc, text, err = proxy.status()
        self.assertEqual(rc, 1)
        self.assertIn("cannot reach the daemon at %s" % path, err)
        # a directory that does not exist: a warning, and the daemon runs
        missing = os.path.join(self._tmp, "no-such-dir", "control.sock")
        proxy = self.start_proxy("missing-dir", control_socket=missing)
        self.assertRegex(wait_log(proxy, r" ready\n"),
                         r"control socket disabled: directory %s: No such file"
                         % re.escape(os.path.dirname(missing)))
        rc, text, err = proxy.status()
        self.assertEqual(rc, 1)

    def test_6_reload_counted(self):
        before = self.scrape()
        gen = value(before, "mailmoat_engine_generation")
        os.kill(self.proxy.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            fams = self.scrape()
            if value(fams, "mailmoat_engine_reloads_total") >= 1 or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(value(fams, "mailmoat_engine_reloads_total"), 1)
        self.assertEqual(value(fams, "mailmoat_engine_reload_failures_total"), 0)
        self.assertNotEqual(value(fams, "mailmoat_engine_generation"), gen)
        rc, text, err = self.proxy.status()
        self.assertEqual(rc, 0, err)
        self.assertIn("; reloads 1, failed 0\n", text)
        self.assertProxyAlive(self.proxy)


if __name__ == "__main__":
    unittest.main()
