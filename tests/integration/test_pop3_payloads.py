"""Harder payloads: EICAR inside a forwarded message (message/rfc822),
as plain text, inside a zip; under ISO-2022-JP From/Subject; without
Message-ID and Date; and at the end of 12 MiB messages, which are scanned
part by part above scanner.clamav.mime_split_above (default 8M), including
a zip that only a decoded-part scan can see. A clean 12 MiB message passes
byte for byte. Then DELE after a notice: the original is gone from the
server but kept in the quarantine (invariant 1, no message is lost)."""

import email.header
import hashlib
import os
import stat
import unittest

from itbase import ProxyCase, list_sizes, mh, out, NOTICE_MARK

RSS_LIMIT_KIB = int(os.environ.get("MAILMOAT_IT_RSS_LIMIT_KIB", str(64 * 1024)))


def decoded(value):
    return str(email.header.make_header(email.header.decode_header(value)))


class Payloads(ProxyCase):

    def test_every_payload_caught(self):
        proxy = self.start_proxy()
        u, pw = self.user("frank")
        ref = self.direct("frank")
        got = mh.fetch_all_raw(proxy.port, u, pw)
        rss, hwm = proxy.read_rss()
        self.assertEqual(got["LIST"], ref["LIST"])
        self.assertEqual(got["UIDL"], ref["UIDL"])
        sizes = list_sizes(ref["LIST"][1])
        missed, false_pos = [], []
        for m in self.messages("frank"):
            n = m["num"]
            body = got["RETR"][n - 1][1]
            self.assertIsNotNone(body, "RETR %d (%s): %r" % (n, m["kind"], got["RETR"][n - 1][0]))
            original = mh.unstuff(ref["RETR"][n - 1][1])
            if not m["infected"]:
                if body != ref["RETR"][n - 1][1]:
                    false_pos.append("%d:%s" % (n, m["kind"]))
                continue
            data = mh.unstuff(body)
            subj = mh.header_of(data, "Subject") or ""
            if NOTICE_MARK not in subj:
                missed.append("%d:%s" % (n, m["kind"]))
                continue
            self.assertNotice(data, original, sizes[n])
            if sizes[n] > 8192:
                self.assertEqual(len(data), sizes[n], "%s notice not padded" % m["kind"])
        self.assertEqual(missed, [], "malicious messages delivered as clean")
        self.assertEqual(false_pos, [], "clean messages altered")

        # Verdict lines and quarantine entries for each.
        evs = {int(e["msg"]): e for e in proxy.log_events() if e.get("user") == u and "verdict" in e}
        quar = {q[0]: q for q in proxy.quarantine()}
        for m in self.messages("frank"):
            e = evs.get(m["num"])
            self.assertIsNotNone(e, "no verdict line for msg=%d" % m["num"])
            if not m["infected"]:
                self.assertEqual(e["verdict"], "clean", e["_line"])
                continue
            self.assertEqual(e["verdict"], "infected", e["_line"])
            if "clamzip" in m["kind"]:
                self.assertTrue(e["signature"].startswith("Mailmoat.TestFile.clam"), e["_line"])
            else:
                self.assertEqual(e["signature"], "Mailmoat.Test.EICAR.UNOFFICIAL", e["_line"])
            _, eml, js, meta = quar[e["id"]]
            original = mh.unstuff(ref["RETR"][m["num"] - 1][1])
            with open(eml, "rb") as f:
                kept = f.read()
            self.assertEqual(len(kept), len(original), m["kind"])
            self.assertEqual(hashlib.sha256(kept).hexdigest(), hashlib.sha256(original).hexdigest(),
                             "quarantined %s differs" % m["kind"])
            self.assertEqual(meta["sha256"].lower(), hashlib.sha256(original).hexdigest())
            for p in (eml, js):
                self.assertEqual(stat.S_IMODE(os.stat(p).st_mode), 0o600)
            if m["kind"] == "japanese_eicar":
                # RFC 2047 words decoded for the administrator.
                self.assertEqual(meta["subject"], decoded(m["subject"]))
                self.assertIn("keiri@bad.example.jp", meta["from"])
                self.assertIn("経理部", meta["from"])
        out("harder payloads: %d caught, %d clean passed (incl. %d MiB ones); VmHWM %d KiB"
            % (len(self.infected_nums("frank")),
               len(self.messages("frank")) - len(self.infected_nums("frank")),
               (self.messages("frank")[-2]["size_lf"] + (1 << 19)) >> 20, hwm))
        if not self.sanitized:
            self.assertLess(hwm, RSS_LIMIT_KIB)

    def test_top_of_big_infected(self):
        """TOP of an unscanned 12 MiB infected message: scanned whole first."""
        proxy = self.start_proxy()
        n = [m["num"] for m in self.messages("frank") if m["kind"] == "big_clamzip"][0]
        with mh.RawPop3(proxy.port) as c:
            c.login(*self.user("frank"))
            st, body = c.cmd_multi("TOP %d 3" % n)
            self.assertTrue(st.startswith(b"+OK"), st)
            self.assertIn(NOTICE_MARK, mh.header_of(mh.unstuff(body), "Subject"))
            self.assertLess(len(body), 64 << 10, "TOP n 3 of a notice should be short")
            c.cmd("QUIT")


class DeleteAfterNotice(ProxyCase):

    def test_dele_removes_original_keeps_quarantine(self):
        proxy = self.start_proxy()
        u, pw = self.user("erin")
        ref = self.direct("erin")
        if ref["count"] == 0:
            self.skipTest("erin's mailbox was emptied by an earlier run of this test")
        bad = self.infected_nums("erin")[0]
        original = mh.unstuff(ref["RETR"][bad - 1][1])
        with mh.RawPop3(proxy.port) as c:
            c.login(u, pw)
            for i in range(1, ref["count"] + 1):
                st, body = c.cmd_multi("RETR %d" % i)
                self.assertTrue(st.startswith(b"+OK"))
                self.assertTrue(c.cmd("DELE %d" % i).startswith(b"+OK"))
            self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        after = mh.fetch_all_raw(self.up, u, pw)
        self.assertEqual(after["count"], 0, "DELE did not reach the server")
        kept = [q for q in proxy.quarantine() if q[3] and q[3]["user"] == u]
        self.assertEqual(len(kept), 1)
        with open(kept[0][1], "rb") as f:
            self.assertEqual(f.read(), original, "the only copy left is not the original")


if __name__ == "__main__":
    unittest.main()
