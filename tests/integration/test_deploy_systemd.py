"""The systemd side of deployment: the shipped unit passes
`systemd-analyze verify`, and the daemon speaks sd_notify (READY=1 once
listening, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM) to
a socket the test provides."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from itbase import ProxyCase, mh


class Systemd(ProxyCase):

    def test_unit_verifies(self):
        tool = shutil.which("systemd-analyze")
        if tool is None:
            self.skipTest("systemd-analyze is not installed")
        src = os.path.join(mh.source_dir(), "deploy", "mailmoat.service")
        with open(src) as f:
            unit = f.read()
        # the unit names the installed path; verify needs an executable there
        unit = unit.replace("/usr/local/bin/mailmoat", mh.mailmoat_bin())
        d = tempfile.mkdtemp(prefix="mm-unit-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "mailmoat.service")
        with open(path, "w") as f:
            f.write(unit)
        r = subprocess.run([tool, "verify", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        out = r.stdout.decode("utf-8", "replace")
        # complaints about this container's own units are not ours
        ours = [l for l in out.splitlines() if "mailmoat.service" in l]
        self.assertEqual(ours, [], out)

    def test_sd_notify_exchange(self):
        d = tempfile.mkdtemp(prefix="mm-notify-")
        self.addCleanup(shutil.rmtree, d, True)
        sock_path = os.path.join(d, "notify.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(sock_path)
        s.settimeout(10)
        self.addCleanup(s.close)
        proxy = mh.Mailmoat(os.path.join(d, "mm"), [("pop3", self.up)])
        proxy.start(env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})
        self.addCleanup(proxy.stop)
        got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(m.startswith(b"READY=1") for m in got):
            got.append(s.recv(4096))
        self.assertTrue(any(m.startswith(b"READY=1") for m in got), got)
        # a few watchdog pings at half the interval
        pings = sum(1 for m in got if m == b"WATCHDOG=1")
        t0 = time.monotonic()
        # ~10 expected in 2 s; 3 leaves room for a loaded machine
        while time.monotonic() - t0 < 2.0 and pings < 3:
            try:
                if s.recv(4096) == b"WATCHDOG=1":
                    pings += 1
            except socket.timeout:
                break
        self.assertGreaterEqual(pings, 3, "WATCHDOG=1 every 200 ms expected")
        proxy.proc.send_signal(signal.SIGTERM)
        msgs = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(m.startswith(b"STOPPING=1") for m in msgs):
            msgs.append(s.recv(4096))
        self.assertTrue(any(m.startswith(b"STOPPING=1") for m in msgs), msgs)
        # one SIGTERM is a clean stop (a second one would be a hard kill)
        self.assertEqual(proxy.proc.wait(15), 0)


if __name__ == "__main__":
    unittest.main()
