"""Real IMAP clients through mailmoat, each compared with the same client
straight to Dovecot: curl (imap://.../INBOX;UID=n), fetchmail in IMAP mode
(keep) and mbsync (isync) pulling the whole INBOX into a local Maildir.

grace's INBOX has malicious messages in the middle and near the end:
clean messages must arrive byte for byte, infected ones as the notice."""

import os
import re
import shutil
import subprocess
import unittest

from itbase import NOTICE_MARK, ImapCase, mh, out

USER = "grace"
CURL = shutil.which("curl")
FETCHMAIL = shutil.which("fetchmail")
MBSYNC = shutil.which("mbsync")


def lf(data):
    return data.replace(b"\r\n", b"\n")


def strip_tuid(data):
    """mbsync adds an X-TUID header to every message it stores (a random
    value per run): remove it."""
    return re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", data, count=1)


def strip_fetchmail_received(data):
    lines = data.split(b"\n")
    assert lines[0].startswith(b"Received: "), lines[0]
    i = 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\n".join(lines[i:])


class ClientCase(ImapCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_imap_proxy()

    def notices(self):
        """{uid: notice} as a whole fetch through the proxy serves them."""
        with self.imap(self.proxy.port, USER) as c:
            got = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
        return {m["uid"]: got[m["uid"]]["BODY[]"] for m in self.imap_messages(USER) if m["infected"]}


@unittest.skipUnless(CURL, "curl not installed")
class Curl(ClientCase):

    def curl(self, port, uid):
        pw = self.st["users"][USER]["password"]
        r = subprocess.run([CURL, "-s", "-S", "--max-time", "60",
                            "imap://%s:%s@%s:%d/INBOX;UID=%d" % (USER, pw, mh.HOST, port, uid)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(r.returncode, 0, "curl UID=%d: %s" % (uid, r.stderr.decode(errors="replace")))
        return r.stdout

    def test_clean_and_infected(self):
        msgs = self.imap_messages(USER)
        direct = self.direct_whole(USER)
        notices = None
        for kind in ("multipart", "mib_clean", "eicar", "mib_eicar", "clamzip"):
            m = [x for x in msgs if x["kind"] == kind][0]
            got = self.curl(self.proxy.port, m["uid"])
            want = self.curl(self.imap_up, m["uid"])
            self.assertEqual(want, direct[m["uid"]], "curl's output is not the message")
            if m["infected"]:
                self.assertImapNotice(got, direct[m["uid"]], self.proxy)
                self.assertEqual(mh.header_of(got, "Message-ID"), m["message_id"])
                notices = notices or self.notices()
                self.assertEqual(got, notices[m["uid"]], "curl got another notice")
            else:
                self.assertEqual(got, want, "curl UID=%d (%s) differs" % (m["uid"], kind))


@unittest.skipUnless(FETCHMAIL, "fetchmail not installed")
class Fetchmail(ClientCase):

    def run_fetchmail(self, port, tag):
        r = mh.run_fetchmail(os.path.join(self._tmp, "fetchmail-" + tag), port, USER,
                             self.st["users"][USER]["password"], verbose=True, protocol="imap")
        rc, text, raw = r
        self.assertEqual(rc, 0, "fetchmail exited %d:\n%s" % (rc, text[-3000:]))
        return [strip_fetchmail_received(m) for m in raw], text

    def test_imap_download_with_notices(self):
        msgs = self.imap_messages(USER)
        direct, _ = self.run_fetchmail(self.imap_up, "direct")
        got, log = self.run_fetchmail(self.proxy.port, "proxy")
        self.assertEqual(len(direct), len(msgs))
        self.assertEqual(len(got), len(msgs), log[-3000:])
        notices = self.notices()
        for m, g, d in zip(msgs, got, direct):
            with self.subTest(uid=m["uid"], kind=m["kind"]):
                self.assertNotIn(mh.EICAR, g)
                if not m["infected"]:
                    self.assertEqual(g, d, "message %d (%s) differs" % (m["uid"], m["kind"]))
                    continue
                self.assertEqual(mh.header_of(g, "Message-ID"), m["message_id"])
                self.assertEqual(mh.header_of(g, "From"), m["from"])
                self.assertIn(NOTICE_MARK, mh.header_of(g, "Subject") or "",
                              "fetchmail (RFC822.HEADER + BODY.PEEK[TEXT]) delivered UID %d without "
                              "the notice: %d octets, Subject %r" % (m["uid"], len(g), mh.header_of(g, "Subject")))
                self.assertEqual(g, lf(notices[m["uid"]]), "UID %d: not the notice" % m["uid"])
        out("fetchmail imap: %d messages through mailmoat" % len(got))


@unittest.skipUnless(MBSYNC, "mbsync (isync) not installed")
class Mbsync(ClientCase):

    def sync(self, port, tag, user=USER):
        r = mh.run_mbsync(os.path.join(self._tmp, "mbsync-" + tag), port, user,
                          self.st["users"][user]["password"], verbose=True)
        rc, text, msgs, took = r
        self.assertEqual(rc, 0, "mbsync exited %d:\n%s" % (rc, text[-3000:]))
        return {u: strip_tuid(b) for u, b in msgs.items()}, took

    def test_full_sync_with_notices(self):
        msgs = self.imap_messages(USER)
        direct_bytes = self.direct_whole(USER)
        direct, t_direct = self.sync(self.imap_up, "direct")
        got, t_proxy = self.sync(self.proxy.port, "proxy")
        self.assertEqual(sorted(direct), [m["uid"] for m in msgs])
        self.assertEqual(sorted(got), sorted(direct), "mbsync through the proxy missed messages")
        notices = self.notices()
        for m in msgs:
            u = m["uid"]
            self.assertEqual(direct[u], lf(direct_bytes[u]), "direct sync of UID %d is not the message" % u)
            if m["infected"]:
                self.assertEqual(got[u], lf(notices[u]), "UID %d: mbsync stored something else than "
                                 "the notice" % u)
                self.assertIn(NOTICE_MARK, mh.header_of(got[u], "Subject"))
                self.assertNotIn(mh.EICAR, got[u])
            else:
                self.assertEqual(got[u], direct[u], "clean UID %d (%s) differs" % (u, m["kind"]))
        out("mbsync %s INBOX (%d messages, %d infected, %.1f MiB): direct %.2f s, through mailmoat %.2f s"
            % (USER, len(msgs), len(notices), sum(map(len, direct_bytes.values())) / 1048576.0,
               t_direct, t_proxy))


if __name__ == "__main__":
    unittest.main()
