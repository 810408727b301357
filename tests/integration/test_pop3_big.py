"""A 50 MiB message passes byte for byte with bounded memory: the peak RSS
(VmHWM) of mailmoat stays under 64 MiB (spool.memory_limit 4M; the rest
is spilled to a temp file and scanned part by part)."""

import hashlib
import os
import time
import unittest

from itbase import ProxyCase, mh, out

RSS_LIMIT_KIB = int(os.environ.get("MAILMOAT_IT_RSS_LIMIT_KIB", str(64 * 1024)))


def retr_digest(port, user, pw, n):
    """RETR n over a raw socket; returns (status, sha256 of the raw body,
    its length, seconds)."""
    with mh.RawPop3(port) as c:
        c.login(user, pw)
        t0 = time.monotonic()
        st, body = c.cmd_multi("RETR %d" % n)
        took = time.monotonic() - t0
        c.cmd("QUIT")
    return st, hashlib.sha256(body).hexdigest() if body else None, len(body or b""), took


class BigMessage(ProxyCase):

    def test_50mib_byte_identical_bounded_rss(self):
        proxy = self.start_proxy(memory_limit="4M")
        u, pw = self.user("carol")
        big = self.messages("carol")[0]
        self.assertEqual(big["kind"], "big")
        want = retr_digest(self.up, u, pw, 1)
        got = retr_digest(proxy.port, u, pw, 1)
        self.assertEqual(got[0], want[0])
        self.assertEqual(got[2], want[2], "length differs")
        self.assertEqual(got[1], want[1], "50 MiB message altered")
        rss, hwm = proxy.read_rss()
        ev = [e for e in proxy.log_events() if e.get("user") == u and e.get("msg") == "1"]
        self.assertTrue(ev and ev[0].get("verdict") == "clean", [e["_line"] for e in ev])
        out("big message: %d octets byte-identical; direct %.2f s, through mailmoat %.2f s "
            "(scan_ms=%s); mailmoat VmHWM %d KiB (%.1f MiB), VmRSS after %d KiB%s"
            % (want[2], want[3], got[3], ev[0].get("scan_ms"), hwm, hwm / 1024, rss,
               " [sanitizer build: limit not applied]" if self.sanitized else ""))
        if not self.sanitized:
            self.assertLess(hwm, RSS_LIMIT_KIB, "peak RSS %d KiB over %d KiB" % (hwm, RSS_LIMIT_KIB))
        # The spool directory holds no leftover temp files.
        self.assertEqual(os.listdir(proxy.spool_dir), [])

    def test_big_between_small_pipelined(self):
        """Order is kept when a 50 MiB answer sits between small ones."""
        proxy = self.start_proxy()
        u, pw = self.user("carol")
        with mh.RawPop3(self.up) as d:
            d.login(u, pw)
            small = d.cmd_multi("RETR 2")
        with mh.RawPop3(proxy.port) as c:
            c.login(u, pw)
            res = mh.pipeline(c, ["RETR 2", "RETR 1", "LIST 1", "RETR 2", "QUIT"])
        self.assertEqual(len(res), 5)
        self.assertEqual(res[0], small)
        self.assertTrue(res[1][0].startswith(b"+OK"))
        self.assertGreater(len(res[1][1]), self.messages("carol")[0]["size_lf"])
        self.assertTrue(res[2][0].startswith(b"+OK 1 "))
        self.assertEqual(res[3], small)


if __name__ == "__main__":
    unittest.main()
