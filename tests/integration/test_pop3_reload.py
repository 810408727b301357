"""SIGHUP reloads the signature databases without a restart or a pause: a
message the old signatures miss is caught once the new ones are in, and
the proxy keeps serving meanwhile."""
import os
import shutil
import signal
import time
import unittest

from itbase import ProxyCase, mh, NOTICE_MARK

USER = "bob"


class Reload(ProxyCase):

    def test_sighup_loads_new_signatures(self):
        msgs = self.messages(USER)
        zipped = [m for m in msgs if m["kind"].startswith("clamzip")]
        if not zipped:
            self.skipTest("no clam.zip message in the fixture")
        n = zipped[0]["num"]
        db = os.path.join(self._tmp, "reload-db")
        os.makedirs(db)
        # first only the EICAR body signature: ClamAV's test file is unknown
        shutil.copy(os.path.join(mh.testsigs_dir(), "mailmoat-test.ndb"), db)
        proxy = self.start_proxy(database=db)
        first = self.retr_one(proxy.port, n)
        self.assertNotIn(NOTICE_MARK.encode(), first.split(b"\r\n\r\n")[0],
                         "caught without the hash signatures?")
        shutil.copy(os.path.join(mh.testsigs_dir(), "mailmoat-test.hdb"), db)
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "signatures reloaded" not in proxy.log_text():
            self.assertLess(time.monotonic(), deadline, proxy.log_text()[-2000:])
            time.sleep(0.1)
        second = self.retr_one(proxy.port, n)
        self.assertIn(NOTICE_MARK.encode(), second.split(b"\r\n\r\n")[0],
                      "the new signatures were not used after SIGHUP")
        self.assertTrue(proxy.alive())

    def retr_one(self, port, n):
        with mh.RawPop3(port) as c:
            c.login(*self.user(USER))
            st, body = c.cmd_multi("RETR %d" % n)
            self.assertTrue(st.startswith(b"+OK"), st)
            c.cmd("QUIT")
        return mh.unstuff(body)


if __name__ == "__main__":
    unittest.main()
