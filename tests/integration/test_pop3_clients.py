"""Real POP3 clients through the proxy: curl (pop3:// listing and
retrieval) and fetchmail (downloading a whole mailbox with an MDA, keep)."""

import os
import shutil
import subprocess
import sys
import unittest

from itbase import ProxyCase, mh, out, NOTICE_MARK

CURL = shutil.which("curl")
FETCHMAIL = shutil.which("fetchmail")


def strip_fetchmail_received(data):
    """Removes the Received header fetchmail puts in front (with its
    continuation lines)."""
    lines = data.split(b"\n")
    assert lines[0].startswith(b"Received: "), lines[0]
    i = 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\n".join(lines[i:])


class Curl(ProxyCase):

    @classmethod
    def setUpClass(cls):
        if not CURL:
            raise unittest.SkipTest("curl not installed")
        super().setUpClass()
        cls.proxy = cls.class_proxy()

    def curl(self, port, name, path=""):
        u, pw = self.user(name)
        r = subprocess.run([CURL, "-s", "-S", "--max-time", "60", "-u", "%s:%s" % (u, pw),
                            "pop3://%s:%d/%s" % (mh.HOST, port, path)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(r.returncode, 0, "curl failed: %s" % r.stderr.decode(errors="replace"))
        return r.stdout

    def test_list_and_retrieve(self):
        for name in ("alice", "bob"):
            self.assertEqual(self.curl(self.proxy.port, name), self.curl(self.up, name),
                             "curl listing differs for %s" % name)
            for m in self.messages(name):
                got = self.curl(self.proxy.port, name, str(m["num"]))
                want = self.curl(self.up, name, str(m["num"]))
                if m["infected"]:
                    self.assertIn(NOTICE_MARK, mh.header_of(got, "Subject"))
                    self.assertEqual(mh.header_of(got, "Message-ID"), m["message_id"])
                    self.assertNotIn(mh.EICAR, got)
                else:
                    self.assertEqual(got, want, "curl %s/%d (%s) differs" % (name, m["num"], m["kind"]))


class Fetchmail(ProxyCase):

    @classmethod
    def setUpClass(cls):
        if not FETCHMAIL:
            raise unittest.SkipTest("fetchmail not installed")
        super().setUpClass()
        cls.proxy = cls.class_proxy()

    def run_fetchmail(self, port, name, tag):
        u, pw = self.user(name)
        rc, text, raw = mh.run_fetchmail(os.path.join(self._tmp, "fetchmail-" + tag), port,
                                         u, pw, verbose=True)
        self.assertEqual(rc, 0, "fetchmail exited %d:\n%s" % (rc, text[-3000:]))
        return [strip_fetchmail_received(m) for m in raw], text

    def test_download_everything_with_notices(self):
        direct, _ = self.run_fetchmail(self.up, "bob", "direct")
        got, log = self.run_fetchmail(self.proxy.port, "bob", "proxy")
        self.assertEqual(len(got), len(self.messages("bob")), log[-3000:])
        self.assertEqual(len(direct), len(got))
        for m, g, d in zip(self.messages("bob"), got, direct):
            if m["infected"]:
                self.assertIn(NOTICE_MARK, mh.header_of(g, "Subject"))
                self.assertEqual(mh.header_of(g, "Message-ID"), m["message_id"])
                self.assertEqual(mh.header_of(g, "From"), m["from"])
                self.assertNotIn(mh.EICAR, g)
            else:
                self.assertEqual(g, d, "message %d (%s) differs" % (m["num"], m["kind"]))
                self.assertEqual(g, self.maildir_bytes(m),
                                 "message %d differs from the maildir file" % m["num"])
        # fetchmail trusts LIST sizes: no size complaints for padded notices.
        self.assertNotIn("size mismatch", log.lower())
        out("fetchmail: %d messages through mailmoat, %d notices"
            % (len(got), len(self.infected_nums("bob"))))

    def test_download_clean_mailbox(self):
        direct, _ = self.run_fetchmail(self.up, "alice", "alice-direct")
        got, log = self.run_fetchmail(self.proxy.port, "alice", "alice")
        self.assertEqual(len(got), len(self.messages("alice")), log[-3000:])
        for m, g, d in zip(self.messages("alice"), got, direct):
            self.assertEqual(g, d, "message %d (%s) differs" % (m["num"], m["kind"]))

if __name__ == "__main__":
    unittest.main()
