"""IMAP sessions through mailmoat: what the proxy hides (STARTTLS,
COMPRESS), the process-wide verdict cache shared by concurrent sessions,
the proxy's own pre-scan never setting \\Seen, and IDLE while another
session's message is scanned."""

import threading
import time
import unittest

from itbase import CHUNK_TB, ImapCase, chunked_fetch, imaplib, mh, out

USER = "grace"


def crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class Capabilities(ImapCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_imap_proxy()

    @staticmethod
    def caps_of(line):
        """The capability words of a CAPABILITY response or of a
        [CAPABILITY ...] code in line (bytes), or None."""
        text = line.decode("ascii", "replace")
        if "[CAPABILITY " in text:
            return text.split("[CAPABILITY ", 1)[1].split("]", 1)[0].split()
        if text.startswith("* CAPABILITY "):
            return text[len("* CAPABILITY "):].split()
        return None

    def session_caps(self, port):
        """Every capability list the server shows in one session: greeting
        code, CAPABILITY before and after LOGIN, LOGIN's OK code."""
        seen = {}
        with mh.RawImap(port) as c:
            st, unt = c.command("CAPABILITY")
            seen["before"] = [self.caps_of(r[0]) for r in unt if self.caps_of(r[0])][0]
        # (Dovecot puts no code on LOGIN's OK after an explicit CAPABILITY.)
        with mh.RawImap(port) as c:
            seen["greeting"] = self.caps_of(c.greeting[0])
            st = c.login(USER, self.st["users"][USER]["password"])
            seen["login"] = self.caps_of(st)
            st, unt = c.command("CAPABILITY")
            seen["after"] = [self.caps_of(r[0]) for r in unt if self.caps_of(r[0])][0]
            c.command("LOGOUT")
        return seen

    def test_starttls_and_compress_hidden(self):
        def blocked(cap):
            u = cap.upper()
            return (u in ("STARTTLS", "CATENATE") or u.startswith("COMPRESS=") or
                    u.startswith("URLAUTH") or u.startswith("PREVIEW") or
                    u.startswith("SNIPPET="))

        direct = self.session_caps(self.imap_up)
        got = self.session_caps(self.proxy.port)
        self.assertIn("STARTTLS", direct["before"], "the fixture Dovecot should offer STARTTLS")
        self.assertIn("COMPRESS=DEFLATE", direct["after"], "the fixture Dovecot should offer COMPRESS")
        self.assertIn("COMPRESS=DEFLATE", direct["login"])
        self.assertIn("STARTTLS", direct["greeting"])
        for k in ("greeting", "before", "login", "after"):
            self.assertIsNotNone(got[k], "%s: no capability list through the proxy" % k)
            # CATENATE (RFC 4469) uploads parts by URL, URLAUTH serves content
            # by URLFETCH, PREVIEW / SNIPPET as quoted extracts: nothing the
            # proxy could scan first, so none is advertised either.
            for cap in got[k]:
                self.assertFalse(blocked(cap), "%s lists %s through the proxy" % (k, cap))
            # Everything else is Dovecot's, in Dovecot's order.
            want = [c for c in direct[k] if not blocked(c)]
            self.assertEqual(got[k], want, k)

    def test_compress_refused_session_goes_on(self):
        with mh.RawImap(self.proxy.port) as c:
            st, _ = c.command("STARTTLS")
            self.assertEqual(mh.imap_status(st), "NO", st)
            c.login(USER, self.st["users"][USER]["password"])
            st, _ = c.command("COMPRESS DEFLATE")
            self.assertEqual(mh.imap_status(st), "NO", "COMPRESS DEFLATE answered %r" % st)
            self.assertIn(b"[CANNOT]", st)
            # Still plain text on both sides: the session works.
            st, _ = c.command("NOOP")
            self.assertEqual(mh.imap_status(st), "OK", st)
            st, _ = c.command("EXAMINE INBOX")
            self.assertEqual(mh.imap_status(st), "OK", st)
            st, unt = c.command("UID FETCH 1 (UID BODY.PEEK[])")
            self.assertEqual(mh.imap_status(st), "OK", st)
            self.assertEqual(mh.parse_fetch(unt[0])[1]["BODY[]"], self.direct_whole(USER)[1])
            st, _ = c.command("LOGOUT")
            self.assertEqual(mh.imap_status(st), "OK", st)

    def test_authenticate_plain_user_tracked(self):
        """AUTHENTICATE PLAIN (imaplib sends the SASL response on a
        continuation): the verdict lines name the user, the log never holds
        the password."""
        proxy = self.start_imap_proxy()
        pw = self.st["users"][USER]["password"]
        with imaplib.IMAP4(mh.HOST, proxy.port, timeout=60) as c:
            typ, _ = c.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (USER, pw)).encode())
            self.assertEqual(typ, "OK")
            c.select("INBOX", readonly=True)
            self.uid_fetch(c, "3", "(UID BODY.PEEK[])")
        evs = self.imap_verdicts(proxy)
        self.assertEqual([(e.get("user"), e.get("uid"), e.get("verdict")) for e in evs],
                         [(USER, "3", "infected")])
        self.assertLogClean(proxy, [pw])


class SharedVerdicts(ImapCase):

    def test_concurrent_sessions_one_scan_same_notice(self):
        """Two sessions of one user fetch the whole mailbox at the same
        moment (whole fetches, then 64 KiB chunks of the 1 MiB infected
        message): identical notices, one quarantine entry and one verdict
        line per message."""
        proxy = self.start_imap_proxy()
        msgs = self.imap_messages(USER)
        direct = self.direct_whole(USER)
        big_bad = [m for m in msgs if m["kind"] == "mib_eicar"][0]
        barrier = threading.Barrier(2)
        results, errors = [None, None], []

        def worker(i):
            try:
                with self.imap(proxy.port, USER) as c:
                    barrier.wait(30)
                    if i == 0:
                        whole = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
                        chunks = chunked_fetch(c, big_bad["uid"], CHUNK_TB)[0]
                    else:
                        chunks = chunked_fetch(c, big_bad["uid"], CHUNK_TB)[0]
                        whole = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
                    results[i] = ({u: a["BODY[]"] for u, a in whole.items()}, chunks)
            except Exception as ex:   # reported below, in the test's thread
                errors.append("session %d: %r" % (i, ex))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        self.assertFalse([t for t in threads if t.is_alive()], "a session hangs")
        self.assertEqual(errors, [])
        (w0, c0), (w1, c1) = results
        for m in msgs:
            u = m["uid"]
            if m["infected"]:
                self.assertEqual(w0[u], w1[u], "UID %d: the two sessions got different notices" % u)
                self.assertImapNotice(w0[u], direct[u], proxy)
            else:
                self.assertEqual(w0[u], direct[u], "UID %d" % u)
                self.assertEqual(w1[u], direct[u], "UID %d" % u)
        self.assertEqual(c0, w0[big_bad["uid"]], "session 1: chunks differ from the notice")
        self.assertEqual(c1, w0[big_bad["uid"]], "session 2: chunks differ from the notice")

        def check_once():
            evs = self.imap_verdicts(proxy, USER)
            for m in msgs:
                lines = [e["_line"] for e in evs if int(e["uid"]) == m["uid"]]
                self.assertEqual(len(lines), 1, "UID %d scanned %d times:\n%s"
                                 % (m["uid"], len(lines), "\n".join(lines)))
            infected = [m for m in msgs if m["infected"]]
            self.assertEqual(len(proxy.quarantine()), len(infected),
                             "quarantine entries: %r" % [q[0] for q in proxy.quarantine()])
        check_once()

        # A later session (and a later partial) is served from the cache.
        with self.imap(proxy.port, USER) as c:
            again = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
            part = self.uid_fetch(c, str(big_bad["uid"]), "(UID BODY.PEEK[]<65536.65536>)")
        for m in msgs:
            self.assertEqual(again[m["uid"]]["BODY[]"], w0[m["uid"]], "UID %d in a later session" % m["uid"])
        self.assertEqual(part[big_bad["uid"]]["BODY[]<65536>"], w0[big_bad["uid"]][65536:131072])
        check_once()
        out("concurrent sessions: %d messages, %d notices identical in both, one scan each"
            % (len(msgs), len([m for m in msgs if m["infected"]])))


class ScratchMailbox(ImapCase):
    """Tests that need a mailbox of their own: made directly on Dovecot
    (CREATE + APPEND, no flags), deleted afterwards."""

    def scratch(self, prefix, messages):
        name = "%s-%d-%d" % (prefix, time.time_ns() % 10 ** 9, threading.get_ident() % 1000)
        with self.imap(self.imap_up, USER, select=None) as d:
            typ, data = d.create(name)
            self.assertEqual(typ, "OK", data)
            for m in messages:
                typ, data = d.append(name, "", None, crlf(m))
                self.assertEqual(typ, "OK", data)
        self.addCleanup(self._delete, name)
        return name

    def _delete(self, name):
        with self.imap(self.imap_up, USER, select=None) as d:
            d.delete(name)

    def direct_flags(self, mailbox):
        with self.imap(self.imap_up, USER, select=mailbox) as d:
            return {u: [f for f in a["FLAGS"] if f != "\\Recent"]
                    for u, a in self.uid_fetch(d, "1:*", "(UID FLAGS)").items()}

    def test_prescan_never_sets_seen(self):
        bad = mh.msg_eicar_attachment(to="grace@example.test", n=90, pad_text=70000)
        good = mh.msg_multipart_attachment(to="grace@example.test", n=91)
        box = self.scratch("seen", [bad, good])
        self.assertEqual(self.direct_flags(box), {1: [], 2: []})
        proxy = self.start_imap_proxy()
        # Read-write, as mail clients select; only partial and section
        # fetches, each of which makes the proxy pre-scan the message.
        with self.raw(proxy.port, USER, select=box) as c:
            for uid, items in ((1, "(UID RFC822.SIZE BODY.PEEK[]<0.65536>)"),
                               (2, "(UID BODY.PEEK[TEXT])"),
                               (2, "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[1])")):
                st, unt = c.command("UID FETCH %d %s" % (uid, items))
                self.assertEqual(mh.imap_status(st), "OK", st)
                for r in unt:
                    self.assertTrue(r[0].startswith(b"* "), "a foreign response reached the client: %r"
                                    % r[0][:200])
                fetches = [mh.parse_fetch(r) for r in unt]
                self.assertEqual([f[1]["UID"] for f in fetches if f], [str(uid)],
                                 "UID FETCH %d answered %r" % (uid, [r[0][:120] for r in unt]))
                for f in filter(None, fetches):
                    self.assertNotIn("FLAGS", f[1], "the proxy's fetch changed flags: %r" % f[1].get("FLAGS"))
            c.command("LOGOUT")
        evs = [e for e in self.imap_verdicts(proxy, USER) if e.get("mailbox") == box]
        self.assertEqual(sorted((int(e["uid"]), e["verdict"]) for e in evs),
                         [(1, "infected"), (2, "clean")], "the pre-scan did not run")
        self.assertEqual(self.direct_flags(box), {1: [], 2: []},
                         "the proxy's own pre-scan set \\Seen")

    def test_idle_survives_another_sessions_scan(self):
        box = self.scratch("idle", [mh.msg_plain(to="grace@example.test", n=92)])
        proxy = self.start_imap_proxy(timeouts={"keepalive": 1})
        msgs = self.imap_messages(USER)
        direct = self.direct_whole(USER)
        with self.raw(proxy.port, USER, select=box) as a:
            a.send(b"idle1 IDLE\r\n")
            cont = a.readline()
            self.assertTrue(cont.startswith(b"+"), "IDLE answered %r" % cont)
            # Meanwhile another session of the same user makes the proxy scan
            # (partials: the pre-scan; whole: inline).
            with self.imap(proxy.port, USER) as b:
                bad = [m for m in msgs if m["kind"] == "mib_eicar"][0]
                got, _, _, _ = chunked_fetch(b, bad["uid"], CHUNK_TB)
                whole = self.uid_fetch(b, "1:*", "(UID BODY.PEEK[])")
            self.assertEqual(got, whole[bad["uid"]]["BODY[]"])
            for m in msgs:
                if not m["infected"]:
                    self.assertEqual(whole[m["uid"]]["BODY[]"], direct[m["uid"]])
            # New mail arrives in the idling mailbox: the IDLE session hears of it.
            new = crlf(mh.msg_japanese_utf8(to="grace@example.test", n=93))
            with self.imap(self.imap_up, USER, select=None) as d:
                self.assertEqual(d.append(box, "", None, new)[0], "OK")
            a.sock.settimeout(30)
            lines = []
            while True:
                line = a.readline()
                lines.append(line)
                if line.rstrip().upper().endswith(b"EXISTS"):
                    break
            self.assertEqual(lines[-1].strip(), b"* 2 EXISTS", lines)
            for line in lines:
                self.assertNotIn(b"mailmoat: scanning", line,
                                 "a keepalive of another session's scan reached the idler")
            a.send(b"DONE\r\n")
            st, unt = a.read_until_tagged("idle1")
            self.assertEqual(mh.imap_status(st), "OK", "IDLE ended with %r" % st)
            st, unt = a.command("UID FETCH 2 (UID BODY.PEEK[])")
            self.assertEqual(mh.imap_status(st), "OK", st)
            self.assertEqual(mh.parse_fetch([p for p in unt if mh.parse_fetch(p)][0])[1]["BODY[]"], new)
            st, _ = a.command("LOGOUT")
            self.assertEqual(mh.imap_status(st), "OK", st)
        self.assertTrue(self.imap_verdicts(proxy, USER), "no scan happened during the IDLE")


if __name__ == "__main__":
    unittest.main()
