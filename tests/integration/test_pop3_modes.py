"""on_malicious: abort (the classic stream firewall: the download stalls at
the same message on every retry) and on_malicious: pass (delivered with an
X-Mailmoat-Virus header in front)."""

import poplib
import unittest

from itbase import ProxyCase, mh, out


class AbortMode(ProxyCase):

    def test_download_stalls_at_the_same_message(self):
        proxy = self.start_proxy(on_malicious="abort")
        u, pw = self.user("bob")
        ref = self.direct("bob")
        first_bad = self.infected_nums("bob")[0]
        stalls = []
        for attempt in range(3):
            p = poplib.POP3(mh.HOST, proxy.port, timeout=60)
            got = []
            try:
                p.user(u)
                p.pass_(pw)
                count, _ = p.stat()
                self.assertEqual(count, len(self.messages("bob")))
                with self.assertRaises((poplib.error_proto, EOFError, OSError),
                                       msg="RETR %d of a malicious message succeeded" % first_bad):
                    for n in range(1, count + 1):
                        resp, lines, octets = p.retr(n)
                        got.append(b"\r\n".join(lines) + b"\r\n")
            finally:
                p.close()
            stalls.append(len(got) + 1)
            # Everything before the malicious message arrived intact.
            self.assertEqual(len(got), first_bad - 1)
            for n, data in enumerate(got, 1):
                self.assertEqual(data, mh.unstuff(ref["RETR"][n - 1][1]))
        self.assertEqual(stalls, [first_bad] * 3)
        out("abort mode: download stalled at message %s on 3 tries" % stalls)
        # The connection really is gone (not left hanging), and the log says why.
        evs = [e for e in proxy.log_events() if e.get("verdict") == "infected"]
        self.assertEqual(len(evs), 3, [e["_line"] for e in evs])
        for e in evs:
            self.assertEqual(e.get("action"), "abort", e["_line"])
            self.assertEqual(e.get("msg"), str(first_bad))
        # abort keeps nothing (the message stays on the server).
        self.assertEqual(proxy.quarantine(), [])
        self.assertProxyAlive(proxy)

    def test_abort_raw_connection_closes_without_a_message(self):
        proxy = self.start_proxy(on_malicious="abort")
        bad = self.infected_nums("bob")[0]
        with mh.RawPop3(proxy.port) as c:
            c.login(*self.user("bob"))
            c.send(b"RETR %d\r\n" % bad)
            rest = c.read_all(timeout=30)
        self.assertNotIn(b"\r\n.\r\n", rest, "a complete-looking message before the close")
        self.assertNotIn(mh.EICAR, rest)
        self.assertFalse(rest.startswith(b"+OK"), rest[:200])


class PassMode(ProxyCase):

    def test_tagged_delivery(self):
        # the EICAR attachments are also .com files, blocked (quarantine)
        # by default: this test is about on_malicious alone
        proxy = self.start_proxy(on_malicious="pass",
                                 policy={"on_blocked_attachment": "pass"})
        ref = self.direct("bob")
        got = mh.fetch_all_raw(proxy.port, *self.user("bob"))
        self.assertEqual(got["LIST"], ref["LIST"])
        self.assertEqual(got["UIDL"], ref["UIDL"])
        for m in self.messages("bob"):
            n = m["num"]
            body = got["RETR"][n - 1][1]
            if not m["infected"]:
                self.assertEqual(body, ref["RETR"][n - 1][1])
                continue
            data = mh.unstuff(body)
            original = mh.unstuff(ref["RETR"][n - 1][1])
            self.assertTrue(data.startswith(b"X-Mailmoat-Virus:"), data[:200])
            self.assertTrue(data.endswith(original), "the original does not follow the header")
            prefix = data[:len(data) - len(original)]
            # Only the one (possibly folded) header line was added.
            lines = prefix.split(b"\r\n")
            self.assertEqual(lines[-1], b"")
            self.assertTrue(all(l.startswith((b" ", b"\t")) for l in lines[1:-1]), prefix)
            sig = mh.header_of(data, "X-Mailmoat-Virus")
            if m["kind"].startswith("eicar"):
                self.assertIn("Mailmoat.Test.EICAR", sig)
            else:
                self.assertIn("Mailmoat.TestFile.clam", sig)
        evs = [e for e in proxy.log_events() if e.get("verdict") == "infected"]
        self.assertEqual(sorted(int(e["msg"]) for e in evs), self.infected_nums("bob"))
        for e in evs:
            self.assertEqual(e.get("action"), "pass", e["_line"])


if __name__ == "__main__":
    unittest.main()
