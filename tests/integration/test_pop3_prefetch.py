"""POP3 prefetch (limits.prefetch): while the client reads message k the
proxy already fetches and scans the next ones, and serves them when asked.
Nothing is deleted ahead of the client; a server without PIPELINING gets no
prefetch; an upstream lost under a prefetch still answers the client."""

import os
import poplib
import socket
import threading
import time
import unittest

from itbase import ProxyCase, mh, out


def prefetch_events(proxy):
    return [e for e in proxy.log_events() if e.get("prefetch") == "1"]


class FakePop3(threading.Thread):
    """A scripted POP3 server on 127.0.0.1: n messages, CAPA with or without
    PIPELINING, and optionally a close when RETR close_on is asked for."""

    def __init__(self, messages, pipelining=True, close_on=None):
        super().__init__(daemon=True)
        self.messages = messages
        self.pipelining = pipelining
        self.close_on = close_on
        self.commands = []
        self.sock = socket.socket()
        self.sock.bind((mh.HOST, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stopped = False

    def run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def stop(self):
        self.stopped = True
        self.sock.close()

    def serve(self, c):
        f = c.makefile("rb")
        c.sendall(b"+OK fake ready\r\n")
        try:
            for line in f:
                cmd = line.strip().decode()
                self.commands.append(cmd)
                verb, _, arg = cmd.partition(" ")
                verb = verb.upper()
                if verb == "CAPA":
                    caps = b"USER\r\nUIDL\r\nTOP\r\n" + (b"PIPELINING\r\n" if self.pipelining
                                                        else b"")
                    c.sendall(b"+OK\r\n" + caps + b".\r\n")
                elif verb in ("USER", "PASS", "NOOP", "RSET", "DELE"):
                    c.sendall(b"+OK\r\n")
                elif verb == "STAT":
                    c.sendall(b"+OK %d %d\r\n" % (len(self.messages),
                                                  sum(len(m) for m in self.messages)))
                elif verb == "UIDL" and arg:
                    c.sendall(b"+OK %s u%s\r\n" % (arg.encode(), arg.encode()))
                elif verb == "RETR":
                    n = int(arg)
                    if self.close_on == n:
                        # a clean close (FIN, nothing unread) once the
                        # client has had time to ask for message n
                        time.sleep(0.5)
                        c.shutdown(socket.SHUT_WR)
                        c.settimeout(10)
                        while c.recv(4096):
                            pass
                        c.close()
                        return
                    m = self.messages[n - 1]
                    c.sendall(b"+OK %d octets\r\n" % len(m) + m + b".\r\n")
                elif verb == "QUIT":
                    c.sendall(b"+OK bye\r\n")
                    c.close()
                    return
                else:
                    c.sendall(b"-ERR unknown\r\n")
        except OSError:
            pass


class Prefetch(ProxyCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dv = mh.Dovecot(os.path.join(cls._tmp, "dovecot"),
                            {"pf1": "pw1", "pf2": "pw2", "pf3": "pw3"})
        cls.msgs = []
        for i in range(8):
            if i == 4:
                m = mh.msg_eicar_attachment(to="pf@example.test", n=i)
            else:
                m = mh.msg_plain(to="pf@example.test", n=i, subject="prefetch %d" % i,
                                 body=("line %d of a prefetched message\n" % i) * (50 + 40 * i))
            cls.msgs.append(m)
            for u in ("pf1", "pf2", "pf3"):
                cls.dv.add_message(u, m)
        cls.dv.start()
        cls.up = cls.dv.pop3_port

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.dv.stop()

    def direct_all(self, user, pw):
        p = poplib.POP3(mh.HOST, self.dv.pop3_port, timeout=60)
        p.user(user)
        p.pass_(pw)
        n, _ = p.stat()
        got = [b"\r\n".join(p.retr(i)[1]) for i in range(1, n + 1)]
        p.quit()
        return got

    def direct_count(self, user, pw):
        p = poplib.POP3(mh.HOST, self.dv.pop3_port, timeout=60)
        p.user(user)
        p.pass_(pw)
        n, _ = p.stat()
        p.quit()
        return n

    def test_serial_download_served_from_prefetch(self):
        proxy = self.start_proxy()
        want = self.direct_all("pf1", "pw1")
        p = poplib.POP3(mh.HOST, proxy.port, timeout=60)
        p.user("pf1")
        p.pass_("pw1")
        n, _ = p.stat()
        got = [b"\r\n".join(p.retr(i)[1]) for i in range(1, n + 1)]
        p.quit()
        self.assertEqual(len(got), 8)
        for i in range(8):
            if i == 4:
                self.assertIn(b"X-Mailmoat-Quarantine-Id", got[i])
                self.assertNotIn(mh.EICAR, got[i])
            else:
                self.assertEqual(got[i], want[i], "message %d differs" % (i + 1))
        pre = sorted(int(e["msg"]) for e in prefetch_events(proxy))
        out("prefetched: %s" % pre)
        # every message after the first came from a prefetch
        self.assertEqual(pre, list(range(2, 9)))
        # one scan per message, one quarantine entry for the malicious one
        scans = [e for e in proxy.log_events() if "verdict" in e and e.get("user") == "pf1"]
        self.assertEqual(sorted(int(e["msg"]) for e in scans), list(range(1, 9)))
        self.assertEqual(len(proxy.quarantine()), 1)
        self.assertEqual(self.direct_count("pf1", "pw1"), 8)
        self.assertProxyAlive(proxy)

    def test_stop_early_deletes_nothing_ahead(self):
        """RETR 1, DELE 1, QUIT: the prefetched 2 and 3 stay on the server."""
        proxy = self.start_proxy()
        with mh.RawPop3(proxy.port) as c:
            c.login("pf2", "pw2")
            c.cmd("STAT")
            st, body = c.cmd_multi("RETR 1")
            self.assertTrue(st.startswith(b"+OK"), st)
            self.assertTrue(c.cmd("DELE 1").startswith(b"+OK"))
            self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        pre = sorted(int(e["msg"]) for e in prefetch_events(proxy))
        self.assertEqual(pre, [2, 3])  # limits.prefetch: 2 (the default)
        self.assertEqual(self.direct_count("pf2", "pw2"), 7)
        self.assertEqual(self.direct_all("pf2", "pw2")[0], self.direct_all("pf1", "pw1")[1])
        self.assertProxyAlive(proxy)

    def test_deleted_and_skipped_messages(self):
        """The client deletes a prefetched message unread and skips one:
        what it retrieves is still exactly the server's message."""
        proxy = self.start_proxy(limits={"prefetch": 3})
        want = self.direct_all("pf3", "pw3")
        with mh.RawPop3(proxy.port) as c:
            c.login("pf3", "pw3")
            c.cmd("STAT")
            st, body = c.cmd_multi("RETR 1")
            self.assertTrue(c.cmd("DELE 2").startswith(b"+OK"))
            st, b3 = c.cmd_multi("RETR 3")
            st, b7 = c.cmd_multi("RETR 7")
            st, b6 = c.cmd_multi("RETR 6")
            self.assertTrue(c.cmd("RSET").startswith(b"+OK"))
            self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        self.assertEqual(mh.unstuff(b3), want[2] + b"\r\n")
        self.assertEqual(mh.unstuff(b7), want[6] + b"\r\n")
        self.assertEqual(mh.unstuff(b6), want[5] + b"\r\n")
        self.assertEqual(self.direct_count("pf3", "pw3"), 8)
        self.assertProxyAlive(proxy)

    def test_prefetch_off(self):
        proxy = self.start_proxy(limits={"prefetch": 0})
        p = poplib.POP3(mh.HOST, proxy.port, timeout=60)
        p.user("pf1")
        p.pass_("pw1")
        for i in range(1, 4):
            p.retr(i)
        p.quit()
        self.assertEqual(prefetch_events(proxy), [])
        self.assertProxyAlive(proxy)

    def test_no_pipelining_no_prefetch(self):
        msgs = [mh.msg_plain(n=i, body="fake %d\n" % i * 20).replace(b"\r\n", b"\n")
                .replace(b"\n", b"\r\n") for i in range(5)]
        fake = FakePop3(msgs, pipelining=False)
        fake.start()
        try:
            proxy = self.start_proxy(upstream_port=fake.port)
            p = poplib.POP3(mh.HOST, proxy.port, timeout=60)
            p.user("x")
            p.pass_("y")
            p.stat()
            for i in range(1, 6):
                self.assertEqual(b"\r\n".join(p.retr(i)[1]) + b"\r\n", msgs[i - 1])
            p.quit()
            retrs = [c for c in fake.commands if c.startswith("RETR")]
            self.assertEqual(retrs, ["RETR %d" % i for i in range(1, 6)])
            self.assertIn("CAPA", fake.commands)
            self.assertEqual(prefetch_events(proxy), [])
            self.assertProxyAlive(proxy)
        finally:
            fake.stop()

    def test_upstream_lost_under_a_prefetch(self):
        """The server drops the connection when the prefetched RETR 2
        arrives: the client's RETR 2 gets a temporary error, not a hang."""
        msgs = [mh.msg_plain(n=i, body="fake %d\n" % i * 20).replace(b"\r\n", b"\n")
                .replace(b"\n", b"\r\n") for i in range(5)]
        fake = FakePop3(msgs, pipelining=True, close_on=2)
        fake.start()
        try:
            proxy = self.start_proxy(upstream_port=fake.port)
            with mh.RawPop3(proxy.port) as c:
                c.login("x", "y")
                c.cmd("STAT")
                st, body = c.cmd_multi("RETR 1")
                self.assertTrue(st.startswith(b"+OK"), st)
                c.send(b"RETR 2\r\n")
                rest = c.read_all(timeout=30)
            self.assertTrue(rest.startswith(b"-ERR [SYS/TEMP] mailmoat: upstream connection lost"),
                            rest[:200])
            self.assertEqual(rest.count(b"\r\n"), 1, rest[:200])
            self.assertProxyAlive(proxy)
        finally:
            fake.stop()


if __name__ == "__main__":
    unittest.main()
