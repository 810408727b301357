"""What TLS costs a client: the median time from connect() to the server's
greeting over 20 connections, straight to Dovecot (plain and TLS) and
through mailmoat in every arrangement (plain or TLS on either side), for
POP3 and IMAP. Printed only: no timing is asserted (shared machines,
sanitizer builds). Every greeting must still be a greeting."""

import socket
import statistics
import time
import unittest

from itbase import ProxyCase, TlsMixin, mh, out

N = 20
WARMUP = 2


class HandshakeCost(TlsMixin, ProxyCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()
        cls.imap_up = cls.st["imap_port"]
        lst, ups = cls.tls_listener_keys(), cls.tls_upstream_keys()
        both = dict(lst, **ups)
        cls.proxy = cls.class_proxy_listeners("handshake", [
            ("pop3", cls.up, {}), ("pop3", cls.pop3s_up, ups), ("pop3", cls.up, lst),
            ("pop3", cls.pop3s_up, both),
            ("imap", cls.imap_up, {}), ("imap", cls.imaps_up, ups), ("imap", cls.imap_up, lst),
            ("imap", cls.imaps_up, both)])

    def greet_ms(self, port, tls_name, greeting, bye):
        """Median milliseconds to the greeting line over N connections
        (after WARMUP unmeasured ones)."""
        times = []
        for i in range(WARMUP + N):
            t0 = time.perf_counter()
            if tls_name:
                s = mh.tls_connect(port, self.client_ctx, tls_name, timeout=30)
            else:
                s = socket.create_connection((mh.HOST, port), timeout=30)
            with s:
                buf = b""
                while b"\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                took = time.perf_counter() - t0
                self.assertTrue(buf.startswith(greeting), "port %d: %r" % (port, buf))
                s.sendall(bye)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
            if i >= WARMUP:
                times.append(took * 1000.0)
        return statistics.median(times)

    def measure(self, proto, plain_up, tls_up, ports, greeting, bye):
        rows = [
            ("direct plain", plain_up, None),
            ("direct TLS", tls_up, mh.TLS_UPSTREAM_NAME),
            ("plain -> mailmoat -> plain", ports[0], None),
            ("plain -> mailmoat -> TLS", ports[1], None),
            ("TLS -> mailmoat -> plain", ports[2], mh.TLS_PROXY_NAME),
            ("TLS -> mailmoat -> TLS", ports[3], mh.TLS_PROXY_NAME),
        ]
        res = {}
        for label, port, name in rows:
            res[label] = self.greet_ms(port, name, greeting, bye)
        out("%s: median time to greeting over %d connections%s" % (
            proto, N, " (sanitizer build)" if self.sanitized else ""))
        for label, _, _ in rows:
            out("  %-28s %7.2f ms" % (label, res[label]))
        out("  added by mailmoat: plain client, TLS upstream %+.2f ms vs direct TLS; "
            "TLS both sides %+.2f ms vs direct TLS" % (
                res["plain -> mailmoat -> TLS"] - res["direct TLS"],
                res["TLS -> mailmoat -> TLS"] - res["direct TLS"]))
        return res

    def test_pop3(self):
        self.measure("POP3", self.up, self.pop3s_up, self.proxy.ports[0:4], b"+OK", b"QUIT\r\n")

    def test_imap(self):
        self.measure("IMAP", self.imap_up, self.imaps_up, self.proxy.ports[4:8], b"* OK", b"a LOGOUT\r\n")


if __name__ == "__main__":
    unittest.main()
