"""APPEND scanning: an upload is scanned before it reaches the server; a
malicious one gets NO with a clear text, is quarantined, and the mailbox is
untouched (RFC 3501 section 6.3.11, MULTIAPPEND RFC 3502, LITERAL+ RFC 7888)."""
import imaplib
import os
import unittest

from itbase import ImapCase, mh

USER = "grace"
CLEAN = (b"From: Grace <grace@example.test>\r\nTo: grace@example.test\r\n"
         b"Subject: draft report\r\nMessage-ID: <append-clean@example.test>\r\n\r\n"
         b"The quarterly report, second draft.\r\n")
BAD = (b"From: Grace <grace@example.test>\r\nTo: grace@example.test\r\n"
       b"Subject: saved attachment\r\nMessage-ID: <append-bad@example.test>\r\n\r\n"
       + mh.EICAR + b"\r\n")


class Append(ImapCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_imap_proxy("append-proxy")

    def scratch(self):
        """A new empty mailbox of the user's, made directly at Dovecot."""
        name = "Append-%s" % self._testMethodName
        d = self.imap(self.imap_up, USER, select=None)
        d.create(name)
        d.logout()
        return name

    def direct_bodies(self, box):
        d = self.imap(self.imap_up, USER, select=box)
        typ, data = d.uid("SEARCH", None, "ALL")
        uids = data[0].split()
        out = []
        for u in uids:
            typ, r = d.uid("FETCH", u, "(BODY.PEEK[])")
            out.append(r[0][1])
        d.logout()
        return out

    def test_clean_upload_lands(self):
        box = self.scratch()
        c = self.imap(self.proxy.port, USER, select=None)
        typ, data = c.append(box, None, None, CLEAN)
        c.logout()
        self.assertEqual(typ, "OK", data)
        self.assertEqual(self.direct_bodies(box), [CLEAN])

    def test_malicious_upload_refused_and_quarantined(self):
        box = self.scratch()
        before = {q[0] for q in self.proxy.quarantine()}
        c = self.imap(self.proxy.port, USER, select=None)
        typ, data = c.append(box, None, None, BAD)
        # the session goes on after the NO
        self.assertEqual(c.noop()[0], "OK")
        c.logout()
        self.assertEqual(typ, "NO", data)
        text = data[0].decode()
        self.assertIn("refused", text)
        self.assertIn("Mailmoat.Test.EICAR", text)
        self.assertEqual(self.direct_bodies(box), [], "the malicious upload reached the server")
        new = [q for q in self.proxy.quarantine() if q[0] not in before]
        self.assertEqual(len(new), 1)
        with open(new[0][1], "rb") as f:
            self.assertEqual(f.read(), BAD)
        self.assertIn(new[0][0], text, "the NO names the quarantine id")

    def test_multiappend_nonsync_all_or_nothing(self):
        box = self.scratch()
        with self.raw(self.proxy.port, USER) as c:
            # one command, two messages, LITERAL+ (no "+" round trips)
            line = (b'APPEND "%s" (\\Seen) {%d+}\r\n%s (\\Flagged) {%d+}\r\n%s'
                    % (box.encode(), len(CLEAN), CLEAN, len(BAD), BAD))
            st, _ = c.command(line)
            self.assertEqual(mh.imap_status(st), "NO", st)
            self.assertEqual(self.direct_bodies(box), [], "a MULTIAPPEND with a virus must add nothing")
            clean2 = CLEAN.replace(b"second draft", b"third draft")
            line = (b'APPEND "%s" {%d+}\r\n%s {%d+}\r\n%s'
                    % (box.encode(), len(CLEAN), CLEAN, len(clean2), clean2))
            st, _ = c.command(line)
            self.assertEqual(mh.imap_status(st), "OK", st)
            st, _ = c.command("LOGOUT")
        self.assertEqual(self.direct_bodies(box), [CLEAN, clean2])

    def test_synchronizing_literal_continuations(self):
        """With {n} the client waits for "+" before each message: the proxy
        answers it, and asks the server itself when forwarding."""
        box = self.scratch()
        with self.raw(self.proxy.port, USER) as c:
            tag = c.next_tag()
            c.send(b'%s APPEND "%s" {%d}\r\n' % (tag.encode(), box.encode(), len(CLEAN)))
            cont = c.read_response()
            self.assertTrue(cont[0].startswith(b"+"), cont)
            c.send(CLEAN + b"\r\n")
            st, unt = c.read_until_tagged(tag)
            self.assertEqual(mh.imap_status(st), "OK", st)
            self.assertFalse([u for u in unt if u[0].startswith(b"+")],
                             "the server's own continuation leaked to the client")
            c.command("LOGOUT")
        self.assertEqual(self.direct_bodies(box), [CLEAN])


if __name__ == "__main__":
    unittest.main()
