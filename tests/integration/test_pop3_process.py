"""The command-line contract: --check-config exit codes and FILE:LINE
reasons; --config with a bad file; SIGTERM stops the proxy promptly (at
once when idle, within timeouts.shutdown_grace with sessions open)."""

import os
import re
import subprocess
import time
import unittest

from itbase import ProxyCase, mh, out

BAD = """\
listeners:
  - protocol: pop3
    listen: 127.0.0.1:11110
    upstream: 127.0.0.1:21110
scanner:
  clamav:
    database: {db}
quarantine:
  dir: /tmp/mailmoat-it-never-created/quarantine
policy:
  on_malicious: explode
  on_scan_error: quarantine
spool: {{memory_limit: 4Q, max_message_size: 512M}}
no_such_key: 1
timeouts: {{client_idle: 600, upstream_idle: -3}}
"""
BAD_LINES = {11: "on_malicious", 13: "memory_limit", 14: "no_such_key", 15: "upstream_idle"}


class CheckConfig(ProxyCase):

    def write(self, name, text):
        path = os.path.join(self._tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_valid_configs(self):
        cfg = mh.mailmoat_config_yaml([("pop3", 11110, 21110)], "/tmp/q")
        path = self.write("good.yaml", cfg)
        rc, text = mh.check_config(path)
        self.assertEqual(rc, 0, text)
        example = os.path.join(mh.source_dir(), "deploy", "mailmoat.example.yaml")
        if os.path.exists(example):
            rc, text = mh.check_config(example)
            self.assertEqual(rc, 0, text)
        # The brief's example, flow mappings included.
        rc, text = mh.check_config(self.write("brief.yaml", """\
listeners:
  - protocol: pop3
    listen: 127.0.0.1:11110
    upstream: 127.0.0.1:21110
scanner:
  clamav:
    database: {db}    # the repo's test signatures
quarantine:
  dir: /tmp/x/quarantine
policy:
  on_malicious: quarantine    # quarantine | abort | pass
  on_scan_error: quarantine
notice:
  admin_contact: "postmaster@example.jp"
spool: {{memory_limit: 4M, max_message_size: 512M, dir: /tmp}}
timeouts: {{client_idle: 600, upstream_idle: 600, connect: 15, shutdown_grace: 10}}
log_level: info
""".format(db=mh.testsigs_dir())))
        self.assertEqual(rc, 0, text)

    def test_bad_config_reports_every_problem(self):
        path = self.write("bad.yaml", BAD.format(db=mh.testsigs_dir()))
        rc, text = mh.check_config(path)
        self.assertEqual(rc, 1, text)
        lines = [l for l in text.splitlines() if l.strip()]
        self.assertTrue(lines)
        seen = {}
        for l in lines:
            m = re.match(r"^(.*?):(\d+): (.+)$", l)
            self.assertIsNotNone(m, "not FILE:LINE: reason: %r" % l)
            self.assertEqual(m.group(1), path)
            seen[int(m.group(2))] = m.group(3)
        for n, word in BAD_LINES.items():
            self.assertIn(n, seen, "no report for line %d (%s):\n%s" % (n, word, text))
            self.assertIn(word, seen[n])
        out("check-config on a bad file:\n" + text.rstrip())

    def test_yaml_syntax_error(self):
        path = self.write("syntax.yaml", "listeners: [\n  - a: b\n")
        rc, text = mh.check_config(path)
        self.assertEqual(rc, 1, text)
        self.assertRegex(text, r"(?m)^%s:\d+: " % re.escape(path))

    def test_missing_file(self):
        path = os.path.join(self._tmp, "does-not-exist.yaml")
        rc, text = mh.check_config(path)
        self.assertEqual(rc, 1, text)
        self.assertIn(path, text)

    def test_config_refuses_bad_file(self):
        path = self.write("bad2.yaml", BAD.format(db=mh.testsigs_dir()))
        r = subprocess.run([mh.mailmoat_bin(), "--config", path], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"%s:11: " % path.encode(), r.stdout)


class Shutdown(ProxyCase):

    def test_sigterm_idle(self):
        proxy = self.start_proxy()
        rc = proxy.stop(timeout=10)
        self.assertEqual(rc, 0, proxy.log_text()[-2000:])
        self.assertLess(proxy.stop_seconds, 2.0)
        self.assertFalse(mh.port_listening(proxy.port))
        out("SIGTERM, idle: exited 0 in %.3f s" % proxy.stop_seconds)

    def test_sigterm_with_sessions(self):
        grace = 3
        proxy = self.start_proxy(timeouts={"shutdown_grace": grace})
        idle = mh.RawPop3(proxy.port)
        idle.login(*self.user("alice"))
        busy = mh.RawPop3(proxy.port)
        busy.login(*self.user("carol"))
        busy.send(b"RETR 1\r\n")          # 50 MiB, not read by us
        time.sleep(0.5)
        t0 = time.monotonic()
        proxy.terminate()
        # It stops accepting connections at once (README).
        deadline = time.monotonic() + 1.0
        while mh.port_listening(proxy.port) and time.monotonic() < deadline:
            time.sleep(0.02)
        still_listening = mh.port_listening(proxy.port)
        rc = proxy.stop(timeout=grace + 10)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, proxy.log_text()[-2000:])
        self.assertLess(took, grace + 2.5, "SIGTERM took %.2f s with shutdown_grace %d" % (took, grace))
        self.assertFalse(still_listening, "still listening 1 s after SIGTERM")
        # The idle client's connection is closed (perhaps after a -ERR).
        idle.sock.settimeout(5)
        rest = idle.read_all(timeout=5)
        self.assertFalse(rest.startswith(b"+OK"), rest[:100])
        idle.close()
        busy.close()
        out("SIGTERM with 2 sessions (one mid-RETR of 50 MiB), shutdown_grace %d: exited 0 in %.2f s"
            % (grace, took))


if __name__ == "__main__":
    unittest.main()
