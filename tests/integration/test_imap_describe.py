"""One substitute, everywhere: once a message is known to be quarantined,
RFC822.SIZE, BINARY.SIZE and BODY / BODYSTRUCTURE describe the notice it is
served as, in every session; clean messages are described as Dovecot
describes them."""
import unittest

from itbase import ImapCase

USER = "grace"


class Describe(ImapCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_imap_proxy("describe-proxy")

    def fetch_line(self, conn, uid, items):
        typ, d = conn.uid("FETCH", str(uid), items)
        self.assertEqual(typ, "OK", d)
        return d[0] if isinstance(d[0], bytes) else d[0][0]

    def test_quarantined_message_described_as_its_notice(self):
        msgs = self.st["users"][USER]["messages"]
        bad = [m for m in msgs if m["infected"]][0]["num"]
        clean = [m for m in msgs if not m["infected"]][0]["num"]
        c = self.imap(self.proxy.port, USER)
        notice = c.uid("FETCH", str(bad), "(BODY.PEEK[])")[1][0][1]
        c.logout()
        # another session, after the verdict: the notice's facts
        c = self.imap(self.proxy.port, USER)
        line = self.fetch_line(c, bad, "(UID RFC822.SIZE BINARY.SIZE[] BODYSTRUCTURE BODY)")
        self.assertIn(b"RFC822.SIZE %d " % len(notice), line)
        self.assertIn(b"BINARY.SIZE[] %d" % len(notice), line)
        text = notice.split(b"\r\n\r\n", 1)[1]
        self.assertIn(b'BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL '
                      b'"QUOTED-PRINTABLE" %d ' % len(text), line)
        self.assertIn(b'BODY ("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL '
                      b'"QUOTED-PRINTABLE" %d ' % len(text), line)
        got_clean = self.fetch_line(c, clean, "(UID RFC822.SIZE BODYSTRUCTURE)")
        c.logout()
        d = self.imap(self.imap_up, USER)
        want_clean = self.fetch_line(d, clean, "(UID RFC822.SIZE BODYSTRUCTURE)")
        d.logout()
        self.assertEqual(got_clean, want_clean)


if __name__ == "__main__":
    unittest.main()
