"""mmharness - shared test and demo harness for mailmoat (Python 3, stdlib only).

Used by deploy/demo.py and tests/integration/. It owns:

- free-port picking and port waiting on 127.0.0.1 (loopback only, always);
- a throwaway Dovecot (started as root from its own configuration, its own
  base_dir/state_dir/log under a work directory, POP3 and IMAP on free
  ports, plaintext auth, passwd-file users with {PLAIN} passwords so that
  USER/PASS, AUTH PLAIN/LOGIN and APOP all work);
- a maildir mailbox builder with clean and malicious sample messages and a
  streaming generator for big messages;
- starting and stopping mailmoat from a generated YAML configuration, with
  its stderr log captured to a file and its peak RSS read before it stops;
- a raw POP3 client that keeps the exact wire bytes, and a parser for the
  key=value log lines.

Nothing here talks to anything but 127.0.0.1 (a Dovecot can also run in
a network namespace a test made, on an address the test gave it there).
"""

import base64
import datetime
import email.utils
import glob
import hashlib
import json
import os
import pwd
import grp
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"
DOVECOT_BIN = os.environ.get("DOVECOT_BIN", "/usr/sbin/dovecot")
CLAM_ZIP = "/usr/share/clamav-testfiles/clam.zip"
# The EICAR anti-virus test string, assembled so that this file itself is
# not a test virus for scanners that look at the repository.
EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")


# ---------------------------------------------------------------- ports ----

def free_ports(n=1):
    """Returns n distinct TCP ports that were free on 127.0.0.1 a moment ago.

    The sockets are held open until all n are picked so that the same port
    is not handed out twice; another process may still take one afterwards,
    which callers treat as a start-up failure.
    """
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def free_port():
    return free_ports(1)[0]


def port_listening(port, host=HOST, pid=None):
    """True when some socket LISTENs on host:port (read from /proc/net/tcp,
    so that checking opens no connection and creates no session). With pid,
    looks in that process's network namespace (/proc/PID/net/tcp)."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    try:
        with open("/proc/%d/net/tcp" % pid if pid else "/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return True
                # Also accept a wildcard listener on that port.
                if parts[1] == "00000000:%04X" % port and parts[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def wait_port(port, timeout=15.0, proc=None, what="service", host=HOST, pid=None):
    """Waits until port listens on host (127.0.0.1). Raises RuntimeError on
    time-out or when proc (a Popen) exits first. pid: see port_listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_listening(port, host, pid):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("%s exited with status %s before listening on %d"
                               % (what, proc.returncode, port))
        time.sleep(0.02)
    raise RuntimeError("%s did not listen on %s:%d within %.0f s" % (what, host, port, timeout))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        return False
    return True


def pid_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def wait_pid_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def make_traversable(path):
    """Sets o+x on path and every parent directory up to / (Dovecot's auth
    process runs as user dovecot and must reach the users file; the mail
    processes run as the dedicated mail uid)."""
    path = os.path.abspath(path)
    while True:
        st = os.stat(path)
        if not st.st_mode & 0o001:
            os.chmod(path, (st.st_mode & 0o7777) | 0o011)
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


# ------------------------------------------------------------ test PKI ----
#
# Certificates for the TLS tests, made with the openssl command-line tool
# (EC P-256 keys: fast to make, fast to handshake). Everything is for the
# loopback: names under test.example, IP SAN 127.0.0.1.

TLS_UPSTREAM_NAME = "mail.test.example"       # the upstream Dovecot's certificate
TLS_PROXY_NAME = "proxy.test.example"         # mailmoat's own listener certificate
TLS_EXPIRED_NAME = "expired.test.example"     # a leaf of the test CA, expired in 2021
TLS_UNKNOWN_NAME = "unknown.test.example"     # a leaf of another CA

_PKI_CNF = """# mmharness test PKI
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_intermediate]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = $ENV::MMH_SAN
[ca]
default_ca = testca
[testca]
dir = $ENV::MMH_CADIR
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
organizationName = optional
commonName = supplied
"""


def openssl(*args, env=None, input=None):
    """Runs the openssl command-line tool; raises RuntimeError with its
    output when it fails. Returns its stdout (bytes)."""
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(["openssl"] + [str(a) for a in args], input=input,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed (%d): %s" % (
            " ".join(str(a) for a in args[:2]), r.returncode, r.stderr.decode("utf-8", "replace")))
    return r.stdout


def _pki_key(path):
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    os.chmod(path, 0o600)


def _pki_ca(d, name, cn, cnf, issuer=None):
    """A CA certificate and key: self-signed (a root) or, with issuer (the
    (cert, key) of a root), an intermediate."""
    key = os.path.join(d, name + ".key")
    cert = os.path.join(d, name + ".pem")
    _pki_key(key)
    if issuer is None:
        openssl("req", "-config", cnf, "-new", "-x509", "-key", key, "-subj", "/O=mailmoat tests/CN=" + cn,
                "-days", "3650", "-sha256", "-extensions", "v3_ca", "-set_serial", _serial(), "-out", cert,
                env={"MMH_SAN": "DNS:unused", "MMH_CADIR": d})
    else:
        csr = os.path.join(d, name + ".csr")
        openssl("req", "-config", cnf, "-new", "-key", key, "-subj", "/O=mailmoat tests/CN=" + cn,
                "-out", csr, env={"MMH_SAN": "DNS:unused", "MMH_CADIR": d})
        openssl("x509", "-req", "-in", csr, "-CA", issuer[0], "-CAkey", issuer[1], "-days", "3650",
                "-sha256", "-set_serial", _serial(), "-extfile", cnf, "-extensions", "v3_intermediate",
                "-out", cert, env={"MMH_SAN": "DNS:unused", "MMH_CADIR": d})
    return cert, key


def _serial():
    return "0x" + os.urandom(12).hex()


def _pki_leaf(d, name, dns, issuer, cnf, ip=HOST, expired=False):
    """A server certificate for dns (and IP ip) signed by issuer (cert, key).
    expired: valid from 2020-01-01 to 2021-01-01 (made with `openssl ca`,
    the one 3.0 command that takes explicit dates)."""
    key = os.path.join(d, name + ".key")
    cert = os.path.join(d, name + ".pem")
    csr = os.path.join(d, name + ".csr")
    san = "DNS:%s" % dns + (",IP:%s" % ip if ip else "")
    env = {"MMH_SAN": san, "MMH_CADIR": os.path.join(d, "cadb")}
    _pki_key(key)
    openssl("req", "-config", cnf, "-new", "-key", key, "-subj", "/O=mailmoat tests/CN=" + dns,
            "-out", csr, env=env)
    if not expired:
        openssl("x509", "-req", "-in", csr, "-CA", issuer[0], "-CAkey", issuer[1], "-days", "3650",
                "-sha256", "-set_serial", _serial(), "-extfile", cnf, "-extensions", "v3_leaf",
                "-out", cert, env=env)
    else:
        db = env["MMH_CADIR"]
        os.makedirs(os.path.join(db, "newcerts"), exist_ok=True)
        open(os.path.join(db, "index.txt"), "a").close()
        with open(os.path.join(db, "serial"), "w") as f:
            f.write(os.urandom(8).hex().upper() + "\n")
        openssl("ca", "-config", cnf, "-batch", "-notext", "-in", csr, "-cert", issuer[0],
                "-keyfile", issuer[1], "-startdate", "20200101000000Z", "-enddate", "20210101000000Z",
                "-extensions", "v3_leaf", "-out", cert, env=env)
    return cert, key


def make_test_pki(d):
    """Makes the test PKI in directory d (created) and returns a dict of
    file paths:

      ca                the test root CA (what clients and the proxy trust)
      other_ca          another root CA, trusted by no one
      upstream_cert/key mail.test.example + IP 127.0.0.1, signed by ca
      expired_cert/key  expired.test.example + IP 127.0.0.1, signed by ca,
                        valid 2020-01-01 .. 2021-01-01
      unknown_cert/key  unknown.test.example + IP 127.0.0.1, signed by other_ca
      other_name_cert/key  mail.test.example + IP 127.0.0.1, signed by
                        other_ca (same name, unknown issuer)
      intermediate      an intermediate CA under ca
      proxy_cert        proxy.test.example + IP 127.0.0.1, signed by the
                        intermediate; proxy_fullchain is that leaf followed
                        by the intermediate (what a listener serves)
      proxy_key
      names             {upstream, proxy, expired, unknown}
    """
    d = os.path.abspath(d)
    os.makedirs(d, exist_ok=True)
    cnf = os.path.join(d, "openssl.cnf")
    with open(cnf, "w") as f:
        f.write(_PKI_CNF)
    ca = _pki_ca(d, "ca", "mailmoat test root CA", cnf)
    other = _pki_ca(d, "other-ca", "mailmoat untrusted other CA", cnf)
    inter = _pki_ca(d, "intermediate", "mailmoat test intermediate CA", cnf, issuer=ca)
    up = _pki_leaf(d, "upstream", TLS_UPSTREAM_NAME, ca, cnf)
    expired = _pki_leaf(d, "expired", TLS_EXPIRED_NAME, ca, cnf, expired=True)
    unknown = _pki_leaf(d, "unknown", TLS_UNKNOWN_NAME, other, cnf)
    other_name = _pki_leaf(d, "upstream-other-ca", TLS_UPSTREAM_NAME, other, cnf)
    proxy = _pki_leaf(d, "proxy", TLS_PROXY_NAME, inter, cnf)
    fullchain = os.path.join(d, "proxy-fullchain.pem")
    with open(fullchain, "wb") as out:
        for p in (proxy[0], inter[0]):
            with open(p, "rb") as f:
                out.write(f.read())
    for fn in os.listdir(d):
        if fn.endswith(".csr"):
            os.unlink(os.path.join(d, fn))
    return {"dir": d, "ca": ca[0], "ca_key": ca[1], "other_ca": other[0], "other_ca_key": other[1],
            "intermediate": inter[0],
            "upstream_cert": up[0], "upstream_key": up[1],
            "expired_cert": expired[0], "expired_key": expired[1],
            "unknown_cert": unknown[0], "unknown_key": unknown[1],
            "other_name_cert": other_name[0], "other_name_key": other_name[1],
            "proxy_cert": proxy[0], "proxy_fullchain": fullchain, "proxy_key": proxy[1],
            "names": {"upstream": TLS_UPSTREAM_NAME, "proxy": TLS_PROXY_NAME,
                      "expired": TLS_EXPIRED_NAME, "unknown": TLS_UNKNOWN_NAME}}


def spki_pin(cert_path):
    """"sha256//BASE64": the SHA-256 of the certificate's
    SubjectPublicKeyInfo (DER), base64 (the upstream_pin format, as curl's
    --pinnedpubkey and HPKP write it)."""
    pub = openssl("x509", "-in", cert_path, "-noout", "-pubkey")
    der = openssl("pkey", "-pubin", "-outform", "DER", input=pub)
    return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def _pki_cnf_in(d):
    """The openssl configuration of the test PKI in directory d (created;
    written once), for the helpers below."""
    d = os.path.abspath(d)
    os.makedirs(d, exist_ok=True)
    cnf = os.path.join(d, "openssl.cnf")
    if not os.path.exists(cnf):
        with open(cnf, "w") as f:
            f.write(_PKI_CNF)
    return cnf


def make_ca(d, name, cn):
    """A self-signed root CA (EC P-256, ten years) in directory d (created):
    returns (cert, key), the files d/NAME.pem and d/NAME.key."""
    return _pki_ca(os.path.abspath(d), name, cn, _pki_cnf_in(d))


def make_intercept_ca(d, name="intercept-ca", cn="mailmoat test intercept CA"):
    """The local CA of TLS interception (a transparent listener's
    `intercept_ca: {certificate, key}`): a root of its own, trusted by the
    test's clients only. Returns (cert, key)."""
    return make_ca(d, name, cn)


def make_server_cert(d, name, dns, issuer, ip=HOST):
    """A server certificate for the DNS name dns (and the IP address ip;
    None for none) signed by issuer, a (cert, key) such as make_ca's.
    Returns (cert, key), the files d/NAME.pem and d/NAME.key."""
    d = os.path.abspath(d)
    cnf = _pki_cnf_in(d)
    cert, key = _pki_leaf(d, name, dns, issuer, cnf, ip=ip)
    csr = os.path.join(d, name + ".csr")
    if os.path.exists(csr):
        os.unlink(csr)
    return cert, key


# -------------------------------------------------------------- dovecot ----

def mail_ids():
    """The uid and gid Dovecot's mail processes run as: `nobody`/`nogroup`
    (Dovecot refuses uid 0 for mail access)."""
    pw = pwd.getpwnam("nobody")
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = pw.pw_gid
    return pw.pw_uid, gid


class Dovecot:
    """A throwaway Dovecot instance rooted at workdir.

    users maps user name -> password. Add messages with add_message() before
    or after start() (Dovecot picks up new maildir files on the next login).

    tls: ssl = yes, so that the plain listeners offer STLS/STARTTLS; the
    certificate is ssl_cert/ssl_key, or a self-signed one for localhost.
    implicit_tls (implies tls): also pop3s and imaps listeners (TLS from the
    first byte) on free ports, self.pop3s_port and self.imaps_port.
    sni_certs: {server name: (cert, key)}, served to clients that send
    that name as SNI (Dovecot's local_name blocks).
    listen_host: the address every listener binds (127.0.0.1).
    netns: the name of a network namespace (ip netns) to run Dovecot in,
    started with `ip netns exec NETNS`; give the ports explicitly then
    (free ones are picked on this namespace's loopback).
    """

    def __init__(self, workdir, users, pop3_port=None, imap_port=None, tls=False,
                 compress=False, implicit_tls=False, ssl_cert=None, ssl_key=None,
                 sni_certs=None, pop3s_port=None, imaps_port=None, listen_host=HOST,
                 netns=None):
        self.workdir = os.path.abspath(workdir)
        self.listen_host = listen_host
        self.netns = netns
        self.tls = tls or implicit_tls
        self.implicit_tls = implicit_tls
        self.ssl_cert = ssl_cert
        self.ssl_key = ssl_key
        self.sni_certs = dict(sni_certs or {})
        self.pop3s_port = self.imaps_port = None
        if implicit_tls:
            ps, is_ = free_ports(2)
            self.pop3s_port = pop3s_port or ps
            self.imaps_port = imaps_port or is_
        # compress: load imap_zlib so that IMAP offers COMPRESS=DEFLATE
        # (RFC 4978), which the proxy must hide.
        self.compress = compress
        self.users = dict(users)
        if pop3_port is None or imap_port is None:
            p, i = free_ports(2)
            pop3_port = pop3_port or p
            imap_port = imap_port or i
        self.pop3_port = pop3_port
        self.imap_port = imap_port
        self.config_path = os.path.join(self.workdir, "dovecot.conf")
        self.base_dir = os.path.join(self.workdir, "run")
        self.state_dir = os.path.join(self.workdir, "state")
        self.log_path = os.path.join(self.workdir, "dovecot.log")
        self.users_path = os.path.join(self.workdir, "users")
        self.home_root = os.path.join(self.workdir, "home")
        self.pid = None
        self._seq = {}
        self.uid, self.gid = mail_ids()
        os.makedirs(self.workdir, exist_ok=True)
        make_traversable(self.workdir)
        for u in self.users:
            self.maildir(u)

    def home(self, user):
        return os.path.join(self.home_root, user)

    def maildir(self, user):
        """Creates (if needed) and returns the user's Maildir path."""
        md = os.path.join(self.home(user), "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        self._chown_tree(self.home_root)
        return md

    def _chown_tree(self, top):
        for dirpath, dirnames, filenames in os.walk(top):
            os.chown(dirpath, self.uid, self.gid)
            for fn in filenames:
                os.chown(os.path.join(dirpath, fn), self.uid, self.gid)

    def _next_name(self, user):
        # Dovecot assigns UIDs to new maildir files in the order of the
        # timestamp that starts the file name: keep them increasing so the
        # POP3 message numbers follow the order of add_message() calls.
        n = self._seq.get(user, 0) + 1
        md = self.maildir(user)
        existing = len(os.listdir(os.path.join(md, "new"))) + len(os.listdir(os.path.join(md, "cur")))
        n = max(n, existing + 1)
        self._seq[user] = n
        return "%d.M%06dP%d.mmharness" % (1600000000 + n, n, os.getpid())

    def add_message(self, user, data):
        """Writes one message (bytes with LF line ends, as maildir stores
        them; Dovecot serves them with CRLF) to the user's Maildir/new.
        Returns the file path."""
        md = self.maildir(user)
        name = self._next_name(user)
        tmp = os.path.join(md, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chown(tmp, self.uid, self.gid)
        final = os.path.join(md, "new", name)
        os.rename(tmp, final)
        return final

    def add_message_streamed(self, user, writer):
        """Like add_message, but writer(fileobj) writes the content (for
        messages too big to build in memory)."""
        md = self.maildir(user)
        name = self._next_name(user)
        tmp = os.path.join(md, "tmp", name)
        with open(tmp, "wb") as f:
            writer(f)
        os.chown(tmp, self.uid, self.gid)
        final = os.path.join(md, "new", name)
        os.rename(tmp, final)
        return final

    def write_config(self):
        uid, gid = self.uid, self.gid
        with open(self.users_path, "w") as f:
            for u, pw in self.users.items():
                f.write("%s:{PLAIN}%s:%d:%d::%s::\n" % (u, pw, uid, gid, self.home(u)))
        os.chmod(self.users_path, 0o644)
        ssl = "ssl = no"
        if self.tls and self.ssl_cert:
            ssl = "ssl = yes\nssl_cert = <%s\nssl_key = <%s" % (self.ssl_cert, self.ssl_key)
            for name, (c, k) in sorted(self.sni_certs.items()):
                ssl += "\nlocal_name %s {\n  ssl_cert = <%s\n  ssl_key = <%s\n}" % (name, c, k)
        elif self.tls:
            # A self-signed certificate, so that Dovecot offers STLS (the
            # proxy must hide it) while plaintext logins stay allowed.
            cert = os.path.join(self.workdir, "cert.pem")
            key = os.path.join(self.workdir, "key.pem")
            if not os.path.exists(cert):
                subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                "-subj", "/CN=localhost", "-days", "2", "-keyout", key, "-out", cert],
                               check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                os.chmod(key, 0o600)
            ssl = "ssl = yes\nssl_cert = <%s\nssl_key = <%s" % (cert, key)
        conf = """# mmharness throwaway Dovecot: loopback only, test users.
instance_name = mmharness-{pop3}
base_dir = {base}
state_dir = {state}
log_path = {log}
info_log_path = {log}
listen = {host}
protocols = pop3 imap
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login apop
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {users}
}}
userdb {{
  driver = passwd-file
  args = {users}
}}
mail_location = maildir:~/Maildir
service pop3-login {{
  inet_listener pop3 {{
    address = {host}
    port = {pop3}
  }}
  inet_listener pop3s {{
{pop3s}
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap}
  }}
  inet_listener imaps {{
{imaps}
  }}
}}
# Tests fail logins on purpose, all from 127.0.0.1: switch off the growing
# per-IP auth penalty (Dovecot's documented way: the auth process cannot
# reach anvil's penalty socket).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol pop3 {{
  mail_max_userip_connections = 100
}}
protocol imap {{
  mail_max_userip_connections = 100{imap_plugins}
}}
""".format(host=self.listen_host, base=self.base_dir, state=self.state_dir, log=self.log_path,
           users=self.users_path, pop3=self.pop3_port, imap=self.imap_port, ssl=ssl,
           pop3s=self._tls_listener(self.pop3s_port, self.listen_host),
           imaps=self._tls_listener(self.imaps_port, self.listen_host),
           imap_plugins="\n  mail_plugins = $mail_plugins imap_zlib" if self.compress else "")
        with open(self.config_path, "w") as f:
            f.write(conf)
        os.chmod(self.config_path, 0o644)

    @staticmethod
    def _tls_listener(port, host=HOST):
        if not port:
            return "    port = 0"
        return "    address = %s\n    port = %d\n    ssl = yes" % (host, port)

    def start(self, timeout=20.0):
        """Starts Dovecot (it daemonizes) and waits until its ports listen.
        Returns the master PID."""
        self.write_config()
        for d in (self.base_dir, self.state_dir):
            os.makedirs(d, exist_ok=True)
        # Dovecot daemonizes; its master keeps the descriptors it was given,
        # so its output goes to a file (a pipe would never see EOF).
        out_path = os.path.join(self.workdir, "dovecot.start.out")
        with open(out_path, "wb") as out:
            netns = ["ip", "netns", "exec", self.netns] if self.netns else []
            r = subprocess.run(netns + [DOVECOT_BIN, "-c", self.config_path],
                               stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        if r.returncode != 0:
            with open(out_path, errors="replace") as f:
                said = f.read()
            raise RuntimeError("dovecot failed to start (%d): %s\n%s" % (
                r.returncode, said, self.log_tail()))
        deadline = time.monotonic() + timeout
        pidfile = os.path.join(self.base_dir, "master.pid")
        while time.monotonic() < deadline:
            if os.path.exists(pidfile):
                try:
                    with open(pidfile) as f:
                        self.pid = int(f.read().strip())
                    break
                except ValueError:
                    pass
            time.sleep(0.02)
        if self.pid is None:
            raise RuntimeError("dovecot wrote no master.pid\n" + self.log_tail())
        # Listening sockets are looked up in the master's own network
        # namespace (its /proc/PID/net/tcp) when it runs in another one.
        where = {"host": self.listen_host, "pid": self.pid if self.netns else None}
        try:
            wait_port(self.pop3_port, max(1.0, deadline - time.monotonic()), what="dovecot pop3", **where)
            wait_port(self.imap_port, max(1.0, deadline - time.monotonic()), what="dovecot imap", **where)
            for port, what in ((self.pop3s_port, "dovecot pop3s"), (self.imaps_port, "dovecot imaps")):
                if port:
                    wait_port(port, max(1.0, deadline - time.monotonic()), what=what, **where)
        except RuntimeError:
            self.stop()
            raise RuntimeError("dovecot did not listen\n" + self.log_tail())
        return self.pid

    def stop(self, timeout=15.0):
        if self.pid is not None:
            stop_dovecot_pid(self.pid, self.config_path, timeout)
            self.pid = None

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no dovecot log)"

    def state(self):
        st = {"pid": self.pid, "workdir": self.workdir, "config": self.config_path,
              "log": self.log_path, "host": self.listen_host, "pop3_port": self.pop3_port,
              "imap_port": self.imap_port}
        if self.implicit_tls:
            st["pop3s_port"] = self.pop3s_port
            st["imaps_port"] = self.imaps_port
        return st


def stop_dovecot_pid(pid, config_path=None, timeout=15.0):
    """Stops the Dovecot master pid (SIGTERM, then SIGKILL after timeout) and
    waits for it. When config_path is given, a pid whose command line does
    not mention it is left alone (the pid was reused). Returns True when a
    process was stopped."""
    if not pid or not pid_alive(pid):
        return False
    cmd = pid_cmdline(pid)
    if config_path and config_path not in cmd:
        return False
    if "dovecot" not in cmd:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    if not wait_pid_gone(pid, timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_pid_gone(pid, 5)
    return True


# ------------------------------------------------------------- messages ----
#
# Every builder returns bytes with LF line ends (maildir storage form).

_msgid_seq = [0]


def _msgid(tag):
    _msgid_seq[0] += 1
    return "<%s.%d.mmharness@example.test>" % (tag, _msgid_seq[0])


def _date(n=0):
    t = datetime.datetime(2024, 5, 1, 9, 30, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=9)))
    return email.utils.format_datetime(t + datetime.timedelta(minutes=n))


def _headers(frm, to, subject, msgid, n=0, extra=()):
    h = ["Return-Path: <%s>" % email.utils.parseaddr(frm)[1],
         "From: %s" % frm, "To: %s" % to, "Subject: %s" % subject,
         "Date: %s" % _date(n), "Message-ID: %s" % msgid, "MIME-Version: 1.0"]
    h.extend(extra)
    return "\n".join(h) + "\n"


def _b64_lines(data, width=76):
    enc = base64.b64encode(data).decode("ascii")
    return "\n".join(enc[i:i + width] for i in range(0, len(enc), width)) + "\n"


def msg_plain(to="alice@example.test", n=0, subject="Lunch on Friday?", body=None):
    body = body or ("Hi,\n\nare we still on for lunch on Friday? The usual place at noon.\n\n"
                    "-- \nBob\n")
    return (_headers("Bob Example <bob@example.test>", to, subject, _msgid("plain"), n,
                     ["Content-Type: text/plain; charset=us-ascii",
                      "Content-Transfer-Encoding: 7bit"]) + "\n" + body).encode("ascii")


def msg_multipart_attachment(to="alice@example.test", n=0):
    attach = ("name,qty,price\nwidget,3,9.50\ngadget,1,120.00\n" * 40).encode("ascii")
    boundary = "=_mmharness_part_%d" % n
    text = (_headers("Carol Sender <carol@example.test>", to, "Quarterly figures (CSV attached)",
                     _msgid("multi"), n,
                     ['Content-Type: multipart/mixed; boundary="%s"' % boundary]) +
            "\nThis is a multi-part message in MIME format.\n\n"
            "--%s\nContent-Type: text/plain; charset=us-ascii\n\n"
            "Please find the figures attached.\n\n"
            "--%s\nContent-Type: text/csv; name=\"figures.csv\"\n"
            "Content-Transfer-Encoding: base64\n"
            "Content-Disposition: attachment; filename=\"figures.csv\"\n\n" % (boundary, boundary) +
            _b64_lines(attach) + "\n--%s--\n" % boundary)
    return text.encode("ascii")


def _encoded_word(text, charset):
    return "=?%s?B?%s?=" % (charset.upper(), base64.b64encode(text.encode(charset)).decode("ascii"))


def msg_japanese_iso2022jp(to="alice@example.test", n=0):
    subject = "会議の議事録について"
    body = "お疲れ様です。\n来週の会議の議事録を送ります。\nよろしくお願いいたします。\n"
    head = _headers("=?ISO-2022-JP?B?%s?= <tanaka@example.jp>" % base64.b64encode(
        "田中".encode("iso2022_jp")).decode("ascii"), to, _encoded_word(subject, "iso2022_jp"),
        _msgid("jis"), n, ["Content-Type: text/plain; charset=ISO-2022-JP",
                           "Content-Transfer-Encoding: 7bit"])
    return head.encode("ascii") + b"\n" + body.encode("iso2022_jp")


def msg_japanese_utf8(to="alice@example.test", n=0):
    subject = "【お知らせ】システムメンテナンスのご案内"
    body = ("各位\n\n下記の日程でシステムメンテナンスを実施します。\n"
            "日時: 2024年5月10日 22:00〜24:00\n\n情報システム部\n")
    head = _headers("Suzuki <suzuki@example.jp>", to, _encoded_word(subject, "utf-8"),
                    _msgid("utf8"), n, ["Content-Type: text/plain; charset=UTF-8",
                                        "Content-Transfer-Encoding: 8bit"])
    return head.encode("ascii") + b"\n" + body.encode("utf-8")


def msg_dots(to="alice@example.test", n=0):
    # Lines that begin with "." exercise dot-stuffing (RFC 1939 section 3):
    # a lone ".", "..", ". x" and ".\r" look-alikes must survive intact.
    body = ("Dot-stuffing check:\n"
            ".\n"
            "..\n"
            "...\n"
            ".hidden line\n"
            ". space after dot\n"
            "normal line\n"
            ".\n"
            "\n"
            ".\n"
            "end.\n")
    return (_headers("Dot Tester <dots@example.test>", to, "Lines that start with a dot",
                     _msgid("dots"), n, ["Content-Type: text/plain; charset=us-ascii"]) +
            "\n" + body).encode("ascii")


def msg_long_lines(to="alice@example.test", n=0):
    long1 = "".join(chr(ord("a") + i % 26) for i in range(998))
    long2 = "".join(chr(ord("A") + i % 26) for i in range(4000))
    body = "A line of 998 characters follows.\n%s\nAnd one of 4000:\n%s\nend\n" % (long1, long2)
    return (_headers("Long Liner <long@example.test>", to, "Very long lines",
                     _msgid("long"), n, ["Content-Type: text/plain; charset=us-ascii"]) +
            "\n" + body).encode("ascii")


def msg_html_alternative(to="alice@example.test", n=0):
    boundary = "=_alt_%d" % n
    text = (_headers("Newsletter <news@example.test>", to, "May newsletter", _msgid("html"), n,
                     ['Content-Type: multipart/alternative; boundary="%s"' % boundary]) +
            "\n--%s\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
            "Hello =E2=80=94 this is the May newsletter.\n"
            "--%s\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
            "<html><body><p>Hello =E2=80=94 this is the <b>May</b> newsletter.</p></body></html>\n"
            "--%s--\n" % (boundary, boundary, boundary))
    return text.encode("ascii")


def msg_no_final_newline(to="alice@example.test", n=0):
    return (_headers("Edge Case <edge@example.test>", to, "No newline at the end", _msgid("nonl"), n,
                     ["Content-Type: text/plain; charset=us-ascii"]) +
            "\nThis message's last line has no line end.").encode("ascii")


def msg_headers_only(to="alice@example.test", n=0):
    return _headers("Empty Body <empty@example.test>", to, "Headers only", _msgid("empty"), n).encode("ascii")


def msg_eicar_attachment(to="bob@example.test", n=0, pad_text=20000,
                         subject="Invoice 2024-0417 (please check)"):
    """(a) The EICAR test string as a base64-encoded attachment, after a
    clean text part of pad_text bytes (so that the original is bigger than
    a notice, which must then be padded to the original's size)."""
    boundary = "=_eicar_%d" % n
    filler = "".join("Line %05d of the invoice text, nothing to see here.\n" % i
                     for i in range(max(1, pad_text // 52)))
    text = (_headers("Mallory Invoices <billing@bad.example>", to, subject, _msgid("eicar"), n,
                     ['Content-Type: multipart/mixed; boundary="%s"' % boundary]) +
            "\n--%s\nContent-Type: text/plain; charset=us-ascii\n\n%s\n"
            "--%s\nContent-Type: application/octet-stream; name=\"invoice.com\"\n"
            "Content-Transfer-Encoding: base64\n"
            "Content-Disposition: attachment; filename=\"invoice.com\"\n\n"
            % (boundary, filler, boundary) + _b64_lines(EICAR) + "\n--%s--\n" % boundary)
    return text.encode("ascii")


def msg_clamzip_attachment(to="bob@example.test", n=0, subject="Scanned documents"):
    """(b) /usr/share/clamav-testfiles/clam.zip as a base64 attachment."""
    with open(CLAM_ZIP, "rb") as f:
        data = f.read()
    boundary = "=_clamzip_%d" % n
    text = (_headers("Scanner <scanner@bad.example>", to, subject, _msgid("clamzip"), n,
                     ['Content-Type: multipart/mixed; boundary="%s"' % boundary]) +
            "\n--%s\nContent-Type: text/plain; charset=us-ascii\n\nYour scanned documents.\n\n"
            "--%s\nContent-Type: application/zip; name=\"scan.zip\"\n"
            "Content-Transfer-Encoding: base64\n"
            "Content-Disposition: attachment; filename=\"scan.zip\"\n\n"
            % (boundary, boundary) + _b64_lines(data) + "\n--%s--\n" % boundary)
    return text.encode("ascii")


def _attachment(boundary, filename, ctype, data):
    return ("--%s\nContent-Type: %s; name=\"%s\"\nContent-Transfer-Encoding: base64\n"
            "Content-Disposition: attachment; filename=\"%s\"\n\n" % (boundary, ctype, filename, filename)
            + _b64_lines(data) + "\n")


def big_message_writer(size, to="carol@example.test", n=0, seed=None, tail_parts=(),
                       subject="Monthly archive (big attachment)",
                       frm="Archive Robot <archive@example.test>"):
    """Returns writer(f) that streams a message of about size bytes (LF form):
    a short text part and a random-data attachment in base64, written in
    1 MiB steps so that the message is never held in memory. tail_parts,
    a list of (filename, content type, bytes), are attached after the big
    one (a payload at the end of a big message)."""
    boundary = "=_big_%d" % n

    def writer(f):
        head = (_headers(frm, to, subject, _msgid("big"), n,
                         ['Content-Type: multipart/mixed; boundary="%s"' % boundary]) +
                "\n--%s\nContent-Type: text/plain; charset=us-ascii\n\nThe archive is attached.\n\n"
                "--%s\nContent-Type: application/octet-stream; name=\"archive.bin\"\n"
                "Content-Transfer-Encoding: base64\n"
                "Content-Disposition: attachment; filename=\"archive.bin\"\n\n"
                % (boundary, boundary)).encode("ascii")
        tail = ("\n" + "".join(_attachment(boundary, fn, ct, data) for fn, ct, data in tail_parts) +
                "--%s--\n" % boundary).encode("ascii")
        f.write(head)
        remaining = size - len(head) - len(tail)
        rnd = __import__("random").Random(seed) if seed is not None else None
        line_raw = 57                       # 57 raw bytes -> 76 base64 chars + LF
        per_line = 77
        lines_total = max(1, remaining // per_line)
        step = 13617                        # lines per write, about 1 MiB
        done = 0
        while done < lines_total:
            k = min(step, lines_total - done)
            raw = rnd.randbytes(k * line_raw) if rnd else os.urandom(k * line_raw)
            enc = base64.b64encode(raw)
            out = bytearray()
            for i in range(k):
                out += enc[i * 76:(i + 1) * 76]
                out += b"\n"
            f.write(out)
            done += k
        f.write(tail)
    return writer


def eicar_zip():
    """A zip archive holding eicar.com (built in memory)."""
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("docs/eicar.com", EICAR)
    return buf.getvalue()


def clam_zip():
    with open(CLAM_ZIP, "rb") as f:
        return f.read()


def msg_forwarded_eicar(to="frank@example.test", n=0):
    """A forwarded message (message/rfc822) whose inner message carries the
    EICAR file as a base64 attachment."""
    inner = msg_eicar_attachment(to="someone@example.test", n=n, pad_text=0,
                                 subject="Original with attachment").decode("ascii")
    boundary = "=_fwd_%d" % n
    text = (_headers("Forwarder <fwd@example.test>", to, "Fwd: Original with attachment",
                     _msgid("fwd"), n, ['Content-Type: multipart/mixed; boundary="%s"' % boundary]) +
            "\n--%s\nContent-Type: text/plain; charset=us-ascii\n\nSee the forwarded message.\n\n"
            "--%s\nContent-Type: message/rfc822\nContent-Disposition: attachment\n\n%s\n--%s--\n"
            % (boundary, boundary, inner, boundary))
    return text.encode("ascii")


def msg_eicar_inline(to="frank@example.test", n=0):
    """The EICAR string as plain 7bit text in the body."""
    return (_headers("Plain Text <plain@bad.example>", to, "Plain text payload", _msgid("inline"), n,
                     ["Content-Type: text/plain; charset=us-ascii"]) +
            "\nHere it is:\n").encode("ascii") + EICAR + b"\n"


def msg_eicar_zip(to="frank@example.test", n=0):
    """A zip holding eicar.com, as a base64 attachment."""
    boundary = "=_ezip_%d" % n
    text = (_headers("Zipper <zip@bad.example>", to, "Documents (zip)", _msgid("ezip"), n,
                     ['Content-Type: multipart/mixed; boundary="%s"' % boundary]) +
            "\n--%s\nContent-Type: text/plain; charset=us-ascii\n\nZipped.\n\n" % boundary +
            _attachment(boundary, "docs.zip", "application/zip", eicar_zip()) + "--%s--\n" % boundary)
    return text.encode("ascii")


def msg_japanese_infected(to="frank@example.test", n=0):
    """EICAR attachment under an ISO-2022-JP encoded From and Subject."""
    subject = "請求書のご送付（至急ご確認ください）"
    boundary = "=_jinf_%d" % n
    head = _headers("%s <keiri@bad.example.jp>" % _encoded_word("経理部", "iso2022_jp"), to,
                    _encoded_word(subject, "iso2022_jp"), _msgid("jinf"), n,
                    ['Content-Type: multipart/mixed; boundary="%s"' % boundary])
    body = ("\n--%s\nContent-Type: text/plain; charset=ISO-2022-JP\nContent-Transfer-Encoding: 7bit\n\n"
            % boundary).encode("ascii") + "請求書を添付します。\n".encode("iso2022_jp") + (
        "\n" + _attachment(boundary, "seikyu.exe", "application/octet-stream", EICAR) +
        "--%s--\n" % boundary).encode("ascii")
    return head.encode("ascii") + body


def msg_eicar_no_ids(to="frank@example.test", n=0):
    """An infected message without Message-ID and Date (spam tools send
    such things)."""
    boundary = "=_noid_%d" % n
    return ("From: nobody@bad.example\nTo: %s\nSubject: no ids\nMIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="%s"\n\n--%s\nContent-Type: text/plain\n\nhi\n\n'
            % (to, boundary, boundary) + _attachment(boundary, "x.com", "application/octet-stream", EICAR) +
            "--%s--\n" % boundary).encode("ascii")


def header_of(data, name):
    """The raw value of the first header `name` in message bytes (unfolded),
    or None."""
    head = data.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in data else data.split(b"\n\n", 1)[0]
    head = head.replace(b"\r\n", b"\n")
    value = None
    for line in re.split(rb"\n(?![ \t])", head):
        k, sep, v = line.partition(b":")
        if sep and k.strip().lower() == name.lower().encode():
            value = v.replace(b"\n", b"").strip()
            break
    return value.decode("utf-8", "replace") if value is not None else None


# ------------------------------------------------------------- mailmoat ----

def mailmoat_bin():
    b = os.environ.get("MAILMOAT_BIN")
    if b:
        return b
    src = os.environ.get("MAILMOAT_SRC") or os.path.abspath(
        os.path.join(os.path.dirname(__file__), "..", ".."))
    return os.path.join(src, "build", "mailmoat")


def source_dir():
    return os.environ.get("MAILMOAT_SRC") or os.path.abspath(
        os.path.join(os.path.dirname(__file__), "..", ".."))


def testsigs_dir():
    return os.path.join(source_dir(), "scanners", "testsigs")


def binary_is_sanitized(path):
    """True when the binary was built with AddressSanitizer, or runs under
    a MAILMOAT_WRAPPER such as valgrind (its memory figures then say
    little: they are the sanitizer's or the tool's)."""
    if os.environ.get("MAILMOAT_WRAPPER", "").strip():
        return True
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    return False
                if b"__asan_init" in chunk or b"AddressSanitizer" in chunk:
                    return True
    except OSError:
        return False


def _yaml_str(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailmoat_config_yaml(listeners, quarantine_dir, on_malicious="quarantine",
                         on_scan_error="quarantine", database=None, spool_dir=None,
                         memory_limit="4M", max_message_size="512M",
                         admin_contact="postmaster@example.jp", log_level="info",
                         timeouts=None, limits=None, extra="", control_socket=None,
                         metrics_listen=None, policy=None, admin_copy=None):
    """Builds the YAML text of a mailmoat configuration. listeners is a list
    of (protocol, listen_port, upstream_port[, upstream_host[, keys]]);
    keys, a dict, adds listener keys (tls, certificate, upstream_tls...):
    strings are quoted, booleans written true/false.

    control_socket: the control socket's path; by default control.sock next
    to the quarantine directory, so concurrent tests never share the
    system-wide /run/mailmoat one ("" turns it off). metrics_listen:
    "HOST:PORT" of the metrics endpoint (default: off). policy: more keys of
    the policy: section ({"on_blocked_attachment": "pass"}; lists as
    python lists). admin_copy: the keys of notice.admin_copy ({"to": ...,
    "smtp_url": ...})."""
    t = {"client_idle": 600, "upstream_idle": 600, "connect": 15, "shutdown_grace": 10}
    t.update(timeouts or {})
    out = ["# generated by mmharness", "listeners:"]
    for lst in listeners:
        proto, lport, uport = lst[0], lst[1], lst[2]
        uhost = (lst[3] if len(lst) > 3 else None) or HOST
        out += ["  - protocol: %s" % proto,
                "    listen: %s:%d" % (HOST, lport),
                "    upstream: %s:%d" % (uhost, uport)]
        for k, v in (lst[4] if len(lst) > 4 else {}).items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif not isinstance(v, int):
                v = _yaml_str(v)
            out.append("    %s: %s" % (k, v))
    out += ["scanner:", "  clamav:", "    database: %s" % _yaml_str(database or testsigs_dir()),
            "quarantine:", "  dir: %s" % _yaml_str(quarantine_dir),
            "policy:", "  on_malicious: %s" % on_malicious, "  on_scan_error: %s" % on_scan_error]
    for k, v in (policy or {}).items():
        if isinstance(v, (list, tuple)):
            v = "[%s]" % ", ".join(_yaml_str(x) for x in v)
        elif isinstance(v, bool):
            v = "true" if v else "false"
        out.append("  %s: %s" % (k, v))
    out += ["notice:", "  admin_contact: %s" % _yaml_str(admin_contact)]
    if admin_copy:
        out.append("  admin_copy:")
        out += ["    %s: %s" % (k, _yaml_str(v)) for k, v in admin_copy.items()]
    out += ["spool:", "  memory_limit: %s" % memory_limit,
            "  max_message_size: %s" % max_message_size]
    if spool_dir:
        out.append("  dir: %s" % _yaml_str(spool_dir))
    out.append("timeouts:")
    out += ["  %s: %s" % (k, v) for k, v in t.items()]
    if limits:
        out.append("limits:")
        out += ["  %s: %s" % (k, v) for k, v in limits.items()]
    if control_socket is None:
        control_socket = os.path.join(os.path.dirname(os.path.abspath(quarantine_dir)),
                                      "control.sock")
    out += ["control:", "  socket: %s" % _yaml_str(control_socket)]
    if metrics_listen:
        out += ["metrics:", "  listen: %s" % metrics_listen]
    out.append("log_level: %s" % log_level)
    return "\n".join(out) + "\n" + extra


# MAILMOAT_WRAPPER: a command every Mailmoat runs its binary under, e.g.
#   valgrind --tool=memcheck --error-exitcode=99 --leak-check=full
#            --errors-for-leak-kinds=definite --suppressions=tests/valgrind.supp
# "{workdir}" in it stands for the instance's work directory; when the
# command names valgrind and no --log-file, the report goes to
# WORKDIR/valgrind.PID.log (so mailmoat's own log stays parseable). Time-outs
# of start() and stop() are multiplied by MAILMOAT_WRAPPER_SLOWDOWN
# (default 20: memcheck runs about that much slower), and a non-zero exit
# status (the wrapper's --error-exitcode) fails the test like any unclean
# exit, with the wrapper's report on stderr.
WRAPPER_SLOWDOWN = float(os.environ.get("MAILMOAT_WRAPPER_SLOWDOWN", "20"))
# MAILMOAT_TIME_SCALE multiplies the socket time-outs of RawPop3 and RawImap
# (a test's "answer within N s" deadline), for a slow mailmoat under
# valgrind; 1 by default.
TIME_SCALE = float(os.environ.get("MAILMOAT_TIME_SCALE", "1"))


def wrapper_command(workdir):
    """(argv prefix, glob of the wrapper's report files or None) from
    MAILMOAT_WRAPPER for an instance whose work directory is workdir."""
    w = os.environ.get("MAILMOAT_WRAPPER", "").strip()
    if not w:
        return [], None
    argv = [a.replace("{workdir}", workdir) for a in shlex.split(w)]
    log = None
    for a in argv:
        if a.startswith("--log-file="):
            log = re.sub(r"%p", "*", a[len("--log-file="):])
    if log is None and os.path.basename(argv[0]) == "valgrind":
        argv.insert(1, "--log-file=" + os.path.join(workdir, "valgrind.%p.log"))
        log = os.path.join(workdir, "valgrind.*.log")
    return argv, log


class Mailmoat:
    """One mailmoat process on a free port in front of an upstream.

    upstreams: a list of (protocol, upstream_port[, upstream_host[, keys]])
    (keys: more listener keys, see mailmoat_config_yaml); a listen port is
    picked for each (self.ports[i], and self.port for the first).
    """

    def __init__(self, workdir, upstreams, binary=None, **cfg):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.binary = binary or mailmoat_bin()
        self.ports = free_ports(len(upstreams))
        self.port = self.ports[0]
        self.quarantine_dir = cfg.pop("quarantine_dir", os.path.join(self.workdir, "quarantine"))
        self.spool_dir = cfg.pop("spool_dir", os.path.join(self.workdir, "spool"))
        os.makedirs(self.spool_dir, exist_ok=True)
        self.config_path = os.path.join(self.workdir, "mailmoat.yaml")
        self.log_path = os.path.join(self.workdir, "mailmoat.log")
        # the control socket in the work directory (`mailmoat status`)
        self.control_socket = cfg.setdefault("control_socket",
                                             os.path.join(self.workdir, "control.sock"))
        # metrics_port=True: the metrics endpoint on a free loopback port
        self.metrics_port = cfg.pop("metrics_port", None)
        if self.metrics_port is True:
            self.metrics_port = free_port()
        if self.metrics_port:
            cfg["metrics_listen"] = "%s:%d" % (HOST, self.metrics_port)
        listeners = [(u[0], p, u[1]) + tuple(u[2:]) for u, p in zip(upstreams, self.ports)]
        with open(self.config_path, "w") as f:
            f.write(mailmoat_config_yaml(listeners, self.quarantine_dir,
                                         spool_dir=self.spool_dir, **cfg))
        self.proc = None
        self.peak_rss_kib = None
        self.returncode = None
        self.stop_seconds = None
        self.stopped = False          # stop() was called (not a crash)
        self.term_sent_at = None
        self.wrapper, self.wrapper_log = wrapper_command(self.workdir)

    def start(self, timeout=30.0, env=None):
        e = dict(os.environ)
        e.update(env or {})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.wrapper + [self.binary, "--config", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, env=e)
        if self.wrapper:
            timeout *= WRAPPER_SLOWDOWN
        try:
            for p in self.ports + ([self.metrics_port] if self.metrics_port else []):
                wait_port(p, timeout, self.proc, what="mailmoat")
                # a slow start (a wrapper) leaves time for another process to
                # take a picked port: make sure the listener is this one's
                if not self._owns_listener(p):
                    raise RuntimeError("port %d listens, but not in mailmoat (pid %d): "
                                       "taken by another process" % (p, self.proc.pid))
        except RuntimeError as ex:
            self.stop()
            raise RuntimeError("%s\n--- mailmoat log ---\n%s" % (ex, self.log_text()[-4000:]))
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def _owns_listener(self, port):
        """Whether the socket LISTENing on 127.0.0.1:port (or *:port) is one
        of this process's descriptors (True when /proc cannot tell)."""
        want = ("%s:%04X" % ("".join("%02X" % int(b) for b in reversed(HOST.split("."))), port),
                "00000000:%04X" % port)
        inodes = set()
        try:
            with open("/proc/net/tcp") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1] in want and parts[3] == "0A":
                        inodes.add("socket:[%s]" % parts[9])
            fds = os.listdir("/proc/%d/fd" % self.proc.pid)
        except OSError:
            return True
        for fd in fds:
            try:
                if os.readlink("/proc/%d/fd/%s" % (self.proc.pid, fd)) in inodes:
                    return True
            except OSError:
                pass
        return not inodes

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def read_rss(self):
        """Returns (VmRSS, VmHWM) in KiB from /proc, or (None, None)."""
        rss = hwm = None
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
        except (OSError, AttributeError):
            pass
        return rss, hwm

    def terminate(self):
        """Reads the peak RSS, then sends SIGTERM once (a second SIGTERM
        may mean "stop now" to a daemon) without waiting."""
        if self.proc is None or self.proc.poll() is not None or self.term_sent_at is not None:
            return
        self.peak_rss_kib = self.read_rss()[1]
        self.term_sent_at = time.monotonic()
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    def stop(self, timeout=20.0):
        """SIGTERM and wait. Reads the peak RSS first. Returns the exit
        status; kills with SIGKILL (and returns None) after timeout."""
        if self.proc is None:
            return self.returncode
        if self.wrapper:
            timeout *= WRAPPER_SLOWDOWN
        if self.proc.poll() is None:
            self.stopped = True
            if self.term_sent_at is None:
                self.terminate()
            t0 = self.term_sent_at
            try:
                self.proc.wait(timeout)
                self.stop_seconds = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.returncode = None
                self._close_log()
                return None
        self.returncode = self.proc.returncode
        self._close_log()
        self._report_wrapper()
        return self.returncode

    def _report_wrapper(self):
        """Under a wrapper (MAILMOAT_WRAPPER), an exit status other than 0
        (valgrind's --error-exitcode: a memcheck error) shows the wrapper's
        report on stderr, so that the failing test's output carries it."""
        if not self.wrapper or self.returncode in (0, None) or getattr(self, "_reported", False):
            return
        self._reported = True
        for path in sorted(glob.glob(self.wrapper_log)) if self.wrapper_log else []:
            try:
                with open(path, errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            if len(text) > 12000:       # the first errors and the summary
                text = text[:8000] + "\n[...]\n" + text[-4000:]
            sys.stderr.write("--- %s (mailmoat exit status %s) ---\n%s\n"
                             % (path, self.returncode, text))

    def _close_log(self):
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def status(self, json_output=False, timeout=30):
        """Runs `mailmoat status --config FILE [--json]` against this
        daemon; returns (exit status, stdout, stderr) as text."""
        r = subprocess.run([self.binary, "status", "--config", self.config_path]
                           + (["--json"] if json_output else []),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
        return (r.returncode, r.stdout.decode("utf-8", "replace"),
                r.stderr.decode("utf-8", "replace"))

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_events(self):
        return [parse_log_line(l) for l in self.log_text().splitlines() if l.strip()]

    def quarantine(self):
        """Returns a list of (id, eml_path, json_path, meta_dict) in the
        quarantine directory."""
        out = []
        if not os.path.isdir(self.quarantine_dir):
            return out
        for fn in sorted(os.listdir(self.quarantine_dir)):
            if fn.endswith(".json"):
                qid = fn[:-5]
                jp = os.path.join(self.quarantine_dir, fn)
                ep = os.path.join(self.quarantine_dir, qid + ".eml")
                try:
                    with open(jp) as f:
                        meta = json.load(f)
                except (OSError, ValueError):
                    meta = None
                out.append((qid, ep, jp, meta))
        return out


def check_config(path, binary=None):
    """Runs mailmoat --check-config path; returns (exit status, output)."""
    r = subprocess.run([binary or mailmoat_bin(), "--check-config", path],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    return r.returncode, r.stdout.decode("utf-8", "replace")


_kv_re = re.compile(r'([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_log_line(line):
    """Parses one key=value log line into a dict; the words before the first
    key=value go to '_words' and the whole line to '_line'."""
    d = {"_line": line}
    first = _kv_re.search(line)
    d["_words"] = (line[:first.start()] if first else line).split()
    for m in _kv_re.finditer(line):
        v = m.group(2)
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = re.sub(r'\\(.)', r'\1', v[1:-1])
        d[m.group(1)] = v
    return d


# ------------------------------------------------------------- raw POP3 ----

def tls_connect(port, context, server_hostname, host=HOST, timeout=60.0):
    """A TCP connection to host:port wrapped in TLS (context, an
    ssl.SSLContext; server_hostname is sent as SNI and, when the context
    checks host names, verified)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        return context.wrap_socket(sock, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise


def tls_client_context(cafile):
    """A client context that trusts only cafile, verifies the chain and the
    host name, TLS 1.2 or later."""
    import ssl
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class RawPop3:
    """A minimal POP3 client that keeps the exact bytes of every response
    (dot-stuffing included). With tls (an ssl.SSLContext) it speaks TLS
    from the first byte (POP3S), sending server_hostname as SNI."""

    def __init__(self, port, host=HOST, timeout=60.0, tls=None, server_hostname=None):
        timeout = timeout * TIME_SCALE if timeout else timeout
        if tls is not None:
            self.sock = tls_connect(port, tls, server_hostname or host, host, timeout)
        else:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()
        self.greeting = self.readline()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise EOFError("connection closed by peer")
        self.buf += chunk

    def readline(self):
        """One line including its CRLF; EOFError when the peer closes."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            self._fill()

    def read_multiline_raw(self):
        """The body of a multi-line response up to and including the
        terminating ".\\r\\n" line, exactly as sent."""
        pos = 0
        while True:
            # An empty body: the terminator is the first line.
            if self.buf[:3] == b".\r\n":
                del self.buf[:3]
                return b".\r\n"
            i = self.buf.find(b"\r\n.\r\n", max(0, pos - 4))
            if i >= 0:
                data = bytes(self.buf[:i + 5])
                del self.buf[:i + 5]
                return data
            pos = len(self.buf)
            try:
                self._fill()
            except EOFError:
                raise EOFError("connection closed inside a multi-line response "
                               "(%d bytes received)" % len(self.buf))

    def cmd(self, line):
        """Sends a command line; returns the status line (bytes, CRLF kept)."""
        self.send(line.encode() + b"\r\n")
        return self.readline()

    def cmd_multi(self, line):
        """Sends a command; returns (status line, raw body or None on -ERR)."""
        st = self.cmd(line)
        if not st.startswith(b"+OK"):
            return st, None
        return st, self.read_multiline_raw()

    def login(self, user, password):
        st = self.cmd("USER " + user)
        if not st.startswith(b"+OK"):
            raise RuntimeError("USER refused: %r" % st)
        st = self.cmd("PASS " + password)
        if not st.startswith(b"+OK"):
            raise RuntimeError("PASS refused: %r" % st)
        return st

    def read_all(self, timeout=None):
        """Reads until the peer closes; returns everything buffered."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        out = bytearray(self.buf)
        self.buf = bytearray()
        while True:
            try:
                chunk = self.sock.recv(1 << 18)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)


def is_multiline_cmd(cmd):
    """Whether a successful response to cmd is multi-line (RFC 1939, 2449)."""
    w = cmd.split()
    verb = w[0].upper() if w else ""
    return verb in ("RETR", "TOP", "CAPA") or (verb in ("LIST", "UIDL") and len(w) == 1)


def pipeline(conn, cmds):
    """Sends all cmds in one write and reads the responses in order.
    Returns [(status line, raw body or None)] (the list stops early if the
    connection closes)."""
    conn.send(b"".join(c.encode() + b"\r\n" for c in cmds))
    res = []
    for c in cmds:
        try:
            st = conn.readline()
            body = conn.read_multiline_raw() if st.startswith(b"+OK") and is_multiline_cmd(c) else None
        except (EOFError, OSError):
            break
        res.append((st, body))
    return res


def unstuff(raw):
    """Turns a raw multi-line response body (ending in ".\\r\\n") into the
    message bytes: removes the terminator and the stuffed leading dots."""
    if raw.endswith(b"\r\n.\r\n"):
        raw = raw[:-3]
    elif raw == b".\r\n":
        return b""
    lines = raw.split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)


def fetch_all_raw(port, user, password, host=HOST, top=None, tls=None, server_hostname=None):
    """Logs in with USER/PASS and returns a dict with the raw status lines
    and bodies of STAT, LIST, UIDL and every RETR (and TOP n `top` if top is
    not None). tls, server_hostname: see RawPop3."""
    out = {}
    with RawPop3(port, host, tls=tls, server_hostname=server_hostname) as c:
        c.login(user, password)
        out["STAT"] = c.cmd("STAT")
        out["LIST"] = c.cmd_multi("LIST")
        out["UIDL"] = c.cmd_multi("UIDL")
        count = int(out["STAT"].split()[1])
        out["count"] = count
        out["RETR"] = [c.cmd_multi("RETR %d" % i) for i in range(1, count + 1)]
        if top is not None:
            out["TOP"] = [c.cmd_multi("TOP %d %d" % (i, top)) for i in range(1, count + 1)]
        out["QUIT"] = c.cmd("QUIT")
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def run_fetchmail(home, port, user, password, verbose=False, timeout=300, protocol="pop3"):
    """Downloads a mailbox with fetchmail (a real client: it trusts LIST
    sizes, keeps the mail on the server) from 127.0.0.1:port. home is a new
    directory for its rc file (mode 0600, as fetchmail demands) and output.
    protocol is fetchmail's: "pop3" or "imap" (the INBOX, LOGIN).
    Returns (returncode, output with the password masked, [message bytes]
    in delivery order), or None when fetchmail is not installed."""
    fetchmail = shutil.which("fetchmail")
    if not fetchmail:
        return None
    outdir = os.path.join(home, "out")
    os.makedirs(outdir)
    os.chmod(home, 0o700)
    mda = os.path.join(home, "mda.py")
    with open(mda, "w") as f:
        f.write("import os, sys\n"
                "d = sys.argv[1]\n"
                "data = sys.stdin.buffer.read()\n"
                "n = len(os.listdir(d)) + 1\n"
                "with open(os.path.join(d, '%03d.eml' % n), 'wb') as f:\n"
                "    f.write(data)\n")
    rc = os.path.join(home, "fetchmailrc")
    with open(rc, "w") as f:
        f.write('set no bouncemail\nset no syslog\n'
                'poll %s service %d protocol %s auth password timeout 60\n'
                '  user "%s" there with password "%s" is "root" here\n'
                "  options keep fetchall no rewrite sslproto '' no sslcertck\n"
                '  mda "%s %s %s"\n' % (HOST, port, protocol, user, password, sys.executable, mda,
                                        outdir))
    os.chmod(rc, 0o600)
    env = dict(os.environ, FETCHMAILHOME=home, FETCHMAILUSER="root", LC_ALL="C")
    # its own lock file: root's default one is global, and two runs (two
    # checkouts testing at once) would refuse each other
    args = [fetchmail, "-f", rc, "--nodetach", "--pidfile", os.path.join(home, "fetchmail.pid")]
    args += ["-v"] if verbose else []
    r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=env, timeout=timeout)
    msgs = []
    for fn in sorted(os.listdir(outdir)):
        with open(os.path.join(outdir, fn), "rb") as f:
            msgs.append(f.read())
    return r.returncode, r.stdout.decode("utf-8", "replace").replace(password, "***"), msgs


# ------------------------------------------------------------- raw IMAP ----
#
# A response is kept as a list of pieces that alternate text, literal,
# text, ...: every text piece but the last ends in a literal marker
# ("{n}\r\n" or "~{n}\r\n") and the next piece is that literal's bytes,
# exactly as received.

_LIT_MARK = re.compile(rb"~?\{(\d+)\+?\}\r\n$")
_LIT_MARK_LOOSE = re.compile(rb"~?\{(\d+)\+?\}(?:\r\n)?$")   # imaplib drops the CRLF


class RawImap:
    """A minimal IMAP client that keeps the exact bytes of every response
    (literals included) and lets a test send anything, tags included.
    With tls (an ssl.SSLContext) it speaks TLS from the first byte (IMAPS),
    sending server_hostname as SNI."""

    def __init__(self, port, host=HOST, timeout=60.0, max_literal=1 << 30, tls=None,
                 server_hostname=None):
        timeout = timeout * TIME_SCALE if timeout else timeout
        if tls is not None:
            self.sock = tls_connect(port, tls, server_hostname or host, host, timeout)
        else:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()
        self.max_literal = max_literal
        self._tag = 0
        self.greeting = self.read_response()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise EOFError("connection closed by peer")
        self.buf += chunk

    def readline(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            self._fill()

    def readexact(self, n):
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_response(self):
        """One whole response (a line and the literals it announces), as a
        list of pieces."""
        pieces = []
        while True:
            line = self.readline()
            pieces.append(line)
            m = _LIT_MARK.search(line)
            if not m:
                return pieces
            n = int(m.group(1))
            if n > self.max_literal:
                raise ValueError("literal of %d octets announced" % n)
            pieces.append(self.readexact(n))

    def next_tag(self):
        self._tag += 1
        return "t%03d" % self._tag

    def command(self, line, tag=None):
        """Sends "tag line"; returns (tagged response line, [untagged and
        continuation responses, each a list of pieces])."""
        tag = tag or self.next_tag()
        self.send(tag.encode() + b" " + (line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.read_until_tagged(tag)

    def read_until_tagged(self, tag):
        untagged = []
        while True:
            resp = self.read_response()
            if resp[0].startswith(tag.encode() + b" "):
                return resp[0], untagged
            untagged.append(resp)

    def login(self, user, password):
        st, _ = self.command("LOGIN %s %s" % (imap_quote(user), imap_quote(password)))
        if not st.split(b" ", 2)[1].startswith(b"OK"):
            raise RuntimeError("LOGIN refused: %r" % st)
        return st

    def read_all(self, timeout=None):
        """Reads until the peer closes (or timeout); returns the bytes."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        out = bytearray(self.buf)
        self.buf = bytearray()
        while True:
            try:
                chunk = self.sock.recv(1 << 18)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)


def imap_quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def imap_status(tagged_line):
    """"OK", "NO" or "BAD" of a tagged response line (bytes)."""
    w = tagged_line.split(b" ", 2)
    return w[1].decode("ascii", "replace").upper() if len(w) > 1 else ""


_TOKEN = re.compile(rb'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^\s()"\[\]{]+(?:\[[^\]]*\](?:<\d+>)?)?))',
                    re.S)


class _Lit(bytes):
    """A literal's bytes in the token stream."""


def _imap_tokens(pieces):
    out = []
    for i, p in enumerate(pieces):
        if i % 2:
            out.append(_Lit(p))
            continue
        text = p
        m = _LIT_MARK_LOOSE.search(text) if i + 1 < len(pieces) else None
        if m:
            text = text[:m.start()]
        pos = 0
        while pos < len(text):
            t = _TOKEN.match(text, pos)
            if t is None or t.end() == pos:
                if text[pos:].strip() == b"":
                    break
                raise ValueError("cannot tokenize %r at %d" % (text, pos))
            pos = t.end()
            if t.group(1):
                out.append("(")
            elif t.group(2):
                out.append(")")
            elif t.group(3) is not None:
                out.append(_Lit(re.sub(rb"\\(.)", rb"\1", t.group(3))))
            elif t.group(4) is not None:
                out.append(t.group(4).decode("utf-8", "replace"))
    return out


def _imap_value(toks, i):
    t = toks[i]
    if t == "(":
        lst, i = [], i + 1
        while toks[i] != ")":
            v, i = _imap_value(toks, i)
            lst.append(v)
        return lst, i + 1
    if isinstance(t, _Lit):
        return bytes(t), i + 1
    if t.upper() == "NIL":
        return None, i + 1
    return t, i + 1


def parse_fetch(pieces):
    """Parses one FETCH response ("* n FETCH (...)", or imaplib's form
    without "* " and "FETCH") into (n, {ATTRIBUTE: value}). Attribute names
    are upper-cased ("BODY[]<0>", "BODY[HEADER.FIELDS (SUBJECT)]"); values:
    bytes for strings and literals, None for NIL, str for atoms, lists for
    parenthesised lists. Returns None for a response that is not a FETCH."""
    toks = _imap_tokens(pieces)
    i = 0
    if toks and toks[0] == "*":
        i = 1
    if i >= len(toks) or not isinstance(toks[i], str) or not toks[i].isdigit():
        return None
    n = int(toks[i])
    i += 1
    if i < len(toks) and isinstance(toks[i], str) and toks[i].upper() == "FETCH":
        i += 1
    if i >= len(toks) or toks[i] != "(":
        return None
    i += 1
    attrs = {}
    while toks[i] != ")":
        key = toks[i].upper()
        v, i = _imap_value(toks, i + 1)
        attrs[key] = v
    return n, attrs


def imaplib_responses(data):
    """Turns what imaplib returns for FETCH (a list of bytes and (head,
    literal) tuples) into a list of responses, each a list of pieces."""
    out = []
    start = re.compile(rb"^\d+ \(")
    for item in data:
        if item is None:
            continue
        head = item[0] if isinstance(item, tuple) else item
        if start.match(head) or not out:
            out.append([])
        if isinstance(item, tuple):
            if len(out[-1]) % 2:           # a text piece must come first
                out[-1][-1] += item[0]
            else:
                out[-1].append(item[0])
            out[-1].append(item[1])
        else:
            if len(out[-1]) % 2:
                out[-1][-1] += item
            else:
                out[-1].append(item)
    return out


def fetch_by_uid(responses):
    """{uid: attributes} from FETCH responses (each a list of pieces) that
    carry a UID; attributes of several responses for one UID are merged."""
    res = {}
    for r in responses:
        f = parse_fetch(r)
        if f is None or "UID" not in f[1]:
            continue
        res.setdefault(int(f[1]["UID"]), {}).update(f[1])
    return res


def run_mbsync(home, port, user, password, mailbox="INBOX", timeout=300, verbose=False):
    """Pulls mailbox from the IMAP server on 127.0.0.1:port into a new
    local Maildir with mbsync (isync). home is a new directory for its rc
    file, state and the Maildir. Returns (returncode, output with the
    password masked, {uid: message bytes as stored}, seconds), or None when
    mbsync is not installed."""
    mbsync = shutil.which("mbsync")
    if not mbsync:
        return None
    os.makedirs(home)
    os.chmod(home, 0o700)
    local = os.path.join(home, "Mail")
    os.makedirs(local)
    rc = os.path.join(home, "mbsyncrc")
    with open(rc, "w") as f:
        f.write("IMAPAccount acc\nHost %s\nPort %d\nUser %s\nPass %s\nSSLType None\n"
                "AuthMechs LOGIN\nTimeout %d\nPipelineDepth 4\n\n"
                "IMAPStore far\nAccount acc\n\n"
                "MaildirStore near\nPath %s/\nInbox %s/INBOX\nSubFolders Verbatim\n\n"
                "Channel ch\nFar :far:\nNear :near:\nPatterns %s\nCreate Near\nSync Pull\n"
                "SyncState *\nExpunge None\n"
                % (HOST, port, user, imap_quote(password), min(timeout, 600), local, local, mailbox))
    os.chmod(rc, 0o600)
    env = dict(os.environ, HOME=home, LC_ALL="C")
    t0 = time.monotonic()
    r = subprocess.run([mbsync, "-c", rc] + (["-V"] if verbose else []) + ["ch"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=env, timeout=timeout)
    took = time.monotonic() - t0
    msgs = {}
    box = os.path.join(local, "INBOX") if mailbox.upper() == "INBOX" else os.path.join(local, mailbox)
    for sub in ("cur", "new"):
        d = os.path.join(box, sub)
        if not os.path.isdir(d):
            continue
        for fn in os.listdir(d):
            m = re.search(r",U=(\d+)", fn)
            if m:
                with open(os.path.join(d, fn), "rb") as fh:
                    msgs[int(m.group(1))] = fh.read()
    return r.returncode, r.stdout.decode("utf-8", "replace").replace(password, "***"), msgs, took


# ------------------------------------------- policy tests: users and mail ----
#
# The fixture's users have fixed mailboxes other tests compare whole; a test
# that needs messages of its own adds a user of its own to the running
# fixture Dovecot instead (its passwd-file is read again when it changes).

def fixture_add_user(st, user, password, wait=10.0):
    """Adds user (with password) to the running fixture Dovecot described by
    st (the fixture's state.json): a line in its passwd-file and an empty
    Maildir owned by the mail user. Dovecot looks at a changed passwd-file
    at most once a second: with wait (seconds) this returns once a POP3
    login of the new user succeeds (RuntimeError after that long). Returns
    the Maildir path."""
    uid, gid = mail_ids()
    home = os.path.join(st["workdir"], "home", user)
    md = os.path.join(home, "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub), exist_ok=True)
    for d in [home, md] + [os.path.join(md, s) for s in ("cur", "new", "tmp")]:
        os.chown(d, uid, gid)
    with open(os.path.join(st["workdir"], "users"), "a") as f:
        f.write("%s:{PLAIN}%s:%d:%d::%s::\n" % (user, password, uid, gid, home))
    if wait:
        fixture_wait_user(st, user, password, wait)
    return md


def fixture_wait_user(st, user, password, timeout=10.0):
    """Waits until the fixture Dovecot accepts a POP3 login of user."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            with RawPop3(st["pop3_port"], timeout=10) as c:
                c.login(user, password)
                c.cmd("QUIT")
            return
        except (RuntimeError, OSError, EOFError) as e:
            last = e
        if time.monotonic() > deadline:
            raise RuntimeError("the fixture Dovecot does not know user %s after %.0f s: %s"
                               % (user, timeout, last))
        time.sleep(0.2)


def fixture_add_message(st, user, data):
    """Writes message bytes (LF line ends, maildir storage form) to the
    Maildir/new of a user added with fixture_add_user; messages get UIDs
    (and POP3 numbers) in the order they were added. Returns the path."""
    uid, gid = mail_ids()
    md = os.path.join(st["workdir"], "home", user, "Maildir")
    n = len(os.listdir(os.path.join(md, "new"))) + len(os.listdir(os.path.join(md, "cur"))) + 1
    name = "%d.M%06dP%d.mmpolicy" % (1600000000 + n, n, os.getpid())
    tmp = os.path.join(md, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(data)
    os.chown(tmp, uid, gid)
    final = os.path.join(md, "new", name)
    os.rename(tmp, final)
    return final


def mime_part(headers, data, b64=True):
    """One MIME body part (LF form, no boundary line): the header lines
    given (a list of str, written as they are), then data (bytes),
    base64-encoded with a Content-Transfer-Encoding header when b64."""
    if b64:
        headers = list(headers) + ["Content-Transfer-Encoding: base64"]
        body = _b64_lines(data).encode("ascii")
    else:
        body = data if data.endswith(b"\n") else data + b"\n"
    return ("\n".join(headers) + "\n\n").encode("utf-8") + body


def msg_with_parts(parts, frm="Bob Example <bob@example.test>", to="alice@example.test",
                   subject="Documents attached", n=0, text="Please see the attachment.\n",
                   msgid=None):
    """A multipart/mixed message (bytes, LF form): a text/plain part with
    text, then parts (bytes from mime_part). subject None: no Subject
    header at all. Returns (bytes, Message-ID)."""
    msgid = msgid or _msgid("parts")
    boundary = "=_mmparts_%d_%d" % (n, _msgid_seq[0])
    head = ["Return-Path: <%s>" % email.utils.parseaddr(frm)[1], "From: %s" % frm, "To: %s" % to]
    if subject is not None:
        head.append("Subject: %s" % subject)
    head += ["Date: %s" % _date(n), "Message-ID: %s" % msgid, "MIME-Version: 1.0",
             'Content-Type: multipart/mixed; boundary="%s"' % boundary]
    out = ("\n".join(head) + "\n\nThis is a multi-part message in MIME format.\n\n"
           "--%s\nContent-Type: text/plain; charset=us-ascii\n\n%s\n" % (boundary, text)).encode("utf-8")
    for p in parts:
        out += ("--%s\n" % boundary).encode("ascii") + p + b"\n"
    return out + ("--%s--\n" % boundary).encode("ascii"), msgid


def zip_encrypted(password="secret", member="notes.txt",
                  content=b"Quarterly notes, nothing secret about them.\n" * 20):
    """Bytes of a zip archive made with `zip -P password` holding member,
    or None when the zip tool is not installed."""
    zipbin = shutil.which("zip")
    if not zipbin:
        return None
    import tempfile
    d = tempfile.mkdtemp(prefix="mmzip-")
    try:
        with open(os.path.join(d, member), "wb") as f:
            f.write(content)
        subprocess.run([zipbin, "-q", "-P", password, "out.zip", member], cwd=d, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        with open(os.path.join(d, "out.zip"), "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    s = str(v)
    if re.fullmatch(r"[A-Za-z0-9_./@:+-]+", s) and not s.startswith(("@", "-")):
        return s
    return _yaml_str(s)


def _yaml_block(v, indent):
    """YAML lines for v (dict, list or scalar) at indent spaces."""
    pad = " " * indent
    lines = []
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, dict):
                lines.append("%s%s:" % (pad, k))
                lines += _yaml_block(x, indent + 2)
            elif isinstance(x, (list, tuple)):
                lines.append("%s%s: [%s]" % (pad, k, ", ".join(_yaml_scalar(i) for i in x)))
            else:
                lines.append("%s%s: %s" % (pad, k, _yaml_scalar(x)))
    return lines


def rules_yaml(rules):
    """The top-level `rules:` block (for mailmoat_config_yaml's extra) from
    a list of dicts, e.g. [{"name": "a", "match": {"user": "alice"},
    "on_blocked_attachment": "pass"}]: each rule starts with its first key
    on the "  - " line (its line number is that of its first key)."""
    out = ["rules:"]
    for r in rules:
        body = _yaml_block(r, 4)
        body[0] = "  - " + body[0][4:]
        out += body
    return "\n".join(out) + "\n"
