"""SIGHUP also reloads the listeners' certificates and keys (renewed on disk,
e.g. by an ACME client): new connections get the new certificate, no
restart, no pause."""
import os
import shutil
import signal
import ssl
import time
import unittest

from itbase import ProxyCase, TlsMixin, mh


class TlsReload(TlsMixin, ProxyCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()

    def test_sighup_reloads_listener_certificate(self):
        d = os.path.join(self._tmp, "reload-tls")
        os.makedirs(d)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        shutil.copy(self.pki["proxy_fullchain"], cert)
        shutil.copy(self.pki["proxy_key"], key)
        p = self.start_proxy_listeners(
            [("pop3", self.up, {"tls": "implicit", "certificate": cert, "key": key})])
        with self.proxy_tls(p.port) as s:
            self.assertTrue(s.recv(100).startswith(b"+OK"))
        # the renewed certificate names another host: only it will verify
        shutil.copy(self.pki["upstream_cert"], cert)
        shutil.copy(self.pki["upstream_key"], key)
        with self.assertRaises(ssl.SSLCertVerificationError):
            with self.proxy_tls(p.port, name=mh.TLS_UPSTREAM_NAME) as s:
                s.recv(100)
        p.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "TLS certificates reloaded" not in p.log_text():
            self.assertLess(time.monotonic(), deadline, p.log_text()[-2000:])
            time.sleep(0.1)
        with self.proxy_tls(p.port, name=mh.TLS_UPSTREAM_NAME) as s:
            self.assertTrue(s.recv(100).startswith(b"+OK"))
        self.assertTrue(p.alive())


if __name__ == "__main__":
    unittest.main()
