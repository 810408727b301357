"""Common ground for the POP3 integration tests (not a test file itself).

Reads the Dovecot fixture's state ($MAILMOAT_IT_STATE/state.json, written by
dovecot_fixture.py start), starts a mailmoat per test class or test on free
loopback ports, and holds the assertions several files share.
"""

import base64
import email
import email.policy
import hashlib
import json
import os
import poplib
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("MAILMOAT_SRC") or os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SRC, "deploy", "lib"))

import mmharness as mh  # noqa: E402

# Long lines (4000 characters) are part of the clean mailbox.
poplib._MAXLINE = 1 << 20

STATE_DIR = os.environ.get("MAILMOAT_IT_STATE") or os.path.join(SRC, "build", "it-state")
NOTICE_MARK = "[mailmoat:"
ADMIN = "postmaster@example.jp"


def load_state():
    path = os.path.join(STATE_DIR, "state.json")
    if not os.path.exists(path):
        raise unittest.SkipTest("no Dovecot fixture state at %s (run through ctest, "
                                "or: dovecot_fixture.py start)" % path)
    with open(path) as f:
        return json.load(f)


def out(msg):
    """Prints a figure or note so that it shows in the ctest output."""
    print(msg, flush=True)


class ProxyCase(unittest.TestCase):
    """Base class: self.st (fixture state), self.up (Dovecot POP3 port),
    start_proxy() and helpers."""

    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.st = load_state()
        cls.up = cls.st["pop3_port"]
        if not os.path.exists(mh.mailmoat_bin()):
            raise unittest.SkipTest("mailmoat binary not built: %s" % mh.mailmoat_bin())
        cls.sanitized = mh.binary_is_sanitized(mh.mailmoat_bin())
        cls._tmp = tempfile.mkdtemp(prefix="mailmoat-it-")
        cls._class_proxies = []

    @classmethod
    def tearDownClass(cls):
        for p in cls._class_proxies:
            p.stop()
        if not os.environ.get("MAILMOAT_IT_KEEP"):
            shutil.rmtree(cls._tmp, ignore_errors=True)

    @classmethod
    def class_proxy(cls, name="proxy", upstream_port=None, **cfg):
        """Starts a mailmoat that lives for the whole class."""
        p = mh.Mailmoat(os.path.join(cls._tmp, name),
                        [("pop3", upstream_port or cls.up)], **cfg).start()
        cls._class_proxies.append(p)
        return p

    def start_proxy(self, name=None, upstream_port=None, **cfg):
        """Starts a mailmoat for this test only (stopped at clean-up; a
        crash or unclean exit fails the test there)."""
        name = name or self._testMethodName
        p = mh.Mailmoat(os.path.join(self._tmp, name), [("pop3", upstream_port or self.up)], **cfg)
        p.start()
        self.addCleanup(self._stop_checked, p)
        return p

    def _stop_checked(self, p):
        if p.stopped:
            self.assertEqual(p.returncode, 0, "mailmoat did not exit 0 on SIGTERM")
            return
        was_alive = p.alive()
        rc = p.stop()
        if not was_alive:
            self.fail("mailmoat exited during the test with status %s; log tail:\n%s"
                      % (p.proc.returncode, p.log_text()[-3000:]))
        self.assertEqual(rc, 0, "mailmoat did not exit 0 on SIGTERM (status %s); log tail:\n%s"
                         % (rc, p.log_text()[-3000:]))

    # ---- fixture data ----

    def user(self, name):
        return name, self.st["users"][name]["password"]

    def messages(self, name):
        return self.st["users"][name]["messages"]

    def maildir_bytes(self, m):
        """The message as stored in the maildir (LF line ends). Dovecot
        moves files from new/ to cur/ and appends flags to the name."""
        base = os.path.basename(m["file"]).split(":")[0]
        md = os.path.dirname(os.path.dirname(m["file"]))
        for sub in ("cur", "new"):
            for fn in os.listdir(os.path.join(md, sub)):
                if fn.split(":")[0] == base:
                    with open(os.path.join(md, sub, fn), "rb") as f:
                        return f.read()
        raise FileNotFoundError(m["file"])

    def infected_nums(self, name):
        return [m["num"] for m in self.messages(name) if m["infected"]]

    def direct(self, name, top=None):
        """The reference: everything fetched straight from Dovecot."""
        u, pw = self.user(name)
        return mh.fetch_all_raw(self.up, u, pw, top=top)

    # ---- assertions ----

    def assertProxyAlive(self, proxy):
        self.assertTrue(proxy.alive(), "mailmoat is gone (status %s); log tail:\n%s"
                        % (proxy.proc.returncode, proxy.log_text()[-3000:]))

    def assertNotice(self, notice, original, list_size, signature_hint=None):
        """notice and original are unstuffed message bytes."""
        self.assertNotEqual(notice, original)
        subj = mh.header_of(notice, "Subject")
        self.assertIsNotNone(subj, "notice has no Subject")
        self.assertIn(NOTICE_MARK, subj, "Subject not marked: %r" % subj)
        for h in ("From", "To", "Cc", "Date", "Message-ID"):
            if mh.header_of(original, h) is None:
                continue        # the notice may supply one (RFC 5322 wants a Date)
            self.assertEqual(mh.header_of(notice, h), mh.header_of(original, h),
                             "notice changed the %s header" % h)
        self.assertIsNotNone(mh.header_of(notice, "Date"), "notice without Date (RFC 5322 3.6)")
        self.assertIsNotNone(mh.header_of(notice, "From"), "notice without From (RFC 5322 3.6)")
        # A valid message: header/body separator, CRLF lines only, no line
        # over the RFC 5322 limit, parseable MIME.
        self.assertIn(b"\r\n\r\n", notice)
        self.assertNotIn(b"\n", notice.replace(b"\r\n", b""), "bare LF in notice")
        self.assertNotIn(b"\r", notice.replace(b"\r\n", b""), "bare CR in notice")
        longest = max(len(l) for l in notice.split(b"\r\n"))
        self.assertLessEqual(longest, 998, "notice line of %d octets" % longest)
        msg = email.message_from_bytes(notice, policy=email.policy.default)
        text = []
        for part in msg.walk():
            if part.get_content_maintype() == "text":
                text.append(part.get_content())
        self.assertTrue(text, "notice has no text part")
        self.assertIn(ADMIN, "\n".join(text), "notice does not name the admin contact")
        # The malware itself never leaves the proxy, neither raw nor in the
        # base64 form it had in the original.
        self.assertNotIn(mh.EICAR, notice)
        self.assertNotIn(base64.b64encode(mh.EICAR)[:40], notice)
        with open(mh.CLAM_ZIP, "rb") as f:
            self.assertNotIn(base64.b64encode(f.read())[:60], notice)
        # Padded to the original's LIST size when the original is bigger.
        self.assertGreaterEqual(len(notice), list_size,
                                "notice (%d) smaller than the LIST size %d"
                                % (len(notice), list_size))

    def assertLogClean(self, proxy, secrets):
        text = proxy.log_text()
        for s in secrets:
            self.assertNotIn(s, text, "a credential reached the mailmoat log")


def list_sizes(raw_list_body):
    """{num: size} from the raw body of a LIST response."""
    sizes = {}
    for line in mh.unstuff(raw_list_body).split(b"\r\n"):
        if line.strip():
            n, s = line.split()[:2]
            sizes[int(n)] = int(s)
    return sizes


def sha256(b):
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------- IMAP ----

import imaplib  # noqa: E402

imaplib._MAXLINE = 1 << 20
for _c, _states in (("COMPRESS", ("AUTH", "SELECTED")), ("STARTTLS", ("NONAUTH",)),
                    ("IDLE", ("AUTH", "SELECTED")), ("ID", ("NONAUTH", "AUTH", "SELECTED"))):
    imaplib.Commands.setdefault(_c, _states)

CHUNK_TB = 65536        # Thunderbird's partial fetch size
CHUNK_IOS = 393216      # iOS Mail's


class ImapCase(ProxyCase):
    """Base class for the IMAP tests: self.imap_up (Dovecot's IMAP port),
    proxies with an IMAP listener, imaplib and raw connections, and the
    direct reference of a user's INBOX."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.imap_up = cls.st["imap_port"]
        cls._direct_cache = {}

    @classmethod
    def class_imap_proxy(cls, name="imap-proxy", **cfg):
        p = mh.Mailmoat(os.path.join(cls._tmp, name), [("imap", cls.imap_up)], **cfg).start()
        cls._class_proxies.append(p)
        return p

    def start_imap_proxy(self, name=None, **cfg):
        """A mailmoat with one IMAP listener for this test only (a crash or
        an unclean exit fails the test at clean-up)."""
        name = name or self._testMethodName
        p = mh.Mailmoat(os.path.join(self._tmp, name), [("imap", self.imap_up)], **cfg)
        p.start()
        self.addCleanup(self._stop_checked, p)
        return p

    @classmethod
    def imap(cls, port, name, select="INBOX", readonly=True):
        """An imaplib connection logged in as the fixture user name (and
        the mailbox selected, EXAMINE when readonly)."""
        c = imaplib.IMAP4(mh.HOST, port, timeout=120)
        c.login(name, cls.st["users"][name]["password"])
        if select:
            typ, data = c.select(select, readonly=readonly)
            if typ != "OK":
                raise AssertionError("SELECT %s: %s %r" % (select, typ, data))
        return c

    @classmethod
    def raw(cls, port, name=None, select=None):
        c = mh.RawImap(port, timeout=120)
        if name:
            c.login(name, cls.st["users"][name]["password"])
        if select:
            st, _ = c.command("SELECT %s" % mh.imap_quote(select))
            if mh.imap_status(st) != "OK":
                raise AssertionError("SELECT %s: %r" % (select, st))
        return c

    @staticmethod
    def uid_fetch(conn, uids, items):
        """imaplib UID FETCH; returns {uid: {ATTRIBUTE: value}}."""
        typ, data = conn.uid("FETCH", uids, items)
        if typ != "OK":
            raise AssertionError("UID FETCH %s %s: %s %r" % (uids, items, typ, data))
        return mh.fetch_by_uid(mh.imaplib_responses(data))

    @classmethod
    def direct_whole(cls, name):
        """{uid: whole message} of name's INBOX, straight from Dovecot
        (BODY.PEEK[], so nothing is marked \\Seen)."""
        if name not in cls._direct_cache:
            with cls.imap(cls.st["imap_port"], name) as c:
                got = cls.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
            cls._direct_cache[name] = {u: a["BODY[]"] for u, a in got.items()}
        return cls._direct_cache[name]

    def imap_messages(self, name):
        """The fixture's descriptions of name's messages with their UIDs
        (Dovecot gave UIDs in the order the messages were added; checked
        against the Message-ID)."""
        whole = self.direct_whole(name)
        msgs = []
        for m in self.messages(name):
            m = dict(m, uid=m["num"])
            self.assertIn(m["uid"], whole, "no UID %d in %s's INBOX" % (m["uid"], name))
            if m["message_id"]:
                self.assertEqual(mh.header_of(whole[m["uid"]], "Message-ID"), m["message_id"],
                                 "UID %d of %s is not the fixture's message %d" % (m["uid"], name, m["num"]))
            msgs.append(m)
        return msgs

    def imap_verdicts(self, proxy, name=None):
        """The IMAP verdict log lines: [event dict]."""
        return [e for e in proxy.log_events()
                if e["_words"][3:4] == ["imap"] and "verdict" in e and "uid" in e
                and (name is None or e.get("user") == name)]

    def assertImapNotice(self, notice, original, proxy=None):
        """An infected message's substitute: the notice (see assertNotice),
        padded to the original's size, naming a quarantine entry of proxy
        that holds the original."""
        self.assertNotice(notice, original, len(original))
        qid = mh.header_of(notice, "X-Mailmoat-Quarantine-Id")
        self.assertIsNotNone(qid, "notice without X-Mailmoat-Quarantine-Id")
        self.assertIn(qid.encode(), notice)
        if proxy is not None:
            entries = {q[0]: q for q in proxy.quarantine()}
            self.assertIn(qid, entries, "quarantine id %s is not in %s" % (qid, proxy.quarantine_dir))
            with open(entries[qid][1], "rb") as f:
                self.assertEqual(f.read(), original, "quarantined %s is not the original" % qid)
        return qid


def chunked_fetch(conn, uid, chunk, past_end=False, limit=1 << 31):
    """Downloads one message the way mail clients do: UID FETCH uid (UID
    RFC822.SIZE BODY.PEEK[]<off.chunk>) until a chunk comes back short
    (and, past_end, once more after the end, as iOS Mail does). Returns
    (bytes, RFC822.SIZE, number of fetches, [chunk lengths])."""
    got = bytearray()
    size = None
    lens = []
    off = 0
    while off < limit:
        typ, data = conn.uid("FETCH", str(uid), "(UID RFC822.SIZE BODY.PEEK[]<%d.%d>)" % (off, chunk))
        if typ != "OK":
            raise AssertionError("chunk at %d: %s %r" % (off, typ, data))
        attrs = mh.fetch_by_uid(mh.imaplib_responses(data)).get(uid)
        if attrs is None:
            raise AssertionError("no FETCH response for UID %d at %d: %r" % (uid, off, data[:3]))
        key = "BODY[]<%d>" % off
        if key not in attrs:
            raise AssertionError("no %s in %r" % (key, sorted(attrs)))
        part = attrs[key] or b""
        size = int(attrs["RFC822.SIZE"])
        lens.append(len(part))
        got += part
        off += chunk
        if len(part) < chunk:
            if past_end and part:
                continue
            break
    return bytes(got), size, len(lens), lens


# ----------------------------------------------------------------- TLS ----
#
# The fixture Dovecot also serves POP3S and IMAPS (st["pop3s_port"],
# st["imaps_port"]) with a certificate of the test CA for mail.test.example
# and 127.0.0.1; st["pki"] holds the test PKI (mmharness.make_test_pki).

import re  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import time  # noqa: E402


class Pop3Tls(poplib.POP3_SSL):
    """poplib.POP3_SSL to 127.0.0.1:port that sends and verifies
    server_hostname (POP3_SSL would use the address it connects to)."""

    def __init__(self, port, server_hostname, context, timeout=60):
        self._tls_name = server_hostname
        super().__init__(mh.HOST, port, context=context, timeout=timeout)

    def _create_socket(self, timeout):
        return mh.tls_connect(self.port, self.context, self._tls_name, timeout=timeout)


class Imap4Tls(imaplib.IMAP4_SSL):
    """imaplib.IMAP4_SSL to 127.0.0.1:port, sending and verifying
    server_hostname."""

    def __init__(self, port, server_hostname, context, timeout=120):
        self._tls_name = server_hostname
        super().__init__(mh.HOST, port, ssl_context=context, timeout=timeout)

    def _create_socket(self, timeout):
        return mh.tls_connect(self.port, self.ssl_context, self._tls_name, timeout=timeout)


def read_until_close(sock, timeout=20.0, limit=1 << 20):
    """Reads from sock until the peer closes it. Returns (bytes, closed):
    closed is False when timeout passed first. A TLS peer that closes
    without close_notify counts as closed."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while len(data) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(data), False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return bytes(data), False
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


class TlsMixin:
    """For test classes that are also a ProxyCase (or ImapCase): the test
    PKI, client contexts, listener keys and multi-listener proxies. Call
    tls_setup() from setUpClass, after the ProxyCase one."""

    @classmethod
    def tearDownClass(cls):
        """Stops the class's proxies; one that crashed or did not exit 0
        on SIGTERM (a sanitizer report) is an error of the class."""
        bad = []
        for p in getattr(cls, "_class_proxies", []):
            was_alive = p.alive()
            rc = p.stop()
            if not was_alive or rc != 0:
                bad.append("%s: %s, status %s; log tail:\n%s" % (
                    p.workdir, "exited during the tests" if not was_alive else "unclean exit",
                    p.returncode, p.log_text()[-3000:]))
        super().tearDownClass()
        if bad:
            raise AssertionError("\n".join(bad))

    @classmethod
    def tls_setup(cls):
        if "pop3s_port" not in cls.st or "pki" not in cls.st:
            raise unittest.SkipTest("the fixture Dovecot serves no POP3S/IMAPS (old state.json?)")
        cls.pki = cls.st["pki"]
        cls.pop3s_up = cls.st["pop3s_port"]
        cls.imaps_up = cls.st["imaps_port"]
        cls.client_ctx = mh.tls_client_context(cls.pki["ca"])

    # ---- listener keys ----

    @classmethod
    def tls_listener_keys(cls):
        """tls: implicit with the proxy's certificate chain (leaf and
        intermediate: clients trust only the root)."""
        return {"tls": "implicit", "certificate": cls.pki["proxy_fullchain"],
                "key": cls.pki["proxy_key"]}

    @classmethod
    def tls_upstream_keys(cls, name=mh.TLS_UPSTREAM_NAME, ca=None, **more):
        """upstream_tls: implicit, verified against the test CA (or ca) for
        name (None: no upstream_name key); more keys as given."""
        k = {"upstream_tls": "implicit", "upstream_ca": ca or cls.pki["ca"]}
        if name is not None:
            k["upstream_name"] = name
        k.update(more)
        return k

    @classmethod
    def class_proxy_listeners(cls, name, listeners, **cfg):
        """A mailmoat for the whole class. listeners: [(protocol,
        upstream_port, listener keys)]."""
        p = mh.Mailmoat(os.path.join(cls._tmp, name),
                        [(proto, port, None, keys) for proto, port, keys in listeners], **cfg).start()
        cls._class_proxies.append(p)
        return p

    def start_proxy_listeners(self, listeners, name=None, **cfg):
        """A mailmoat for this test only (checked at clean-up like
        start_proxy). listeners: [(protocol, upstream_port, listener keys)]."""
        name = name or self._testMethodName
        p = mh.Mailmoat(os.path.join(self._tmp, name),
                        [(proto, port, None, keys) for proto, port, keys in listeners], **cfg)
        p.start()
        self.addCleanup(self._stop_checked, p)
        return p

    # ---- clients ----

    def proxy_tls(self, port, timeout=60.0, name=mh.TLS_PROXY_NAME):
        """A verified TLS connection to a proxy's TLS listener."""
        return mh.tls_connect(port, self.client_ctx, name, timeout=timeout)

    def raw_pop3_tls(self, port, name=mh.TLS_PROXY_NAME):
        return mh.RawPop3(port, tls=self.client_ctx, server_hostname=name)

    def raw_imap_tls(self, port, name=mh.TLS_PROXY_NAME):
        return mh.RawImap(port, timeout=120, tls=self.client_ctx, server_hostname=name)

    def fetch_all_tls(self, port, user, top=None, name=mh.TLS_PROXY_NAME):
        u, pw = self.user(user)
        return mh.fetch_all_raw(port, u, pw, top=top, tls=self.client_ctx, server_hostname=name)

    # ---- log ----

    @staticmethod
    def warn_lines(proxy, pattern=None, sessions_only=False):
        """The proxy's log lines at level warn or error (matching the
        regular expression pattern, case-insensitive, when given; only
        those of sessions, not the process's "-" lines, with
        sessions_only)."""
        out_ = []
        for e in proxy.log_events():
            if sessions_only and e["_words"][2:3] == ["-"]:
                continue
            if e["_words"][1:2] in (["warn"], ["error"]):
                if pattern is None or re.search(pattern, e["_line"], re.I):
                    out_.append(e["_line"])
        return out_


def legacy_tls_context(server=False, cert=None, key=None, cafile=None):
    """A context limited to TLS 1.0 and 1.1 (security level 0, so that this
    OpenSSL still speaks them): a client or server mailmoat must refuse."""
    import warnings
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    if cert:
        ctx.load_cert_chain(cert, key)
    if cafile:
        ctx.load_verify_locations(cafile)
    return ctx
