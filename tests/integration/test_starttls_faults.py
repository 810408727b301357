"""upstream_tls: starttls that cannot be had: the session ends, never in
plaintext.

A scripted POP3/IMAP server on 127.0.0.1 (in this module, only for these
faults) that answers -ERR / NO / BAD to the proxy's STLS / STARTTLS, or
does not offer it at all, and records every line it receives; and the
fixture Dovecot with a wrong upstream_name. The client gets the greeting,
then one line (POP3 "-ERR [SYS/TEMP] mailmoat: upstream TLS ...", IMAP
"* BYE [UNAVAILABLE] mailmoat: upstream TLS ...") and the close; the
client's commands, sent at once, never reach the server; the log has a
warn line with the reason."""

import re
import socket
import threading
import time
import unittest

from itbase import ProxyCase, TlsMixin, mh, read_until_close

POP3_UNAVAILABLE = b"-ERR [SYS/TEMP] mailmoat: upstream TLS unavailable\r\n"
IMAP_UNAVAILABLE = b"* BYE [UNAVAILABLE] mailmoat: upstream TLS unavailable\r\n"
FAKE = b"FAKE-SCRIPTED"
NAME_RE = r"host ?name mismatch"


class ScriptedServer:
    """A plaintext POP3 or IMAP server: sends greeting, then answers each
    line with answer(line) (bytes, or None for no answer). Every line
    received is recorded in self.lines."""

    def __init__(self, greeting, answer, greet_after=0.0):
        self.greeting = greeting
        self.greet_after = greet_after
        self.answer = answer
        self.lines = []
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((mh.HOST, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(30)
        try:
            if self.greet_after:
                time.sleep(self.greet_after)
            c.sendall(self.greeting)
            f = c.makefile("rb")
            for line in f:
                with self._lock:
                    self.lines.append(line)
                a = self.answer(line)
                if a:
                    c.sendall(a)
        except OSError:
            pass
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


def pop3_answer(stls_reply):
    def answer(line):
        verb = line.split()[0].upper() if line.split() else b""
        if verb == b"STLS":
            return stls_reply
        if verb == b"CAPA":
            return b"+OK\r\nUSER\r\nUIDL\r\n.\r\n"
        if verb == b"QUIT":
            return b"+OK bye\r\n"
        return b"+OK " + FAKE + b"\r\n"     # would let anything through
    return answer


def imap_answer(starttls_reply):
    def answer(line):
        w = line.split()
        if len(w) < 2:
            return b"* BAD " + FAKE + b"\r\n"
        tag, verb = w[0], w[1].upper()
        if verb == b"STARTTLS":
            return tag + b" " + starttls_reply + b"\r\n"
        return b"* " + FAKE + b"\r\n" + tag + b" OK " + FAKE + b"\r\n"
    return answer


POP3_GREETING = b"+OK " + FAKE + b" POP3 ready\r\n"
IMAP_GREETING_STARTTLS = b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] " + FAKE + b" ready\r\n"
IMAP_GREETING_PLAIN = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] " + FAKE + b" ready\r\n"


class UpstreamStarttlsRefused(TlsMixin, ProxyCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()
        cls.imap_up = cls.st["imap_port"]

    def scripted(self, greeting, answer, greet_after=0.0):
        srv = ScriptedServer(greeting, answer, greet_after)
        self.addCleanup(srv.close)
        return srv

    def proxy_to(self, proto, port, client_keys=None, **up):
        keys = dict(client_keys or {})
        keys.update(self.tls_upstream_keys(upstream_tls="starttls", **up))
        return self.start_proxy_listeners([(proto, port, keys)])

    def session(self, proxy, send, tls_client=False, early=False, within=15.0):
        """Connects (plain, or TLS to a tls: implicit listener), reads the
        greeting line, then sends send in one write (early: sends it right
        after connecting, before the greeting can have arrived) and reads
        until the close. Returns everything received."""
        if tls_client:
            s = self.proxy_tls(proxy.port, timeout=20)
        else:
            s = socket.create_connection((mh.HOST, proxy.port), timeout=20)
        with s:
            data = b""
            if not early:
                while not data.endswith(b"\n"):
                    b = s.recv(1)
                    if not b:
                        break
                    data += b
            try:
                s.sendall(send)
            except OSError:
                pass
            rest, closed = read_until_close(s, timeout=within)
            data += rest
        self.assertTrue(closed, "the session was not closed within %.0f s: %r" % (within, data))
        return data

    def assertWarn(self, proxy, pattern, proto):
        deadline = time.monotonic() + 5
        while True:
            lines = [l for l in self.warn_lines(proxy, pattern, sessions_only=True) if " %s " % proto in l]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertTrue(lines, "no warn line matching /%s/; log:\n%s" % (pattern, proxy.log_text()[-3000:]))
        return lines

    # ---- POP3 ----

    def check_pop3(self, stls_reply, tls_client=False, early=False):
        # a TLS client's handshake ends before the upstream greets (see
        # DaemonBugs.test_bug_pop3_refusal_before_client_handshake)
        srv = self.scripted(POP3_GREETING, pop3_answer(stls_reply), 0.3 if tls_client else 0.0)
        keys = self.tls_listener_keys() if tls_client else None
        p = self.proxy_to("pop3", srv.port, keys)
        data = self.session(p, b"CAPA\r\nUSER dave\r\nPASS secret-pw\r\nSTAT\r\nRETR 1\r\n", tls_client, early)
        self.assertEqual(data, POP3_GREETING + POP3_UNAVAILABLE)
        self.assertEqual(srv.lines, [b"STLS\r\n"], "more than STLS reached the server")
        self.assertEqual(srv.connections, 1)
        self.assertWarn(p, r"refused STLS.*no plaintext fallback", "pop3")
        self.assertNotIn("secret-pw", p.log_text())
        self.assertProxyAlive(p)

    def test_pop3_stls_refused(self):
        self.check_pop3(b"-ERR TLS not available right now\r\n")

    def test_pop3_stls_not_offered(self):
        """A server without STLS (its CAPA does not list it) answers it as
        an unknown command."""
        self.check_pop3(b"-ERR Unknown command.\r\n")

    def test_pop3_stls_refused_tls_client(self):
        """The same to a POP3S client: the lines come inside its TLS."""
        self.check_pop3(b"-ERR not now\r\n", tls_client=True)

    # ---- IMAP ----

    def check_imap(self, greeting, starttls_reply, tls_client=False, early=False):
        # a TLS client's handshake ends before the upstream greets (see
        # DaemonBugs.test_bug_imap_refusal_before_client_handshake)
        srv = self.scripted(greeting, imap_answer(starttls_reply), 0.3 if tls_client else 0.0)
        keys = self.tls_listener_keys() if tls_client else None
        p = self.proxy_to("imap", srv.port, keys)
        data = self.session(p, b"a CAPABILITY\r\nb LOGIN dave secret-pw\r\nc SELECT INBOX\r\n", tls_client, early)
        lines = data.split(b"\r\n")
        self.assertEqual(len(lines), 3, "not the greeting, one line and the close: %r" % data)
        g, bye, end = lines
        self.assertEqual(end, b"")
        self.assertTrue(g.startswith(b"* OK "), g)
        self.assertIn(FAKE, g)
        caps = re.search(rb"\[CAPABILITY ([^\]]*)\]", g)
        if caps:
            self.assertNotIn(b"STARTTLS", caps.group(1).upper().split(), "upstream STARTTLS shown: %r" % g)
            self.assertNotIn(b"LOGINDISABLED", caps.group(1).upper().split(), "LOGINDISABLED shown: %r" % g)
        self.assertEqual(bye + b"\r\n", IMAP_UNAVAILABLE)
        self.assertEqual(len(srv.lines), 1, "more than STARTTLS reached the server: %r" % srv.lines)
        self.assertRegex(srv.lines[0], rb"^mm\S+\.tls STARTTLS\r\n$")
        self.assertWarn(p, r"refused STARTTLS.*no plaintext fallback", "imap")
        self.assertNotIn("secret-pw", p.log_text())
        self.assertProxyAlive(p)

    def test_imap_starttls_refused(self):
        self.check_imap(IMAP_GREETING_STARTTLS, b"NO TLS not available right now")

    def test_imap_starttls_not_offered(self):
        """No STARTTLS in the server's capabilities; it answers BAD."""
        self.check_imap(IMAP_GREETING_PLAIN, b"BAD Unknown command")

    def test_imap_starttls_refused_tls_client(self):
        self.check_imap(IMAP_GREETING_STARTTLS, b"NO not now", tls_client=True)

    # ---- wrong name (the fixture Dovecot) ----

    def test_wrong_upstream_name(self):
        """Dovecot's certificate is for mail.test.example; the proxy
        expects other.test.example after STLS / STARTTLS: refused with
        "hostname mismatch" in the log, no credentials relayed."""
        self.check_wrong_name()

    def check_wrong_name(self, early=False, protos=("pop3", "imap"), crlf=("pop3",)):
        for proto, port, send, prefix in (
                ("pop3", self.up, b"USER dave\r\nPASS secret-pw\r\nSTAT\r\n", b"-ERR [SYS/TEMP] mailmoat: upstream TLS"),
                ("imap", self.imap_up, b"a LOGIN dave secret-pw\r\nb SELECT INBOX\r\n",
                 b"* BYE [UNAVAILABLE] mailmoat: upstream TLS")):
            if proto not in protos:
                continue
            with self.subTest(proto):
                p = self.proxy_to(proto, port, name="other.test.example")
                data = self.session(p, send, early=early)
                # the line end of the last line is checked on its own (see
                # test_imap_tls_failed_line_complete)
                lines = data.rstrip(b"\r\n").split(b"\r\n")
                self.assertEqual(len(lines), 2, "not the greeting, one line and the close: %r" % data)
                self.assertTrue(lines[0].startswith(b"+OK" if proto == "pop3" else b"* OK"), lines[0])
                self.assertTrue(lines[1].startswith(prefix), lines[1])
                if proto in crlf:
                    self.assertTrue(data.endswith(b"\r\n"), "last line not ended by CRLF: %r" % data)
                self.assertWarn(p, NAME_RE, proto)
                self.assertNotIn("secret-pw", p.log_text())
                self.assertNotIn("login user=dave", p.log_text())
                self.assertProxyAlive(p)

# ---- commands before the upstream's greeting ----
#
# Found by these tests (now fixed): with upstream_tls: starttls, commands
# a client sends before the upstream's greeting has reached the proxy (in
# its first write, right after connecting) are relayed to the upstream in
# plaintext ahead of the proxy's own STLS / STARTTLS (fixed: they are held
# until TLS is up, or dropped with the refusal).


class EarlyCommands(UpstreamStarttlsRefused):
    """The same refusals to a client that sends its commands at once,
    before the greeting."""

    def test_early_pop3_stls_refused(self):
        self.check_pop3(b"-ERR TLS not available right now\r\n", early=True)

    def test_early_imap_starttls_refused(self):
        self.check_imap(IMAP_GREETING_STARTTLS, b"NO TLS not available right now", early=True)

    def test_early_wrong_upstream_name_pop3(self):
        self.check_wrong_name(early=True, protos=("pop3",))

    def test_early_wrong_upstream_name_imap(self):
        self.check_wrong_name(early=True, protos=("imap",), crlf=())


class DaemonBugs(UpstreamStarttlsRefused):
    """Two more found by these tests, fixed: a truncated BYE line, and a
    refusal racing the client's own TLS handshake."""

    def test_bug_imap_tls_failed_line_complete(self):
        """IMAP upstream TLS handshake failure after STARTTLS: the client's
        "* BYE [UNAVAILABLE] mailmoat: upstream TLS failed" line goes out
        without its LF (proxy/imap_session.c writes 50 of its 51 bytes)."""
        self.check_wrong_name(protos=("imap",), crlf=("imap",))

    def test_bug_imap_refusal_before_client_handshake(self):
        """tls: implicit client, upstream_tls: starttls refused by the
        upstream before the client has finished its TLS handshake: the
        proxy closes without sending the greeting and the * BYE (the
        client sees an empty session, or the handshake itself fails with
        an EOF)."""
        srv = self.scripted(IMAP_GREETING_STARTTLS, imap_answer(b"NO not now"))
        p = self.proxy_to("imap", srv.port, self.tls_listener_keys())
        raw = socket.create_connection((mh.HOST, p.port), timeout=20)
        time.sleep(0.5)            # the upstream has greeted and refused by now
        with self.client_ctx.wrap_socket(raw, server_hostname=mh.TLS_PROXY_NAME) as s:
            data, closed = read_until_close(s, timeout=10)
        self.assertTrue(closed)
        lines = data.split(b"\r\n")
        self.assertEqual(len(lines), 3, "not the greeting, one line and the close: %r" % data)
        self.assertTrue(lines[0].startswith(b"* OK "), lines[0])
        self.assertEqual(lines[1] + b"\r\n", IMAP_UNAVAILABLE)

    def test_bug_pop3_refusal_before_client_handshake(self):
        """The same for POP3: no greeting and no -ERR line."""
        srv = self.scripted(POP3_GREETING, pop3_answer(b"-ERR not now\r\n"))
        p = self.proxy_to("pop3", srv.port, self.tls_listener_keys())
        raw = socket.create_connection((mh.HOST, p.port), timeout=20)
        time.sleep(0.5)
        with self.client_ctx.wrap_socket(raw, server_hostname=mh.TLS_PROXY_NAME) as s:
            data, closed = read_until_close(s, timeout=10)
        self.assertTrue(closed)
        self.assertEqual(data, POP3_GREETING + POP3_UNAVAILABLE)


# The subclasses run only their own tests.
for _name in dir(UpstreamStarttlsRefused):
    if _name.startswith("test_"):
        setattr(EarlyCommands, _name, None)
        setattr(DaemonBugs, _name, None)
