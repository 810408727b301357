"""Clean mail passes byte for byte: the proxy's answers to a POP3 client are
identical to Dovecot's own, for STAT, LIST, UIDL, TOP and RETR of every kind
of harmless message (MIME, Japanese, dot-stuffed lines, long lines, a
message without a final line end), pipelined or not."""

import poplib
import unittest

from itbase import ProxyCase, mh, out


class CleanPassthrough(ProxyCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_proxy()

    def test_raw_session_byte_identical(self):
        """Every status line and multi-line body, as sent on the wire."""
        for name in ("alice", "dave"):
            u, pw = self.user(name)
            want = mh.fetch_all_raw(self.up, u, pw, top=3)
            got = mh.fetch_all_raw(self.proxy.port, u, pw, top=3)
            for key in ("STAT", "LIST", "UIDL"):
                self.assertEqual(got[key], want[key], "%s %s differs" % (name, key))
            self.assertEqual(got["count"], len(self.messages(name)))
            for i, (g, w) in enumerate(zip(got["RETR"], want["RETR"]), 1):
                self.assertEqual(g[0], w[0], "%s RETR %d status" % (name, i))
                self.assertEqual(g[1], w[1], "%s RETR %d (%s) body differs"
                                 % (name, i, self.messages(name)[i - 1]["kind"]))
            for i, (g, w) in enumerate(zip(got["TOP"], want["TOP"]), 1):
                self.assertEqual(g, w, "%s TOP %d 3 differs" % (name, i))
            self.assertTrue(got["QUIT"].startswith(b"+OK"))
        out("clean mailboxes (alice: %d messages) byte-identical through mailmoat"
            % len(self.messages("alice")))

    def _poplib_dump(self, port, name):
        u, pw = self.user(name)
        p = poplib.POP3(mh.HOST, port, timeout=60)
        try:
            p.user(u)
            p.pass_(pw)
            d = {"stat": p.stat(), "list": p.list(), "uidl": p.uidl()}
            n = d["stat"][0]
            d["retr"] = [p.retr(i) for i in range(1, n + 1)]
            d["top0"] = [p.top(i, 0) for i in range(1, n + 1)]
            d["uidl1"] = p.uidl(1)
            d["list1"] = p.list(1)
            d["noop"] = p.noop()
            p.quit()
        finally:
            p.close()
        return d

    def test_poplib_identical(self):
        want = self._poplib_dump(self.up, "alice")
        got = self._poplib_dump(self.proxy.port, "alice")
        self.assertEqual(got["stat"], want["stat"])
        self.assertEqual(got["list"], want["list"])
        self.assertEqual(got["uidl"], want["uidl"])
        self.assertEqual(got["uidl1"], want["uidl1"])
        self.assertEqual(got["list1"], want["list1"])
        for i, (g, w) in enumerate(zip(got["retr"], want["retr"]), 1):
            self.assertEqual(g, w, "RETR %d differs" % i)
        for i, (g, w) in enumerate(zip(got["top0"], want["top0"]), 1):
            self.assertEqual(g, w, "TOP %d 0 differs" % i)
        self.assertTrue(got["noop"].startswith(b"+OK"))
        # Dot-stuffed lines survive: "." and ".." lines are in the message.
        dots = [m["num"] for m in self.messages("alice") if m["kind"] == "dots"][0]
        lines = got["retr"][dots - 1][1]
        self.assertIn(b".", lines)
        self.assertIn(b"..", lines)
        self.assertIn(b"...", lines)

    def test_pipelined_byte_identical(self):
        """RFC 2449 PIPELINING: all commands in one write, answers in order."""
        u, pw = self.user("alice")
        n = len(self.messages(u))
        cmds = (["STAT", "LIST", "UIDL"] + ["RETR %d" % i for i in range(1, n + 1)] +
                ["TOP 2 1", "LIST 3", "UIDL 4", "RETR 99", "NOOP"] +
                ["RETR %d" % i for i in range(n, 0, -1)])
        res = {}
        for label, port in (("direct", self.up), ("proxy", self.proxy.port)):
            with mh.RawPop3(port) as c:
                c.login(u, pw)
                res[label] = mh.pipeline(c, cmds + ["QUIT"])
        self.assertEqual(len(res["proxy"]), len(cmds) + 1, "responses missing under pipelining")
        for c, g, w in zip(cmds, res["proxy"], res["direct"]):
            if c == "RETR 99":
                self.assertTrue(g[0].startswith(b"-ERR"), g[0])
                continue
            self.assertEqual(g, w, "pipelined %s differs" % c)

    def test_pipelined_including_login(self):
        """USER and PASS in the same write as the transaction commands."""
        u, pw = self.user("dave")
        cmds = ["USER " + u, "PASS " + pw, "STAT", "UIDL", "RETR 1", "RETR 2", "QUIT"]
        res = {}
        for label, port in (("direct", self.up), ("proxy", self.proxy.port)):
            with mh.RawPop3(port) as c:
                res[label] = mh.pipeline(c, cmds)
        self.assertEqual(len(res["proxy"]), len(cmds), res["proxy"])
        for c, g, w in zip(cmds[:-1], res["proxy"], res["direct"]):
            if c.startswith("PASS"):
                self.assertTrue(g[0].startswith(b"+OK"), g[0])
                continue
            self.assertEqual(g, w, "pipelined %s differs" % c.split()[0])

    def test_capa_and_errors(self):
        u, pw = self.user("alice")
        with mh.RawPop3(self.proxy.port) as c:
            self.assertTrue(c.greeting.startswith(b"+OK"), c.greeting)
            st, body = c.cmd_multi("CAPA")
            self.assertTrue(st.startswith(b"+OK"), st)
            caps = [l.split()[0].upper() for l in mh.unstuff(body).split(b"\r\n") if l.strip()]
            for cap in (b"TOP", b"UIDL", b"USER", b"PIPELINING"):
                self.assertIn(cap, caps)
            self.assertTrue(c.cmd("STAT").startswith(b"-ERR"), "STAT before login accepted")
            c.login(u, pw)
            for bad in ("RETR 99", "RETR 0", "RETR x", "TOP 1", "LIST 99", "XYZZY"):
                self.assertTrue(c.cmd(bad).startswith(b"-ERR"), bad)
            st, body = c.cmd_multi("RETR 1")
            self.assertTrue(st.startswith(b"+OK"))
            want = mh.fetch_all_raw(self.up, u, pw)["RETR"][0][1]
            self.assertEqual(body, want, "RETR after errors differs")
            self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))

    def test_no_verdict_other_than_clean(self):
        mh.fetch_all_raw(self.proxy.port, *self.user("alice"))
        for ev in self.proxy.log_events():
            if ev.get("user") == "alice" and "verdict" in ev:
                self.assertEqual(ev["verdict"], "clean", ev["_line"])


if __name__ == "__main__":
    unittest.main()
