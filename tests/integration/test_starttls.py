"""STARTTLS on either side of mailmoat (RFC 2595 STLS, RFC 3501 STARTTLS).

One mailmoat with a POP3 and an IMAP listener for every combination of

  client side    tls: none | implicit | starttls | required
  upstream side  upstream_tls: none | implicit | starttls

(upstream none and starttls are Dovecot's plain ports, which offer
STLS/STARTTLS with the test PKI's certificate for mail.test.example;
implicit is its POP3S/IMAPS). Every combination serves clean mail byte for
byte as Dovecot sends it straight and an infected message as the notice.
STLS/STARTTLS is listed before the client's TLS and not after, never when
the client side does not offer it; tls: required refuses credentials in
plaintext with the documented codes, then works inside TLS; plaintext
pipelined after the client's STLS/STARTTLS (CVE-2011-0411 class) neither
reaches the server nor is answered inside TLS.

Refusals of upstream_tls: starttls (a server that refuses or does not
offer it, a wrong upstream_name) are in test_starttls_faults.py."""

import base64
import imaplib
import poplib
import re
import time

from itbase import Imap4Tls, ImapCase, Pop3Tls, TlsMixin, list_sizes, mh

CLIENT_MODES = ("none", "implicit", "starttls", "required")
UPSTREAM_MODES = ("none", "implicit", "starttls")

POP3_BEGIN = b"+OK Begin TLS negotiation\r\n"
POP3_REQUIRED = b"-ERR [AUTH] TLS required: use STLS first\r\n"
IMAP_BEGIN = b" OK Begin TLS negotiation now\r\n"
IMAP_REQUIRED = b" NO [PRIVACYREQUIRED] "

IMAP_USER = "grace"      # clean, infected and ~1 MiB messages
POP3_USER = "bob"        # clean and infected
LIB_USER = "dave"        # small: the client-library runs


def upgrade(conn, ctx, name=mh.TLS_PROXY_NAME):
    """Starts TLS on a RawPop3/RawImap after its STLS/STARTTLS answer.
    Nothing may have arrived after that answer in plaintext."""
    if conn.buf:
        raise AssertionError("plaintext after the TLS go-ahead: %r" % bytes(conn.buf))
    conn.sock = ctx.wrap_socket(conn.sock, server_hostname=name)
    return conn


def pop3_caps(conn):
    st, body = conn.cmd_multi("CAPA")
    if not st.startswith(b"+OK"):
        raise AssertionError("CAPA: %r" % st)
    return [l.split()[0].upper().decode() for l in mh.unstuff(body).split(b"\r\n") if l.strip()]


def imap_caps_of(line):
    """The capability words of a [CAPABILITY ...] code in line (None if
    there is none)."""
    m = re.search(rb"\[CAPABILITY ([^\]]*)\]", line, re.I)
    return None if m is None else m.group(1).decode().upper().split()


def imap_caps(conn):
    st, untagged = conn.command("CAPABILITY")
    if mh.imap_status(st) != "OK":
        raise AssertionError("CAPABILITY: %r" % st)
    caps = []
    for r in untagged:
        if r[0].upper().startswith(b"* CAPABILITY "):
            caps += r[0].decode().upper().split()[2:]
    if not caps:
        raise AssertionError("no * CAPABILITY response: %r" % untagged)
    code = imap_caps_of(st)         # a [CAPABILITY] code in the tagged OK counts too
    if code is not None:
        caps += code
    return caps


def session_lines(proxy, client_port, proto, timeout=5.0):
    """The log lines of the proxy's session for the client connection from
    127.0.0.1:client_port (found by its connect line), once it closed."""
    deadline = time.monotonic() + timeout
    while True:
        events = proxy.log_events()
        sid = None
        for e in events:
            if e["_words"][3:5] == [proto, "connect"] and e.get("client") == "%s:%d" % (mh.HOST, client_port):
                sid = e["_words"][2]
        lines = [e["_line"] for e in events if sid is not None and e["_words"][2:3] == [sid]]
        if any(" close " in l for l in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


class StarttlsMatrix(TlsMixin, ImapCase):
    """Every client side x every upstream side, POP3 and IMAP."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()
        cls.ports = {}
        listeners = []
        for cm in CLIENT_MODES:
            for um in UPSTREAM_MODES:
                for proto in ("pop3", "imap"):
                    keys = {}
                    if cm != "none":
                        keys.update(cls.tls_listener_keys())
                        keys["tls"] = cm
                    if um == "none":
                        up = cls.st["%s_port" % proto]
                    elif um == "implicit":
                        up = cls.st["%ss_port" % proto]
                        keys.update(cls.tls_upstream_keys())
                    else:
                        up = cls.st["%s_port" % proto]
                        keys.update(cls.tls_upstream_keys(upstream_tls="starttls"))
                    cls.ports[(proto, cm, um)] = len(listeners)
                    listeners.append((proto, up, keys))
        cls.proxy = cls.class_proxy_listeners("matrix", listeners)
        cls._pop3_ref = {}

    def port(self, proto, cm, um):
        return self.proxy.ports[self.ports[(proto, cm, um)]]

    def assertLegs(self, proto, client_port, cm, um):
        """The proxy's log shows TLS on exactly the legs that have it."""
        lines = session_lines(self.proxy, client_port, proto)
        self.assertTrue(lines, "no log lines for the session from port %d" % client_port)
        for leg, on in (("client", cm != "none"), ("upstream", um != "none")):
            got = [l for l in lines if re.search(r" %s %s tls=TLSv1\.[23] " % (proto, leg), l)]
            self.assertEqual(len(got), 1 if on else 0, "%s TLS %s/%s:\n%s" % (leg, cm, um, "\n".join(lines)))

    def pop3_ref(self, name):
        if name not in self._pop3_ref:
            self._pop3_ref[name] = self.direct(name)
        return self._pop3_ref[name]

    # ---------------------------------------------------------- POP3 ----

    def pop3_session(self, cm, um):
        """A raw POP3 connection to the (cm, um) listener, with TLS up
        where the client side has it; checks CAPA before and after STLS
        and, for required, the refusals of credentials in plaintext."""
        port = self.port("pop3", cm, um)
        if cm == "implicit":
            c = self.raw_pop3_tls(port)
        else:
            c = mh.RawPop3(port)
        c.local_port = c.sock.getsockname()[1]
        self.assertTrue(c.greeting.startswith(b"+OK"), c.greeting)
        caps = pop3_caps(c)
        if cm in ("starttls", "required"):
            self.assertIn("STLS", caps, "STLS not offered before TLS (%s/%s)" % (cm, um))
            if cm == "required":
                u, pw = self.user(POP3_USER)
                for line in ("USER " + u, "PASS " + pw, "APOP %s 0123456789abcdef0123456789abcdef" % u,
                             "AUTH PLAIN " + base64.b64encode(("\0%s\0%s" % (u, pw)).encode()).decode(),
                             "AUTH PLAIN"):
                    self.assertEqual(c.cmd(line), POP3_REQUIRED, "%s before TLS (%s)" % (line.split()[0], um))
                self.assertTrue(c.cmd("NOOP").startswith(b"-ERR"), "NOOP before login")
            self.assertEqual(c.cmd("STLS"), POP3_BEGIN)
            upgrade(c, self.client_ctx)
            self.assertIn(c.sock.version(), ("TLSv1.2", "TLSv1.3"))
            caps = pop3_caps(c)
            self.assertNotIn("STLS", caps, "STLS still offered inside TLS (%s/%s)" % (cm, um))
            self.assertTrue(c.cmd("STLS").startswith(b"-ERR"), "a second STLS was accepted")
        else:
            self.assertNotIn("STLS", caps, "STLS offered by a tls: %s listener (upstream %s)" % (cm, um))
        self.assertIn("UIDL", caps)
        return c

    def check_pop3(self, cm, um):
        want = self.pop3_ref(POP3_USER)
        u, pw = self.user(POP3_USER)
        with self.pop3_session(cm, um) as c:
            c.login(u, pw)
            got = {"STAT": c.cmd("STAT"), "LIST": c.cmd_multi("LIST"), "UIDL": c.cmd_multi("UIDL")}
            got["RETR"] = [c.cmd_multi("RETR %d" % i) for i in range(1, want["count"] + 1)]
            self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        self.assertLegs("pop3", c.local_port, cm, um)
        for key in ("STAT", "LIST", "UIDL"):
            self.assertEqual(got[key], want[key], "%s differs (%s/%s)" % (key, cm, um))
        sizes = list_sizes(want["LIST"][1])
        infected = self.infected_nums(POP3_USER)
        self.assertTrue(infected)
        for m in self.messages(POP3_USER):
            n = m["num"]
            st, body = got["RETR"][n - 1]
            self.assertTrue(st.startswith(b"+OK"), "RETR %d: %r (%s/%s)" % (n, st, cm, um))
            if n in infected:
                self.assertNotice(mh.unstuff(body), mh.unstuff(want["RETR"][n - 1][1]), sizes[n])
            else:
                self.assertEqual((st, body), want["RETR"][n - 1],
                                 "clean RETR %d (%s) differs (%s/%s)" % (n, m["kind"], cm, um))
        self.check_poplib(cm, um)
        self.assertProxyAlive(self.proxy)

    def check_poplib(self, cm, um):
        """poplib: POP3_SSL, or POP3 with .stls(context) (its CAPA check
        and the name 127.0.0.1 verified against the proxy's certificate)."""
        port = self.port("pop3", cm, um)
        u, pw = self.user(LIB_USER)
        if cm == "implicit":
            p = Pop3Tls(port, mh.TLS_PROXY_NAME, self.client_ctx)
        else:
            p = poplib.POP3(mh.HOST, port, timeout=60)
        try:
            if cm == "required":
                with self.assertRaises(poplib.error_proto) as cx:
                    p.user(u)
                self.assertEqual(cx.exception.args[0], POP3_REQUIRED.rstrip(b"\r\n"))
            if cm in ("starttls", "required"):
                self.assertIn("STLS", p.capa())
                self.assertEqual(p.stls(self.client_ctx), POP3_BEGIN.rstrip(b"\r\n"))
            self.assertNotIn("STLS", p.capa())
            p.user(u)
            p.pass_(pw)
            got = [p.retr(i)[1] for i in range(1, p.stat()[0] + 1)]
            p.quit()
        finally:
            p.close()
        q = poplib.POP3(mh.HOST, self.up, timeout=60)
        try:
            q.user(u)
            q.pass_(pw)
            want = [q.retr(i)[1] for i in range(1, q.stat()[0] + 1)]
            q.quit()
        finally:
            q.close()
        self.assertEqual(got, want, "poplib (%s/%s)" % (cm, um))

    # ---------------------------------------------------------- IMAP ----

    def imap_session(self, cm, um):
        """A raw IMAP connection to the (cm, um) listener with TLS up where
        the client side has it; checks the capabilities before and after
        STARTTLS and, for required, the refusals of LOGIN/AUTHENTICATE."""
        port = self.port("imap", cm, um)
        c = self.raw_imap_tls(port) if cm == "implicit" else mh.RawImap(port, timeout=120)
        c.local_port = c.sock.getsockname()[1]
        g = c.greeting[0]
        self.assertTrue(g.startswith(b"* OK"), g)
        gcaps = imap_caps_of(g)
        caps = imap_caps(c)
        offered = cm in ("starttls", "required")
        for label, cs in (("greeting", gcaps), ("CAPABILITY", caps)):
            if cs is None:
                continue
            self.assertEqual("STARTTLS" in cs, offered, "%s %s (%s/%s)" % (label, cs, cm, um))
            self.assertEqual("LOGINDISABLED" in cs, cm == "required", "%s %s (%s/%s)" % (label, cs, cm, um))
            self.assertNotIn("COMPRESS=DEFLATE", cs)
        if offered:
            if cm == "required":
                pw = self.st["users"][IMAP_USER]["password"]
                for line in ("LOGIN %s %s" % (IMAP_USER, mh.imap_quote(pw)), "AUTHENTICATE PLAIN",
                             "AUTHENTICATE PLAIN " + base64.b64encode(
                                 ("\0%s\0%s" % (IMAP_USER, pw)).encode()).decode()):
                    tag = c.next_tag()
                    st, untagged = c.command(line, tag=tag)
                    self.assertTrue(st.startswith(tag.encode() + IMAP_REQUIRED),
                                    "%s before TLS (%s): %r" % (line.split()[0], um, st))
                    self.assertEqual(untagged, [], "%s before TLS: %r" % (line.split()[0], untagged))
            tag = c.next_tag()
            c.send(tag.encode() + b" STARTTLS\r\n")
            self.assertEqual(c.readline(), tag.encode() + IMAP_BEGIN)
            upgrade(c, self.client_ctx)
            self.assertIn(c.sock.version(), ("TLSv1.2", "TLSv1.3"))
            caps = imap_caps(c)
            self.assertNotIn("STARTTLS", caps, "STARTTLS still offered inside TLS (%s/%s)" % (cm, um))
            self.assertNotIn("LOGINDISABLED", caps, "LOGINDISABLED inside TLS (%s/%s)" % (cm, um))
            st, _ = c.command("STARTTLS")
            self.assertIn(mh.imap_status(st), ("NO", "BAD"), "a second STARTTLS: %r" % st)
        return c

    def check_imap(self, cm, um):
        pw = self.st["users"][IMAP_USER]["password"]
        msgs = self.imap_messages(IMAP_USER)
        direct = self.direct_whole(IMAP_USER)
        clean = [m["uid"] for m in msgs if not m["infected"]]
        items = "(UID RFC822.SIZE BODY.PEEK[])"
        with mh.RawImap(self.imap_up, timeout=120) as d:
            d.login(IMAP_USER, pw)
            d.command("EXAMINE INBOX")
            st, want_raw = d.command("UID FETCH %s %s" % (",".join(map(str, clean)), items))
            self.assertEqual(mh.imap_status(st), "OK", st)
        with self.imap_session(cm, um) as c:
            st = c.login(IMAP_USER, pw)
            lcaps = imap_caps_of(st)
            if lcaps is not None:
                self.assertNotIn("STARTTLS", lcaps, "LOGIN's [CAPABILITY] (%s/%s)" % (cm, um))
                self.assertNotIn("LOGINDISABLED", lcaps)
            st, _ = c.command("EXAMINE INBOX")
            self.assertEqual(mh.imap_status(st), "OK", st)
            st, got_raw = c.command("UID FETCH %s %s" % (",".join(map(str, clean)), items))
            self.assertEqual(mh.imap_status(st), "OK", st)
            self.assertEqual(got_raw, want_raw, "clean FETCH responses differ on the wire (%s/%s)" % (cm, um))
            st, untagged = c.command("UID FETCH 1:* (UID BODY.PEEK[])")
            self.assertEqual(mh.imap_status(st), "OK", st)
            got = mh.fetch_by_uid(untagged)
            st, _ = c.command("LOGOUT")
            self.assertEqual(mh.imap_status(st), "OK", st)
        self.assertLegs("imap", c.local_port, cm, um)
        self.assertEqual(sorted(got), sorted(direct))
        infected = 0
        for m in msgs:
            u = m["uid"]
            if m["infected"]:
                self.assertImapNotice(got[u]["BODY[]"], direct[u], self.proxy)
                infected += 1
            else:
                self.assertEqual(got[u]["BODY[]"], direct[u], "clean UID %d (%s/%s)" % (u, cm, um))
        self.assertGreater(infected, 0)
        self.check_imaplib(cm, um)
        self.assertProxyAlive(self.proxy)

    def check_imaplib(self, cm, um):
        """imaplib: IMAP4_SSL, or IMAP4 with .starttls(ssl_context) (its
        capability check, and the capabilities it reads again after)."""
        port = self.port("imap", cm, um)
        pw = self.st["users"][LIB_USER]["password"]
        if cm == "implicit":
            c = Imap4Tls(port, mh.TLS_PROXY_NAME, self.client_ctx)
        else:
            c = imaplib.IMAP4(mh.HOST, port, timeout=120)
        try:
            if cm in ("starttls", "required"):
                self.assertIn("STARTTLS", c.capabilities)
                self.assertEqual("LOGINDISABLED" in c.capabilities, cm == "required")
                if cm == "required":
                    with self.assertRaises(imaplib.IMAP4.error) as cx:
                        c.login(LIB_USER, pw)
                    self.assertIn("[PRIVACYREQUIRED]", str(cx.exception))
                typ, data = c.starttls(ssl_context=self.client_ctx)
                self.assertEqual(typ, "OK", data)
            self.assertNotIn("STARTTLS", c.capabilities)
            self.assertNotIn("LOGINDISABLED", c.capabilities)
            c.login(LIB_USER, pw)
            typ, data = c.select("INBOX", readonly=True)
            self.assertEqual(typ, "OK", data)
            got = self.uid_fetch(c, "1:*", "(UID BODY.PEEK[])")
            c.logout()
        except BaseException:
            try:
                c.shutdown()
            except OSError:
                pass
            raise
        want = self.direct_whole(LIB_USER)
        self.assertEqual({u: a["BODY[]"] for u, a in got.items()}, want, "imaplib (%s/%s)" % (cm, um))


def _make(kind, cm, um):
    def test(self):
        getattr(self, "check_" + kind)(cm, um)
    test.__doc__ = "%s: client tls %s, upstream_tls %s" % (kind.upper(), cm, um)
    return test


for _cm in CLIENT_MODES:
    for _um in UPSTREAM_MODES:
        for _kind in ("pop3", "imap"):
            setattr(StarttlsMatrix, "test_%s_client_%s_upstream_%s" % (_kind, _cm, _um), _make(_kind, _cm, _um))


class StarttlsInjection(TlsMixin, ImapCase):
    """Plaintext pipelined behind the client's STLS/STARTTLS, in the same
    write, is discarded: it never reaches the upstream and is never
    answered, in plaintext or inside TLS (CVE-2011-0411 class). The
    injected commands log in as the fixture user with its real password
    where that helps an attacker most."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()
        listeners = []
        for cm in ("starttls", "required"):
            for um in ("none", "starttls"):
                keys = dict(cls.tls_listener_keys(), tls=cm)
                if um == "starttls":
                    keys.update(cls.tls_upstream_keys(upstream_tls="starttls"))
                listeners += [("pop3", cls.up, keys), ("imap", cls.imap_up, keys)]
        cls.proxy = cls.class_proxy_listeners("inject", listeners)

    def ports_of(self, proto):
        i = 0 if proto == "pop3" else 1
        return [(lbl, self.proxy.ports[2 * k + i]) for k, lbl in
                enumerate(("starttls/none", "starttls/starttls", "required/none", "required/starttls"))]

    def test_pop3_injected_user(self):
        """"STLS\\r\\nUSER dave\\r\\n" in one write, then TLS: PASS with
        dave's password inside TLS finds no user name (the injected USER
        did not reach Dovecot), nothing answers the USER, and a proper
        login inside TLS works."""
        u, pw = self.user("dave")
        want = self.direct("dave")
        for label, port in self.ports_of("pop3"):
            with self.subTest(label), mh.RawPop3(port) as c:
                c.send(b"STLS\r\nUSER " + u.encode() + b"\r\n")
                self.assertEqual(c.readline(), POP3_BEGIN, label)
                upgrade(c, self.client_ctx)
                # The first answer inside TLS is the one to PASS.
                st = c.cmd("PASS " + pw)
                self.assertTrue(st.startswith(b"-ERR"), "%s: PASS after the injected USER: %r" % (label, st))
                self.assertNotIn(b"TLS required", st)
                c.login(u, pw)
                self.assertEqual(c.cmd("STAT"), want["STAT"])
                self.assertEqual(c.cmd_multi("RETR 1"), want["RETR"][0])
                c.send(b"QUIT\r\n")
                rest = c.read_all(timeout=10)
                self.assertTrue(rest.startswith(b"+OK") and rest.count(b"\r\n") == 1,
                                "%s: more than the QUIT answer: %r" % (label, rest))
        self.assertProxyAlive(self.proxy)

    def test_pop3_injected_login(self):
        """A whole injected login and RETR behind STLS: none of it is
        answered; inside TLS the session is still unauthenticated."""
        u, pw = self.user("dave")
        for label, port in self.ports_of("pop3"):
            with self.subTest(label), mh.RawPop3(port) as c:
                c.send(("STLS\r\nUSER %s\r\nPASS %s\r\nRETR 1\r\n" % (u, pw)).encode())
                self.assertEqual(c.readline(), POP3_BEGIN, label)
                upgrade(c, self.client_ctx)
                st = c.cmd("STAT")
                self.assertTrue(st.startswith(b"-ERR"), "%s: STAT inside TLS after an injected login: %r"
                                % (label, st))
                self.assertNotIn(b"TLS required", st)
                self.assertNotIn(b"STLS", pop3_caps(c))
                c.send(b"QUIT\r\n")
                rest = c.read_all(timeout=10)
                self.assertTrue(rest.startswith(b"+OK") and rest.count(b"\r\n") == 1,
                                "%s: more than the QUIT answer: %r" % (label, rest))
        self.assertProxyAlive(self.proxy)

    def test_imap_injected_login(self):
        """"a STARTTLS\\r\\nb LOGIN dave pw\\r\\nc SELECT INBOX\\r\\n" in one
        write, then TLS: b and c are never answered, and inside TLS the
        session is still not authenticated."""
        pw = self.st["users"]["dave"]["password"]
        for label, port in self.ports_of("imap"):
            with self.subTest(label), mh.RawImap(port, timeout=60) as c:
                c.send(b"a STARTTLS\r\nb LOGIN dave " + mh.imap_quote(pw).encode() +
                       b"\r\nc SELECT INBOX\r\n")
                self.assertEqual(c.readline(), b"a" + IMAP_BEGIN, label)
                upgrade(c, self.client_ctx)
                st, untagged = c.command("SELECT INBOX", tag="d")
                self.assertIn(mh.imap_status(st), ("NO", "BAD"),
                              "%s: SELECT inside TLS after an injected LOGIN: %r" % (label, st))
                for r in untagged:
                    self.assertFalse(r[0].startswith((b"b ", b"c ")), "%s: injected command answered: %r"
                                     % (label, r))
                self.assertNotIn("STARTTLS", imap_caps(c))
                c.login("dave", pw)
                st, untagged = c.command("EXAMINE INBOX", tag="e")
                self.assertEqual(mh.imap_status(st), "OK", st)
                c.send(b"f LOGOUT\r\n")
                rest = c.read_all(timeout=10)
                self.assertNotIn(b"\r\nb ", b"\r\n" + rest)
                self.assertNotIn(b"\r\nc ", b"\r\n" + rest)
                self.assertIn(b"f OK", rest)
        self.assertProxyAlive(self.proxy)
