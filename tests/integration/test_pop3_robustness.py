"""Robustness: STLS hidden from the client (the proxy cannot read a TLS
session it does not terminate); hostile client input gets -ERR or a closed
connection and never hurts other sessions; many concurrent sessions; a
client that pipelines big RETRs and does not read (memory stays bounded);
the client idle time-out (RFC 1939 section 3 autologout)."""

import hashlib
import os
import threading
import time
import unittest

from itbase import ProxyCase, mh, out

RSS_LIMIT_KIB = int(os.environ.get("MAILMOAT_IT_RSS_LIMIT_KIB", str(64 * 1024)))


class Robustness(ProxyCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_proxy()
        info = cls.st["users"]["alice"]
        cls.alice_ref = mh.fetch_all_raw(cls.up, "alice", info["password"])
        info = cls.st["users"]["bob"]
        cls.bob_ref = mh.fetch_all_raw(cls.up, "bob", info["password"])

    def alice_works(self):
        got = mh.fetch_all_raw(self.proxy.port, *self.user("alice"))
        self.assertEqual(got["RETR"], self.alice_ref["RETR"])

    def test_stls_hidden(self):
        with mh.RawPop3(self.up) as d:
            direct_caps = mh.unstuff(d.cmd_multi("CAPA")[1])
        if b"STLS" not in direct_caps:
            self.skipTest("the fixture Dovecot does not offer STLS")
        with mh.RawPop3(self.proxy.port) as c:
            caps = mh.unstuff(c.cmd_multi("CAPA")[1]).split(b"\r\n")
            self.assertNotIn(b"STLS", [l.strip().upper() for l in caps])
            self.assertTrue(c.cmd("STLS").startswith(b"-ERR"))
            # The session goes on in plaintext.
            c.login(*self.user("alice"))
            self.assertEqual(c.cmd("STAT"), self.alice_ref["STAT"])

    def test_unknown_command_relayed(self):
        u, pw = self.user("alice")
        answers = []
        for port in (self.up, self.proxy.port):
            with mh.RawPop3(port) as c:
                c.login(u, pw)
                answers.append(c.cmd("XTND XMIT"))
        self.assertTrue(answers[1].startswith(b"-ERR"), answers[1])

    def hostile(self, payload, login=True):
        """Sends payload, then collects whatever comes back for a moment.
        Returns the bytes, or None when the proxy closed the connection."""
        c = mh.RawPop3(self.proxy.port, timeout=10)
        try:
            if login:
                c.login(*self.user("alice"))
            c.send(payload)
            c.sock.settimeout(0.8)
            data = bytearray()
            try:
                while True:
                    chunk = c.sock.recv(65536)
                    if not chunk:
                        return bytes(data), True
                    data += chunk
            except OSError:
                return bytes(data), False
        finally:
            c.close()

    def test_hostile_client_input(self):
        cases = [
            ("overlong line", b"NOOP " + b"A" * (256 << 10) + b"\r\n", True),
            ("overlong before login", b"USER " + b"B" * (256 << 10) + b"\r\n", False),
            ("NUL in command", b"RETR \x001\r\n", True),
            ("bare CR", b"STAT\rRETR 1\r\n", True),
            ("20-digit number", b"RETR 99999999999999999999\r\n", True),
            ("binary junk", bytes(range(256)) * 64 + b"\r\n", True),
            ("many empty lines", b"\r\n" * 5000, True),
            ("AUTH garbage", b"AUTH PLAIN !!!notbase64!!!\r\n", False),
        ]
        for name, payload, login in cases:
            with self.subTest(name):
                data, closed = self.hostile(payload, login)
                # Either -ERR lines or a closed connection; never a message.
                self.assertNotIn(b"\r\n.\r\n", data, "%s: got a message back" % name)
                if not closed:
                    self.assertTrue(data == b"" or data.startswith((b"-ERR", b"+OK")), data[:200])
                self.assertProxyAlive(self.proxy)
        self.alice_works()

    def test_command_arguments_checked_like_the_server(self):
        """RFC 1939: TOP msg n takes a non-negative number of lines. Where
        the upstream refuses a malformed command, the proxy must not answer
        it with content (it may refuse it itself)."""
        u, pw = self.user("alice")
        cmds = ["TOP 1 -1", "TOP 1 +1", "TOP 2 -0", "TOP 1 1 1", "TOP 1 99999999999999999999",
                "TOP 1 x", "TOP 1", "TOP 0 1", "RETR -1", "RETR 1 2", "LIST -1", "UIDL 1 1"]
        wrong = []
        for cmd in cmds:
            with mh.RawPop3(self.up) as d:
                d.login(u, pw)
                direct = d.cmd(cmd)
            with mh.RawPop3(self.proxy.port) as c:
                c.login(u, pw)
                got = c.cmd(cmd)
                if direct.startswith(b"-ERR") and not got.startswith(b"-ERR"):
                    wrong.append("%s: upstream %r, proxy %r" % (cmd, direct.strip(), got.strip()))
        self.assertEqual(wrong, [], "the proxy answered commands the server refuses")

    def test_log_escapes_network_text(self):
        """STYLE: escape text from the network in logs. A user name with
        spaces, '=', quotes or control characters must not forge keys or
        lines in the key=value log."""
        proxy = self.start_proxy()
        names = ['evil verdict=clean action=deliver', 'q"uote\\ id=X', "ctl\x1b[31m\x7f", "tab\tuser=root"]
        for name in names:
            with mh.RawPop3(proxy.port) as c:
                c.cmd("USER " + name)
                c.cmd("PASS wrong-password")
                c.cmd("QUIT")
        ap = "apop verdict=clean"
        with mh.RawPop3(proxy.port) as c:
            c.cmd("APOP %s 0123456789abcdef0123456789abcdef" % ap)
            c.cmd("QUIT")
        proxy.stop()
        lines = [l for l in proxy.log_text().splitlines() if " login " in l]
        self.assertEqual(len(lines), len(names) + 1, "\n".join(lines))
        for l in lines:
            for raw in ("\x1b", "\x7f", "\t"):
                self.assertNotIn(raw, l, "raw control character in the log")
            ev = mh.parse_log_line(l)
            for forged in ("verdict", "action", "id"):
                self.assertNotIn(forged, ev, "network text forged the key %r: %s" % (forged, l))
            self.assertEqual(list(ev).count("user"), 1)
            self.assertNotIn("root", ev.get("method", ""), l)

    def test_many_concurrent_sessions(self):
        results, errors = {}, []

        def worker(i):
            name = "alice" if i % 2 == 0 else "bob"
            try:
                results[i] = (name, mh.fetch_all_raw(self.proxy.port, *self.user(name)))
            except Exception as ex:       # reported below
                errors.append("%d: %r" % (i, ex))
        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        took = time.monotonic() - t0
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 24)
        for i, (name, got) in results.items():
            ref = self.alice_ref if name == "alice" else self.bob_ref
            self.assertEqual(got["UIDL"], ref["UIDL"])
            for m in self.messages(name):
                if not m["infected"]:
                    self.assertEqual(got["RETR"][m["num"] - 1], ref["RETR"][m["num"] - 1])
        out("24 concurrent sessions (alice and bob, all messages each): %.2f s" % took)
        self.assertProxyAlive(self.proxy)

    def test_slow_reader_pipelined_big(self):
        """Three pipelined RETRs of the 50 MiB message and a client that
        does not read for a while: the proxy holds back (bounded memory),
        then delivers all three intact."""
        u, pw = self.user("carol")
        with mh.RawPop3(self.up) as d:
            d.login(u, pw)
            want = hashlib.sha256(d.cmd_multi("RETR 1")[1]).hexdigest()
        proxy = self.start_proxy()
        c = mh.RawPop3(proxy.port, timeout=120)
        try:
            c.login(u, pw)
            c.send(b"RETR 1\r\nRETR 1\r\nRETR 1\r\n")
            time.sleep(6)
            rss, hwm = proxy.read_rss()
            for _ in range(3):
                st = c.readline()
                self.assertTrue(st.startswith(b"+OK"), st)
                self.assertEqual(hashlib.sha256(c.read_multiline_raw()).hexdigest(), want)
            c.cmd("QUIT")
        finally:
            c.close()
        rss2, hwm2 = proxy.read_rss()
        out("slow reader, 3 x 50 MiB pipelined: VmHWM %d KiB while stalled, %d KiB after" % (hwm, hwm2))
        if not self.sanitized:
            self.assertLess(hwm2, RSS_LIMIT_KIB)

    def test_client_idle_timeout(self):
        proxy = self.start_proxy(timeouts={"client_idle": 2})
        c = mh.RawPop3(proxy.port, timeout=30)
        try:
            c.login(*self.user("alice"))
            t0 = time.monotonic()
            rest = c.read_all(timeout=15)
            took = time.monotonic() - t0
        finally:
            c.close()
        self.assertLess(took, 10, "client_idle: 2 did not close an idle session")
        self.assertFalse(rest.startswith(b"+OK"), rest)
        out("idle client closed after %.1f s (client_idle 2 s): %r" % (took, rest[:80]))


if __name__ == "__main__":
    unittest.main()
