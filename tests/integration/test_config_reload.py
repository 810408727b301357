"""Reloading under way: SIGHUP with a broken configuration file, SIGHUP with
a good one while sessions are open, and signature files replaced on disk
while twenty clients download (README "Policy" -> "Reloading").

- A configuration file with errors (a YAML syntax error, an unknown key, a
  bad value) or with changed listeners is refused as a whole: the log has
  `config reload: FILE:LINE: reason` (FILE: reason for the listeners) and
  `config reload refused, the old configuration stays in force`, the
  process goes on serving, and the OLD policy is what new sessions get
  (every broken file also switches a blocked .exe attachment to `pass`,
  which must not take effect).
- A good file applies to sessions opened after the reload only: sessions
  already open (logged in, or only connected) keep the policy they had.
- New signature files (written to a temporary name, then renamed, as
  freshclam does) are picked up by the directory watcher without a signal
  and swapped in while 20 POP3 clients download: no client sees an error
  or a closed connection, no RETR waits for the load, mail scanned before
  the swap is delivered as it is, and sessions started after the swap get
  the new signature's notice.

Every test adds a user of its own to the fixture Dovecot (the fixture
users' mailboxes are compared whole by other tests) and starts its own
mailmoat.
"""

import datetime
import os
import re
import secrets
import shutil
import signal
import threading
import time
import unittest

from itbase import ProxyCase, list_sizes, mh, out, NOTICE_MARK

RUN = secrets.token_hex(3)

EXE_DATA = b"This part stands in for an installer; it is only text.\n" * 8


def log_time(line):
    """The wall-clock time (seconds since the epoch) of a log line's
    leading `2026-11-29T06:43:45.330Z` stamp."""
    stamp = line.split(" ", 1)[0]
    dt = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


class ConfigReload(ProxyCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # a mailbox for the policy reloads: a plain message, an installer, a plain one
        cls.pol_user = "cfgreload-%s" % RUN
        cls.pol_pw = "Pw-cfgreload-%s!" % RUN
        exe, _ = mh.msg_with_parts(
            [mh.mime_part(['Content-Type: application/octet-stream; name="setup.exe"',
                           'Content-Disposition: attachment; filename="setup.exe"'], EXE_DATA)],
            to="%s@example.test" % cls.pol_user, subject="The installer you asked for", n=2)
        mh.fixture_add_user(cls.st, cls.pol_user, cls.pol_pw, wait=0)
        for data in (mh.msg_plain(to="%s@example.test" % cls.pol_user, n=1), exe,
                     mh.msg_plain(to="%s@example.test" % cls.pol_user, n=3,
                                  subject="Re: the installer")):
            mh.fixture_add_message(cls.st, cls.pol_user, data)
        cls.exe_num = 2

        # a mailbox for the signature swap: 30 small clean messages and, in
        # the middle, one carrying a string only the new signature knows
        cls.sig_user = "sigswap-%s" % RUN
        cls.sig_pw = "Pw-sigswap-%s!" % RUN
        cls.unique = ("mailmoat-reload-marker-%s" % secrets.token_hex(16)).encode("ascii")
        mh.fixture_add_user(cls.st, cls.sig_user, cls.sig_pw, wait=0)
        cls.unique_num = 16
        for i in range(1, 32):
            if i == cls.unique_num:
                body = ("Hello,\n\nthe reference you asked for is %s; keep it safe.\n\n-- \nBob\n"
                        % cls.unique.decode("ascii"))
                data = mh.msg_plain(to="%s@example.test" % cls.sig_user, n=i,
                                    subject="Your reference", body=body)
            else:
                body = "".join("Line %d of message %d: nothing to see here.\n" % (k, i)
                               for k in range(1 + 7 * i))
                data = mh.msg_plain(to="%s@example.test" % cls.sig_user, n=i,
                                    subject="Status report %d" % i, body=body)
            mh.fixture_add_message(cls.st, cls.sig_user, data)
        mh.fixture_wait_user(cls.st, cls.pol_user, cls.pol_pw)
        mh.fixture_wait_user(cls.st, cls.sig_user, cls.sig_pw)

    # ---- helpers ----

    def direct_box(self, user, password, count):
        ref = mh.fetch_all_raw(self.up, user, password)
        self.assertEqual(ref["count"], count, "Dovecot does not hold %s's mailbox" % user)
        sizes = list_sizes(ref["LIST"][1])
        raws = {}
        for i, (st, raw) in enumerate(ref["RETR"], 1):
            self.assertTrue(st.startswith(b"+OK"), st)
            raws[i] = raw
        return raws, sizes

    def policy_ref(self):
        if not hasattr(self, "_pol_ref"):
            self._pol_ref = self.direct_box(self.pol_user, self.pol_pw, 3)
        return self._pol_ref

    def assertOldPolicy(self, proxy, what):
        """A new session through proxy: the plain messages as they are, the
        installer replaced by the notice (on_blocked_attachment: quarantine)."""
        raws, sizes = self.policy_ref()
        got = mh.fetch_all_raw(proxy.port, self.pol_user, self.pol_pw)
        self.assertTrue(got["QUIT"].startswith(b"+OK"), "%s: %r" % (what, got["QUIT"]))
        self.assertEqual(got["count"], 3, what)
        for i in (1, 3):
            st, body = got["RETR"][i - 1]
            self.assertTrue(st.startswith(b"+OK"), "%s: RETR %d: %r" % (what, i, st))
            self.assertEqual(body, raws[i], "%s: message %d changed" % (what, i))
        st, body = got["RETR"][self.exe_num - 1]
        self.assertTrue(st.startswith(b"+OK"), "%s: %r" % (what, st))
        self.assertIsNotNone(body)
        self.assertNotice(mh.unstuff(body), mh.unstuff(raws[self.exe_num]), sizes[self.exe_num])

    def retr(self, conn, n):
        st, body = conn.cmd_multi("RETR %d" % n)
        self.assertTrue(st.startswith(b"+OK"), st)
        return body

    @staticmethod
    def count(proxy, needle):
        return proxy.log_text().count(needle)

    def wait_log(self, proxy, needle, n, timeout=20.0):
        """Waits until needle is in proxy's log at least n times."""
        deadline = time.monotonic() + timeout
        while True:
            text = proxy.log_text()
            if text.count(needle) >= n:
                return text
            self.assertProxyAlive(proxy)
            if time.monotonic() > deadline:
                self.fail("no %d x %r in the log after %.0f s; log tail:\n%s"
                          % (n, needle, timeout, text[-3000:]))
            time.sleep(0.05)

    def hup_and_wait(self, proxy, needle):
        """SIGHUP; waits for needle (once more than before) and for the end
        of the reload (the engine swap logged after the configuration)."""
        n = self.count(proxy, needle)
        done = self.count(proxy, "signatures reloaded") + self.count(proxy, "signature reload failed")
        start = len(proxy.log_text())
        proxy.proc.send_signal(signal.SIGHUP)
        self.wait_log(proxy, needle, n + 1)
        deadline = time.monotonic() + 20
        while (self.count(proxy, "signatures reloaded")
               + self.count(proxy, "signature reload failed")) <= done:
            self.assertLess(time.monotonic(), deadline, proxy.log_text()[-3000:])
            time.sleep(0.05)
        return proxy.log_text()[start:]

    # ---- a: a broken file is refused, the old policy stays ----

    def test_a_broken_config_keeps_serving(self):
        proxy = self.start_proxy(policy={"on_blocked_attachment": "quarantine"})
        path = proxy.config_path
        with open(path) as f:
            good = f.read()
        self.assertIn("  on_blocked_attachment: quarantine\n", good)
        self.assertOldPolicy(proxy, "before any reload")

        # every broken variant would also let the installer through
        wanted = good.replace("  on_blocked_attachment: quarantine\n",
                              "  on_blocked_attachment: pass\n")
        lines = wanted.split("\n")

        def lineno(text):
            return lines.index(text) + 1

        def replaced(old, new):
            return "\n".join(new if l == old else l for l in lines)

        def inserted_after(anchor, new):
            i = lines.index(anchor)
            return "\n".join(lines[:i + 1] + [new] + lines[i + 1:])

        other_port = mh.free_port()
        listen = "    listen: %s:%d" % (mh.HOST, proxy.port)
        variants = [
            ("YAML syntax error", replaced("  on_malicious: quarantine",
                                           "  on_malicious: quarantine: pass"),
             r"%s:%d: YAML syntax error" % (re.escape(path), lineno("  on_malicious: quarantine"))),
            ("unknown key", inserted_after("  on_blocked_attachment: pass", "  on_everything: pass"),
             r"%s:%d: .*unknown key 'on_everything'"
             % (re.escape(path), lineno("  on_blocked_attachment: pass") + 1)),
            ("bad value", replaced("  on_scan_error: quarantine", "  on_scan_error: sometimes"),
             r"%s:%d: .*on_scan_error.*'sometimes'"
             % (re.escape(path), lineno("  on_scan_error: quarantine"))),
            ("listener port changed", replaced(listen, "    listen: %s:%d" % (mh.HOST, other_port)),
             r"%s: the listeners changed" % re.escape(path)),
        ]
        for what, text, expect in variants:
            with self.subTest(what):
                with open(path, "w") as f:
                    f.write(text)
                new = self.hup_and_wait(proxy, "config reload refused")
                reasons = [l for l in new.splitlines() if " config reload: " in l]
                self.assertTrue(any(re.search(r"config reload: " + expect, l) for l in reasons),
                                "%s: no `config reload: %s` line in:\n%s" % (what, expect, new))
                self.assertIn("config reload refused, the old configuration stays in force", new)
                self.assertNotIn("config reloaded", new, what)
                self.assertProxyAlive(proxy)
                self.assertFalse(mh.port_listening(other_port), "%s: the new port is served" % what)
                self.assertOldPolicy(proxy, "after the refused reload (%s)" % what)
                out("refused %-22s %s" % (what + ":", reasons[0].split(" config reload: ", 1)[1]
                                          if reasons else "?"))

        # the same change without the defect is taken: the broken files were
        # refused for their defects, not ignored
        with open(path, "w") as f:
            f.write(wanted)
        new = self.hup_and_wait(proxy, "config reloaded file=%s" % path)
        self.assertNotIn("config reload refused", new)
        raws, _ = self.policy_ref()
        got = mh.fetch_all_raw(proxy.port, self.pol_user, self.pol_pw)
        self.assertEqual(got["RETR"][self.exe_num - 1][1], raws[self.exe_num],
                         "on_blocked_attachment: pass did not apply after a good reload")
        self.assertProxyAlive(proxy)

    # ---- b: a good file applies to new sessions only ----

    def test_b_good_config_applies_to_new_sessions_only(self):
        proxy = self.start_proxy(policy={"on_blocked_attachment": "quarantine"})
        raws, sizes = self.policy_ref()
        with open(proxy.config_path) as f:
            good = f.read()

        a = mh.RawPop3(proxy.port, timeout=30)
        self.addCleanup(a.close)
        a.login(self.pol_user, self.pol_pw)
        st, body = a.cmd_multi("LIST")
        self.assertTrue(st.startswith(b"+OK"), st)
        self.assertEqual(list_sizes(body), sizes)
        c = mh.RawPop3(proxy.port, timeout=30)      # connected, not logged in yet
        self.addCleanup(c.close)
        self.assertTrue(c.greeting.startswith(b"+OK"), c.greeting)

        rule = [{"name": "installers for %s" % self.pol_user, "match": {"user": self.pol_user},
                 "on_blocked_attachment": "pass"}]
        with open(proxy.config_path, "w") as f:
            f.write(good + mh.rules_yaml(rule))
        new = self.hup_and_wait(proxy, "config reloaded file=%s" % proxy.config_path)
        self.assertIn("config reloaded file=%s rules=1" % proxy.config_path, new)
        self.assertNotIn("config reload refused", new)

        # session A (logged in before): the old policy to its end
        self.assertNotice(mh.unstuff(self.retr(a, self.exe_num)),
                          mh.unstuff(raws[self.exe_num]), sizes[self.exe_num])
        self.assertEqual(self.retr(a, 1), raws[1])
        self.assertTrue(a.cmd("QUIT").startswith(b"+OK"))

        # session B (new): the new rule
        b = mh.RawPop3(proxy.port, timeout=30)
        self.addCleanup(b.close)
        b.login(self.pol_user, self.pol_pw)
        self.assertEqual(self.retr(b, self.exe_num), raws[self.exe_num],
                         "a session opened after the reload did not get the new policy")
        self.assertEqual(self.retr(b, 3), raws[3])
        self.assertTrue(b.cmd("QUIT").startswith(b"+OK"))

        # session C (connected before, logged in after): still the old one
        c.login(self.pol_user, self.pol_pw)
        self.assertNotice(mh.unstuff(self.retr(c, self.exe_num)),
                          mh.unstuff(raws[self.exe_num]), sizes[self.exe_num])
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        self.assertProxyAlive(proxy)

    # ---- c: signature files replaced while 20 clients download ----

    def test_c_signatures_replaced_during_downloads(self):
        nclients = 20
        count = 31
        ref, _ = self.direct_box(self.sig_user, self.sig_pw, count)
        self.assertIn(self.unique, ref[self.unique_num])
        sigdir = os.path.join(self._tmp, "sigswap-db")
        os.makedirs(sigdir)
        for fn in ("mailmoat-test.ndb", "mailmoat-test.hdb"):
            shutil.copy(os.path.join(mh.testsigs_dir(), fn), sigdir)
        proxy = self.start_proxy(database=sigdir)
        sig_name = "Mailmoat.Test.Reload%s" % RUN

        stop = threading.Event()
        lock = threading.Lock()
        errors = []          # (client, text)
        retrs = []           # (sent at, seconds, message number)
        downloads = []       # dict: client, start, end, unique ("original"/"notice"), done_at
        notices = []         # a few notice bodies (unstuffed) for the full check

        def client(ci):
            while not stop.is_set():
                rec = {"client": ci, "start": time.time()}
                mine = []
                try:
                    with mh.RawPop3(proxy.port, timeout=30) as c:
                        if not c.greeting.startswith(b"+OK"):
                            raise AssertionError("greeting %r" % c.greeting)
                        c.login(self.sig_user, self.sig_pw)
                        st = c.cmd("STAT")
                        if not st.startswith(b"+OK") or int(st.split()[1]) != count:
                            raise AssertionError("STAT %r" % st)
                        for i in range(1, count + 1):
                            t0 = time.time()
                            st, body = c.cmd_multi("RETR %d" % i)
                            t1 = time.time()
                            mine.append((t0, t1 - t0, i))
                            if not st.startswith(b"+OK") or body is None:
                                raise AssertionError("RETR %d: %r" % (i, st))
                            if i != self.unique_num:
                                if body != ref[i]:
                                    raise AssertionError("RETR %d: clean message changed" % i)
                                continue
                            rec["done_at"] = t1
                            if body == ref[i]:
                                rec["unique"] = "original"
                                continue
                            msg = mh.unstuff(body)
                            subj = mh.header_of(msg, "Subject") or ""
                            if NOTICE_MARK not in subj or self.unique in msg:
                                raise AssertionError("RETR %d: neither the original nor a "
                                                     "notice: %r" % (i, msg[:600]))
                            rec["unique"] = "notice"
                            with lock:
                                if len(notices) < 3:
                                    notices.append(msg)
                        st = c.cmd("QUIT")
                        if not st.startswith(b"+OK"):
                            raise AssertionError("QUIT %r" % st)
                    rec["end"] = time.time()
                except Exception as e:     # noqa: BLE001 - every failure is reported
                    with lock:
                        errors.append((ci, "%s: %s" % (type(e).__name__, e)))
                    stop.set()
                with lock:
                    retrs.extend(mine)
                    if "end" in rec:
                        downloads.append(rec)

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(nclients)]
        t_begin = time.time()
        for t in threads:
            t.start()
        try:
            time.sleep(2.0)
            # the new database file: a temporary name first, then a rename
            hexsig = self.unique.hex()
            tmp = os.path.join(sigdir, ".mailmoat-reload.ndb.tmp")
            with open(tmp, "w") as f:
                f.write("%s:0:*:%s\n" % (sig_name, hexsig))
            t_write = time.time()
            os.rename(tmp, os.path.join(sigdir, "mailmoat-reload.ndb"))
            deadline = time.monotonic() + 30
            while "signatures reloaded" not in proxy.log_text():
                if time.monotonic() > deadline or stop.is_set():
                    break
                time.sleep(0.05)
            text = proxy.log_text()
            swapped = "signatures reloaded" in text
            # keep downloading until every client finished a download it
            # started after the swap, and for 12 s at least
            if swapped:
                t_swap = log_time([l for l in text.splitlines() if "signatures reloaded" in l][0])
                deadline = time.monotonic() + 20
                while not stop.is_set() and time.monotonic() < deadline:
                    with lock:
                        after = {d["client"] for d in downloads if d["start"] > t_swap + 0.002}
                    if len(after) == nclients and time.time() - t_begin >= 12.0:
                        break
                    time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        self.assertFalse([t for t in threads if t.is_alive()], "clients still running")
        log = proxy.log_text()
        self.assertProxyAlive(proxy)
        self.assertEqual(errors, [], "clients saw errors during the swap; log tail:\n%s"
                         % log[-3000:])
        self.assertTrue(swapped, "no `signatures reloaded` within 30 s of the new file; "
                                 "log tail:\n%s" % log[-3000:])
        lines = log.splitlines()
        swap_line = [l for l in lines if "signatures reloaded" in l][0]
        load_lines = [l for l in lines if "signature files changed in %s" % sigdir in l]
        self.assertTrue(load_lines, "the swap was not started by the directory watcher:\n%s"
                        % log[-3000:])
        self.assertNotIn("signature reload failed", log)
        self.assertIn("signatures reloaded signatures=46 ", swap_line + " ",
                      "45 test signatures and the new one expected: %s" % swap_line)
        t_load = log_time(load_lines[0])
        t_swap = log_time(swap_line)

        # verdicts on either side of the swap
        before = [d for d in downloads if d["done_at"] < t_load]
        after = [d for d in downloads if d["start"] > t_swap + 0.002]
        middle = len(downloads) - len(before) - len(after)
        self.assertGreaterEqual(len(before), nclients, "too few downloads before the swap")
        self.assertGreaterEqual(len({d["client"] for d in after}), nclients,
                                "not every client downloaded after the swap")
        self.assertEqual([d for d in before if d["unique"] != "original"], [],
                         "a download before the new signatures did not deliver the original")
        self.assertEqual([d for d in after if d["unique"] != "notice"], [],
                         "a download started after the swap delivered the message the new "
                         "signature matches")
        self.assertTrue(notices)
        self.assertNotice(notices[0], mh.unstuff(ref[self.unique_num]), 0)
        self.assertIn(sig_name, log, "the new signature's name is not in the log")

        # RETR latencies: before the load (the first half second left out:
        # twenty logins at once), around the load and swap, after
        def window(lo, hi):
            return [dt for t0, dt, _ in retrs if t0 + dt >= lo and t0 <= hi]

        lat_before = window(t_begin + 0.5, t_load - 0.5)
        lat_swap = window(t_load - 0.5, t_swap + 0.5)
        lat_after = [dt for t0, dt, _ in retrs if t0 > t_swap + 0.5]
        out("signature swap: new file at +%.2f s, watcher started the load at +%.2f s, "
            "swapped at +%.2f s (load %.0f ms); downloads before=%d around=%d after=%d, "
            "RETRs %d" % (t_write - t_begin, t_load - t_begin, t_swap - t_begin,
                          (t_swap - t_load) * 1000, len(before), middle, len(after), len(retrs)))
        for name, lat in (("before", lat_before), ("swap window", lat_swap), ("after", lat_after)):
            out("RETR latency %-11s n=%5d p50=%7.1f ms p99=%7.1f ms max=%7.1f ms" % (
                name, len(lat), percentile(lat, 50) * 1000, percentile(lat, 99) * 1000,
                max(lat) * 1000 if lat else float("nan")))
        worst = max(retrs, key=lambda r: r[1])
        self.assertLess(worst[1], 5.0, "a RETR took %.1f s (message %d at +%.2f s): a scan "
                        "waited for the load?" % (worst[1], worst[2], worst[0] - t_begin))
        self.assertTrue(lat_swap, "no RETR during the swap window")


if __name__ == "__main__":
    unittest.main()
