"""IMAP with implicit TLS (IMAPS) on either side of mailmoat.

  upstream TLS   plain client -> mailmoat -> Dovecot's IMAPS, verified
                 against the test CA for mail.test.example
  client TLS     IMAPS client -> mailmoat (proxy.test.example, a chain with
                 an intermediate) -> Dovecot's plain IMAP
  both           IMAPS client -> mailmoat -> Dovecot's IMAPS

In every case the session is what it is in plaintext: grace's clean
messages byte for byte as Dovecot sends them (whole and in 64 KiB chunks),
the infected ones as the notice, the originals in the quarantine. Clients
trust only the test root CA and check the host name."""

import imaplib
import shutil
import socket
import ssl
import subprocess
import threading
import time
import unittest

from itbase import (CHUNK_TB, NOTICE_MARK, Imap4Tls, ImapCase, TlsMixin, chunked_fetch,
                    legacy_tls_context, mh, out, read_until_close)

USER = "grace"
CURL = shutil.which("curl")


class ImapChecks(TlsMixin, ImapCase):
    """What every TLS arrangement must give; subclasses set cls.proxy and
    cls.client_tls."""

    client_tls = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()

    def client(self):
        """An imaplib connection to the proxy, logged in, INBOX examined."""
        if self.client_tls:
            c = Imap4Tls(self.proxy.port, mh.TLS_PROXY_NAME, self.client_ctx)
        else:
            c = imaplib.IMAP4(mh.HOST, self.proxy.port, timeout=120)
        c.login(USER, self.st["users"][USER]["password"])
        typ, data = c.select("INBOX", readonly=True)
        self.assertEqual(typ, "OK", data)
        return c

    def raw_client(self):
        if self.client_tls:
            return self.raw_imap_tls(self.proxy.port)
        return mh.RawImap(self.proxy.port, timeout=120)

    def test_whole_messages(self):
        msgs = self.imap_messages(USER)
        direct = self.direct_whole(USER)
        with self.client() as c:
            got = self.uid_fetch(c, "1:*", "(UID RFC822.SIZE BODY.PEEK[])")
        self.assertEqual(sorted(got), sorted(direct), "a message is missing through the proxy")
        infected = 0
        for m in msgs:
            u = m["uid"]
            body = got[u].get("BODY[]")
            size = int(got[u]["RFC822.SIZE"])
            if m["infected"]:
                # the original's size on first sight, the notice's once the
                # verdict is known (an earlier test of the class fetched it)
                self.assertIn(size, (len(direct[u]), len(body)), "UID %d: RFC822.SIZE" % u)
                self.assertImapNotice(body, direct[u], self.proxy)
                self.assertEqual(mh.header_of(body, "Message-ID"), m["message_id"])
                infected += 1
            else:
                self.assertEqual(size, len(direct[u]), "UID %d: RFC822.SIZE" % u)
                self.assertEqual(body, direct[u], "clean UID %d (%s) altered" % (u, m["kind"]))
        self.assertGreater(infected, 0)
        self.assertProxyAlive(self.proxy)

    def test_raw_fetch_byte_identical(self):
        """The FETCH responses of clean messages, exactly as sent on the
        wire, are Dovecot's."""
        pw = self.st["users"][USER]["password"]
        clean = [m["uid"] for m in self.imap_messages(USER) if not m["infected"]]
        uids = ",".join(str(u) for u in clean)
        res = {}
        for label, conn in (("direct", mh.RawImap(self.imap_up, timeout=120)), ("proxy", self.raw_client())):
            with conn as c:
                self.assertTrue(c.greeting[0].startswith(b"* OK"), c.greeting)
                c.login(USER, pw)
                st, _ = c.command("EXAMINE INBOX")
                self.assertEqual(mh.imap_status(st), "OK", st)
                st, untagged = c.command("UID FETCH %s (UID RFC822.SIZE BODY.PEEK[] BODY.PEEK[HEADER] "
                                         "BODY.PEEK[TEXT]<100.5000>)" % uids)
                self.assertEqual(mh.imap_status(st), "OK", st)
                res[label] = untagged
                st, _ = c.command("LOGOUT")
                self.assertEqual(mh.imap_status(st), "OK", st)
        self.assertEqual(len(res["proxy"]), len(clean))
        self.assertEqual(res["proxy"], res["direct"], "clean FETCH responses differ on the wire")

    def test_chunked(self):
        """Thunderbird's 64 KiB partial fetches of the ~1 MiB messages: the
        clean one reassembles to Dovecot's bytes, the infected one to the
        notice a whole fetch serves."""
        msgs = {m["kind"]: m for m in self.imap_messages(USER)}
        direct = self.direct_whole(USER)
        with self.client() as c:
            clean = msgs["mib_clean"]["uid"]
            data, size, n, _ = chunked_fetch(c, clean, CHUNK_TB)
            self.assertEqual(data, direct[clean], "chunked clean message altered")
            self.assertEqual(size, len(direct[clean]))
            self.assertGreater(n, 10)
            bad = msgs["mib_eicar"]["uid"]
            data, size, n, _ = chunked_fetch(c, bad, CHUNK_TB)
            whole = self.uid_fetch(c, str(bad), "(UID BODY.PEEK[])")[bad]["BODY[]"]
        self.assertEqual(data, whole, "chunked notice differs from the whole notice")
        self.assertImapNotice(whole, direct[bad], self.proxy)

    def test_concurrent_sessions(self):
        direct = self.direct_whole(USER)
        clean = [m["uid"] for m in self.imap_messages(USER) if not m["infected"]]
        results, errors = {}, []

        def run(i):
            try:
                with self.client() as c:
                    results[i] = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
            except Exception as ex:   # noqa: BLE001 - reported below
                errors.append("%d: %r" % (i, ex))
        threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 6)
        for i, got in results.items():
            for u in clean:
                self.assertEqual(got[u]["BODY[]"], direct[u], "session %d UID %d" % (i, u))
        self.assertProxyAlive(self.proxy)


class UpstreamTls(ImapChecks):
    """Plain client -> mailmoat -> Dovecot's IMAPS."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_proxy_listeners("up-tls", [("imap", cls.imaps_up, cls.tls_upstream_keys())])

    def test_no_warnings(self):
        with self.client() as c:
            c.noop()
        self.assertEqual(self.warn_lines(self.proxy, sessions_only=True), [],
                         "a verified upstream session logged warnings")


class ClientTls(ImapChecks):
    """IMAPS client -> mailmoat -> Dovecot's plain IMAP."""

    client_tls = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_proxy_listeners("client-tls", [("imap", cls.imap_up, cls.tls_listener_keys())])

    def test_certificate_and_version(self):
        for name in (mh.TLS_PROXY_NAME, mh.HOST):
            with self.proxy_tls(self.proxy.port, name=name) as s:
                self.assertIn(s.version(), ("TLSv1.2", "TLSv1.3"))
                self.assertIn(("DNS", mh.TLS_PROXY_NAME), s.getpeercert()["subjectAltName"])
                data = s.recv(4096)
                self.assertTrue(data.startswith(b"* OK"), data)
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.proxy_tls(self.proxy.port, name="wrong.test.example").close()
        ctx = legacy_tls_context(cafile=self.pki["ca"])
        with self.assertRaises((ssl.SSLError, ConnectionResetError)):
            mh.tls_connect(self.proxy.port, ctx, mh.TLS_PROXY_NAME, timeout=20).close()
        self.assertProxyAlive(self.proxy)

    def test_silent_until_client_hello(self):
        with socket.create_connection((mh.HOST, self.proxy.port), timeout=10) as s:
            s.settimeout(2.0)
            try:
                data = s.recv(512)
            except socket.timeout:
                data = None
            self.assertIsNone(data, "the TLS listener sent %r before any ClientHello" % data)

    def test_plaintext_client_refused(self):
        pw = self.st["users"][USER]["password"]
        with socket.create_connection((mh.HOST, self.proxy.port), timeout=10) as s:
            s.sendall(("a1 LOGIN %s %s\r\na2 SELECT INBOX\r\n" % (USER, mh.imap_quote(pw))).encode())
            data, closed = read_until_close(s, timeout=15)
        self.assertNotIn(b"* OK", data)
        self.assertNotIn(b"a1 ", data)
        self.assertTrue(closed, "a plaintext client on the TLS listener was not disconnected")
        self.assertLogClean(self.proxy, [pw])
        with self.client() as c:
            self.assertEqual(c.noop()[0], "OK")


class BothTls(ImapChecks):
    """IMAPS client -> mailmoat -> Dovecot's IMAPS."""

    client_tls = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        keys = dict(cls.tls_listener_keys(), **cls.tls_upstream_keys())
        cls.proxy = cls.class_proxy_listeners("both-tls", [("imap", cls.imaps_up, keys)])

    def test_idle(self):
        """IDLE over TLS on both sides: the client's DONE reaches Dovecot,
        the tagged OK comes back."""
        with self.raw_client() as c:
            c.login(USER, self.st["users"][USER]["password"])
            st, _ = c.command("EXAMINE INBOX")
            self.assertEqual(mh.imap_status(st), "OK")
            c.send(b"i1 IDLE\r\n")
            cont = c.read_response()
            self.assertTrue(cont[0].startswith(b"+"), cont)
            c.send(b"DONE\r\n")
            st, _ = c.read_until_tagged("i1")
            self.assertEqual(mh.imap_status(st), "OK", st)


class Shutdown(TlsMixin, ImapCase):
    """SIGTERM with TLS sessions on both sides open: an idle IMAP client
    gets * BYE inside its TLS session, a POP3 client mid-RETR is cut, the
    process exits 0 within shutdown_grace."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()

    def test_sigterm_with_tls_sessions(self):
        grace = 3
        keys = dict(self.tls_listener_keys(), **self.tls_upstream_keys())
        p = self.start_proxy_listeners([("imap", self.imaps_up, keys), ("pop3", self.st["pop3s_port"], keys)],
                                       timeouts={"shutdown_grace": grace})
        idle = self.raw_imap_tls(p.ports[0])
        idle.login(USER, self.st["users"][USER]["password"])
        st, _ = idle.command("EXAMINE INBOX")
        self.assertEqual(mh.imap_status(st), "OK")
        busy = self.raw_pop3_tls(p.ports[1])
        busy.login("frank", self.st["users"]["frank"]["password"])
        big = [m for m in self.st["users"]["frank"]["messages"] if m["kind"] == "big_clean"][0]["num"]
        busy.send(b"RETR %d\r\n" % big)          # 12 MiB, not read
        time.sleep(0.5)
        t0 = time.monotonic()
        p.terminate()
        rc = p.stop(timeout=grace + 10)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, p.log_text()[-3000:])
        self.assertLess(took, grace + 2.5, "SIGTERM took %.2f s with shutdown_grace %d" % (took, grace))
        data, closed = read_until_close(idle.sock, timeout=5)
        self.assertTrue(closed)
        self.assertIn(b"* BYE", bytes(idle.buf) + data)
        idle.close()
        busy.close()
        out("SIGTERM with TLS sessions (IMAP idle, POP3 mid-RETR of 12 MiB): exited 0 in %.2f s" % took)


@unittest.skipUnless(CURL, "curl not installed")
class CurlImaps(TlsMixin, ImapCase):
    """curl imaps:// against mailmoat's TLS listener (--cacert: the test
    root; proxy.test.example resolved to 127.0.0.1)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()
        keys = dict(cls.tls_listener_keys(), **cls.tls_upstream_keys())
        cls.both = cls.class_proxy_listeners("curl-both", [("imap", cls.imaps_up, keys)])
        cls.client_only = cls.class_proxy_listeners("curl-client", [("imap", cls.imap_up,
                                                                     cls.tls_listener_keys())])

    def curl(self, url, resolve=None, cacert=None):
        pw = self.st["users"][USER]["password"]
        args = [CURL, "-s", "-S", "--max-time", "60", "-u", "%s:%s" % (USER, pw), url]
        if cacert:
            args += ["--cacert", cacert]
        if resolve:
            args += ["--resolve", "%s:%d:%s" % (resolve[0], resolve[1], mh.HOST)]
        r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(r.returncode, 0, "curl %s: %s" % (url, r.stderr.decode(errors="replace")))
        return r.stdout

    def test_clean_and_infected(self):
        msgs = self.imap_messages(USER)
        direct = self.direct_whole(USER)
        for proxy in (self.both, self.client_only):
            for kind in ("multipart", "mib_clean", "eicar", "mib_eicar", "clamzip"):
                m = [x for x in msgs if x["kind"] == kind][0]
                got = self.curl("imaps://%s:%d/INBOX;UID=%d" % (mh.TLS_PROXY_NAME, proxy.port, m["uid"]),
                                resolve=(mh.TLS_PROXY_NAME, proxy.port), cacert=self.pki["ca"])
                want = self.curl("imap://%s:%d/INBOX;UID=%d" % (mh.HOST, self.imap_up, m["uid"]))
                self.assertEqual(want, direct[m["uid"]], "curl's output is not the message")
                if m["infected"]:
                    self.assertImapNotice(got, direct[m["uid"]], proxy)
                    self.assertIn(NOTICE_MARK, mh.header_of(got, "Subject"))
                else:
                    self.assertEqual(got, want, "curl imaps UID %d (%s) differs" % (m["uid"], kind))
        out("curl imaps://: clean and infected messages through both TLS proxies")

    def test_listing(self):
        url = "imaps://%s:%d/" % (mh.TLS_PROXY_NAME, self.both.port)
        got = self.curl(url, resolve=(mh.TLS_PROXY_NAME, self.both.port), cacert=self.pki["ca"])
        want = self.curl("imap://%s:%d/" % (mh.HOST, self.imap_up))
        self.assertEqual(got, want)
        self.assertIn(b"INBOX", got)


# the base class holds tests but is no test case of its own
del ImapChecks

if __name__ == "__main__":
    unittest.main()
