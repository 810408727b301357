"""A 50 MiB message over IMAP: mbsync pulls carol's INBOX (the 50 MiB
message and a small one) through mailmoat byte for byte with a bounded
peak RSS; a client waiting on its scan hears the keepalive."""

import hashlib
import os
import re
import shutil
import time
import unittest

from itbase import CHUNK_TB, ImapCase, mh, out

RSS_LIMIT_KIB = int(os.environ.get("MAILMOAT_IT_IMAP_RSS_LIMIT_KIB", str(96 * 1024)))
USER = "carol"


def strip_tuid(data):
    return re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", data, count=1)


class BigImap(ImapCase):

    @unittest.skipUnless(shutil.which("mbsync"), "mbsync (isync) not installed")
    def test_50mib_mbsync_bounded_rss(self):
        proxy = self.start_imap_proxy(memory_limit="4M")
        msgs = self.messages(USER)
        self.assertEqual(msgs[0]["kind"], "big")
        pw = self.st["users"][USER]["password"]
        runs = {}
        for tag, port in (("direct", self.imap_up), ("proxy", proxy.port)):
            rc, text, got, took = mh.run_mbsync(os.path.join(self._tmp, "mbsync-big-" + tag), port,
                                                USER, pw, timeout=300)
            self.assertEqual(rc, 0, "mbsync %s exited %d:\n%s" % (tag, rc, text[-3000:]))
            runs[tag] = ({u: hashlib.sha256(strip_tuid(b)).hexdigest() for u, b in got.items()},
                         {u: len(b) for u, b in got.items()}, took)
            del got
        rss, hwm = proxy.read_rss()
        self.assertEqual(sorted(runs["proxy"][0]), [1, 2])
        self.assertEqual(runs["proxy"][0], runs["direct"][0], "the 50 MiB sync differs through the proxy")
        # The direct sync is the maildir file (mbsync stores LF line ends).
        with open(self.maildir_path(msgs[0]), "rb") as f:
            h = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        self.assertEqual(runs["direct"][0][1], h.hexdigest(), "mbsync did not store the message as is")
        ev = [e for e in self.imap_verdicts(proxy, USER) if e["uid"] == "1"]
        self.assertEqual(len(ev), 1, [e["_line"] for e in ev])
        self.assertEqual(ev[0]["verdict"], "clean", ev[0]["_line"])
        out("imap 50 MiB: mbsync of %d octets byte-identical; direct %.2f s, through mailmoat %.2f s "
            "(scan_ms=%s); mailmoat VmHWM %d KiB (%.1f MiB), VmRSS after %d KiB%s"
            % (runs["proxy"][1][1], runs["direct"][2], runs["proxy"][2], ev[0].get("scan_ms"),
               hwm, hwm / 1024.0, rss, " [sanitizer build: limit not applied]" if self.sanitized else ""))
        if not self.sanitized:
            self.assertLess(hwm, RSS_LIMIT_KIB, "peak RSS %d KiB over %d KiB" % (hwm, RSS_LIMIT_KIB))
        self.assertEqual(os.listdir(proxy.spool_dir), [], "temp files left in the spool directory")

    def maildir_path(self, m):
        base = os.path.basename(m["file"]).split(":")[0]
        md = os.path.dirname(os.path.dirname(m["file"]))
        for sub in ("cur", "new"):
            for fn in os.listdir(os.path.join(md, sub)):
                if fn.split(":")[0] == base:
                    return os.path.join(md, sub, fn)
        raise FileNotFoundError(m["file"])

    def test_keepalive_while_the_prescan_runs(self):
        """A 64 KiB chunk of the unscanned 50 MiB message: the proxy
        pre-scans it whole; a scan that takes longer than the keepalive
        (1 s here) sends "* OK mailmoat: scanning" meanwhile."""
        proxy = self.start_imap_proxy(memory_limit="4M", timeouts={"keepalive": 1})
        with self.raw(self.imap_up, USER, select="INBOX") as d:
            st, unt = d.command("UID FETCH 1 (UID BODY.PEEK[]<0.%d>)" % CHUNK_TB)
            want = mh.parse_fetch(unt[-1])[1]["BODY[]<0>"]
        with self.raw(proxy.port, USER, select="INBOX") as c:
            t0 = time.monotonic()
            st, unt = c.command("UID FETCH 1 (UID RFC822.SIZE BODY.PEEK[]<0.%d>)" % CHUNK_TB)
            took = time.monotonic() - t0
            self.assertEqual(mh.imap_status(st), "OK", st)
            keepalives = [r[0] for r in unt if b"mailmoat: scanning" in r[0]]
            fetches = [mh.parse_fetch(r) for r in unt if mh.parse_fetch(r)]
            self.assertEqual(len(fetches), 1, [r[0][:100] for r in unt])
            self.assertEqual(fetches[0][1]["BODY[]<0>"], want)
            for k in keepalives:
                self.assertTrue(k.startswith(b"* OK "), k)
            st, _ = c.command("NOOP")
            self.assertEqual(mh.imap_status(st), "OK", st)
        ev = [e for e in self.imap_verdicts(proxy, USER) if e["uid"] == "1"]
        self.assertEqual(len(ev), 1, [e["_line"] for e in ev])
        scan_ms = int(ev[0].get("scan_ms", "0"))
        out("imap keepalive: the chunk took %.2f s (scan_ms=%d), %d keepalive line(s)"
            % (took, scan_ms, len(keepalives)))
        if scan_ms > 2500:
            self.assertGreaterEqual(len(keepalives), 1, "the client waited %.1f s (scan %d ms) without "
                                    "a keepalive" % (took, scan_ms))


if __name__ == "__main__":
    unittest.main()
