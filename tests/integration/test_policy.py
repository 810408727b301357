"""The policy engine through real clients (poplib-level raw POP3 and
imaplib), against the fixture Dovecot: blocked attachments, tag,
per-user rules, sender lists, oversize, encrypted archives, and
`--check-config --user`.

The fixture users' mailboxes are compared whole by other tests, so every
class here adds users of its own to the running fixture Dovecot
(mmharness.fixture_add_user: a line in its passwd-file) with a small
mailbox built for it. Each test starts its own mailmoat.

What a test expects of the proxy (policy/policy.c, proxy/msgjob.c):
- quarantine: the notice replaces the message, the original is in the
  quarantine with ID.json "verdict" the kind (blocked_attachment,
  denied_sender, oversize, encrypted_archive, infected);
- tag: the message with a first header line
  `X-Mailmoat-Verdict: KIND; detail="..."` and the Subject prefixed with
  tag_prefix and a space (a Subject added when there is none), the rest
  byte for byte the original;
- pass: the message exactly as the server sent it.
"""

import base64
import imaplib
import io
import os
import re
import secrets
import subprocess
import unittest
import zipfile

from itbase import ImapCase, list_sizes, mh, out

imaplib._MAXLINE = 1 << 20

# Users added to the shared fixture Dovecot get this suffix: a rerun against
# the same Dovecot never meets the mailboxes of an earlier run.
RUN = secrets.token_hex(3)

EXE_DATA = b"This part stands in for a program; it is only text.\n" * 8
DOC_DATA = b"Monthly report: every figure is within the plan.\n" * 8


def enc_word(text):
    """An RFC 2047 encoded-word (UTF-8, B) for text."""
    return "=?UTF-8?B?%s?=" % base64.b64encode(text.encode("utf-8")).decode("ascii")


def named(name, ctype="application/octet-stream", data=EXE_DATA):
    """An attachment part with name and filename both set to name."""
    return mh.mime_part(['Content-Type: %s; name="%s"' % (ctype, name),
                         'Content-Disposition: attachment; filename="%s"' % name], data)


def raw_part(headers, data=EXE_DATA):
    return mh.mime_part(headers, data)


def plain_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("figures.csv", "name,qty\nwidget,3\n" * 20)
    return buf.getvalue()


def tagged_expectation(original, prefix):
    """original (CRLF) with its first Subject prefixed (or a Subject line
    added at the end of the header): what follows the X-Mailmoat-Verdict
    line of a tagged copy."""
    head, sep, body = original.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    done = False
    outl = []
    for line in lines:
        if not done and line[:8].lower() == b"subject:":
            outl.append(b"Subject: " + prefix + b" " + line[8:].lstrip(b" \t"))
            done = True
        else:
            outl.append(line)
    if not done:
        outl.append(b"Subject: " + prefix)
    return b"\r\n".join(outl) + b"\r\n\r\n" + body


VERDICT_LINE = re.compile(rb'X-Mailmoat-Verdict: ([a-z_]+); detail="([^"\r\n]*)"\r\n')


class Box:
    """A mailbox of our own on the fixture Dovecot: user, password and
    {kind: Message-ID} of the messages, in the order they were added."""

    def __init__(self, user, password, kinds):
        self.user = user
        self.password = password
        self.kinds = kinds                       # [(kind, message-id)]
        self.kind_of = {mid: k for k, mid in kinds}


class PolicyCase(ImapCase):

    maxDiff = 3000

    @classmethod
    def make_box(cls, role, items):
        """Adds user ROLE-RUN with the messages items [(kind, bytes,
        message-id)] to the fixture Dovecot."""
        user = "%s-%s" % (role, RUN)
        password = "Pw-%s-%s!" % (role, RUN)
        mh.fixture_add_user(cls.st, user, password, wait=0)
        for _, data, _ in items:
            mh.fixture_add_message(cls.st, user, data)
        mh.fixture_wait_user(cls.st, user, password)
        return Box(user, password, [(k, mid) for k, _, mid in items])

    @staticmethod
    def item(kind, parts, **kw):
        data, mid = mh.msg_with_parts(parts, **kw)
        return kind, data, mid

    # ---- references, straight from Dovecot ----

    def pop3_direct(self, box):
        """{kind: {num, raw (stuffed RETR body), data, size (LIST)}}."""
        ref = mh.fetch_all_raw(self.up, box.user, box.password)
        self.assertEqual(ref["count"], len(box.kinds), "Dovecot does not hold %s's mailbox" % box.user)
        sizes = list_sizes(ref["LIST"][1])
        msgs = {}
        for i, (st, raw) in enumerate(ref["RETR"], 1):
            self.assertTrue(st.startswith(b"+OK"), st)
            data = mh.unstuff(raw)
            kind = box.kind_of[mh.header_of(data, "Message-ID")]
            msgs[kind] = {"num": i, "raw": raw, "data": data, "size": sizes[i]}
        self.assertEqual(sorted(msgs), sorted(k for k, _ in box.kinds))
        return ref, msgs

    def imap_conn(self, port, box):
        c = imaplib.IMAP4(mh.HOST, port, timeout=60)
        c.login(box.user, box.password)
        typ, data = c.select("INBOX", readonly=True)
        self.assertEqual(typ, "OK", data)
        return c

    def imap_direct(self, box):
        """{kind: uid}, {uid: BODY[]} straight from Dovecot."""
        with self.imap_conn(self.imap_up, box) as d:
            got = self.uid_fetch(d, "1:*", "(UID BODY.PEEK[])")
        uids = {}
        for u, a in got.items():
            uids[box.kind_of[mh.header_of(a["BODY[]"], "Message-ID")]] = u
        self.assertEqual(sorted(uids), sorted(k for k, _ in box.kinds))
        return uids, {u: a["BODY[]"] for u, a in got.items()}

    # ---- what the proxy did ----

    def check_quarantined(self, proxy, notice, original, list_size, verdict, detail=()):
        """notice replaced original: a valid notice naming a quarantine
        entry that holds the original, with ID.json verdict `verdict` and
        a signature/detail holding every string of detail. Returns the id."""
        self.assertNotice(notice, original, list_size)
        qid = mh.header_of(notice, "X-Mailmoat-Quarantine-Id")
        self.assertIsNotNone(qid, "notice without X-Mailmoat-Quarantine-Id:\n%r" % notice[:600])
        entries = {q[0]: q for q in proxy.quarantine()}
        self.assertIn(qid, entries, "quarantine id %s not in %s" % (qid, sorted(entries)))
        _, eml, _, meta = entries[qid]
        with open(eml, "rb") as f:
            self.assertEqual(f.read(), original, "quarantined %s is not the original" % qid)
        self.assertIsNotNone(meta, "%s.json unreadable" % qid)
        self.assertEqual(meta.get("verdict"), verdict, "ID.json of %s: %r" % (qid, meta))
        for s in detail:
            self.assertIn(s, meta.get("signature") or "", "ID.json of %s: %r" % (qid, meta))
        return qid

    @staticmethod
    def verdict_lines(proxy, proto):
        """The scan verdict log lines of proto (not POP3's "verdict=known"
        of a message served again in its session)."""
        return [e for e in proxy.log_events()
                if e["_words"][3:4] == [proto] and "verdict" in e and ("msg" in e or "uid" in e)
                and e["verdict"] != "known"]

    @classmethod
    def first_verdicts(cls, proxy, proto, user):
        """{message number or UID: its first verdict log line} of user."""
        evs = {}
        for e in cls.verdict_lines(proxy, proto):
            if e.get("user") != user:
                continue
            evs.setdefault(int(e["msg"] if proto == "pop3" else e["uid"]), e)
        return evs

    def pop3_run(self, proxy, box, passed, quarantined):
        """Downloads box through proxy (raw POP3: STAT, LIST, UIDL, every
        RETR) and checks it against Dovecot's answers: kinds in passed
        byte for byte, kinds in quarantined ({kind: (verdict, [detail])})
        replaced by their notice. Returns {kind: notice id}."""
        ref, msgs = self.pop3_direct(box)
        got = mh.fetch_all_raw(proxy.port, box.user, box.password)
        self.assertEqual(got["LIST"], ref["LIST"])
        self.assertEqual(got["UIDL"], ref["UIDL"])
        self.assertEqual(sorted(list(passed) + list(quarantined)), sorted(msgs))
        ids = {}
        for kind, m in sorted(msgs.items(), key=lambda kv: kv[1]["num"]):
            st, raw = got["RETR"][m["num"] - 1]
            with self.subTest(kind=kind, msg=m["num"]):
                self.assertTrue(st.startswith(b"+OK"), "RETR %d (%s): %r" % (m["num"], kind, st))
                if kind in passed:
                    data = mh.unstuff(raw)
                    if data != m["data"] and data.endswith(m["data"]):
                        self.fail("PROXY BUG: RETR %d (%s), whose finding's action is pass, is not "
                                  "the message as the server sent it: the proxy put %r in front of "
                                  "it (pass delivers it unchanged, as IMAP does)"
                                  % (m["num"], kind, data[:len(data) - len(m["data"])]))
                    self.assertEqual(raw, m["raw"], "RETR %d (%s) differs from the original; "
                                     "first 400 octets through the proxy:\n%r"
                                     % (m["num"], kind, (raw or b"")[:400]))
                    continue
                verdict, detail = quarantined[kind]
                ids[kind] = self.check_quarantined(proxy, mh.unstuff(raw), m["data"], m["size"],
                                                   verdict, detail)
        evs = self.first_verdicts(proxy, "pop3", box.user)
        for kind, m in msgs.items():
            e = evs.get(m["num"])
            self.assertIsNotNone(e, "no verdict log line for msg %d (%s)" % (m["num"], kind))
            if kind in passed:
                continue
            self.assertEqual(e["verdict"], quarantined[kind][0], e["_line"])
            self.assertEqual(e.get("action"), "quarantine", e["_line"])
            self.assertEqual(e.get("id"), ids.get(kind), e["_line"])
        mine = [q[0] for q in proxy.quarantine() if (q[3] or {}).get("user") == box.user]
        self.assertEqual(len(mine), len(quarantined), "%s's quarantine entries: %r" % (box.user, mine))
        return ids

    def imap_run(self, proxy, box, passed, quarantined):
        """The same over IMAP: UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[])."""
        uids, direct = self.imap_direct(box)
        with self.imap_conn(proxy.port, box) as c:
            got = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
        self.assertEqual(sorted(got), sorted(direct))
        ids = {}
        for kind, u in sorted(uids.items(), key=lambda kv: kv[1]):
            body = got[u].get("BODY[]")
            with self.subTest(kind=kind, uid=u):
                self.assertIsNotNone(body, "UID %d (%s): no BODY[] in %r" % (u, kind, sorted(got[u])))
                if kind in passed:
                    self.assertEqual(body, direct[u], "UID %d (%s) differs from the original; first "
                                     "400 octets through the proxy:\n%r" % (u, kind, body[:400]))
                    continue
                verdict, detail = quarantined[kind]
                ids[kind] = self.check_quarantined(proxy, body, direct[u], len(direct[u]), verdict, detail)
        evs = self.first_verdicts(proxy, "imap", box.user)
        for kind, u in uids.items():
            e = evs.get(u)
            self.assertIsNotNone(e, "no verdict log line for UID %d (%s)" % (u, kind))
            if kind not in passed:
                self.assertEqual(e["verdict"], quarantined[kind][0], e["_line"])
                self.assertEqual(e.get("action"), "quarantine", e["_line"])
        mine = [q[0] for q in proxy.quarantine() if (q[3] or {}).get("user") == box.user]
        self.assertEqual(len(mine), len(quarantined), "%s's quarantine entries: %r" % (box.user, mine))
        return ids


# ------------------------------------------------------------------ 1 ----

class BlockedAttachments(PolicyCase):
    """The default policy: blocked attachments are quarantined, whatever
    way the name is written; harmless ones pass byte for byte."""

    BLOCKED = {
        "exe": ("blocked_attachment", ["setup.exe", "extension .exe"]),
        "double": ("blocked_attachment", ["double extension invoice.pdf.exe"]),
        "rfc2231": ("blocked_attachment", ["double extension invoice.pdf.exe"]),
        "rfc2231_continued": ("blocked_attachment", ["extension .scr"]),
        "rfc2047": ("blocked_attachment", ["extension .exe"]),
        "rtl": ("blocked_attachment", ["hidden extension (RTL override)"]),
        "mime_type": ("blocked_attachment", ["MIME type application/x-msdownload"]),
    }
    PASSED = ("pdf", "exe_not_last", "plain")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        to = "blk@example.test"
        it = cls.item
        cls.box = cls.make_box("blk", [
            it("exe", [named("setup.exe")], to=to, subject="New laptop setup", n=1),
            it("pdf", [named("report.pdf", "application/pdf", DOC_DATA)], to=to,
               subject="Monthly report", n=2),
            it("double", [named("invoice.pdf.exe")], to=to, subject="Invoice", n=3),
            it("rfc2231", [raw_part(["Content-Type: application/octet-stream",
                                     "Content-Disposition: attachment; filename*=UTF-8''invoice.pdf.exe"])],
               to=to, subject="Invoice (RFC 2231)", n=4),
            # continued and percent-encoded: "請求書" + ".scr"
            it("rfc2231_continued", [raw_part([
                "Content-Type: application/octet-stream",
                "Content-Disposition: attachment;",
                " filename*0*=UTF-8''%E8%AB%8B%E6%B1%82%E6%9B%B8;",
                ' filename*1=".scr"'])], to=to, subject="Seikyusho", n=5),
            it("rfc2047", [raw_part(['Content-Type: application/octet-stream; name="%s"'
                                     % enc_word("請求書.exe"),
                                     "Content-Disposition: attachment"])],
               to=to, subject="Seikyusho (RFC 2047)", n=6),
            # shown as "photoexe.jpg"
            it("rtl", [named(enc_word("photo\u202egpj.exe"))], to=to, subject="Holiday photo", n=7),
            it("mime_type", [raw_part(["Content-Type: application/x-msdownload",
                                       "Content-Disposition: attachment"])],
               to=to, subject="Update", n=8),
            it("exe_not_last", [named("setup.exe.txt", "text/plain", DOC_DATA)], to=to,
               subject="Install notes", n=9),
            ("plain",) + (lambda d: (d, mh.header_of(d, "Message-ID")))(mh.msg_plain(to=to, n=10)),
        ])

    def test_pop3(self):
        proxy = self.start_proxy()
        ids = self.pop3_run(proxy, self.box, self.PASSED, self.BLOCKED)
        out("pop3 blocked attachments: %d quarantined (%s), %d passed"
            % (len(ids), ", ".join(sorted(ids)), len(self.PASSED)))

    def test_imap(self):
        proxy = self.start_imap_proxy()
        ids = self.imap_run(proxy, self.box, self.PASSED, self.BLOCKED)
        out("imap blocked attachments: %d quarantined, %d passed" % (len(ids), len(self.PASSED)))


# ------------------------------------------------------------------ 2 ----

class Tag(PolicyCase):
    """on_blocked_attachment: tag. The message arrives with the verdict
    header first and the Subject prefixed; everything else is the
    original's."""

    TAGGED = {"exe": "setup.exe", "nosubj": "tool.scr"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        to = "tag@example.test"
        cls.box = cls.make_box("tag", [
            cls.item("exe", [named("setup.exe")], to=to, subject="New laptop setup", n=1),
            cls.item("nosubj", [named("tool.scr")], to=to, subject=None, n=2),
            cls.item("pdf", [named("report.pdf", "application/pdf", DOC_DATA)], to=to,
                     subject="Monthly report", n=3),
        ])

    def check_tagged(self, got, original, kind, prefix):
        m = VERDICT_LINE.match(got)
        self.assertIsNotNone(m, "%s: no X-Mailmoat-Verdict line first:\n%r" % (kind, got[:300]))
        self.assertEqual(m.group(1), b"blocked_attachment", m.group(0))
        self.assertIn(self.TAGGED[kind].encode(), m.group(2), m.group(0))
        rest = got[m.end():]
        self.assertEqual(rest, tagged_expectation(original, prefix),
                         "%s: the tagged copy is not the original with the Subject prefixed" % kind)
        # the body, on its own
        self.assertEqual(got.partition(b"\r\n\r\n")[2], original.partition(b"\r\n\r\n")[2])
        subj = mh.header_of(got, "Subject")
        if mh.header_of(original, "Subject") is None:
            self.assertEqual(subj, prefix.decode())
        else:
            self.assertEqual(subj, "%s %s" % (prefix.decode(), mh.header_of(original, "Subject")))

    def test_pop3(self):
        proxy = self.start_proxy(policy={"on_blocked_attachment": "tag"})
        ref, msgs = self.pop3_direct(self.box)
        got = mh.fetch_all_raw(proxy.port, self.box.user, self.box.password)
        self.assertEqual(got["LIST"], ref["LIST"], "LIST sizes changed")
        self.assertEqual(got["UIDL"], ref["UIDL"])
        tagged = {}
        for kind, m in msgs.items():
            st, raw = got["RETR"][m["num"] - 1]
            with self.subTest(kind=kind):
                self.assertTrue(st.startswith(b"+OK"), st)
                if kind not in self.TAGGED:
                    self.assertEqual(raw, m["raw"])
                    continue
                data = mh.unstuff(raw)
                self.check_tagged(data, m["data"], kind, b"[mailmoat]")
                self.assertEqual(st, b"+OK %d octets\r\n" % len(data),
                                 "RETR status line does not give the tagged size")
                tagged[kind] = data
        # the same copy again in the same session
        with mh.RawPop3(proxy.port) as c:
            c.login(self.box.user, self.box.password)
            for kind, data in tagged.items():
                n = msgs[kind]["num"]
                for _ in range(2):
                    st, raw = c.cmd_multi("RETR %d" % n)
                    self.assertEqual(mh.unstuff(raw or b""), data, "second RETR %d (%s)" % (n, kind))
        self.assertEqual(proxy.quarantine(), [], "tag quarantined something")
        evs = self.first_verdicts(proxy, "pop3", self.box.user)
        for kind in self.TAGGED:
            e = evs[msgs[kind]["num"]]
            self.assertEqual((e["verdict"], e.get("action")), ("blocked_attachment", "tag"), e["_line"])
        out("pop3 tag: %s" % ", ".join("%s %d -> %d octets" % (k, msgs[k]["size"], len(v))
                                      for k, v in sorted(tagged.items())))

    def test_imap(self):
        prefix = b"[SUSPECT]"
        proxy = self.start_imap_proxy(policy={"on_blocked_attachment": "tag",
                                              "tag_prefix": '"%s"' % prefix.decode()})
        uids, direct = self.imap_direct(self.box)
        sect = ("(UID RFC822.SIZE BODY.PEEK[TEXT] BODY.PEEK[2] BODY.PEEK[HEADER] "
                "BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODYSTRUCTURE)")
        with self.imap_conn(self.imap_up, self.box) as d:
            dsect = self.uid_fetch(d, "1:*", sect)
        u_ns = uids["nosubj"]
        with self.imap_conn(proxy.port, self.box) as c:
            # a part of a message without a verdict yet: scanned first,
            # then the server's part
            first = self.uid_fetch(c, str(u_ns), "(UID BODY.PEEK[2])")[u_ns]
            self.assertEqual(first.get("BODY[2]"), dsect[u_ns]["BODY[2]"],
                             "BODY[2] of a tagged message (first fetch) is not the original part")
            whole = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
            again = self.uid_fetch(c, "1:*", sect)
        tagged = {}
        for kind, u in uids.items():
            with self.subTest(kind=kind, uid=u):
                body = whole[u]["BODY[]"]
                if kind not in self.TAGGED:
                    self.assertEqual(body, direct[u])
                    self.assertEqual(again[u], dsect[u])
                    continue
                self.check_tagged(body, direct[u], kind, prefix)
                tagged[u] = body
                a, ds = again[u], dsect[u]
                self.assertEqual(int(a["RFC822.SIZE"]), len(body),
                                 "RFC822.SIZE (second fetch) is not the tagged size")
                self.assertEqual(a["BODY[TEXT]"], ds["BODY[TEXT]"], "BODY[TEXT] is not the original's")
                self.assertEqual(a["BODY[2]"], ds["BODY[2]"], "BODY[2] is not the original's")
                self.assertEqual(a["BODYSTRUCTURE"], ds["BODYSTRUCTURE"], "BODYSTRUCTURE is not the server's")
                self.assertEqual(a["BODY[HEADER]"], body.partition(b"\r\n\r\n")[0] + b"\r\n\r\n",
                                 "BODY[HEADER] is not the tagged header")
                subj = (b"Subject: %s %s\r\n\r\n" % (prefix, mh.header_of(direct[u], "Subject").encode())
                        if kind == "exe" else b"Subject: %s\r\n\r\n" % prefix)
                self.assertEqual(a["BODY[HEADER.FIELDS (SUBJECT)]"], subj)
        # another session: the cached verdict, the same copy (RFC822 too)
        with self.imap_conn(proxy.port, self.box) as c:
            later = self.uid_fetch(c, "1:*", "(UID RFC822 RFC822.SIZE)")
        for u, body in tagged.items():
            self.assertEqual(later[u]["RFC822"], body, "UID %d in a later session" % u)
            self.assertEqual(int(later[u]["RFC822.SIZE"]), len(body))
        lines = self.verdict_lines(proxy, "imap")
        self.assertEqual(sorted(int(e["uid"]) for e in lines), sorted(uids.values()),
                         "one scan per message: %r" % [e["_line"] for e in lines])
        for e in lines:
            if int(e["uid"]) in tagged:
                self.assertEqual((e["verdict"], e.get("action")), ("blocked_attachment", "tag"), e["_line"])
        self.assertEqual(proxy.quarantine(), [], "tag quarantined something")
        out("imap tag: %s" % ", ".join("uid %d %d -> %d octets" % (u, len(direct[u]), len(b))
                                      for u, b in sorted(tagged.items())))


# ------------------------------------------------------------------ 3 ----

class UserRule(PolicyCase):
    """rules: [{match: {user: alice}, on_blocked_attachment: pass}]: the
    rule applies from alice's login on; bob keeps the global policy."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.boxes = {}
        for role in ("alice", "bob"):
            to = "%s@example.test" % role
            cls.boxes[role] = cls.make_box(role, [
                cls.item("exe", [named("setup.exe")], to=to, subject="New laptop setup", n=1),
                ("plain",) + (lambda d: (d, mh.header_of(d, "Message-ID")))(mh.msg_plain(to=to, n=2)),
            ])
        cls.rules = mh.rules_yaml([{"name": "alice-may-have-exe",
                                    "match": {"user": cls.boxes["alice"].user},
                                    "on_blocked_attachment": "pass"}])

    def check_policy_lines(self, proxy):
        lines = [e["_line"] for e in proxy.log_events() if "policy rules=" in e["_line"]]
        self.assertEqual(len(lines), 1, "policy log lines: %r" % lines)
        self.assertIn("rules=alice-may-have-exe", lines[0])

    def test_pop3(self):
        proxy = self.start_proxy(extra=self.rules)
        ids = self.pop3_run(proxy, self.boxes["bob"], ("plain",),
                            {"exe": ("blocked_attachment", ["setup.exe"])})
        self.pop3_run(proxy, self.boxes["alice"], ("exe", "plain"), {})
        evs = self.first_verdicts(proxy, "pop3", self.boxes["alice"].user)
        self.assertEqual(sorted((e["verdict"], e.get("action")) for e in evs.values()),
                         [("blocked_attachment", "pass"), ("clean", "deliver")])
        meta = {q[0]: q[3] for q in proxy.quarantine()}[ids["exe"]]
        self.assertEqual(meta["user"], self.boxes["bob"].user)
        self.check_policy_lines(proxy)

    def test_imap(self):
        proxy = self.start_imap_proxy(extra=self.rules)
        ids = self.imap_run(proxy, self.boxes["bob"], ("plain",),
                            {"exe": ("blocked_attachment", ["setup.exe"])})
        self.imap_run(proxy, self.boxes["alice"], ("exe", "plain"), {})
        evs = self.first_verdicts(proxy, "imap", self.boxes["alice"].user)
        self.assertEqual(sorted((e["verdict"], e.get("action")) for e in evs.values()),
                         [("blocked_attachment", "pass"), ("clean", "deliver")])
        meta = {q[0]: q[3] for q in proxy.quarantine()}[ids["exe"]]
        self.assertEqual(meta["user"], self.boxes["bob"].user)
        self.check_policy_lines(proxy)


    def test_pop3_login_forms(self):
        """The user's rule follows the login that succeeded: AUTH PLAIN as
        alice gets it; USER alice then USER bob, or a failed PASS for
        alice then bob's login, get bob's policy."""
        proxy = self.start_proxy(extra=self.rules)
        alice, bob = self.boxes["alice"], self.boxes["bob"]
        _, amsgs = self.pop3_direct(alice)
        _, bmsgs = self.pop3_direct(bob)
        with mh.RawPop3(proxy.port) as c:
            plain = base64.b64encode(b"\0%s\0%s" % (alice.user.encode(), alice.password.encode()))
            st = c.cmd("AUTH PLAIN " + plain.decode())
            self.assertTrue(st.startswith(b"+OK"), st)
            st, raw = c.cmd_multi("RETR %d" % amsgs["exe"]["num"])
            self.assertTrue(st.startswith(b"+OK"), st)
            self.assertIsNone(mh.header_of(mh.unstuff(raw), "X-Mailmoat-Quarantine-Id"),
                              "AUTH PLAIN as %s: the rule was not applied" % alice.user)
            self.assertTrue(mh.unstuff(raw).endswith(amsgs["exe"]["data"]))
        for how, cmds in (("USER alice, USER bob", [("USER " + alice.user, b"+OK"),
                                                    ("USER " + bob.user, b"+OK"),
                                                    ("PASS " + bob.password, b"+OK")]),
                          ("failed PASS for alice", [("USER " + alice.user, b"+OK"),
                                                     ("PASS wrong-" + alice.password, b"-ERR"),
                                                     ("USER " + bob.user, b"+OK"),
                                                     ("PASS " + bob.password, b"+OK")])):
            with mh.RawPop3(proxy.port) as c:
                for line, want in cmds:
                    st = c.cmd(line)
                    self.assertTrue(st.startswith(want), "%s: %s -> %r" % (how, line.split()[0], st))
                st, raw = c.cmd_multi("RETR %d" % bmsgs["exe"]["num"])
                self.assertTrue(st.startswith(b"+OK"), st)
                notice = mh.unstuff(raw)
                self.assertIsNotNone(mh.header_of(notice, "X-Mailmoat-Quarantine-Id"),
                                     "%s: bob's .exe was delivered under alice's rule:\n%r"
                                     % (how, notice[:300]))
                self.check_quarantined(proxy, notice, bmsgs["exe"]["data"], bmsgs["exe"]["size"],
                                       "blocked_attachment", ["setup.exe"])

    def test_imap_failed_login_then_bob(self):
        proxy = self.start_imap_proxy(extra=self.rules)
        alice, bob = self.boxes["alice"], self.boxes["bob"]
        uids, direct = self.imap_direct(bob)
        c = imaplib.IMAP4(mh.HOST, proxy.port, timeout=60)
        try:
            with self.assertRaises(imaplib.IMAP4.error):
                c.login(alice.user, "wrong-" + alice.password)
            c.login(bob.user, bob.password)
            c.select("INBOX", readonly=True)
            u = uids["exe"]
            body = self.uid_fetch(c, str(u), "(UID BODY.PEEK[])")[u]["BODY[]"]
        finally:
            c.logout()
        self.check_quarantined(proxy, body, direct[u], len(direct[u]), "blocked_attachment", ["setup.exe"])


# ------------------------------------------------------------------ 4 ----

class Senders(PolicyCase):
    """sender_deny quarantines by From address or domain (and its
    subdomains); sender_allow exempts from the attachment rules, never from
    the virus scan."""

    POLICY = {"sender_deny": ["@denied.example", "mallory@evil.example"],
              "sender_allow": ["@trusted.example"]}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        to = "snd@example.test"
        it = cls.item
        eicar = mh.mime_part(['Content-Type: application/octet-stream; name="tool.com"',
                              'Content-Disposition: attachment; filename="tool.com"'], mh.EICAR)
        cls.box = cls.make_box("snd", [
            it("denied", [], frm="Special Offers <offers@denied.example>", to=to, subject="Offer", n=1),
            it("denied_sub", [], frm="%s <News@Mail.Denied.Example>" % enc_word("ニュース"), to=to,
               subject="News", n=2),
            it("denied_addr", [], frm="mallory@evil.example", to=to, subject="Hello", n=3),
            it("near_miss", [], frm="someone@notdenied.example", to=to, subject="Not denied", n=4),
            it("same_domain", [], frm="alice@evil.example", to=to, subject="Not denied", n=5),
            it("allowed_exe", [named("setup.exe")], frm="The Boss <boss@trusted.example>", to=to,
               subject="The installer", n=6),
            it("allowed_eicar", [eicar], frm="The Boss <boss@trusted.example>", to=to,
               subject="Another tool", n=7),
            it("stranger_exe", [named("setup.exe")], frm="stranger@example.org", to=to,
               subject="The installer", n=8),
        ])

    def test_pop3(self):
        proxy = self.start_proxy(policy=self.POLICY)
        self.pop3_run(proxy, self.box, ("near_miss", "same_domain", "allowed_exe"), {
            "denied": ("denied_sender", ["offers@denied.example"]),
            "denied_sub": ("denied_sender", ["news@mail.denied.example"]),
            "denied_addr": ("denied_sender", ["mallory@evil.example"]),
            "allowed_eicar": ("infected", ["EICAR"]),
            "stranger_exe": ("blocked_attachment", ["setup.exe"]),
        })


class Strongest(PolicyCase):
    """Of all findings of a message the one with the strongest action wins:
    an EICAR file named tool.com is both malicious and a blocked
    attachment."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        eicar = mh.mime_part(['Content-Type: application/octet-stream; name="tool.com"',
                              'Content-Disposition: attachment; filename="tool.com"'], mh.EICAR)
        cls.box = cls.make_box("both", [
            cls.item("eicar_com", [eicar], frm="stranger@example.org", to="both@example.test",
                     subject="A tool", n=1)])

    def test_blocked_quarantine_beats_malicious_tag(self):
        proxy = self.start_proxy(on_malicious="tag", policy={"on_blocked_attachment": "quarantine"})
        self.pop3_run(proxy, self.box, (), {"eicar_com": ("blocked_attachment", ["tool.com"])})

    def test_malicious_quarantine_beats_blocked_tag(self):
        proxy = self.start_proxy(policy={"on_blocked_attachment": "tag"})
        self.pop3_run(proxy, self.box, (), {"eicar_com": ("infected", ["EICAR"])})

    def test_malicious_abort_beats_blocked_quarantine(self):
        proxy = self.start_proxy(on_malicious="abort")
        _, msgs = self.pop3_direct(self.box)
        with mh.RawPop3(proxy.port) as c:
            c.login(self.box.user, self.box.password)
            c.send(b"RETR %d\r\n" % msgs["eicar_com"]["num"])
            rest = c.read_all(timeout=30)
        self.assertFalse(rest.startswith(b"+OK"), rest[:200])
        self.assertNotIn(mh.EICAR, rest)
        self.assertEqual(proxy.quarantine(), [])


# ------------------------------------------------------------------ 5 ----

class Oversize(PolicyCase):
    """A rule's max_message_size: a larger message is not scanned, it is
    handled by on_oversize."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        to = "size@example.test"
        line = "A line of an ordinary, harmless and rather long message.\n"
        cls.box = cls.make_box("size", [
            ("big",) + (lambda d: (d, mh.header_of(d, "Message-ID")))(
                mh.msg_plain(to=to, n=1, subject="Fifty kilobytes", body=line * (50 * 1024 // len(line)))),
            ("small",) + (lambda d: (d, mh.header_of(d, "Message-ID")))(
                mh.msg_plain(to=to, n=2, subject="Two kilobytes", body=line * (2 * 1024 // len(line)))),
        ])
        cls.rules = mh.rules_yaml([{"name": "small-mailbox", "match": {"user": cls.box.user},
                                    "max_message_size": "10K", "on_oversize": "quarantine"}])

    def test_pop3(self):
        proxy = self.start_proxy(extra=self.rules)
        _, msgs = self.pop3_direct(self.box)
        self.assertGreater(msgs["big"]["size"], 50 * 1000)
        self.assertLess(msgs["small"]["size"], 10 * 1024)
        self.pop3_run(proxy, self.box, ("small",),
                      {"big": ("oversize", ["max_message_size 10240"])})


class RuleScannerLimits(PolicyCase):
    """A rule's scanner limits stricter than the global ones apply to that
    rule's sessions only: a part over its max_filesize makes the scan an
    error (quarantined by default), for everyone else the message passes."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        line = "A line of an ordinary, harmless and rather long message.\n"
        cls.boxes = {}
        for who in ("strict", "normal"):
            to = "%s@example.test" % who
            cls.boxes[who] = cls.make_box(who, [
                ("big",) + (lambda d: (d, mh.header_of(d, "Message-ID")))(
                    mh.msg_plain(to=to, n=1, subject="Twenty kilobytes",
                                 body=line * (20 * 1024 // len(line)))),
                ("small",) + (lambda d: (d, mh.header_of(d, "Message-ID")))(
                    mh.msg_plain(to=to, n=2, subject="Short", body="Hello.\n")),
            ])
        cls.rules = mh.rules_yaml([{"name": "tight-scanner",
                                    "match": {"user": cls.boxes["strict"].user},
                                    "scanner": {"max_filesize": "4K"}}])

    def test_pop3(self):
        proxy = self.start_proxy(extra=self.rules)
        self.pop3_run(proxy, self.boxes["strict"], ("small",),
                      {"big": ("error", ["MaxFileSize (rule)"])})
        # the same content for a user without the rule: scanned whole, clean
        # (a limit never leaves the content marked clean in libclamav's cache)
        self.pop3_run(proxy, self.boxes["normal"], ("small", "big"), {})


# ------------------------------------------------------------------ 6 ----

class EncryptedArchive(PolicyCase):
    """A zip made with `zip -P secret` cannot be looked into: quarantined as
    encrypted_archive by default, delivered as it is under pass."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        enc = mh.zip_encrypted("secret")
        if enc is None:
            raise unittest.SkipTest("zip is not installed")
        to = "enc@example.test"
        cls.box = cls.make_box("enc", [
            cls.item("enczip", [named("notes.zip", "application/zip", enc)], to=to,
                     subject="Notes (password by phone)", n=1),
            cls.item("zip", [named("figures.zip", "application/zip", plain_zip())], to=to,
                     subject="Figures", n=2),
            ("plain",) + (lambda d: (d, mh.header_of(d, "Message-ID")))(mh.msg_plain(to=to, n=3)),
        ])

    def test_default_quarantines(self):
        proxy = self.start_proxy()
        ids = self.pop3_run(proxy, self.box, ("zip", "plain"),
                            {"enczip": ("encrypted_archive", ["Encrypted"])})
        out("encrypted archive quarantined as %s" % ids["enczip"])

    def test_pass_delivers_unchanged(self):
        proxy = self.start_proxy(policy={"on_encrypted_archive": "pass"})
        self.pop3_run(proxy, self.box, ("enczip", "zip", "plain"), {})
        evs = [e for e in self.verdict_lines(proxy, "pop3") if e["verdict"] != "clean"]
        self.assertEqual([(e["verdict"], e.get("action")) for e in evs], [("encrypted_archive", "pass")],
                         [e["_line"] for e in evs])

    def test_pass_imap(self):
        proxy = self.start_imap_proxy(policy={"on_encrypted_archive": "pass"})
        self.imap_run(proxy, self.box, ("enczip", "zip", "plain"), {})
        evs = [e for e in self.verdict_lines(proxy, "imap") if e["verdict"] != "clean"]
        self.assertEqual([(e["verdict"], e.get("action")) for e in evs], [("encrypted_archive", "pass")],
                         [e["_line"] for e in evs])


# ------------------------------------------------------------------ 7 ----

class CheckConfigUser(PolicyCase):
    """`mailmoat --check-config FILE --user USER` prints the effective
    policy of USER on every listener and the rules that made it."""

    def write_config(self, rules, name):
        d = os.path.join(self._tmp, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "mailmoat.yaml")
        text = mh.mailmoat_config_yaml([("pop3", 11110, 110)], os.path.join(d, "quarantine"),
                                       extra=mh.rules_yaml(rules))
        with open(path, "w") as f:
            f.write(text)
        lines = {}
        for i, l in enumerate(text.split("\n"), 1):
            m = re.match(r"  - name: (\S+)$", l)
            if m:
                lines[m.group(1)] = i
        return path, lines

    def check_config(self, path, user):
        r = subprocess.run([mh.mailmoat_bin(), "--check-config", path, "--user", user],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        text = r.stdout.decode("utf-8", "replace")
        self.assertEqual(r.returncode, 0, "--check-config --user %s: %s\n%s"
                         % (user, text, r.stderr.decode("utf-8", "replace")))
        self.assertIn("configuration OK", text)
        return text

    @staticmethod
    def setting(text, key):
        vals = re.findall(r"(?m)^  %s: (\S+)$" % re.escape(key), text)
        return vals

    def test_user_rule(self):
        path, lines = self.write_config([{"name": "alice-may-have-exe", "match": {"user": "alice"},
                                          "on_blocked_attachment": "pass"}], "simple")
        alice = self.check_config(path, "alice")
        self.assertIn("# rule applied: alice-may-have-exe (line %d, rank 8)" % lines["alice-may-have-exe"],
                      alice)
        self.assertEqual(self.setting(alice, "on_blocked_attachment"), ["pass"], alice)
        self.assertEqual(self.setting(alice, "on_malicious"), ["quarantine"], alice)
        bob = self.check_config(path, "bob")
        self.assertNotIn("# rule applied:", bob)
        self.assertEqual(self.setting(bob, "on_blocked_attachment"), ["quarantine"], bob)
        # the login compares without case
        self.assertEqual(self.setting(self.check_config(path, "ALICE"), "on_blocked_attachment"), ["pass"])

    def test_most_specific_wins(self):
        """user > domain > upstream > listener; equal ranks: the later one."""
        rules = [
            {"name": "alice-first", "match": {"user": "alice@corp.test"},
             "on_blocked_attachment": "quarantine", "on_denied_sender": "tag"},
            {"name": "by-listener", "match": {"listener": "127.0.0.1:11110"},
             "on_blocked_attachment": "abort", "on_oversize": "tag", "on_denied_sender": "abort"},
            {"name": "by-domain", "match": {"domain": "corp.test"},
             "on_blocked_attachment": "tag", "on_denied_sender": "pass", "on_encrypted_archive": "abort"},
            {"name": "by-upstream", "match": {"upstream": "127.0.0.1:110"},
             "on_encrypted_archive": "tag", "on_oversize": "pass", "tag_prefix": "[up]"},
            {"name": "alice-second", "match": {"user": "alice@corp.test"},
             "on_blocked_attachment": "pass"},
        ]
        path, lines = self.write_config(rules, "ranks")
        alice = self.check_config(path, "alice@corp.test")
        applied = re.findall(r"(?m)^# rule applied: (\S+) \(line (\d+), rank (\d+)\)$", alice)
        self.assertEqual(applied, [("by-listener", str(lines["by-listener"]), "1"),
                                   ("by-upstream", str(lines["by-upstream"]), "2"),
                                   ("by-domain", str(lines["by-domain"]), "4"),
                                   ("alice-first", str(lines["alice-first"]), "8"),
                                   ("alice-second", str(lines["alice-second"]), "8")], alice)
        want = {"on_blocked_attachment": "pass",      # alice-second: later of equal rank
                "on_denied_sender": "tag",            # alice-first over by-domain
                "on_encrypted_archive": "abort",      # by-domain over by-upstream
                "on_oversize": "pass",                # by-upstream over by-listener
                "on_malicious": "quarantine"}         # policy:
        for k, v in want.items():
            self.assertEqual(self.setting(alice, k), [v], "%s for alice:\n%s" % (k, alice))
        self.assertEqual(self.setting(alice, "tag_prefix"), ['"[up]"'])
        bob = self.check_config(path, "bob@corp.test")
        for k, v in {"on_blocked_attachment": "tag", "on_denied_sender": "pass",
                     "on_oversize": "pass"}.items():
            self.assertEqual(self.setting(bob, k), [v], "%s for bob:\n%s" % (k, bob))
        carol = self.check_config(path, "carol@other.test")
        self.assertEqual(self.setting(carol, "on_blocked_attachment"), ["abort"], carol)
        self.assertEqual(self.setting(carol, "on_denied_sender"), ["abort"], carol)


if __name__ == "__main__":
    unittest.main()
