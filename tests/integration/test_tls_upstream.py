"""Upstream TLS verification (upstream_tls: implicit): mailmoat connects
with TLS 1.2 or later, sends upstream_name as SNI, verifies the chain
against upstream_ca and the name, and checks upstream_pin. On any failure
the session is refused before anything of the upstream reaches the
client: a POP3 client gets one -ERR line, an IMAP client one * BYE line,
then the connection closes; the log has a warn line that names the reason.

Faults come from the fixture Dovecot (its certificate is for
mail.test.example; SNI expired.test.example gets an expired leaf of the
test CA, SNI unknown.test.example a leaf of a CA nobody trusts) and from a
small TLS server in this module (SNI capture, TLS 1.1 only, silence)."""

import os
import socket
import ssl
import threading
import time
import unittest

from itbase import ProxyCase, TlsMixin, legacy_tls_context, mh, read_until_close

FAKE = b"FAKE-UPSTREAM-GREETING"

NAME_RE = r"host ?name mismatch|name mismatch|does not match"
UNKNOWN_CA_RE = r"local issuer|unknown ca|untrusted|self.signed|unable to get issuer"
EXPIRED_RE = r"expired"
PIN_RE = r"pin"


class FakeTlsServer:
    """A TLS server on 127.0.0.1 for faults. Each connection: the TLS
    handshake (server context ctx; SNI and version recorded in
    self.sessions), then greeting, then it reads until the client closes.
    silent: accepts and never answers the ClientHello."""

    def __init__(self, ctx, greeting, silent=False, handler=None):
        self.ctx = ctx
        self.greeting = greeting
        self.silent = silent
        self.handler = handler      # handler(ssl socket) after the handshake, instead of greeting
        self.sessions = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((mh.HOST, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns = []
        if ctx is not None:
            ctx.sni_callback = self._sni
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _sni(sslsock, name, ctx):
        sslsock.mm_sni = name

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        rec = {"sni": None, "version": None, "error": None}
        with self._lock:
            self.sessions.append(rec)
        c.settimeout(30)
        try:
            if self.silent:
                while c.recv(4096) and not self._stop.is_set():
                    pass
                return
            with self.ctx.wrap_socket(c, server_side=True) as s:
                rec["sni"] = getattr(s, "mm_sni", None)
                rec["version"] = s.version()
                if self.handler:
                    self.handler(s)
                    return
                s.sendall(self.greeting)
                while s.recv(4096):
                    pass
        except (OSError, ssl.SSLError) as ex:
            rec["error"] = repr(ex)
        finally:
            c.close()

    def close(self):
        self._stop.set()
        self._sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
        self._thread.join(5)


class UpstreamVerify(TlsMixin, ProxyCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()
        cls.imap_up = cls.st["imap_port"]

    # ---- helpers ----

    def proxy_for(self, pop3_port, imap_port, keys, **cfg):
        """A mailmoat with a POP3 and an IMAP listener, both with keys."""
        return self.start_proxy_listeners([("pop3", pop3_port, keys), ("imap", imap_port, keys)], **cfg)

    def dovecot_proxy(self, **keys):
        return self.proxy_for(self.pop3s_up, self.imaps_up, self.tls_upstream_keys(**keys))

    def assertRefused(self, proxy, reason_re, tls_client=False, within=20.0):
        """Both listeners refuse: one -ERR / * BYE line, then the close;
        nothing of the upstream relayed; a warn line per protocol matching
        reason_re."""
        for port, proto, prefix in ((proxy.ports[0], "pop3", b"-ERR"), (proxy.ports[1], "imap", b"* BYE")):
            t0 = time.monotonic()
            if tls_client:
                s = self.proxy_tls(port)
            else:
                s = socket.create_connection((mh.HOST, port), timeout=10)
            with s:
                data, closed = read_until_close(s, timeout=within)
            took = time.monotonic() - t0
            self.assertTrue(closed, "%s: the connection was not closed within %.0f s (got %r)"
                            % (proto, within, data))
            self.assertTrue(data.startswith(prefix), "%s: %r" % (proto, data))
            self.assertTrue(data.endswith(b"\r\n") and data.count(b"\r\n") == 1,
                            "%s: more than one line: %r" % (proto, data))
            for leak in (b"Dovecot", FAKE, b"+OK", b"* OK"):
                self.assertNotIn(leak, data, "%s: upstream text relayed: %r" % (proto, data))
            self.assertLess(took, within)
        deadline = time.monotonic() + 5
        while True:
            lines = self.warn_lines(proxy, reason_re, sessions_only=True)
            protos = {l.split()[3] for l in lines if len(l.split()) > 3}
            if {"pop3", "imap"} <= protos or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertTrue({"pop3", "imap"} <= protos,
                        "no warn line matching /%s/ for both protocols; warn lines:\n%s"
                        % (reason_re, "\n".join(self.warn_lines(proxy))))
        self.assertProxyAlive(proxy)

    def assertServes(self, proxy, tls_client=False):
        """Both listeners work: dave's POP3 mailbox and grace's IMAP INBOX
        as Dovecot serves them."""
        u, pw = self.user("dave")
        kw = {"tls": self.client_ctx, "server_hostname": mh.TLS_PROXY_NAME} if tls_client else {}
        got = mh.fetch_all_raw(proxy.ports[0], u, pw, **kw)
        want = self.direct("dave")
        self.assertEqual(got["RETR"], want["RETR"], "POP3 through the proxy differs; warn lines:\n%s"
                         % "\n".join(self.warn_lines(proxy)))
        gpw = self.st["users"]["grace"]["password"]
        res = {}
        for label, c in (("direct", mh.RawImap(self.imap_up)),
                         ("proxy", mh.RawImap(proxy.ports[1], **kw))):
            with c:
                c.login("grace", gpw)
                c.command("EXAMINE INBOX")
                st, untagged = c.command("UID FETCH 1,2 (UID BODY.PEEK[])")
                self.assertEqual(mh.imap_status(st), "OK", st)
                res[label] = untagged
        self.assertEqual(res["proxy"], res["direct"], "IMAP through the proxy differs")

    # ---- refusals ----

    def test_wrong_name(self):
        """The certificate is for mail.test.example; other.test.example is
        expected."""
        p = self.dovecot_proxy(name="other.test.example")
        self.assertRefused(p, NAME_RE)

    def test_unknown_ca(self):
        """upstream_ca is another CA than the one that signed the
        upstream's certificate."""
        p = self.dovecot_proxy(ca=self.pki["other_ca"])
        self.assertRefused(p, UNKNOWN_CA_RE)

    def test_unknown_ca_by_sni(self):
        """SNI unknown.test.example: Dovecot serves a leaf of a CA nobody
        trusts (also shows that upstream_name goes out as SNI)."""
        p = self.dovecot_proxy(name=mh.TLS_UNKNOWN_NAME)
        self.assertRefused(p, UNKNOWN_CA_RE)

    def test_expired(self):
        """SNI expired.test.example: Dovecot serves a leaf of the test CA
        that expired on 2021-01-01."""
        p = self.dovecot_proxy(name=mh.TLS_EXPIRED_NAME)
        self.assertRefused(p, EXPIRED_RE)

    def test_pin_mismatch(self):
        """A valid chain and name, but upstream_pin is another key's."""
        p = self.dovecot_proxy(upstream_pin=mh.spki_pin(self.pki["other_name_cert"]))
        self.assertRefused(p, PIN_RE)

    def test_refused_to_a_tls_client(self):
        """The same refusal on a TLS listener: the -ERR / * BYE comes inside
        the client's TLS session."""
        keys = dict(self.tls_listener_keys(), **self.tls_upstream_keys(name="other.test.example"))
        p = self.proxy_for(self.pop3s_up, self.imaps_up, keys)
        self.assertRefused(p, NAME_RE, tls_client=True)

    def test_plaintext_upstream(self):
        """upstream_tls: implicit towards a plaintext server: its greeting
        is no ServerHello; nothing of it reaches the client."""
        p = self.proxy_for(self.up, self.imap_up, self.tls_upstream_keys())
        self.assertRefused(p, r"tls|ssl|handshake|record|version|protocol")

    def test_tls11_upstream(self):
        """An upstream that speaks only TLS 1.0/1.1 is refused (this
        server does complete a TLS 1.1 handshake with a client that
        allows it)."""
        ctx = legacy_tls_context(server=True, cert=self.pki["upstream_cert"], key=self.pki["upstream_key"])
        srv = FakeTlsServer(ctx, b"+OK " + FAKE + b"\r\n")
        self.addCleanup(srv.close)
        cli = legacy_tls_context(cafile=self.pki["ca"])
        with mh.tls_connect(srv.port, cli, mh.TLS_UPSTREAM_NAME, timeout=10) as s:
            self.assertEqual(s.version(), "TLSv1.1")
            self.assertIn(FAKE, s.recv(100))
        p = self.proxy_for(srv.port, srv.port, self.tls_upstream_keys())
        self.assertRefused(p, r"tls|ssl|handshake|version|protocol|alert")

    def test_silent_upstream(self):
        """An upstream that accepts and never answers the ClientHello: the
        session is refused within the connect/idle time-outs."""
        srv = FakeTlsServer(None, b"", silent=True)
        self.addCleanup(srv.close)
        p = self.proxy_for(srv.port, srv.port, self.tls_upstream_keys(),
                           timeouts={"connect": 2, "upstream_idle": 3})
        self.assertRefused(p, r"time|handshake|tls|ssl", within=20.0)

    def test_upstream_cut_mid_message(self):
        """The upstream's TLS connection ends in the middle of a RETR
        answer (no close_notify): the client never gets a message that
        looks complete, and the session ends."""
        def pop3(s):
            f = s.makefile("rb")
            s.sendall(b"+OK " + FAKE + b"\r\n")
            for line in f:
                cmd = line.strip().upper()
                if cmd.startswith(b"RETR"):
                    s.sendall(b"+OK 4000 octets\r\nSubject: cut\r\n\r\n" + b"line\r\n" * 100)
                    time.sleep(0.2)
                    s.sendall(b"line\r\n.")
                    time.sleep(0.2)
                    # close the TCP connection under TLS, no close_notify
                    sock = socket.socket(fileno=os.dup(s.fileno()))
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                    return
                if cmd == b"LIST":
                    s.sendall(b"+OK 1 messages\r\n1 4000\r\n.\r\n")
                elif cmd == b"UIDL":
                    s.sendall(b"+OK\r\n1 cut-1\r\n.\r\n")
                elif cmd.startswith(b"LIST "):
                    s.sendall(b"+OK 1 4000\r\n")
                elif cmd.startswith(b"UIDL "):
                    s.sendall(b"+OK 1 cut-1\r\n")
                elif cmd.startswith(b"QUIT"):
                    s.sendall(b"+OK bye\r\n")
                    return
                else:
                    s.sendall(b"+OK\r\n")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki["upstream_cert"], self.pki["upstream_key"])
        srv = FakeTlsServer(ctx, None, handler=pop3)
        self.addCleanup(srv.close)
        p = self.start_proxy_listeners([("pop3", srv.port, self.tls_upstream_keys())])
        with mh.RawPop3(p.port, timeout=20) as c:
            self.assertIn(FAKE, c.greeting)
            self.assertTrue(c.cmd("USER x").startswith(b"+OK"))
            self.assertTrue(c.cmd("PASS y").startswith(b"+OK"))
            c.send(b"RETR 1\r\n")
            data, closed = read_until_close(c.sock, timeout=20)
            data = bytes(c.buf) + data
        self.assertTrue(closed, "session not ended after the upstream vanished: %r" % data[-200:])
        self.assertEqual(len(srv.sessions), 1)
        self.assertNotIn(b"\r\n.\r\n", data, "a cut message was delivered as complete")
        self.assertNotIn(b"line\r\n", data, "part of an unscanned, cut message was relayed")
        self.assertProxyAlive(p)

    # ---- what works ----

    def test_sni_and_version(self):
        """upstream_name goes out as SNI; TLS 1.2 or later."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki["upstream_cert"], self.pki["upstream_key"])
        srv = FakeTlsServer(ctx, b"+OK " + FAKE + b"\r\n")
        self.addCleanup(srv.close)
        p = self.start_proxy_listeners([("pop3", srv.port, self.tls_upstream_keys())])
        with mh.RawPop3(p.port, timeout=20) as c:
            self.assertIn(FAKE, c.greeting, "the upstream's greeting was not relayed")
        self.assertEqual(len(srv.sessions), 1, srv.sessions)
        rec = srv.sessions[0]
        self.assertIsNone(rec["error"])
        self.assertEqual(rec["sni"], mh.TLS_UPSTREAM_NAME)
        self.assertIn(rec["version"], ("TLSv1.2", "TLSv1.3"))

    def test_no_sni_for_an_address(self):
        """Without upstream_name the host is verified; an IP address is
        never sent as SNI (RFC 6066 section 3)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki["upstream_cert"], self.pki["upstream_key"])
        srv = FakeTlsServer(ctx, b"+OK " + FAKE + b"\r\n")
        self.addCleanup(srv.close)
        p = self.start_proxy_listeners([("pop3", srv.port, self.tls_upstream_keys(name=None))])
        with mh.RawPop3(p.port, timeout=20) as c:
            self.assertIn(FAKE, c.greeting, "the upstream's greeting was not relayed; warn lines:\n%s"
                          % "\n".join(self.warn_lines(p)))
        self.assertEqual(len(srv.sessions), 1)
        self.assertIsNone(srv.sessions[0]["sni"], "an IP address was sent as SNI")

    def test_pin_match(self):
        p = self.dovecot_proxy(upstream_pin=mh.spki_pin(self.pki["upstream_cert"]))
        self.assertServes(p)
        self.assertEqual(self.warn_lines(p, sessions_only=True), [])

    def test_verify_false_unknown_ca(self):
        """upstream_verify: false accepts a chain of an unknown CA (and says
        so loudly in the log)."""
        p = self.dovecot_proxy(ca=self.pki["other_ca"], upstream_verify=False)
        self.assertServes(p)
        self.assertTrue(self.warn_lines(p, r"verif"),
                        "upstream_verify: false without a warning; log:\n%s" % p.log_text()[-3000:])

    def test_verify_false_wrong_name_and_expired(self):
        p = self.dovecot_proxy(name=mh.TLS_EXPIRED_NAME, upstream_verify=False)
        self.assertServes(p)

    def test_tls_client_and_upstream_after_refusals(self):
        """Refused sessions leave the listener usable: a good proxy session
        after a burst of refused ones on another listener of the same
        process."""
        good = dict(self.tls_listener_keys(), **self.tls_upstream_keys())
        bad = self.tls_upstream_keys(name="other.test.example")
        p = self.start_proxy_listeners([("pop3", self.pop3s_up, good), ("imap", self.imaps_up, good),
                                        ("pop3", self.pop3s_up, bad)])
        for _ in range(10):
            with socket.create_connection((mh.HOST, p.ports[2]), timeout=10) as s:
                data, closed = read_until_close(s, timeout=20)
                self.assertTrue(closed and data.startswith(b"-ERR"), data)
        self.assertServes(p, tls_client=True)


class ConfigContract(TlsMixin, ProxyCase):
    """--check-config on the TLS keys."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()

    def check(self, keys, name):
        d = os.path.join(self._tmp, "cfg-" + name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "mailmoat.yaml")
        with open(path, "w") as f:
            f.write(mh.mailmoat_config_yaml([("pop3", 1100, self.pop3s_up, None, keys)],
                                            os.path.join(d, "q")))
        return mh.check_config(path)

    def test_valid(self):
        keys = dict(self.tls_listener_keys(), **self.tls_upstream_keys(
            upstream_pin=mh.spki_pin(self.pki["upstream_cert"])))
        rc, text = self.check(keys, "valid")
        self.assertEqual(rc, 0, text)
        rc, text = self.check(dict(keys, upstream_verify=False), "noverify")
        self.assertEqual(rc, 0, text)

    def test_invalid(self):
        good = dict(self.tls_listener_keys(), **self.tls_upstream_keys())
        bad = {
            "no_certificate": {k: v for k, v in good.items() if k != "certificate"},
            "no_key": {k: v for k, v in good.items() if k != "key"},
            "tls_value": dict(good, tls="sometimes"),
            "upstream_tls_value": dict(good, upstream_tls="yes please"),
            "pin_algorithm": dict(good, upstream_pin="md5//" + "A" * 22 + "=="),
            "pin_length": dict(good, upstream_pin="sha256//AAAA"),
            "verify_value": dict(good, upstream_verify="maybe"),
        }
        for name, keys in bad.items():
            rc, text = self.check(keys, name)
            self.assertEqual(rc, 1, "%s accepted: %s" % (name, text))
            self.assertRegex(text, r"mailmoat\.yaml:\d+: ", "%s: no FILE:LINE: reason" % name)


if __name__ == "__main__":
    unittest.main()
