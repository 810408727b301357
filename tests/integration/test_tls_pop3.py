"""POP3 with implicit TLS (POP3S) on either side of mailmoat.

  upstream TLS   plain client -> mailmoat -> Dovecot's POP3S, verified
                 against the test CA for mail.test.example
  client TLS     POP3S client -> mailmoat (proxy.test.example, a chain with
                 an intermediate) -> Dovecot's plain POP3
  both           POP3S client -> mailmoat -> Dovecot's POP3S

In every case the session is what it is in plaintext: clean mail byte for
byte as Dovecot sends it, an infected message replaced by the notice, its
original in the quarantine. Clients trust only the test root CA and check
the host name."""

import hashlib
import os
import poplib
import shutil
import socket
import ssl
import subprocess
import threading
import time
import unittest

from itbase import (NOTICE_MARK, Pop3Tls, ProxyCase, TlsMixin, legacy_tls_context, list_sizes, mh,
                    out, read_until_close)

CURL = shutil.which("curl")


class Pop3Checks(TlsMixin, ProxyCase):
    """What every TLS arrangement must give; subclasses set cls.proxy and
    cls.client_tls (whether clients speak TLS to the proxy)."""

    client_tls = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()
        cls._ref = {}

    def ref(self, name, top=None):
        """The reference: Dovecot's plain POP3, straight."""
        key = (name, top)
        if key not in self._ref:
            self._ref[key] = self.direct(name, top=top)
        return self._ref[key]

    def via(self, name, top=None):
        u, pw = self.user(name)
        if self.client_tls:
            return self.fetch_all_tls(self.proxy.port, name, top=top)
        return mh.fetch_all_raw(self.proxy.port, u, pw, top=top)

    def connect(self):
        if self.client_tls:
            return self.raw_pop3_tls(self.proxy.port)
        return mh.RawPop3(self.proxy.port)

    def test_clean_byte_identical(self):
        for name in ("alice", "dave"):
            want = self.ref(name, top=3)
            got = self.via(name, top=3)
            self.assertTrue(got["QUIT"].startswith(b"+OK"), got["QUIT"])
            for key in ("STAT", "LIST", "UIDL", "count"):
                self.assertEqual(got[key], want[key], "%s %s differs" % (name, key))
            for m, g, w in zip(self.messages(name), got["RETR"], want["RETR"]):
                self.assertEqual(g, w, "%s RETR %d (%s) differs" % (name, m["num"], m["kind"]))
            self.assertEqual(got["TOP"], want["TOP"], "%s TOP n 3 differs" % name)
        self.assertProxyAlive(self.proxy)

    def test_infected_replaced_by_notice(self):
        want = self.ref("bob")
        got = self.via("bob")
        for key in ("STAT", "LIST", "UIDL"):
            self.assertEqual(got[key], want[key], "bob %s differs" % key)
        sizes = list_sizes(want["LIST"][1])
        quarantined = {q[0]: q for q in self.proxy.quarantine()}
        infected = self.infected_nums("bob")
        self.assertTrue(infected)
        for m in self.messages("bob"):
            n = m["num"]
            st, body = got["RETR"][n - 1]
            self.assertTrue(st.startswith(b"+OK"), "RETR %d: %r" % (n, st))
            if n not in infected:
                self.assertEqual(body, want["RETR"][n - 1][1], "clean message %d altered" % n)
                continue
            original = mh.unstuff(want["RETR"][n - 1][1])
            notice = mh.unstuff(body)
            self.assertNotice(notice, original, sizes[n])
            qid = mh.header_of(notice, "X-Mailmoat-Quarantine-Id")
            self.assertIn(qid, quarantined, "notice for %d names no quarantine entry" % n)
            with open(quarantined[qid][1], "rb") as f:
                self.assertEqual(f.read(), original, "quarantined %s is not the original" % qid)
        self.assertProxyAlive(self.proxy)

    def test_pipelined(self):
        """All commands in one write: big TLS records both ways, answers
        in order, byte for byte."""
        u, pw = self.user("alice")
        n = len(self.messages(u))
        cmds = (["USER " + u, "PASS " + pw, "STAT", "LIST", "UIDL"] +
                ["RETR %d" % i for i in range(1, n + 1)] + ["TOP 2 1", "NOOP"] +
                ["RETR %d" % i for i in range(n, 0, -1)])
        with mh.RawPop3(self.up) as c:
            want = mh.pipeline(c, cmds + ["QUIT"])
        with self.connect() as c:
            got = mh.pipeline(c, cmds + ["QUIT"])
        self.assertEqual(len(got), len(cmds) + 1, "responses missing under pipelining")
        for c, g, w in zip(cmds, got, want):
            if c.startswith("PASS"):
                self.assertTrue(g[0].startswith(b"+OK"), g[0])
                continue
            self.assertEqual(g, w, "pipelined %s differs" % c)

    def test_concurrent_sessions(self):
        """Eight sessions at once (separate TLS states in one event loop)."""
        want = self.ref("alice")
        results, errors = {}, []

        def run(i):
            try:
                results[i] = self.via("alice")
            except Exception as ex:    # noqa: BLE001 - reported below
                errors.append("%d: %r" % (i, ex))
        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 8)
        for i, got in results.items():
            self.assertEqual(got["RETR"], want["RETR"], "session %d differs" % i)
        self.assertProxyAlive(self.proxy)

    def test_big_message(self):
        """A 12 MiB message (frank's big_clean) arrives whole and intact,
        and a 12 MiB infected one as its notice."""
        u, pw = self.user("frank")
        big = [m for m in self.messages("frank") if m["kind"] == "big_clean"][0]["num"]
        bad = [m for m in self.messages("frank") if m["kind"] == "big_eicar"][0]["num"]
        with mh.RawPop3(self.up) as c:
            c.login(u, pw)
            st, want = c.cmd_multi("RETR %d" % big)
        with self.connect() as c:
            c.login(u, pw)
            st2, got = c.cmd_multi("RETR %d" % big)
            self.assertEqual(st2, st)
            self.assertEqual(len(got), len(want))
            self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(want).hexdigest(),
                             "12 MiB message altered")
            st3, notice = c.cmd_multi("RETR %d" % bad)
            self.assertTrue(st3.startswith(b"+OK"), st3)
            self.assertIn(NOTICE_MARK, mh.header_of(mh.unstuff(notice), "Subject"))
            self.assertNotIn(mh.EICAR, notice)
            self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        out("%s: %d MiB through mailmoat intact" % (type(self).__name__, len(got) >> 20))

    def test_commands_before_greeting(self):
        """A client that sends its commands in its first write, before the
        greeting has arrived (just after the TLS handshake): answered in
        order after the greeting, as Dovecot answers them."""
        u, pw = self.user("dave")
        cmds = b"".join(c.encode() + b"\r\n" for c in
                        ["USER " + u, "PASS " + pw, "STAT", "LIST", "RETR 1", "RETR 2", "QUIT"])
        res = {}
        for label in ("direct", "proxy"):
            if label == "direct":
                s = socket.create_connection((mh.HOST, self.up), timeout=20)
            elif self.client_tls:
                s = self.proxy_tls(self.proxy.port)
            else:
                s = socket.create_connection((mh.HOST, self.proxy.port), timeout=20)
            with s:
                s.sendall(cmds)
                data, closed = read_until_close(s, timeout=30)
            self.assertTrue(closed, "%s: no close after QUIT: %r" % (label, data[-200:]))
            greeting, _, rest = data.partition(b"\r\n")
            self.assertTrue(greeting.startswith(b"+OK"), greeting)
            res[label] = rest
        self.assertEqual(res["proxy"], res["direct"])

    @staticmethod
    def _poplib_dump(p, u, pw):
        try:
            p.user(u)
            p.pass_(pw)
            d = {"stat": p.stat(), "list": p.list(), "uidl": p.uidl()}
            n = d["stat"][0]
            d["retr"] = [p.retr(i) for i in range(1, n + 1)]
            d["top"] = [p.top(i, 2) for i in range(1, n + 1)]
            p.quit()
        finally:
            p.close()
        return d

    def test_poplib(self):
        """poplib (POP3_SSL with the name checked when the client speaks
        TLS) gets what it gets from Dovecot directly."""
        u, pw = self.user("alice")
        want = self._poplib_dump(poplib.POP3(mh.HOST, self.up, timeout=60), u, pw)
        if self.client_tls:
            p = Pop3Tls(self.proxy.port, mh.TLS_PROXY_NAME, self.client_ctx)
        else:
            p = poplib.POP3(mh.HOST, self.proxy.port, timeout=60)
        got = self._poplib_dump(p, u, pw)
        self.assertEqual(got, want)


class UpstreamTls(Pop3Checks):
    """Plain client -> mailmoat -> Dovecot's POP3S."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_proxy_listeners(
            "up-tls", [("pop3", cls.pop3s_up, cls.tls_upstream_keys())])

    def test_no_warnings(self):
        self.via("dave")
        self.assertEqual(self.warn_lines(self.proxy, sessions_only=True), [],
                         "a verified upstream session logged warnings")

    def test_default_name_is_the_upstream_address(self):
        """No upstream_name: the upstream's address (127.0.0.1) is what is
        verified; the certificate has it as an IP SAN."""
        p = self.start_proxy_listeners([("pop3", self.pop3s_up, self.tls_upstream_keys(name=None))])
        u, pw = self.user("dave")
        got = mh.fetch_all_raw(p.port, u, pw)
        self.assertEqual(got["RETR"], self.ref("dave")["RETR"],
                         "upstream 127.0.0.1 with an IP SAN of 127.0.0.1 was not accepted: %s"
                         % self.warn_lines(p))

    def test_pin_match(self):
        """upstream_pin of the upstream's own key: works."""
        pin = mh.spki_pin(self.pki["upstream_cert"])
        p = self.start_proxy_listeners(
            [("pop3", self.pop3s_up, self.tls_upstream_keys(upstream_pin=pin))])
        u, pw = self.user("dave")
        got = mh.fetch_all_raw(p.port, u, pw)
        self.assertEqual(got["RETR"], self.ref("dave")["RETR"], self.warn_lines(p))


class ClientTls(Pop3Checks):
    """POP3S client -> mailmoat -> Dovecot's plain POP3."""

    client_tls = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_proxy_listeners("client-tls", [("pop3", cls.up, cls.tls_listener_keys())])

    def test_certificate_and_version(self):
        """The proxy serves its chain (the client trusts only the root),
        for proxy.test.example and 127.0.0.1, TLS 1.2 or later."""
        for name in (mh.TLS_PROXY_NAME, mh.HOST):
            with self.proxy_tls(self.proxy.port, name=name) as s:
                self.assertIn(s.version(), ("TLSv1.2", "TLSv1.3"))
                cert = s.getpeercert()
                self.assertIn(("DNS", mh.TLS_PROXY_NAME), cert["subjectAltName"])
                data = s.recv(512)
                self.assertTrue(data.startswith(b"+OK"), data)
        # The client side does check the name: a wrong one fails.
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.proxy_tls(self.proxy.port, name="wrong.test.example").close()
        # A TLS 1.1 client is refused (this client does speak TLS 1.1:
        # test_tls_upstream checks that against a TLS 1.1 server).
        ctx = legacy_tls_context(cafile=self.pki["ca"])
        with self.assertRaises((ssl.SSLError, ConnectionResetError)):
            mh.tls_connect(self.proxy.port, ctx, mh.TLS_PROXY_NAME, timeout=20).close()
        self.assertProxyAlive(self.proxy)

    def test_silent_until_client_hello(self):
        """On a TLS listener nothing is sent in the clear: no greeting
        before the client's ClientHello."""
        with socket.create_connection((mh.HOST, self.proxy.port), timeout=10) as s:
            s.settimeout(2.0)
            try:
                data = s.recv(512)
            except socket.timeout:
                data = None
            self.assertIsNone(data, "the TLS listener sent %r before any ClientHello" % data)

    def test_plaintext_client_refused(self):
        """A plaintext POP3 client on the TLS listener gets no POP3 answer,
        and the connection closes (no hanging session)."""
        u, pw = self.user("alice")
        with socket.create_connection((mh.HOST, self.proxy.port), timeout=10) as s:
            s.sendall(("USER %s\r\nPASS %s\r\nSTAT\r\n" % (u, pw)).encode())
            data, closed = read_until_close(s, timeout=15)
        self.assertNotIn(b"+OK", data)
        self.assertNotIn(b"-ERR", data)
        self.assertTrue(closed, "a plaintext client on the TLS listener was not disconnected")
        self.assertLogClean(self.proxy, [pw])
        # and the listener still serves TLS clients
        self.assertEqual(self.fetch_all_tls(self.proxy.port, "dave")["RETR"], self.ref("dave")["RETR"])

    def test_handshake_abandoned(self):
        """A client that stops in the middle of the handshake, and one that
        sends garbage, do not harm the others."""
        hello = socket.create_connection((mh.HOST, self.proxy.port), timeout=10)
        hello.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")   # a cut ClientHello
        junk = socket.create_connection((mh.HOST, self.proxy.port), timeout=10)
        junk.sendall(os.urandom(4096))
        try:
            self.assertEqual(self.fetch_all_tls(self.proxy.port, "dave")["RETR"], self.ref("dave")["RETR"])
            data, closed = read_until_close(junk, timeout=15)
            self.assertTrue(closed, "a client sending garbage was not disconnected")
        finally:
            hello.close()
            junk.close()
        self.assertProxyAlive(self.proxy)


class BothTls(Pop3Checks):
    """POP3S client -> mailmoat -> Dovecot's POP3S."""

    def test_client_vanishes_mid_retr(self):
        """TLS clients that close (or reset) in the middle of a 12 MiB
        RETR: the proxy stays up and serves the next client."""
        u, pw = self.user("frank")
        big = [m for m in self.messages("frank") if m["kind"] == "big_clean"][0]["num"]
        for how in ("close", "reset", "close_notify"):
            c = self.raw_pop3_tls(self.proxy.port)
            c.login(u, pw)
            c.send(b"RETR %d\r\n" % big)
            c.sock.recv(65536)
            if how == "reset":
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            elif how == "close_notify":
                try:
                    c.sock.settimeout(2)
                    c.sock.unwrap()
                except (OSError, ssl.SSLError):
                    pass
            c.close()
        time.sleep(0.5)
        self.assertProxyAlive(self.proxy)
        self.assertEqual(self.fetch_all_tls(self.proxy.port, "dave")["RETR"], self.ref("dave")["RETR"])

    def test_slow_reader(self):
        """A client that reads a 12 MiB message slowly at first (TLS
        records wait in the proxy while the client's window is full), then
        at full speed: the message arrives intact."""
        u, pw = self.user("frank")
        big = [m for m in self.messages("frank") if m["kind"] == "big_clean"][0]["num"]
        with mh.RawPop3(self.up) as c:
            c.login(u, pw)
            want = c.cmd_multi("RETR %d" % big)
        with self.raw_pop3_tls(self.proxy.port) as c:
            c.login(u, pw)
            c.send(b"RETR %d\r\n" % big)
            slow = bytearray()
            t0 = time.monotonic()
            while len(slow) < (2 << 20):
                chunk = c.sock.recv(16384)
                self.assertTrue(chunk, "closed while reading slowly")
                slow += chunk
                time.sleep(0.005)
            slow_s = time.monotonic() - t0
            c.buf[:0] = slow
            st = c.readline()
            body = c.read_multiline_raw()
            self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        self.assertEqual(st, want[0])
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(want[1]).hexdigest(),
                         "12 MiB message altered after a slow start")
        out("slow TLS reader: first 2 MiB in %.1f s, then the rest: intact" % slow_s)

    client_tls = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        keys = dict(cls.tls_listener_keys(), **cls.tls_upstream_keys())
        cls.proxy = cls.class_proxy_listeners("both-tls", [("pop3", cls.pop3s_up, keys)])

    def test_direct_tls_is_the_same(self):
        """Dovecot's POP3S and POP3 serve the same bytes (the reference
        the other tests use is the plain one)."""
        u, pw = self.user("alice")
        tls = mh.fetch_all_raw(self.pop3s_up, u, pw, top=3, tls=self.client_ctx,
                               server_hostname=mh.TLS_UPSTREAM_NAME)
        plain = self.ref("alice", top=3)
        for key in ("STAT", "LIST", "UIDL", "RETR", "TOP"):
            self.assertEqual(tls[key], plain[key])


@unittest.skipUnless(CURL, "curl not installed")
class CurlPop3s(TlsMixin, ProxyCase):
    """curl pop3s:// against mailmoat's TLS listener (--cacert: the test
    root; the name proxy.test.example resolved to 127.0.0.1)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()
        keys = dict(cls.tls_listener_keys(), **cls.tls_upstream_keys())
        cls.both = cls.class_proxy_listeners("curl-both", [("pop3", cls.pop3s_up, keys)])
        cls.client = cls.class_proxy_listeners("curl-client", [("pop3", cls.up, cls.tls_listener_keys())])

    def curl(self, url, name, host=None, cacert=None):
        u, pw = self.user(name)
        args = [CURL, "-s", "-S", "--max-time", "60", "-u", "%s:%s" % (u, pw), url]
        if cacert:
            args += ["--cacert", cacert]
        if host:
            args += ["--resolve", "%s:%s:%s" % (host[0], host[1], mh.HOST)]
        r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(r.returncode, 0, "curl %s failed: %s" % (url, r.stderr.decode(errors="replace")))
        return r.stdout

    def via(self, proxy, name, path=""):
        return self.curl("pop3s://%s:%d/%s" % (mh.TLS_PROXY_NAME, proxy.port, path), name,
                         host=(mh.TLS_PROXY_NAME, proxy.port), cacert=self.pki["ca"])

    def direct(self, name, path=""):
        return self.curl("pop3://%s:%d/%s" % (mh.HOST, self.up, path), name)

    def test_list_and_retrieve(self):
        for proxy in (self.both, self.client):
            for name in ("alice", "bob"):
                self.assertEqual(self.via(proxy, name), self.direct(name), "curl listing of %s" % name)
                for m in self.messages(name):
                    got = self.via(proxy, name, str(m["num"]))
                    if m["infected"]:
                        self.assertIn(NOTICE_MARK, mh.header_of(got, "Subject"))
                        self.assertEqual(mh.header_of(got, "Message-ID"), m["message_id"])
                        self.assertNotIn(mh.EICAR, got)
                    else:
                        self.assertEqual(got, self.direct(name, str(m["num"])),
                                         "curl %s/%d (%s) differs" % (name, m["num"], m["kind"]))
        out("curl pop3s://: alice and bob through both TLS proxies")

    def test_curl_checks_the_name(self):
        """Sanity of the setup: curl refuses the proxy under another name."""
        u, pw = self.user("alice")
        r = subprocess.run([CURL, "-s", "-S", "--max-time", "30", "-u", "%s:%s" % (u, pw),
                            "--cacert", self.pki["ca"], "--resolve",
                            "wrong.test.example:%d:%s" % (self.both.port, mh.HOST),
                            "pop3s://wrong.test.example:%d/" % self.both.port],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(r.stdout, b"")


# the base class holds tests but is no test case of its own
del Pop3Checks

if __name__ == "__main__":
    unittest.main()
