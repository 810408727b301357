"""Authentication through the proxy: USER/PASS, APOP (RFC 1939 section 7),
AUTH PLAIN with a "+ " continuation and with an initial response, AUTH LOGIN
(RFC 5034), a wrong password; and no password or AUTH payload ever reaches
the mailmoat log (design invariant 6)."""

import base64
import hashlib
import poplib
import re
import unittest

from itbase import ProxyCase, mh


class Auth(ProxyCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_proxy()
        cls.ref_retr1 = cls.direct_ref()

    @classmethod
    def direct_ref(cls):
        info = cls.st["users"]["dave"]
        return mh.fetch_all_raw(cls.up, "dave", info["password"])["RETR"]

    def secrets(self):
        u, pw = self.user("dave")
        plain = base64.b64encode(b"\0" + u.encode() + b"\0" + pw.encode()).decode()
        plain_authz = base64.b64encode(u.encode() + b"\0" + u.encode() + b"\0" + pw.encode()).decode()
        return [pw, plain, plain_authz, base64.b64encode(pw.encode()).decode(), "Wrong-Pass-123"]

    def assertTransactionWorks(self, c):
        st = c.cmd("STAT")
        self.assertTrue(st.startswith(b"+OK 2 "), st)
        st, body = c.cmd_multi("RETR 1")
        self.assertEqual(body, self.ref_retr1[0][1])
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))

    def test_user_pass(self):
        with mh.RawPop3(self.proxy.port) as c:
            c.login(*self.user("dave"))
            self.assertTransactionWorks(c)

    def test_user_pass_poplib(self):
        u, pw = self.user("dave")
        p = poplib.POP3(mh.HOST, self.proxy.port, timeout=30)
        try:
            p.user(u)
            p.pass_(pw)
            self.assertEqual(p.stat()[0], 2)
            p.quit()
        finally:
            p.close()

    def test_apop(self):
        u, pw = self.user("dave")
        p = poplib.POP3(mh.HOST, self.proxy.port, timeout=30)
        try:
            # The proxy relays the upstream's greeting, timestamp included,
            # so that the APOP digest the client computes is the one the
            # upstream expects.
            self.assertRegex(p.getwelcome(), rb"<[^<>@]+@[^<>]+>")
            p.apop(u, pw)
            self.assertEqual(p.stat()[0], 2)
            self.assertEqual(p.retr(2)[1], poplib_ref(self.up, u, pw, 2))
            p.quit()
        finally:
            p.close()

    def test_apop_wrong_digest(self):
        u, _ = self.user("dave")
        with mh.RawPop3(self.proxy.port) as c:
            ts = re.search(rb"<[^>]+>", c.greeting).group(0)
            digest = hashlib.md5(ts + b"Wrong-Pass-123").hexdigest()
            self.assertTrue(c.cmd("APOP %s %s" % (u, digest)).startswith(b"-ERR"))

    def sasl_logins(self, user):
        return [e for e in self.proxy.log_events()
                if e.get("method") == "sasl" and e.get("user") == user]

    def test_auth_plain_continuation(self):
        """AUTH PLAIN, then the response after "+ " (curl, Thunderbird):
        the user is learnt from it too (for the policy and the quarantine)."""
        u, pw = self.user("dave")
        before = len(self.sasl_logins(u))
        with mh.RawPop3(self.proxy.port) as c:
            st = c.cmd("AUTH PLAIN")
            self.assertTrue(st.startswith(b"+ ") or st == b"+\r\n", st)
            st = c.cmd(base64.b64encode(b"\0" + u.encode() + b"\0" + pw.encode()).decode())
            self.assertTrue(st.startswith(b"+OK"), st)
            self.assertTransactionWorks(c)
        self.assertEqual(len(self.sasl_logins(u)), before + 1)

    def test_auth_plain_initial_response(self):
        u, pw = self.user("dave")
        with mh.RawPop3(self.proxy.port) as c:
            ir = base64.b64encode(u.encode() + b"\0" + u.encode() + b"\0" + pw.encode()).decode()
            st = c.cmd("AUTH PLAIN " + ir)
            self.assertTrue(st.startswith(b"+OK"), st)
            self.assertTransactionWorks(c)

    def test_auth_login(self):
        u, pw = self.user("dave")
        with mh.RawPop3(self.proxy.port) as c:
            st = c.cmd("AUTH LOGIN")
            self.assertTrue(st.startswith(b"+ "), st)
            st = c.cmd(base64.b64encode(u.encode()).decode())
            self.assertTrue(st.startswith(b"+ "), st)
            st = c.cmd(base64.b64encode(pw.encode()).decode())
            self.assertTrue(st.startswith(b"+OK"), st)
            self.assertTransactionWorks(c)

    def test_auth_cancelled_then_user_pass(self):
        """RFC 5034 section 4: "*" cancels; the session goes on."""
        with mh.RawPop3(self.proxy.port) as c:
            self.assertTrue(c.cmd("AUTH PLAIN").startswith(b"+"))
            self.assertTrue(c.cmd("*").startswith(b"-ERR"))
            c.login(*self.user("dave"))
            self.assertTransactionWorks(c)

    def test_pipelined_sasl(self):
        """AUTH, its continuation answers and transaction commands in one
        write: the same bytes come back as from the server itself."""
        u, pw = self.user("dave")
        streams = [
            b"AUTH PLAIN\r\n" + base64.b64encode(b"\0" + u.encode() + b"\0" + pw.encode()) +
            b"\r\nSTAT\r\nUIDL 1\r\nQUIT\r\n",
            b"AUTH LOGIN\r\n" + base64.b64encode(u.encode()) + b"\r\n" +
            base64.b64encode(pw.encode()) + b"\r\nSTAT\r\nQUIT\r\n",
            b"AUTH\r\nUSER " + u.encode() + b"\r\nPASS " + pw.encode() + b"\r\nLIST\r\nQUIT\r\n",
        ]
        for data in streams:
            got = []
            for port in (self.up, self.proxy.port):
                with mh.RawPop3(port) as c:
                    c.send(data)
                    got.append(c.read_all(timeout=10))
            self.assertEqual(got[1], got[0], data.split(b"\r\n")[0])

    def test_wrong_password(self):
        u, _ = self.user("dave")
        with mh.RawPop3(self.proxy.port) as c:
            self.assertTrue(c.cmd("USER " + u).startswith(b"+OK"))
            self.assertTrue(c.cmd("PASS Wrong-Pass-123").startswith(b"-ERR"))
            self.assertTrue(c.cmd("STAT").startswith(b"-ERR"), "STAT accepted after a failed login")
            # A retry with the right password works in the same session.
            c.login(*self.user("dave"))
            self.assertTransactionWorks(c)

    def test_zz_no_credentials_in_log(self):
        # Runs last in this class (alphabetical): every method above has
        # logged in by now.
        text = self.proxy.log_text()
        self.assertIn("user=dave", text)
        for s in self.secrets():
            self.assertNotIn(s, text, "a credential reached the mailmoat log")
        # Also at log_level debug.
        proxy = self.start_proxy(log_level="debug")
        u, pw = self.user("dave")
        with mh.RawPop3(proxy.port) as c:
            c.cmd("AUTH PLAIN " + base64.b64encode(b"\0" + u.encode() + b"\0" + pw.encode()).decode())
            c.cmd("QUIT")
        with mh.RawPop3(proxy.port) as c:
            c.login(u, pw)
            c.cmd("QUIT")
        with mh.RawPop3(proxy.port) as c:
            c.cmd("USER " + u)
            c.cmd("PASS Wrong-Pass-123")
            c.cmd("QUIT")
        proxy.stop()
        text = proxy.log_text()
        self.assertIn("user=dave", text)
        for s in self.secrets():
            self.assertNotIn(s, text, "a credential reached the debug log")


def poplib_ref(port, u, pw, n):
    p = poplib.POP3(mh.HOST, port, timeout=30)
    try:
        p.user(u)
        p.pass_(pw)
        return p.retr(n)[1]
    finally:
        p.close()


if __name__ == "__main__":
    unittest.main()
