"""Bad input from an IMAP client: absurd literal sizes (20 digits, past
2^64, literal8, non-synchronizing) get a BAD, a BYE or a closed connection
within seconds - never a hang, never a flood - and the proxy serves the
next session."""

import socket
import time
import unittest

from itbase import ImapCase, mh

USER = "grace"
DEADLINE = 5.0          # seconds an answer may take
FLOOD = 64 << 10        # more than this in answer to one bad line is a flood

CASES = [
    ("login literal of 20 digits", False, b"a1 LOGIN {99999999999999999999}\r\n"),
    ("non-synchronizing literal of 20 digits", False, b"a1 LOGIN {99999999999999999999+}\r\nxx\r\n"),
    ("literal of 2^64", False, b"a1 LOGIN grace {18446744073709551616}\r\n"),
    ("literal8 of 20 digits", True, b"a1 APPEND INBOX ~{99999999999999999999}\r\n"),
    ("select literal of 20 digits, logged in", True, b"a1 SELECT {99999999999999999999}\r\n"),
]


def probe(sock, data):
    """Sends data; reads for up to DEADLINE seconds. Returns (bytes
    received, how it ended: "closed", "answered" (a tagged BAD/NO for
    a1 and then silence) or "silent" (nothing at all), "flood")."""
    sock.settimeout(0.5)
    sock.sendall(data)
    got = bytearray()
    t0 = time.monotonic()
    while time.monotonic() - t0 < DEADLINE:
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            if b"a1 BAD" in got or b"a1 NO" in got:
                return bytes(got), "answered"
            continue
        except ConnectionResetError:
            return bytes(got), "closed"
        if not chunk:
            return bytes(got), "closed"
        got += chunk
        if len(got) > FLOOD:
            return bytes(got[:300]), "flood"
    if b"a1 BAD" in got or b"a1 NO" in got:
        return bytes(got), "answered"
    return bytes(got), "silent" if not got else "open"


class BadClientLiterals(ImapCase):

    def fresh_proxy(self, name):
        p = mh.Mailmoat("%s/%s" % (self._tmp, name), [("imap", self.imap_up)]).start()
        self.addCleanup(p.stop, 5)
        return p

    def next_session_works(self, proxy):
        with self.raw(proxy.port, USER, select="INBOX") as c:
            c.sock.settimeout(DEADLINE)
            st, unt = c.command("UID FETCH 1 (UID BODY.PEEK[])")
            self.assertEqual(mh.imap_status(st), "OK", st)
            self.assertEqual(mh.parse_fetch(unt[0])[1]["BODY[]"], self.direct_whole(USER)[1])

    def test_absurd_literal_sizes(self):
        pw = self.st["users"][USER]["password"]
        for i, (what, login, line) in enumerate(CASES):
            with self.subTest(what):
                proxy = self.fresh_proxy("bad%d" % i)
                c = mh.RawImap(proxy.port, timeout=DEADLINE)
                try:
                    if login:
                        c.login(USER, pw)
                    got, how = probe(c.sock, line)
                    if how == "answered":
                        # A BAD (or NO) keeps the session: it must go on.
                        c.sock.settimeout(DEADLINE)
                        c.buf = bytearray()
                        st, _ = c.command("NOOP", tag="a2")
                        self.assertIn(mh.imap_status(st), ("OK", "BAD"), st)
                    else:
                        self.assertEqual(how, "closed", "%r answered %r and then %s"
                                         % (line, got[:300], how))
                        self.assertTrue(got == b"" or b"* BYE" in got or b"a1 BAD" in got,
                                        "closed after %r" % got[:300])
                finally:
                    c.close()
                self.assertProxyAlive(proxy)
                try:
                    self.next_session_works(proxy)
                except (OSError, EOFError) as ex:
                    self.fail("after %r the next session fails: %r" % (line, ex))
                rc = proxy.stop(5)
                self.assertEqual(rc, 0, "mailmoat did not stop on SIGTERM after %r (status %s)" % (line, rc))


if __name__ == "__main__":
    unittest.main()
