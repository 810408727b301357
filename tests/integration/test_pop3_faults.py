"""Faults: a client that leaves mid-scan or mid-transfer; an upstream that
drops or stalls in the middle of a message (a small scripted POP3 server,
since a real one will not do that on cue); an upstream that is not there;
a message over spool.max_message_size. The proxy must give the client
-ERR or a closed connection, never a complete-looking message, and keep
serving everyone else."""

import socket
import threading
import time
import unittest

from itbase import ProxyCase, mh, out

GOOD = (b"From: Fake Server <fake@example.test>\r\nTo: x@example.test\r\n"
        b"Subject: complete message\r\nMessage-ID: <good@fake.example>\r\n\r\n" +
        b"".join(b"line %04d of a complete message\r\n" % i for i in range(60)))
HALF = (b"From: Fake Server <fake@example.test>\r\nTo: x@example.test\r\n"
        b"Subject: this one is cut in half\r\nMessage-ID: <half@fake.example>\r\n\r\n" +
        b"".join(b"line %04d of a message the server will not finish\r\n" % i for i in range(200)))


class FakePop3:
    """A scripted POP3 server on 127.0.0.1 for faults a real server will not
    produce. Message 1 is served whole; RETR/TOP of message 2 sends the
    status line and half of the message, then mode decides: "drop" closes
    the connection, "stall" sends nothing more (until the test ends)."""

    def __init__(self, mode="drop"):
        self.mode = mode
        self.msgs = [GOOD, HALF]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((mh.HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop_ev = threading.Event()
        self.conns = []
        self.commands = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self):
        self.stop_ev.set()
        try:
            self.sock.close()
        except OSError:
            pass
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(60)
            conn.sendall(b"+OK fake POP3 ready <1896.697170952@fake.example>\r\n")
            f = conn.makefile("rb")
            while not self.stop_ev.is_set():
                line = f.readline(4096)
                if not line:
                    return
                w = line.strip().split()
                verb = w[0].upper().decode() if w else ""
                self.commands.append(verb)
                arg = int(w[1]) if len(w) > 1 and w[1].isdigit() else None
                if verb == "CAPA":
                    conn.sendall(b"+OK\r\nTOP\r\nUIDL\r\nUSER\r\nPIPELINING\r\n.\r\n")
                elif verb in ("USER", "PASS", "APOP", "NOOP", "RSET"):
                    conn.sendall(b"+OK\r\n")
                elif verb == "STAT":
                    conn.sendall(b"+OK 2 %d\r\n" % sum(len(m) for m in self.msgs))
                elif verb in ("LIST", "UIDL") and arg is None:
                    body = b"".join(b"%d %s\r\n" % (i, (b"%d" % len(m)) if verb == "LIST" else b"fake-%d" % i)
                                    for i, m in enumerate(self.msgs, 1))
                    conn.sendall(b"+OK\r\n" + body + b".\r\n")
                elif verb in ("LIST", "UIDL") and arg in (1, 2):
                    v = (b"%d" % len(self.msgs[arg - 1])) if verb == "LIST" else b"fake-%d" % arg
                    conn.sendall(b"+OK %d %s\r\n" % (arg, v))
                elif verb in ("RETR", "TOP") and arg == 2 and self.mode == "silent":
                    # never answers at all: not even the status line
                    self.stop_ev.wait(120)
                    return
                elif verb in ("RETR", "TOP") and arg in (1, 2):
                    m = self.msgs[arg - 1]
                    conn.sendall(b"+OK %d octets\r\n" % len(m))
                    if arg == 1:
                        conn.sendall(m + b".\r\n")
                        continue
                    conn.sendall(m[:len(m) // 2])
                    if self.mode == "drop":
                        conn.shutdown(socket.SHUT_RDWR)
                        conn.close()
                        return
                    self.stop_ev.wait(120)
                    return
                elif verb == "QUIT":
                    conn.sendall(b"+OK bye\r\n")
                    conn.close()
                    return
                else:
                    conn.sendall(b"-ERR unknown command\r\n")
        except OSError:
            return


class UpstreamFaults(ProxyCase):

    def fake(self, mode):
        f = FakePop3(mode)
        self.addCleanup(f.close)
        return f

    def assertNoCompleteMessage(self, status, rest):
        """After RETR 2: -ERR, or +OK followed by a close, but never a
        terminated message."""
        if status.startswith(b"-ERR"):
            return
        self.assertNotIn(b"\r\n.\r\n", rest, "a complete-looking message from a broken upstream")
        self.assertFalse(rest.endswith(b".\r\n"))

    def retr2(self, port, timeout):
        with mh.RawPop3(port) as c:
            c.login("user", "whatever")
            st, body = c.cmd_multi("RETR 1")
            self.assertEqual(body, GOOD + b".\r\n", "the whole message 1 must pass")
            t0 = time.monotonic()
            c.send(b"RETR 2\r\n")
            try:
                c.sock.settimeout(timeout)
                status = c.readline()
            except (EOFError, OSError):
                status = b""
            rest = b"" if status.startswith(b"-ERR") else c.read_all(timeout=timeout)
            return status, rest, time.monotonic() - t0

    def test_upstream_drops_mid_message(self):
        fake = self.fake("drop")
        proxy = self.start_proxy(upstream_port=fake.port)
        status, rest, took = self.retr2(proxy.port, 30)
        self.assertNoCompleteMessage(status, rest)
        out("upstream dropped mid-message: client got %r (+%d bytes) after %.2f s"
            % (status[:60], len(rest), took))
        # The proxy is fine and serves the next session.
        self.assertProxyAlive(proxy)
        with mh.RawPop3(proxy.port) as c:
            c.login("user", "whatever")
            self.assertEqual(c.cmd_multi("RETR 1")[1], GOOD + b".\r\n")

    def test_upstream_stalls_mid_message(self):
        fake = self.fake("stall")
        proxy = self.start_proxy(upstream_port=fake.port,
                                 timeouts={"upstream_idle": 2, "client_idle": 600})
        status, rest, took = self.retr2(proxy.port, 30)
        self.assertNoCompleteMessage(status, rest)
        self.assertLess(took, 15, "upstream_idle: 2 did not end the stalled transfer")
        out("upstream stalled mid-message: client got %r after %.2f s (upstream_idle 2 s)"
            % (status[:60], took))
        self.assertProxyAlive(proxy)

    def test_upstream_never_answers(self):
        """An upstream that takes a command and never says a word: the
        idle time-out still ends the wait (from the command, not from
        the last byte the upstream sent long before)."""
        fake = self.fake("silent")
        proxy = self.start_proxy(upstream_port=fake.port,
                                 timeouts={"upstream_idle": 2, "client_idle": 600})
        status, rest, took = self.retr2(proxy.port, 30)
        self.assertTrue(status.startswith(b"-ERR"), status)
        self.assertGreater(took, 1.5, "timed out before upstream_idle")
        self.assertLess(took, 15, "upstream_idle: 2 did not end the wait")
        self.assertProxyAlive(proxy)

    def test_upstream_absent(self):
        dead = mh.free_port()
        proxy = self.start_proxy(upstream_port=dead)
        s = socket.create_connection((mh.HOST, proxy.port), timeout=30)
        try:
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
                if b"\r\n" in data:
                    break
        finally:
            s.close()
        self.assertTrue(data == b"" or data.startswith(b"-ERR"), data)
        self.assertProxyAlive(proxy)


class ClientFaults(ProxyCase):
    """A client that leaves while its 50 MiB message is captured, scanned or
    sent; the proxy keeps serving another user meanwhile."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_proxy()
        info = cls.st["users"]["alice"]
        cls.alice_ref = mh.fetch_all_raw(cls.up, "alice", info["password"])

    def alice_works(self):
        got = mh.fetch_all_raw(self.proxy.port, *self.user("alice"))
        for g, w in zip(got["RETR"], self.alice_ref["RETR"]):
            self.assertEqual(g, w)

    def close_lines(self, user):
        return [e for e in self.proxy.log_events()
                if e.get("user") == user and "close" in e["_words"]]

    def leave(self, after):
        """Logs in as carol, sends RETR 1 (the big message), and closes the
        socket after `after` (seconds, or ('bytes', n))."""
        before = len(self.close_lines("carol"))
        c = mh.RawPop3(self.proxy.port)
        c.login(*self.user("carol"))
        c.send(b"RETR 1\r\n")
        if isinstance(after, tuple):
            got = 0
            while got < after[1]:
                chunk = c.sock.recv(1 << 16)
                self.assertTrue(chunk, "closed before %d bytes" % after[1])
                got += len(chunk)
        elif after:
            time.sleep(after)
        c.close()
        # Others are served meanwhile.
        self.alice_works()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(self.close_lines("carol")) == before:
            time.sleep(0.1)
        lines = self.close_lines("carol")[before:]
        self.assertTrue(lines, "no close line logged for the session the client left")
        # The close is the client's doing: "client closed", "client write
        # failed", or the reset the client's close caused.
        self.assertRegex(lines[0].get("reason", ""), r"client|reset", lines[0]["_line"])
        self.assertProxyAlive(self.proxy)
        return lines[0]

    def test_leave_right_after_retr(self):
        self.leave(0)

    def test_leave_mid_scan(self):
        self.leave(0.8)
        time.sleep(3)          # let the orphaned scan finish
        self.assertProxyAlive(self.proxy)
        self.alice_works()

    def test_leave_mid_transfer(self):
        e = self.leave(("bytes", 1 << 20))
        out("client left mid-transfer: %s" % e["_line"])

    def test_zz_many_leave_at_once(self):
        socks = []
        for _ in range(4):
            c = mh.RawPop3(self.proxy.port)
            c.login(*self.user("carol"))
            c.send(b"RETR 1\r\n")
            socks.append(c)
        time.sleep(0.3)
        for c in socks:
            c.close()
        self.alice_works()
        time.sleep(2)
        self.assertProxyAlive(self.proxy)
        rss, hwm = self.proxy.read_rss()
        out("after 4 abandoned 50 MiB transfers: VmRSS %s KiB, VmHWM %s KiB" % (rss, hwm))


class Oversize(ProxyCase):

    def test_message_over_max_message_size(self):
        """README: never delivered as if scanned; -ERR, and the session
        goes on."""
        proxy = self.start_proxy(max_message_size="1M")
        with mh.RawPop3(proxy.port) as c:
            c.login(*self.user("carol"))
            st = c.cmd("RETR 1")
            self.assertTrue(st.startswith(b"-ERR"), st)
            st, body = c.cmd_multi("RETR 2")
            self.assertTrue(st.startswith(b"+OK"), st)
            with mh.RawPop3(self.up) as d:
                d.login(*self.user("carol"))
                self.assertEqual(body, d.cmd_multi("RETR 2")[1])
            self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))


if __name__ == "__main__":
    unittest.main()
