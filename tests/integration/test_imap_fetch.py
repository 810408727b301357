"""IMAP FETCH through mailmoat, compared with the same FETCH straight to
Dovecot (python imaplib): whole messages, Thunderbird's 64 KiB and iOS
Mail's 393216-byte partial fetches, and sections.

grace's INBOX holds clean and malicious messages mixed, two of about
1 MiB (one clean, one with a tool at the end). Clean messages must come
back byte for byte; an infected one is served as the notice (the same
notice by every route: whole, chunked, in a later session), its sections
never carry the malware."""

import base64
import hashlib
import os
import stat
import unittest

from itbase import (CHUNK_IOS, CHUNK_TB, NOTICE_MARK, ImapCase, chunked_fetch, mh, out)

USER = "grace"

with open(mh.CLAM_ZIP, "rb") as _f:
    CLAMZIP_B64 = base64.b64encode(_f.read())[:60]
EICAR_B64 = base64.b64encode(mh.EICAR)[:40]


class WholeFetch(ImapCase):
    """One proxy for the class: whole-message fetches in every form."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_imap_proxy()

    def test_1_every_message_whole(self):
        msgs = self.imap_messages(USER)
        direct = self.direct_whole(USER)
        with self.imap(self.proxy.port, USER) as c:
            got = self.uid_fetch(c, "1:*", "(UID RFC822.SIZE BODY.PEEK[])")
        self.assertEqual(sorted(got), sorted(direct), "a message is missing through the proxy")
        notices = {}
        for m in msgs:
            u = m["uid"]
            body = got[u].get("BODY[]")
            self.assertIsNotNone(body, "UID %d: no BODY[] (%r)" % (u, sorted(got[u])))
            self.assertEqual(int(got[u]["RFC822.SIZE"]), len(direct[u]), "UID %d: RFC822.SIZE" % u)
            if not m["infected"]:
                self.assertEqual(body, direct[u], "clean UID %d (%s) altered" % (u, m["kind"]))
                continue
            qid = self.assertImapNotice(body, direct[u], self.proxy)
            self.assertEqual(mh.header_of(body, "Message-ID"), m["message_id"])
            self.assertEqual(mh.header_of(body, "From"), m["from"])
            if len(direct[u]) > 8192:
                self.assertEqual(len(body), len(direct[u]), "notice for UID %d not padded to the "
                                 "original's size" % u)
            notices[u] = (body, qid)
        self.assertEqual(sorted(notices), [m["uid"] for m in msgs if m["infected"]])

        # One verdict line per message, the infected ones naming their entry.
        evs = {}
        for e in self.imap_verdicts(self.proxy, USER):
            evs.setdefault(int(e["uid"]), []).append(e)
        quar = {q[0]: q for q in self.proxy.quarantine()}
        for m in msgs:
            u = m["uid"]
            self.assertEqual(len(evs.get(u, [])), 1, "UID %d: verdict lines %r"
                             % (u, [e["_line"] for e in evs.get(u, [])]))
            e = evs[u][0]
            self.assertEqual(e.get("mailbox"), "INBOX", e["_line"])
            self.assertEqual(int(e["size"]), len(direct[u]), e["_line"])
            if not m["infected"]:
                self.assertEqual(e["verdict"], "clean", e["_line"])
                continue
            self.assertEqual(e["verdict"], "infected", e["_line"])
            self.assertEqual(e.get("action"), "quarantine", e["_line"])
            self.assertEqual(e.get("id"), notices[u][1], e["_line"])
            if "eicar" in m["kind"]:
                self.assertEqual(e["signature"], "Mailmoat.Test.EICAR.UNOFFICIAL", e["_line"])
            else:
                self.assertTrue(e["signature"].startswith("Mailmoat.TestFile.clam"), e["_line"])
            _, eml, js, meta = quar[e["id"]]
            for p in (eml, js):
                self.assertEqual(stat.S_IMODE(os.stat(p).st_mode), 0o600, p)
            self.assertEqual(meta["protocol"], "imap")
            self.assertEqual(meta["user"], USER)
            self.assertEqual(meta["upstream"], "%s:%d" % (mh.HOST, self.imap_up))
            self.assertEqual(meta["verdict"], "infected")
            self.assertEqual(meta["signature"], e["signature"])
            self.assertEqual(int(meta["size"]), len(direct[u]))
            self.assertEqual(meta["sha256"].lower(), hashlib.sha256(direct[u]).hexdigest())
            self.assertEqual(meta["subject"], m["subject"])
            self.assertEqual(meta["session"], e["_words"][2])
            self.assertRegex(meta["message"], r"\buid=%d\b" % u)
            self.assertIn("INBOX", meta["message"])
        out("whole fetch: %d messages, %d notices: %s" % (
            len(msgs), len(notices), ", ".join("uid %d -> %s" % (u, q) for u, (_, q) in sorted(notices.items()))))
        type(self).notices = {u: b for u, (b, _) in notices.items()}

    def test_2_other_whole_forms_and_later_session(self):
        """RFC822, BODY[] (non-peek) and BINARY.PEEK[] in a later session:
        the cached verdicts, the same notices, no new scan."""
        if not getattr(self, "notices", None):
            self.skipTest("test_1 did not run")
        msgs = self.imap_messages(USER)
        direct = self.direct_whole(USER)
        lines_before = len(self.imap_verdicts(self.proxy, USER))
        n_quar = len(self.proxy.quarantine())
        with self.imap(self.imap_up, USER) as d:
            direct_binary = self.uid_fetch(d, "1:*", "(UID BINARY.PEEK[])")
        for items, key in (("(UID RFC822)", "RFC822"), ("(UID BINARY.PEEK[])", "BINARY[]"),
                           ("(UID BODY.PEEK[])", "BODY[]")):
            with self.imap(self.proxy.port, USER) as c:
                got = self.uid_fetch(c, "1:*", items)
            for m in msgs:
                u = m["uid"]
                self.assertIn(key, got[u], "%s: UID %d answered %r" % (items, u, sorted(got[u])))
                want = self.notices[u] if m["infected"] else direct[u]
                if key == "BINARY[]" and not m["infected"]:
                    # Dovecot's BINARY[] decodes every part (RFC 3516): compare
                    # with its own answer.
                    self.assertEqual(got[u][key], direct_binary[u]["BINARY[]"], "BINARY[] of clean UID %d" % u)
                    continue
                self.assertEqual(got[u][key], want, "%s of UID %d (%s)" % (items, u, m["kind"]))
        self.assertEqual(len(self.imap_verdicts(self.proxy, USER)), lines_before,
                         "a cached message was scanned again")
        self.assertEqual(len(self.proxy.quarantine()), n_quar, "the quarantine grew")

    def test_3_listing_untouched(self):
        """ENVELOPE, INTERNALDATE and SEARCH are Dovecot's; RFC822.SIZE and
        BODYSTRUCTURE too, except for messages already known to be
        quarantined (test_1 fetched them), which are described as their
        notices."""
        items = "(UID RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)"
        with self.imap(self.imap_up, USER) as d:
            want = self.uid_fetch(d, "1:*", items)
            want_search = d.uid("SEARCH", None, "SUBJECT", "megabyte")
        with self.imap(self.proxy.port, USER) as c:
            got = self.uid_fetch(c, "1:*", items)
            got_search = c.uid("SEARCH", None, "SUBJECT", "megabyte")
        clean = {m["uid"] for m in self.imap_messages(USER) if not m["infected"]}
        for u in want:
            if u in clean:
                self.assertEqual(got[u], want[u], "UID %d" % u)
            else:
                for k in ("INTERNALDATE", "ENVELOPE"):
                    self.assertEqual(got[u][k], want[u][k], "UID %d %s" % (u, k))
                with self.imap(self.proxy.port, USER) as c:
                    notice = self.uid_fetch(c, str(u), "(UID BODY.PEEK[])")[u]["BODY[]"]
                self.assertEqual(int(got[u]["RFC822.SIZE"]), len(notice), "UID %d RFC822.SIZE" % u)
                self.assertNotEqual(got[u]["BODYSTRUCTURE"], want[u]["BODYSTRUCTURE"],
                                    "UID %d BODYSTRUCTURE still describes the original" % u)
        self.assertEqual(got_search, want_search)
        self.assertEqual(got_search[1][0].split(), [b"5", b"7"])


class Chunked(ImapCase):
    """Partial fetches of messages the proxy has not seen yet (each test
    starts its own proxy, so the first chunk triggers the pre-scan)."""

    def check_chunked(self, chunk, past_end):
        proxy = self.start_imap_proxy()
        msgs = self.imap_messages(USER)
        direct = self.direct_whole(USER)
        picks = [m for m in msgs if m["kind"] in ("mib_clean", "mib_eicar", "eicar", "plain", "clamzip")]
        self.assertEqual(len(picks), 5)
        figures = []
        with self.imap(proxy.port, USER) as c, self.imap(self.imap_up, USER) as d:
            for m in picks:
                with self.subTest(uid=m["uid"], kind=m["kind"]):
                    figures.append(self.check_one_chunked(c, d, m, chunk, past_end, proxy))
        # One scan per message, although every chunk asked for it.
        evs = self.imap_verdicts(proxy, USER)
        for m in picks:
            lines = [e for e in evs if int(e["uid"]) == m["uid"]]
            self.assertEqual(len(lines), 1, "UID %d: %r" % (m["uid"], [e["_line"] for e in lines]))
            self.assertEqual(lines[0]["verdict"], "infected" if m["infected"] else "clean")
        out("chunks of %d%s: %s" % (chunk, " (past the end)" if past_end else "", "; ".join(figures)))

    def check_one_chunked(self, c, d, m, chunk, past_end, proxy):
        u = m["uid"]
        direct = self.direct_whole(USER)
        got, size, n, lens = chunked_fetch(c, u, chunk, past_end)
        ref, dsize, dn, dlens = chunked_fetch(d, u, chunk, past_end)
        self.assertEqual(ref, direct[u], "direct chunked UID %d does not reassemble" % u)
        whole = self.uid_fetch(c, str(u), "(UID BODY.PEEK[])")[u]["BODY[]"]
        # RFC822.SIZE came with the first chunk, after the pre-scan: for a
        # quarantined message it describes the notice (one substitute,
        # everywhere), so a client sizing its chunks by it gets all of it
        self.assertEqual(size, len(whole) if m["infected"] else dsize,
                         "RFC822.SIZE of UID %d" % u)
        if len(whole) == len(direct[u]):
            self.assertEqual(lens, dlens, "UID %d: chunk lengths %r, direct %r" % (u, lens, dlens))
        if m["infected"]:
            self.assertEqual(got, whole, "UID %d (%s, original %d octets): %d-octet chunks %r "
                             "reassemble %d octets, not the %d-octet notice a whole fetch serves"
                             % (u, m["kind"], len(direct[u]), chunk, lens, len(got), len(whole)))
            self.assertImapNotice(got, direct[u], proxy)
            self.assertIn(NOTICE_MARK, mh.header_of(got, "Subject"))
        else:
            self.assertEqual(got, direct[u], "clean UID %d (%s): chunks differ" % (u, m["kind"]))
            self.assertEqual(whole, direct[u])
        return "uid %d %s %d octets in %d fetches" % (u, m["kind"], len(got), n)

    def test_thunderbird_64k(self):
        self.check_chunked(CHUNK_TB, past_end=False)

    def test_ios_393216_past_the_end(self):
        self.check_chunked(CHUNK_IOS, past_end=True)

    def test_chunk_of_several_messages_at_once(self):
        """One partial FETCH over a UID range (uncached): every message
        gets its own slice, the infected ones cut from their notices."""
        proxy = self.start_imap_proxy()
        msgs = self.imap_messages(USER)
        direct = self.direct_whole(USER)
        with self.imap(proxy.port, USER) as c:
            got = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[]<100.2000>)")
            whole = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
        for m in msgs:
            u = m["uid"]
            part = got[u].get("BODY[]<100>")
            if m["infected"]:
                self.assertEqual(part, whole[u]["BODY[]"][100:2100], "UID %d" % u)
                self.assertNotEqual(whole[u]["BODY[]"], direct[u])
            else:
                self.assertEqual(part, direct[u][100:2100], "UID %d" % u)


class Sections(ImapCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_imap_proxy()

    SECTIONS = ("BODY.PEEK[TEXT]", "BODY.PEEK[1]", "BODY.PEEK[HEADER.FIELDS (Subject)]",
                "BODY.PEEK[HEADER]", "BODY.PEEK[1.MIME]", "BODY.PEEK[TEXT]<10.300>")

    def test_clean_sections_identical(self):
        msgs = [m for m in self.imap_messages(USER) if not m["infected"]]
        items = "(UID %s)" % " ".join(self.SECTIONS)
        uids = ",".join(str(m["uid"]) for m in msgs)
        with self.imap(self.imap_up, USER) as d:
            want = self.uid_fetch(d, uids, items)
            want2 = self.uid_fetch(d, "2", "(UID BODY.PEEK[2] BINARY.PEEK[2] BODY.PEEK[2.MIME])")
        with self.imap(self.proxy.port, USER) as c:
            got = self.uid_fetch(c, uids, items)
            got2 = self.uid_fetch(c, "2", "(UID BODY.PEEK[2] BINARY.PEEK[2] BODY.PEEK[2.MIME])")
        for m in msgs:
            self.assertEqual(got[m["uid"]], want[m["uid"]], "sections of clean UID %d (%s)"
                             % (m["uid"], m["kind"]))
        self.assertEqual(got2, want2)
        self.assertIn(b"widget,3,9.50", got2[2]["BINARY[2]"])   # decoded, and the same

    def test_infected_sections_never_carry_the_payload(self):
        msgs = [m for m in self.imap_messages(USER) if m["infected"]]
        items = ("(UID BODY.PEEK[TEXT] BODY.PEEK[1] BODY.PEEK[2] BODY.PEEK[2.MIME] BODY.PEEK[3] "
                 "BINARY.PEEK[2] BINARY.PEEK[3] BODY.PEEK[TEXT]<0.100000> BODY.PEEK[HEADER] "
                 "BODY.PEEK[HEADER.FIELDS (Subject)])")
        uids = ",".join(str(m["uid"]) for m in msgs)
        with self.imap(self.imap_up, USER) as d:
            direct = self.uid_fetch(d, uids, items)
        for m in msgs:
            # The reference really holds the payload where we look for it.
            self.assertTrue(any(mh.EICAR in (v or b"") or EICAR_B64 in (v or b"") or CLAMZIP_B64 in (v or b"")
                                for v in direct[m["uid"]].values() if isinstance(v, (bytes, type(None)))),
                            "direct sections of UID %d show no payload" % m["uid"])
        for route in ("uncached", "cached"):
            with self.imap(self.proxy.port, USER) as c:
                got = self.uid_fetch(c, uids, items)
                # Also one at a time, and RFC822.TEXT (not a PEEK: sets \Seen).
                for m in msgs:
                    one = self.uid_fetch(c, str(m["uid"]), "(UID RFC822.TEXT BINARY.PEEK[2])")
                    got[m["uid"]].update({"RFC822.TEXT#": one[m["uid"]].get("RFC822.TEXT"),
                                          "BINARY[2]#": one[m["uid"]].get("BINARY[2]")})
            for m in msgs:
                attrs = got[m["uid"]]
                for k, v in attrs.items():
                    if not isinstance(v, bytes):
                        continue
                    self.assertNotIn(mh.EICAR, v, "%s: UID %d %s carries EICAR" % (route, m["uid"], k))
                    self.assertNotIn(EICAR_B64, v, "%s: UID %d %s carries EICAR (base64)" % (route, m["uid"], k))
                    self.assertNotIn(CLAMZIP_B64, v, "%s: UID %d %s carries clam.zip" % (route, m["uid"], k))
                for k in ("BODY[TEXT]", "BODY[1]", "BODY[2]", "BINARY[2]", "BODY[TEXT]<0>"):
                    self.assertIn(k, attrs, "%s: UID %d: no %s in the answer" % (route, m["uid"], k))
        infected = {m["uid"] for m in msgs}
        lines = [e for e in self.imap_verdicts(self.proxy, USER) if int(e["uid"]) in infected]
        self.assertEqual(len(lines), len(msgs), "one scan per infected message: %r"
                         % [e["_line"] for e in lines])


if __name__ == "__main__":
    unittest.main()
