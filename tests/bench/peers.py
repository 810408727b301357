#!/usr/bin/env python3
"""The peer proxies of the benchmarks, in front of a given Dovecot: the
nginx mail proxy and perdition, POP3 and IMAP, on free loopback ports.

Debian packages: nginx-light (or nginx) and libnginx-mod-mail; perdition.
Nothing system-wide is used or changed: each peer runs in the foreground
from its own configuration, pid and log files in the work directory
(started with Popen, stopped by that PID); the packaged services are never
started.

  nginx      `nginx -p WORK -e LOG -c WORK/nginx.conf` with `daemon off`,
             one worker (mailmoat's proxying is one event loop too), the
             mail module loaded from /usr/lib/nginx/modules. nginx asks an
             auth_http endpoint where to send each login: AuthServer, a
             small http.server on loopback (a thread of this process), says
             Auth-Status: OK and the Dovecot's address and port for the
             protocol. Its buffers are the shipped defaults.
  perdition  perdition.pop3 / perdition.imap4 --no_daemon, --ssl_mode none,
             no map library, every user to the Dovecot (--outgoing_server),
             a pid file in the work directory. perdition forks a child per
             connection, as it does in production.

  peers.py   starts both in front of a throwaway Dovecot and checks a
             login through each (a smoke test).
"""
import http.server
import os
import shutil
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "deploy", "lib"))
import mmharness as h  # noqa: E402

NGINX_MODULES = "/usr/lib/nginx/modules"


def _which(*names):
    for n in names:
        p = shutil.which(n) or (os.path.exists("/usr/sbin/" + n) and "/usr/sbin/" + n)
        if p:
            return p
    return None


def version(argv):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
        return r.stdout.decode("utf-8", "replace").strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def package_version(pkg):
    """The installed Debian package's version, or None."""
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.decode().strip() or None if r.returncode == 0 else None


def nginx_version():
    b = _which("nginx")
    return version([b, "-v"]) if b else None


def perdition_version():
    v = package_version("perdition")
    return "perdition " + v if v else None


class AuthServer:
    """nginx's auth_http endpoint: every login is OK, sent to the Dovecot
    port of its protocol."""

    def __init__(self, pop3_port, imap_port):
        ports = {"pop3": pop3_port, "imap": imap_port}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                proto = (self.headers.get("Auth-Protocol") or "pop3").lower()
                self.send_response(200)
                self.send_header("Auth-Status", "OK")
                self.send_header("Auth-Server", h.HOST)
                self.send_header("Auth-Port", str(ports.get(proto, pop3_port)))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer((h.HOST, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.t = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.t.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Proc:
    name = "peer"

    def __init__(self):
        self.proc = None
        self._out = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def _spawn(self, argv, out_path, ports):
        self._out = open(out_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._out, start_new_session=True)
        try:
            for p in ports:
                h.wait_port(p, 20.0, self.proc, what=self.name)
        except RuntimeError as e:
            self.stop()
            with open(out_path, errors="replace") as f:
                raise RuntimeError("%s: %s\n%s" % (self.name, e, f.read()[-3000:]))

    def stop(self, timeout=10.0):
        """SIGTERM to the process group this object started (the peer and
        the children it forked), SIGKILL after timeout."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, 9)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self.proc = None
        if self._out:
            self._out.close()
            self._out = None


class Nginx(_Proc):
    name = "nginx"

    def __init__(self, workdir, dovecot):
        super().__init__()
        self.workdir = os.path.abspath(os.path.join(workdir, "nginx"))
        os.makedirs(self.workdir, exist_ok=True)
        self.binary = _which("nginx")
        if not self.binary:
            raise RuntimeError("nginx not installed (Debian: nginx-light libnginx-mod-mail)")
        if not os.path.exists(os.path.join(NGINX_MODULES, "ngx_mail_module.so")):
            raise RuntimeError("the nginx mail module is missing (Debian: libnginx-mod-mail)")
        self.pop3_port, self.imap_port = h.free_ports(2)
        self.auth = AuthServer(dovecot.pop3_port, dovecot.imap_port)
        self.conf = os.path.join(self.workdir, "nginx.conf")
        self.log = os.path.join(self.workdir, "error.log")
        with open(self.conf, "w") as f:
            f.write("""# mailmoat benchmark peer: nginx mail proxy, loopback only
load_module {mods}/ngx_mail_module.so;
daemon off;
master_process on;
worker_processes 1;
pid {w}/nginx.pid;
error_log {log} warn;
events {{
  worker_connections 4096;
}}
mail {{
  auth_http {host}:{auth}/auth;
  proxy_pass_error_message on;
  pop3_auth plain;
  imap_auth plain login;
  server {{
    listen {host}:{p3};
    protocol pop3;
    proxy on;
  }}
  server {{
    listen {host}:{im};
    protocol imap;
    proxy on;
  }}
}}
""".format(mods=NGINX_MODULES, w=self.workdir, log=self.log, host=h.HOST,
           auth=self.auth.port, p3=self.pop3_port, im=self.imap_port))

    def start(self):
        self.auth.start()
        self._spawn([self.binary, "-p", self.workdir + "/", "-e", self.log, "-c", self.conf],
                    os.path.join(self.workdir, "nginx.out"), [self.pop3_port, self.imap_port])
        return self

    def stop(self, timeout=10.0):
        super().stop(timeout)
        if self.auth:
            self.auth.stop()
            self.auth = None


class Perdition:
    """perdition.pop3 and perdition.imap4, each its own process group."""

    name = "perdition"

    def __init__(self, workdir, dovecot):
        self.workdir = os.path.abspath(os.path.join(workdir, "perdition"))
        os.makedirs(self.workdir, exist_ok=True)
        h.make_traversable(self.workdir)
        self.binary = _which("perdition")
        if not self.binary:
            raise RuntimeError("perdition not installed (Debian: perdition)")
        self.pop3_port, self.imap_port = h.free_ports(2)
        self.dovecot = dovecot
        self.procs = []

    def _argv(self, proto, port, upstream, tag):
        return [self.binary, "--protocol", proto, "--no_daemon",
                "--bind_address", h.HOST, "--listen_port", str(port),
                "--outgoing_server", "%s:%d" % (h.HOST, upstream),
                "--map_library", "", "--ssl_mode", "none", "--no_lookup",
                "--config_file", "/dev/null",
                "--pid_file", os.path.join(self.workdir, "perdition-%s.pid" % tag),
                "--connect_relog", "0", "--quiet"]

    def start(self):
        for proto, port, up, tag in (("POP3", self.pop3_port, self.dovecot.pop3_port, "pop3"),
                                     ("IMAP4", self.imap_port, self.dovecot.imap_port, "imap4")):
            p = _Proc()
            p.name = "perdition " + tag
            self.procs.append(p)
            p._spawn(self._argv(proto, port, up, tag),
                     os.path.join(self.workdir, "perdition-%s.out" % tag), [port])
        return self

    def stop(self, timeout=10.0):
        for p in self.procs:
            p.stop(timeout)
        self.procs = []


def smoke():
    import poplib
    import imaplib
    import tempfile
    work = tempfile.mkdtemp(prefix="mailmoat-bench-peers-")
    h.make_traversable(work)
    dv = h.Dovecot(os.path.join(work, "dovecot"), {"bench": "benchpw"})
    msg = h.msg_plain(to="bench@example.test")
    dv.add_message("bench", msg)
    dv.start()
    peers = []
    bad = 0
    try:
        peers = [Nginx(work, dv).start(), Perdition(work, dv).start()]
        for p in peers:
            c = poplib.POP3(h.HOST, p.pop3_port, timeout=30)
            c.user("bench")
            c.pass_("benchpw")
            n = c.stat()[0]
            body = b"\r\n".join(c.retr(1)[1]) + b"\r\n"
            c.quit()
            i = imaplib.IMAP4(h.HOST, p.imap_port, timeout=30)
            i.login("bench", "benchpw")
            i.select("INBOX", readonly=True)
            typ, d = i.fetch("1", "(BODY.PEEK[])")
            i.logout()
            want = msg.replace(b"\n", b"\r\n")
            ok = n == 1 and body == want and d[0][1] == want
            bad += 0 if ok else 1
            print("%-10s pop3=%d imap=%d pop3 STAT=%d RETR %d bytes; IMAP FETCH %d bytes: %s"
                  % (p.name, p.pop3_port, p.imap_port, n, len(body), len(d[0][1]),
                     "ok" if ok else "MISMATCH"))
    finally:
        for p in peers:
            p.stop()
        dv.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("nginx: %s; perdition: %s" % (nginx_version(), perdition_version()))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(smoke())
