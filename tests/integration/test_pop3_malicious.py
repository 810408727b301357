"""Malicious messages in the middle (and at the end) of a mailbox, policy
on_malicious: quarantine. Every message arrives; the infected ones are
replaced by notices; the originals are in the quarantine, byte for byte;
the next download in a fresh session works the same way."""

import hashlib
import os
import poplib
import stat
import unittest

from itbase import ProxyCase, list_sizes, mh, out, NOTICE_MARK


class QuarantineMode(ProxyCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_proxy(on_malicious="quarantine")
        cls.ref = cls.direct_static("bob")

    @classmethod
    def direct_static(cls, name):
        info = cls.st["users"][name]
        return mh.fetch_all_raw(cls.up, name, info["password"], top=0)

    def original(self, num):
        return mh.unstuff(self.ref["RETR"][num - 1][1])

    def check_session(self, got):
        """Checks a fetch_all_raw result against the direct reference;
        returns {num: notice bytes}."""
        ref = self.ref
        self.assertEqual(got["STAT"], ref["STAT"])
        self.assertEqual(got["LIST"], ref["LIST"], "LIST sizes must stay the originals'")
        self.assertEqual(got["UIDL"], ref["UIDL"], "UIDL must be unchanged")
        sizes = list_sizes(ref["LIST"][1])
        infected = self.infected_nums("bob")
        self.assertEqual(len(got["RETR"]), len(self.messages("bob")), "a message did not arrive")
        notices = {}
        for m in self.messages("bob"):
            n = m["num"]
            st, body = got["RETR"][n - 1]
            self.assertTrue(st.startswith(b"+OK"), "RETR %d: %r" % (n, st))
            if n not in infected:
                self.assertEqual(body, ref["RETR"][n - 1][1], "clean message %d (%s) altered"
                                 % (n, m["kind"]))
                continue
            notice = mh.unstuff(body)
            self.assertNotice(notice, self.original(n), sizes[n])
            if sizes[n] > 8192:
                self.assertEqual(len(notice), sizes[n],
                                 "notice for %d not padded to the LIST size" % n)
            notices[n] = notice
        return notices

    def infected_lines(self, session_lines=None):
        evs = [e for e in self.proxy.log_events() if e.get("user") == "bob" and "verdict" in e]
        return evs

    def test_1_mailbox_with_notices_and_quarantine(self):
        before = {q[0] for q in self.proxy.quarantine()}
        got = mh.fetch_all_raw(self.proxy.port, *self.user("bob"), top=0)
        notices = self.check_session(got)
        self.assertEqual(sorted(notices), self.infected_nums("bob"))

        # Log: one verdict line per message, infected ones with the
        # signature, action and quarantine id.
        evs = {}
        for e in self.infected_lines():
            evs.setdefault(int(e["msg"]), e)
        quar = {q[0]: q for q in self.proxy.quarantine()}
        new_ids = set(quar) - before
        self.assertEqual(len(new_ids), len(notices), "one quarantine entry per infected message")
        for m in self.messages("bob"):
            n = m["num"]
            self.assertIn(n, evs, "no verdict line for msg=%d" % n)
            e = evs[n]
            if n not in notices:
                self.assertEqual(e["verdict"], "clean", e["_line"])
                continue
            self.assertEqual(e["verdict"], "infected", e["_line"])
            self.assertEqual(e.get("action"), "quarantine", e["_line"])
            if m["kind"].startswith("eicar"):
                self.assertEqual(e["signature"], "Mailmoat.Test.EICAR.UNOFFICIAL")
            else:
                self.assertTrue(e["signature"].startswith("Mailmoat.TestFile.clam"), e["signature"])
            qid = e.get("id")
            self.assertIn(qid, new_ids, "log id=%s is not in the quarantine" % qid)
            self.assertIn(qid.encode(), notices[n], "the notice does not name its quarantine id")

            # ID.eml: the original exactly as Dovecot serves it, unstuffed.
            _, eml, js, meta = quar[qid]
            original = self.original(n)
            with open(eml, "rb") as f:
                self.assertEqual(f.read(), original, "quarantined %s differs from the original" % qid)
            for p in (eml, js):
                mode = stat.S_IMODE(os.stat(p).st_mode)
                self.assertEqual(mode, 0o600, "%s has mode %o" % (p, mode))
            self.assertIsNotNone(meta, "%s.json is not JSON" % qid)
            for k in ("id", "received_at", "protocol", "user", "upstream", "signature",
                      "size", "sha256", "from", "subject"):
                self.assertIn(k, meta, "%s.json lacks %s" % (qid, k))
            self.assertEqual(meta["id"], qid)
            self.assertEqual(meta["protocol"], "pop3")
            self.assertEqual(meta["user"], "bob")
            self.assertEqual(meta["upstream"], "%s:%d" % (mh.HOST, self.up))
            self.assertEqual(meta["signature"], e["signature"])
            self.assertEqual(int(meta["size"]), len(original))
            self.assertEqual(meta["sha256"].lower(), hashlib.sha256(original).hexdigest())
            self.assertIn(mh.header_of(original, "From").split("<")[-1].rstrip(">"), meta["from"])
            self.assertEqual(meta["subject"], m["subject"])
            self.assertRegex(str(meta["received_at"]), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
            # README's quarantine contract: verdict, the session that
            # fetched it (the log line's session id), and which message.
            self.assertEqual(meta.get("verdict"), "infected")
            self.assertEqual(meta.get("session"), e["_words"][2],
                             "%s.json session is not the log's session id" % qid)
            self.assertRegex(str(meta.get("message")), r"\bmsg=%d\b" % n)
        out("quarantine: %s" % ", ".join("%s %s %s" % (quar[i][3]["id"], quar[i][3]["signature"],
                                                       quar[i][3]["size"]) for i in sorted(new_ids)))

    def test_2_redownload_fresh_sessions(self):
        """The next download (and the one after) goes through the same way:
        no stall, the same notices in the same places."""
        first = self.check_session(mh.fetch_all_raw(self.proxy.port, *self.user("bob")))
        for _ in range(2):
            again = self.check_session(mh.fetch_all_raw(self.proxy.port, *self.user("bob")))
            self.assertEqual(sorted(again), sorted(first))
            for n in first:
                self.assertEqual(len(again[n]), len(first[n]))
                self.assertEqual(mh.header_of(again[n], "Subject"), mh.header_of(first[n], "Subject"))

    def test_3_poplib_client(self):
        u, pw = self.user("bob")
        p = poplib.POP3(mh.HOST, self.proxy.port, timeout=60)
        try:
            p.user(u)
            p.pass_(pw)
            count, _ = p.stat()
            self.assertEqual(count, len(self.messages("bob")))
            for m in self.messages("bob"):
                resp, lines, octets = p.retr(m["num"])
                data = b"\r\n".join(lines) + b"\r\n"
                if m["infected"]:
                    self.assertIn(NOTICE_MARK, mh.header_of(data, "Subject"))
                    self.assertEqual(mh.header_of(data, "Message-ID"), m["message_id"])
                else:
                    self.assertEqual(data, self.original(m["num"]))
            p.quit()
        finally:
            p.close()

    def test_4_top_before_retr(self):
        """TOP of an unscanned infected message serves the notice's headers."""
        infected = self.infected_nums("bob")
        with mh.RawPop3(self.proxy.port) as c:
            c.login(*self.user("bob"))
            st, top0 = c.cmd_multi("TOP %d 0" % infected[0])
            self.assertTrue(st.startswith(b"+OK"), st)
            top0 = mh.unstuff(top0)
            self.assertIn(NOTICE_MARK, mh.header_of(top0, "Subject"))
            self.assertEqual(mh.header_of(top0, "Message-ID"), self.messages("bob")[infected[0] - 1]["message_id"])
            self.assertTrue(top0.endswith(b"\r\n\r\n"), "TOP n 0 must end with the blank line")
            st, top5 = c.cmd_multi("TOP %d 5" % infected[0])
            self.assertTrue(st.startswith(b"+OK"), st)
            top5 = mh.unstuff(top5)
            self.assertTrue(top5.startswith(top0))
            self.assertNotIn(mh.EICAR, top5)
            st, body = c.cmd_multi("RETR %d" % infected[0])
            notice = mh.unstuff(body)
            self.assertTrue(notice.startswith(top0), "TOP headers differ from the RETR notice's")
            self.assertTrue(notice.startswith(top5))
            # A clean message's TOP is Dovecot's.
            st, top_clean = c.cmd_multi("TOP 1 2")
            self.assertEqual(top_clean, mh.fetch_all_raw(self.up, *self.user("bob"), top=2)["TOP"][0][1])
            c.cmd("QUIT")

    def test_5_same_message_stored_once(self):
        """RETR twice and TOP in one session, then a fresh session: the same
        notice each time, and the quarantine holds the message once."""
        n = self.infected_nums("bob")[1]

        def fetch():
            with mh.RawPop3(self.proxy.port) as c:
                c.login(*self.user("bob"))
                a = c.cmd_multi("RETR %d" % n)[1]
                b = c.cmd_multi("RETR %d" % n)[1]
                t = mh.unstuff(c.cmd_multi("TOP %d 0" % n)[1])
                c.cmd("QUIT")
            return a, b, t

        a, b, t = fetch()
        self.assertEqual(a, b, "a second RETR in the session served a different notice")
        self.assertTrue(mh.unstuff(a).startswith(t))
        qid = mh.header_of(mh.unstuff(a), "X-Mailmoat-Quarantine-Id")
        stored = self.proxy.quarantine()
        self.assertIn(qid, [q[0] for q in stored])
        self.assertEqual(sum(1 for q in stored if q[3] and q[3]["sha256"] ==
                             stored[[x[0] for x in stored].index(qid)][3]["sha256"]), 1)
        a2, _, _ = fetch()  # a new session: same entry, nothing stored again
        self.assertEqual(a2, a)
        self.assertEqual(len(self.proxy.quarantine()), len(stored))
        self.assertIn("stored=existing", self.proxy.log_text())

    def test_6_pipelined_mixed(self):
        """Pipelined RETRs over infected and clean messages: answers in
        order, clean ones byte-identical, notices in the infected places."""
        n = len(self.messages("bob"))
        cmds = ["RETR %d" % i for i in range(1, n + 1)] + ["TOP 5 0", "STAT",
                                                             "RETR 3", "RETR 1", "QUIT"]
        with mh.RawPop3(self.proxy.port) as c:
            c.login(*self.user("bob"))
            res = mh.pipeline(c, cmds)
        self.assertEqual(len(res), len(cmds))
        infected = self.infected_nums("bob")
        for i, (cmd, (st, body)) in enumerate(zip(cmds, res)):
            self.assertTrue(st.startswith(b"+OK"), "%s: %r" % (cmd, st))
            w = cmd.split()
            if w[0] == "RETR":
                num = int(w[1])
                if num in infected:
                    notice = mh.unstuff(body)
                    self.assertIn(NOTICE_MARK, mh.header_of(notice, "Subject"))
                    self.assertEqual(mh.header_of(notice, "Message-ID"),
                                     self.messages("bob")[num - 1]["message_id"], "out of order")
                else:
                    self.assertEqual(body, self.ref["RETR"][num - 1][1], "%s out of order or altered" % cmd)
            elif w[0] == "TOP":
                self.assertIn(NOTICE_MARK, mh.header_of(mh.unstuff(body), "Subject"))
            elif w[0] == "STAT":
                self.assertEqual(st, self.ref["STAT"])


    def test_7_uidl_learned_for_the_log(self):
        """poplib's retr never asks UIDL: the proxy learns it with its own
        pipelined UIDL n, so the verdict line names the message for good,
        and the client sees nothing of it."""
        n = self.infected_nums("bob")[0]
        u, pw = self.user("bob")
        d = poplib.POP3(mh.HOST, self.up, timeout=30)
        d.user(u)
        d.pass_(pw)
        uidl = d.uidl(n).split()[2].decode()
        d.quit()
        p = poplib.POP3(mh.HOST, self.proxy.port, timeout=30)
        try:
            p.user(u)
            p.pass_(pw)
            resp, lines, _ = p.retr(n)
            self.assertTrue(resp.startswith(b"+OK"), resp)
            self.assertEqual(p.noop(), b"+OK", "an answer of the proxy's own UIDL leaked")
            p.quit()
        finally:
            p.close()
        evs = [mh.parse_log_line(l) for l in self.proxy.log_text().splitlines()]
        evs = [e for e in evs if e.get("msg") == str(n) and e.get("verdict")]
        self.assertTrue(evs, "no verdict line for msg=%d" % n)
        self.assertEqual(evs[-1].get("uidl"), uidl, evs[-1]["_line"])

if __name__ == "__main__":
    unittest.main()
