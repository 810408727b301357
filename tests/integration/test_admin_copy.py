"""notice.admin_copy: a report of each quarantined message goes to an
administrator's address through an SMTP relay (a sink in this file), on the
thread pool, never in a session's way.

- relay up: one report per new quarantine entry, from/to as configured,
  naming the entry (id, user, signature, how to release it), without a
  byte of the original; fetching the mailbox again (entries reused) sends
  nothing more; `mailmoat quarantine list` does not see the outbox;
- relay down: the download is as fast as without the feature, the log
  says each report failed and is retried, and once the relay is back the
  reports arrive;
- relay that accepts and never answers: the download is not slowed, and
  the proxy still stops at once (the transfer is aborted).

MAILMOAT_OUTBOX_RETRY_MS (test-only) makes the retries come in fractions
of a second instead of minutes.
"""

import base64
import email
import email.policy
import json
import os
import re
import socket
import socketserver
import subprocess
import threading
import time
import unittest

from itbase import ProxyCase, mh, out

ADMIN_TO = "admin@example.test"
ADMIN_FROM = "mailmoat@example.test"
RETRY_ENV = {"MAILMOAT_OUTBOX_RETRY_MS": "300"}


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to take mail, several per connection."""

    def handle(self):
        w = self.wfile.write
        w(b"220 sink.test ESMTP\r\n")
        mail = {"from": None, "rcpt": []}
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            cmd = line.decode("ascii", "replace").rstrip("\r\n")
            up = cmd.upper()
            if up.startswith(("EHLO", "HELO")):
                w(b"250-sink.test\r\n250 8BITMIME\r\n")
            elif up.startswith("MAIL FROM:"):
                mail["from"] = cmd[10:].strip()
                w(b"250 ok\r\n")
            elif up.startswith("RCPT TO:"):
                mail["rcpt"].append(cmd[8:].strip())
                w(b"250 ok\r\n")
            elif up == "DATA":
                w(b"354 go on\r\n")
                data = bytearray()
                while True:
                    l = self.rfile.readline(1 << 20)
                    if not l or l == b".\r\n":
                        break
                    data += l[1:] if l.startswith(b".") else l
                mail["data"] = bytes(data)
                self.server.mails.append(mail)
                mail = {"from": None, "rcpt": []}
                w(b"250 queued\r\n")
            elif up in ("RSET", "NOOP"):
                w(b"250 ok\r\n")
            elif up == "QUIT":
                w(b"221 bye\r\n")
                return
            else:
                w(b"502 no\r\n")


class SmtpSink(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port=0):
        super().__init__((mh.HOST, port), _SmtpHandler)
        self.mails = []
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self):
        self.shutdown()
        self.server_close()


def wait_for(cond, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


class AdminCopy(ProxyCase):

    def proxy(self, port, name):
        """A mailmoat for this test with notice.admin_copy to the relay on
        port, retries sped up (checked at clean-up like start_proxy)."""
        p = mh.Mailmoat(os.path.join(self._tmp, name), [("pop3", self.up)], admin_copy={
            "to": ADMIN_TO, "smtp_url": "smtp://%s:%d" % (mh.HOST, port), "from": ADMIN_FROM})
        p.start(env=RETRY_ENV)
        self.addCleanup(self._stop_checked, p)
        return p

    def download(self, proxy):
        """Fetches bob's mailbox through proxy; returns the seconds it took."""
        t0 = time.monotonic()
        got = mh.fetch_all_raw(proxy.port, *self.user("bob"))
        took = time.monotonic() - t0
        self.assertEqual(len(got["RETR"]), len(self.messages("bob")))
        return took

    def reference_time(self):
        """A download through a proxy without the feature (two, the faster)."""
        if not hasattr(AdminCopy, "_ref"):
            p = self.class_proxy("reference")
            AdminCopy._ref = min(self.download(p) for _ in range(2))
            out("reference download: %.2f s" % AdminCopy._ref)
        return AdminCopy._ref

    def ids(self, proxy):
        return sorted(q[0] for q in proxy.quarantine())

    def outbox(self, proxy):
        d = os.path.join(proxy.quarantine_dir, ".outbox")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def check_report(self, mail, ids):
        """One report as the sink took it; returns its quarantine id."""
        self.assertEqual(mail["from"], "<%s>" % ADMIN_FROM)
        self.assertEqual(mail["rcpt"], ["<%s>" % ADMIN_TO])
        raw = mail["data"]
        # never the original, raw or in its base64 form
        self.assertNotIn(mh.EICAR, raw)
        self.assertNotIn(mh.EICAR[:20], raw)
        self.assertNotIn(base64.b64encode(mh.EICAR)[:40], raw)
        with open(mh.CLAM_ZIP, "rb") as f:
            self.assertNotIn(base64.b64encode(f.read())[:60], raw)
        self.assertLessEqual(max(len(l) for l in raw.split(b"\r\n")), 78)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        qid = msg["X-Mailmoat-Quarantine-Id"]
        self.assertIn(qid, ids)
        self.assertEqual(msg["To"], ADMIN_TO)
        self.assertIn(ADMIN_FROM, msg["From"])
        self.assertEqual(msg["Subject"], "[mailmoat] quarantined: infected for bob")
        self.assertEqual(msg["Auto-Submitted"], "auto-generated")
        self.assertEqual(msg.get_content_type(), "text/plain")
        body = msg.get_content().replace("\r\n", "\n")
        self.assertNotIn(mh.EICAR[:20].decode(), body)
        for k, v in (("id", qid), ("user", "bob"), ("protocol", "pop3"),
                     ("upstream", "%s:%d" % (mh.HOST, self.up)), ("verdict", "infected")):
            self.assertRegex(body, r"\n  %s: +%s\n" % (k, re.escape(v)))
        self.assertRegex(body, r"\n  signature: +Mailmoat\.Test")
        self.assertIn("mailmoat quarantine show %s" % qid, body)
        self.assertIn("mailmoat quarantine release %s" % qid, body)
        return qid

    def test_1_reports_arrive(self):
        sink = SmtpSink()
        self.addCleanup(sink.stop)
        p = self.proxy(sink.port, "relay-up")
        self.download(p)
        ids = self.ids(p)
        self.assertEqual(len(ids), len(self.infected_nums("bob")))
        self.assertTrue(wait_for(lambda: len(sink.mails) >= len(ids), 30),
                        "%d of %d reports arrived; log:\n%s"
                        % (len(sink.mails), len(ids), p.log_text()[-3000:]))
        got = sorted(self.check_report(m, ids) for m in sink.mails)
        self.assertEqual(got, ids, "one report per quarantined message")
        log = p.log_text()
        for qid in ids:
            self.assertIn("admin copy %s sent to %s" % (qid, ADMIN_TO), log)
        self.assertTrue(wait_for(lambda: self.outbox(p) == [], 5), self.outbox(p))

        # the same messages again: the entries are reused, nothing is sent
        self.download(p)
        self.assertEqual(self.ids(p), ids)
        time.sleep(2)
        self.assertEqual(len(sink.mails), len(ids))

        # the listing does not take the outbox for entries
        r = subprocess.run([mh.mailmoat_bin(), "quarantine", "list", "--json",
                            "--config", p.config_path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(e["id"] for e in json.loads(r.stdout)), ids)
        self.assertNotIn(b"outbox", r.stderr)

    def test_2_relay_down_then_back(self):
        ref = self.reference_time()
        port = mh.free_port()       # nothing listens there yet
        p = self.proxy(port, "relay-down")
        took = self.download(p)
        out("download with the relay down: %.2f s (reference %.2f s)" % (took, ref))
        self.assertLess(took, max(2 * ref, ref + 3.0), "the download waited for the relay")
        ids = self.ids(p)
        self.assertEqual(len(ids), len(self.infected_nums("bob")))

        def failed(attempt):
            log = p.log_text()
            return all(re.search(r"admin copy %s failed: smtp://%s:%d: .* \(attempt %d, "
                                 r"next in \d+ s\)" % (qid, re.escape(mh.HOST), port, attempt),
                                 log) for qid in ids)
        self.assertTrue(wait_for(lambda: failed(1), 20), p.log_text()[-3000:])
        self.assertTrue(wait_for(lambda: failed(2), 20), "no retry:\n" + p.log_text()[-3000:])
        self.assertEqual(len(self.outbox(p)), len(ids))
        self.assertTrue(all("+" in n for n in self.outbox(p)), self.outbox(p))

        sink = SmtpSink(port)
        self.addCleanup(sink.stop)
        self.assertTrue(wait_for(lambda: len(sink.mails) >= len(ids), 30),
                        "%d of %d reports arrived after the relay came back; log:\n%s"
                        % (len(sink.mails), len(ids), p.log_text()[-3000:]))
        self.assertEqual(sorted(self.check_report(m, ids) for m in sink.mails), ids)
        self.assertTrue(wait_for(lambda: self.outbox(p) == [], 5), self.outbox(p))

    def test_3_silent_relay(self):
        """A relay that takes the connection and never says a word: the
        pass waits (up to its 30 s time-out) on the pool, nobody else."""
        ref = self.reference_time()
        silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        silent.bind((mh.HOST, 0))
        silent.listen(16)           # never accepted: connects, then silence
        self.addCleanup(silent.close)
        p = self.proxy(silent.getsockname()[1], "relay-silent")
        took = self.download(p)
        out("download with a silent relay: %.2f s (reference %.2f s)" % (took, ref))
        self.assertLess(took, max(2 * ref, ref + 3.0), "the download waited for the relay")
        # a second session at once is not held up either
        took = self.download(p)
        self.assertLess(took, max(2 * ref, ref + 3.0), "the download waited for the relay")
        self.assertEqual(len(self.outbox(p)), len(self.infected_nums("bob")))
        # stopping does not wait for the relay's time-out: the transfer is aborted
        rc = p.stop()
        self.assertEqual(rc, 0, p.log_text()[-3000:])
        out("stop with a pass waiting on the relay: %.2f s" % p.stop_seconds)
        self.assertLess(p.stop_seconds, 10.0)
        # the reports stay for the next start; the aborted one is no attempt
        self.assertEqual(len(self.outbox(p)), len(self.infected_nums("bob")))
        self.assertFalse([n for n in self.outbox(p) if "+" in n], self.outbox(p))


if __name__ == "__main__":
    unittest.main()
