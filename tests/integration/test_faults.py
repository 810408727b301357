"""Fault injection (issue 6, Reliability): what goes wrong on either side of
the proxy, and what must hold every time.

Faults: the upstream closes in the middle of an IMAP literal or a POP3
multi-line answer; the upstream stalls (upstream_idle fires and the client
is told); a client leaves during a scan and during the quarantine write; the
scanner times out on a pathological archive; the quarantine disk is full or
read-only; the process runs out of file descriptors; malformed and
oversized answers and commands on both protocols; handshake garbage on a TLS
listener. A scripted upstream (faultlib.FakePop3 / FakeImap) makes the
faults a real server will not make; Dovecot serves the rest.

Each case asserts: no crash (alive, and exit status 0 at SIGTERM, which
under the ASan build also means LeakSanitizer found no leak), no sanitizer
report in the log, no message lost (still on the server, or in quarantine
before any notice), and the other sessions unaffected (a normal POP3 and
IMAP session through the same process runs during the fault and must match
Dovecot byte for byte).

The existing files cover, and this one does not repeat: a POP3 upstream
dropping or stalling in the middle of RETR and never answering RETR
(test_pop3_faults), a POP3 client leaving mid-scan of a 50 MiB message
(ditto), hostile POP3 client lines (test_pop3_robustness), absurd IMAP
client literal sizes (test_imap_robustness), a cut ClientHello and random
bytes on a POP3S listener and plaintext on both TLS listeners
(test_tls_pop3, test_tls_imap).
"""

import io
import os
import secrets
import socket
import ssl
import struct
import subprocess
import time
import unittest
import zipfile

import faultlib as fl
from itbase import NOTICE_MARK, ImapCase, TlsMixin, mh, out, read_until_close

RUN = secrets.token_hex(3)
DEADLINE = 30.0           # seconds any answer to a fault may take (loaded machine, ASan)
IDLE = 2                  # timeouts.upstream_idle of the proxies here


# ---------------------------------------------------------------------------
# mailboxes (added once per run to the fixture Dovecot)

def _zip(members, level=zipfile.ZIP_STORED):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", level) as z:
        for name, data in members:
            z.writestr(name, data)
    return b.getvalue()


def many_members_zip(n=20000):
    return _zip(("f%06d.txt" % i, b"member %d of a pathological archive\n" % i) for i in range(n))


def nested_zip(depth=40):
    data = _zip([("core.txt", b"the innermost file\n")])
    for i in range(depth):
        data = _zip([("level%02d.zip" % i, data)])
    return data


def zip_message(to, n, name, data, subject):
    part = mh.mime_part(['Content-Type: application/zip; name="%s"' % name,
                         'Content-Disposition: attachment; filename="%s"' % name], data)
    return mh.msg_with_parts([part], to=to, subject=subject, n=n)[0]


def big_infected(to, n, size=6 << 20):
    f = io.BytesIO()
    mh.big_message_writer(size, to=to, n=n, tail_parts=[("payload.com", "application/octet-stream",
                                                         mh.EICAR)],
                          subject="Quarterly archive with a surprise")(f)
    return f.getvalue()


BOXES = {}


def boxes(st):
    """{role: (user, password)}; the users exist once per test run."""
    if BOXES:
        return BOXES
    other = "fother-%s" % RUN
    victim = "fvictim-%s" % RUN
    to_o, to_v = "%s@example.test" % other, "%s@example.test" % victim
    mail = {
        other: [mh.msg_plain(to=to_o, n=1), mh.msg_dots(to=to_o, n=2),
                mh.msg_multipart_attachment(to=to_o, n=3), mh.msg_long_lines(to=to_o, n=4)],
        victim: [mh.msg_plain(to=to_v, n=1),                                   # 1 clean
                 mh.msg_eicar_attachment(to=to_v, n=2),                        # 2 infected
                 mh.msg_japanese_utf8(to=to_v, n=3),                           # 3 clean
                 zip_message(to_v, 4, "records.zip", many_members_zip(),       # 4 20,000 members
                             "All the records, one file each"),
                 zip_message(to_v, 5, "deep.zip", nested_zip(),                # 5 40 levels deep
                             "Matryoshka"),
                 big_infected(to_v, 6)],                                       # 6 6 MiB, EICAR at the end
    }
    for user, msgs in mail.items():
        pw = "Pw-%s!" % user
        mh.fixture_add_user(st, user, pw, wait=0)
        for m in msgs:
            mh.fixture_add_message(st, user, m)
        BOXES[user] = pw
    for user, pw in BOXES.items():
        mh.fixture_wait_user(st, user, pw)
    BOXES["other"] = (other, BOXES[other])
    BOXES["victim"] = (victim, BOXES[victim])
    return BOXES


# ---------------------------------------------------------------------------

class FaultCase(ImapCase):
    """Proxies whose stop is checked (status 0: no crash, no leak) and whose
    log must hold no sanitizer report; the other sessions; references."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        b = boxes(cls.st)
        cls.other, cls.victim = b["other"], b["victim"]
        ref = mh.fetch_all_raw(cls.up, *cls.other)
        cls.other_pop3 = ref["RETR"]
        with mh.RawImap(cls.imap_up) as c:
            c.login(*cls.other)
            c.command("EXAMINE INBOX")
            _, unt = c.command("UID FETCH 1:* (UID BODY.PEEK[])")
        cls.other_imap = {}
        for r in unt:
            p = mh.parse_fetch(r)
            cls.other_imap[int(p[1]["UID"])] = p[1]["BODY[]"]
        cls.victim_ref = mh.fetch_all_raw(cls.up, *cls.victim)
        cls.victim_msgs = [mh.unstuff(raw) for _, raw in cls.victim_ref["RETR"]]

    @classmethod
    def tearDownClass(cls):
        bad = []
        for p in cls._class_proxies:
            was_alive = p.alive() or p.stopped     # (TlsMixin may have stopped it)
            rc = p.stop()
            san = fl.sanitizer_reports(p.log_text())
            if not was_alive or rc != 0 or san:
                bad.append("%s: %s, status %s; sanitizer: %s; log tail:\n%s" % (
                    p.workdir, "exited during the tests" if not was_alive else "stopped",
                    rc, san[:5], p.log_text()[-3000:]))
        cls._class_proxies = []
        super().tearDownClass()
        if bad:
            raise AssertionError("\n".join(bad))

    @classmethod
    def class_mm(cls, name, listeners, **cfg):
        """A mailmoat for the class: listeners [(protocol, upstream port[,
        keys])]; the proxy's ports follow that order."""
        ups = [(l[0], l[1], None, l[2]) if len(l) > 2 else (l[0], l[1]) for l in listeners]
        p = mh.Mailmoat(os.path.join(cls._tmp, name), ups, **cfg).start()
        cls._class_proxies.append(p)
        return p

    def mm(self, listeners, name=None, cls_=mh.Mailmoat, **cfg):
        """A mailmoat for this test only (checked at clean-up)."""
        ups = [(l[0], l[1], None, l[2]) if len(l) > 2 else (l[0], l[1]) for l in listeners]
        p = cls_(os.path.join(self._tmp, name or self._testMethodName), ups, **cfg)
        p.start()
        self.addCleanup(self._stop_checked_san, p)
        return p

    def _stop_checked_san(self, p):
        self._stop_checked(p)
        self.assertEqual(fl.sanitizer_reports(p.log_text()), [], "sanitizer report in the log")

    def assertSane(self, proxy):
        self.assertProxyAlive(proxy)
        san = fl.sanitizer_reports(proxy.log_text())
        self.assertEqual(san, [], "sanitizer report in the log:\n%s" % proxy.log_text()[-4000:])

    def others(self, pop3_port, imap_port, rounds=1):
        return fl.Others(pop3_port, imap_port, self.other[0], self.other[1],
                         self.other_pop3, self.other_imap, min_rounds=rounds)

    def assertVictimIntact(self):
        """Every message of the victim is still on Dovecot, unchanged."""
        now = mh.fetch_all_raw(self.up, *self.victim)
        self.assertEqual(now["UIDL"], self.victim_ref["UIDL"], "a message left the server")
        self.assertEqual(now["RETR"], self.victim_ref["RETR"], "a message on the server changed")

    def assertQuarantineWhole(self, proxy, qdir=None):
        """Every entry in the quarantine is complete (ID.eml and ID.json,
        the .eml one of the victim's messages) and nothing half-written is
        left. Returns {id: message number}."""
        qdir = qdir or proxy.quarantine_dir
        names = os.listdir(qdir) if os.path.isdir(qdir) else []
        self.assertEqual([n for n in names if n.endswith(".tmp")], [],
                         "half-written quarantine files left")
        found = {}
        for qid, eml, js, _ in proxy.quarantine():
            self.assertTrue(os.path.exists(eml), "%s.json without %s.eml" % (qid, qid))
            with open(eml, "rb") as f:
                data = f.read()
            self.assertIn(data, self.victim_msgs, "quarantined %s is no original" % qid)
            found[qid] = self.victim_msgs.index(data) + 1
        emls = {n[:-4] for n in names if n.endswith(".eml")}
        self.assertEqual(emls, set(found), "an .eml without its .json")
        return found


def recv_for(sock, seconds, limit=1 << 22):
    """Reads for up to seconds (or until closed). Returns (data, closed)."""
    data = bytearray()
    deadline = time.monotonic() + seconds
    while len(data) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(data), False
        sock.settimeout(min(left, 1.0))
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError, OSError):
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


def read_until(sock, pred, seconds=DEADLINE):
    """Reads until pred(data) holds, the peer closes, or seconds pass.
    Returns (data, closed, took)."""
    data = bytearray()
    t0 = time.monotonic()
    while not pred(bytes(data)):
        left = t0 + seconds - time.monotonic()
        if left <= 0:
            return bytes(data), False, time.monotonic() - t0
        sock.settimeout(min(left, 1.0))
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            continue
        except (ConnectionResetError, OSError):
            return bytes(data), True, time.monotonic() - t0
        if not chunk:
            return bytes(data), True, time.monotonic() - t0
        data += chunk
    return bytes(data), False, time.monotonic() - t0


# ---------------------------------------------------------------------------
# the scripted upstream: cuts, stalls, malformed and oversized answers

POP_MSGS = [fl.fake_message(b"one"), fl.fake_message(b"two", lines=400),
            fl.fake_message(b"three", lines=20)]
IMAP_MSGS = [fl.fake_message(b"ione"), fl.fake_message(b"itwo", lines=2000),
             fl.fake_message(b"ithree", lines=20)]


class ScriptedUpstream(FaultCase):
    """One mailmoat: POP3 and IMAP to the scripted servers, POP3 and IMAP
    to Dovecot (the other sessions)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.fpop = fl.FakePop3(POP_MSGS)
        cls.fimap = fl.FakeImap(IMAP_MSGS)
        cls.proxy = cls.class_mm("scripted", [("pop3", cls.fpop.port), ("imap", cls.fimap.port),
                                              ("pop3", cls.up), ("imap", cls.imap_up)],
                                 timeouts={"upstream_idle": IDLE, "client_idle": 600},
                                 max_message_size="8M")
        cls.pp, cls.ip, cls.op, cls.oi = cls.proxy.ports

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.fpop.close()
            cls.fimap.close()

    def setUp(self):
        self.fpop.disarm()
        self.fimap.disarm()

    def tearDown(self):
        self.assertSane(self.proxy)

    # ---- POP3 ----

    def pop3(self):
        c = mh.RawPop3(self.pp, timeout=DEADLINE)
        c.login("user", "pw")
        return c

    def test_pop3_close_mid_retr_pipelined(self):
        """RETR 1, 2, 3 pipelined, the upstream closes in the middle of
        message 2: message 1 whole, -ERR [SYS/TEMP] for message 2 (never a
        complete-looking one), then the connection ends; RETR 3 never
        answered as if it were message 2."""
        self.fpop.arm("RETR 2", "drop_mid")
        with self.others(self.op, self.oi):
            c = self.pop3()
            try:
                c.send(b"RETR 1\r\nRETR 2\r\nRETR 3\r\n")
                self.assertTrue(c.readline().startswith(b"+OK"))
                self.assertEqual(c.read_multiline_raw(), POP_MSGS[0] + b".\r\n")
                st = c.readline()
                self.assertTrue(st.startswith(b"-ERR [SYS/TEMP]"), st)
                rest = c.read_all(timeout=DEADLINE)
                self.assertNotIn(b"three line", rest, "message 3 after a lost upstream")
            finally:
                c.close()
        self.assertSane(self.proxy)

    def test_pop3_close_right_after_status(self):
        self.fpop.arm("RETR 2", "drop_status")
        with self.others(self.op, self.oi):
            with self.pop3() as c:
                st = c.cmd("RETR 2")
                self.assertTrue(st.startswith(b"-ERR [SYS/TEMP]"), st)

    def test_pop3_close_mid_listing(self):
        """A half-relayed LIST cannot be completed honestly: the client is
        closed, without a terminating dot line."""
        self.fpop.arm("LIST", "drop_mid")
        with self.others(self.op, self.oi):
            with self.pop3() as c:
                c.send(b"LIST\r\n")
                data, closed, _ = read_until(c.sock, lambda d: False)
                data = bytes(c.buf) + data
                self.assertTrue(closed, "the client was not closed")
                self.assertFalse(data.endswith(b"\r\n.\r\n"), data[-60:])

    def test_pop3_stalls(self):
        """upstream_idle fires: a stalled STAT answer and a stalled LIST
        (half relayed): -ERR [SYS/TEMP] or a close, within seconds."""
        # TOP of a message without a verdict is a RETR upstream (the whole
        # message is scanned first): the stall is in that RETR
        for key, cmd in (("STAT", b"STAT\r\n"), ("LIST", b"LIST\r\n"), ("RETR 2", b"TOP 2 5\r\n")):
            with self.subTest(key):
                self.fpop.arm(key, "silent" if key == "STAT" else "stall_mid")
                with self.others(self.op, self.oi):
                    with self.pop3() as c:
                        c.send(cmd)
                        data, closed, took = read_until(
                            c.sock, lambda d: b"-ERR" in d, seconds=DEADLINE)
                        data = bytes(c.buf) + data
                        self.assertTrue(b"-ERR [SYS/TEMP]" in data or closed,
                                        "%s: after %.1f s: %r" % (key, took, data[-100:]))
                        if key == "RETR 2":
                            self.assertTrue(data.startswith(b"-ERR [SYS/TEMP]"), data[:100])
                        if key != "LIST":
                            self.assertIn(b"-ERR [SYS/TEMP]", data, "the client was not told")
                        self.assertFalse(data.endswith(b"\r\n.\r\n"))
                        self.assertGreater(took, IDLE - 0.5, "before upstream_idle")
                out("pop3 %s stalled: %r after %.1f s" % (key, data[-60:], took))

    def test_pop3_malformed_answers(self):
        """Junk, NULs, absurd lengths, a bogus multi-line answer: an error
        or a closed connection within seconds, memory bounded; an answer
        that is odd but complete passes byte for byte."""
        cases = [
            ("greeting junk", "greeting", "junk", None),
            ("greeting of 4 MiB", "greeting", "overlong", None),
            ("status of 4 MiB", "STAT", "overlong", b"STAT\r\n"),
            ("junk for STAT", "STAT", "junk", b"STAT\r\n"),
            ("neither +OK nor -ERR", "STAT", "bad_status", b"STAT\r\n"),
            ("junk for RETR", "RETR 1", "junk", b"RETR 1\r\n"),
            ("message without its end", "RETR 2", "no_end", b"RETR 2\r\n"),
            ("endless LIST", "LIST", "endless", b"LIST\r\n"),
            ("endless RETR", "RETR 2", "endless", b"RETR 2\r\n"),
            ("NULs and bare CRs in a message", "RETR 1", "nul_body", b"RETR 1\r\n"),
            ("a 2 MiB line in a message", "RETR 1", "long_line", b"RETR 1\r\n"),
        ]
        rss0 = self.proxy.read_rss()[0]
        with self.others(self.op, self.oi, rounds=2):
            for what, key, mode, cmd in cases:
                with self.subTest(what):
                    self.fpop.disarm()
                    self.fpop.arm(key, mode)
                    s = socket.create_connection((mh.HOST, self.pp), timeout=DEADLINE)
                    try:
                        if cmd is None:
                            data, closed, took = read_until(s, lambda d: b"\r\n" in d)
                        else:
                            data, _, _ = read_until(s, lambda d: b"\r\n" in d)
                            s.sendall(b"USER u\r\nPASS p\r\n")
                            data, _, _ = read_until(s, lambda d: d.count(b"\r\n") >= 2)
                            s.sendall(cmd)
                            data, closed, took = read_until(
                                s, lambda d: d.startswith(b"-ERR") or d.endswith(b"\r\n.\r\n"))
                        self.assertLess(took, DEADLINE, "%s: no answer, no close" % what)
                        if mode in ("nul_body", "long_line") and data.startswith(b"+OK"):
                            m = POP_MSGS[0]
                            extra = (b"binary\x00junk\rhere\x00\x00\xff\xfe\r\n" if mode == "nul_body"
                                     else b"L" * (2 << 20) + b"\r\n")
                            self.assertEqual(data.split(b"\r\n", 1)[1], m + extra + b".\r\n",
                                             "a complete answer changed on the way")
                        elif cmd is None:
                            # a broken greeting: told, or closed, never a session
                            self.assertTrue(closed or data.startswith(b"-ERR"), data[:100])
                        else:
                            self.assertFalse(data.endswith(b"\r\n.\r\n") and mode in
                                             ("no_end", "endless"), "%s: a complete answer" % what)
                            self.assertTrue(data.startswith(b"-ERR") or closed or mode == "bad_status",
                                            "%s: %r" % (what, data[:100]))
                    finally:
                        s.close()
                    out("pop3 %s: %r closed=%s %.1f s" % (what, data[:50], closed, took))
                    self.assertSane(self.proxy)
        rss1 = self.proxy.read_rss()[0]
        out("pop3 malformed answers: VmRSS %s -> %s KiB" % (rss0, rss1))
        if not self.sanitized:
            self.assertLess(rss1 - rss0, 64 << 10, "memory grew by %d KiB" % (rss1 - rss0))

    # ---- IMAP ----

    def imap(self):
        c = mh.RawImap(self.ip, timeout=DEADLINE)
        c.login("user", "pw")
        st, _ = c.command("SELECT INBOX")
        self.assertEqual(mh.imap_status(st), "OK", st)
        return c

    def fetch2(self, fault_on, mode):
        """FETCH 2 (BODY[]) once the fault is armed for the content fetch
        number fault_on (1: the proxy's own pre-scan fetch; 2: the client's
        fetch relayed after the verdict). Returns (data, closed, took)."""
        self.fimap.arm("fetch 2", mode, 1)
        if fault_on == 2:
            # consume the fault-free pre-scan first: the verdict is cached
            self.fimap.disarm()
            with self.imap() as c:
                st, unt = c.command("FETCH 2 (BODY.PEEK[])")
                self.assertEqual(mh.imap_status(st), "OK", st)
            self.fimap.arm("fetch 2", mode, 1)
        c = self.imap()
        try:
            c.send(b"f1 FETCH 2 (BODY.PEEK[])\r\n")
            data, closed, took = read_until(
                c.sock, lambda d: b"\r\nf1 " in d or d.startswith(b"f1 ") or b"* BYE" in d)
            data = bytes(c.buf) + data
            if not closed and b"f1 " not in data:
                more, closed = recv_for(c.sock, 3)    # a BYE: the close follows
                data += more
        finally:
            c.close()
        return data, closed, took

    def assertNoMessage2(self, data):
        """Neither the message nor a tagged OK with a part of it."""
        self.assertFalse(IMAP_MSGS[1] in data, "the whole message from a broken upstream")
        self.assertNotIn(b"f1 OK", data, "a tagged OK for a broken FETCH")

    def test_imap_close_mid_literal(self):
        """The upstream closes in the middle of the FETCH literal: of the
        proxy's own pre-scan, and of the client's FETCH relayed after a
        clean verdict. The client gets NO/BYE or a closed connection,
        never a tagged OK."""
        for n in (1, 2):
            with self.subTest(fetch=n), self.others(self.op, self.oi):
                data, closed, took = self.fetch2(n, "drop_mid")
                self.assertNoMessage2(data)
                self.assertTrue(closed or b"f1 NO" in data or b"* BYE" in data,
                                "fetch %d: %r" % (n, data[-200:]))
                self.assertLess(took, DEADLINE)
                out("imap upstream closed mid-literal (fetch %d): %r, closed=%s, %.1f s"
                    % (n, data[-70:], closed, took))
            self.assertSane(self.proxy)

    def test_imap_stalls(self):
        """upstream_idle fires while the upstream stalls: after SELECT
        (NOOP never answered), in the middle of the pre-scan literal, and
        in the middle of the relayed FETCH literal. The client is told
        (tagged NO or BYE) or closed within seconds."""
        cases = [("noop", None, "silent"), ("pre-scan literal", 1, "stall_mid"),
                 ("pre-scan, no answer", 1, "silent"), ("relayed literal", 2, "stall_mid")]
        for what, n, mode in cases:
            with self.subTest(what), self.others(self.op, self.oi):
                self.fimap.disarm()
                if n is None:
                    self.fimap.arm("noop", mode)
                    with self.imap() as c:
                        c.send(b"f1 NOOP\r\n")
                        data, closed, took = read_until(c.sock, lambda d: b"* BYE" in d or b"f1 " in d)
                else:
                    data, closed, took = self.fetch2(n, mode)
                    self.assertNoMessage2(data)
                self.assertTrue(b"* BYE" in data or b"f1 NO" in data or closed,
                                "%s: nothing after %.1f s: %r" % (what, took, data[-200:]))
                self.assertTrue(b"* BYE" in data or b"f1 NO" in data,
                                "%s: closed without a word: %r" % (what, data[-200:]))
                self.assertGreater(took, IDLE - 0.5)
                self.assertLess(took, DEADLINE)
                out("imap %s stalled: %r after %.1f s" % (what, data[-60:], took))
            self.assertSane(self.proxy)

    def test_imap_malformed_answers(self):
        """Junk, NULs, absurd literal sizes, a literal shorter than
        announced, a tagged answer under a foreign tag, an unbalanced FETCH:
        an error or a close within seconds, never a tagged OK carrying a
        part of the message, memory bounded."""
        cases = [
            ("greeting junk", "greeting", "junk"),
            ("greeting of 4 MiB", "greeting", "overlong"),
            ("select: junk first", "select", "junk"),
            ("select: 4 MiB untagged line", "select", "overlong"),
            ("select: foreign tag", "select", "bad_tag"),
            ("fetch: junk first", "fetch 2", "junk"),
            ("fetch: 4 MiB line", "fetch 2", "overlong"),
            ("fetch: literal of 20 digits", "fetch 2", "huge_lit"),
            ("fetch: literal of 2^40", "fetch 2", "big_lit"),
            ("fetch: literal shorter than announced", "fetch 2", "short_lit"),
            ("fetch: unbalanced", "fetch 2", "bogus_fetch"),
        ]
        rss0 = self.proxy.read_rss()[0]
        with self.others(self.op, self.oi, rounds=2):
            for what, key, mode in cases:
                with self.subTest(what):
                    self.fimap.disarm()
                    self.fimap.arm(key, mode)
                    s = socket.create_connection((mh.HOST, self.ip), timeout=DEADLINE)
                    try:
                        s.sendall(b"a1 LOGIN user pw\r\na2 SELECT INBOX\r\n")
                        if key == "fetch 2":
                            data, closed, took = read_until(s, lambda d: b"a2 " in d)
                            self.assertIn(b"a2 OK", data)
                            s.sendall(b"f1 FETCH 2 (BODY.PEEK[])\r\n")
                            data, closed, took = read_until(
                                s, lambda d: b"f1 " in d or b"* BYE" in d)
                            if mode == "junk" and b"f1 OK" in data:
                                # junk, then a good answer: the good answer passes whole
                                lit = b"{%d}\r\n" % len(IMAP_MSGS[1])
                                self.assertTrue(lit + IMAP_MSGS[1] + b")\r\nf1 OK" in data,
                                                "%s: the answer after the junk changed" % what)
                            else:
                                self.assertFalse(IMAP_MSGS[1] in data, "%s: the message" % what)
                                self.assertNotIn(b"f1 OK", data[-200:], "%s: a tagged OK" % what)
                        else:
                            data, closed, took = read_until(
                                s, lambda d: b"a2 " in d or b"* BYE" in d)
                        self.assertLess(took, DEADLINE, "%s: no answer, no close" % what)
                    finally:
                        s.close()
                    out("imap %s: %r closed=%s %.1f s" % (what, data[-50:], closed, took))
                    self.assertSane(self.proxy)
        rss1 = self.proxy.read_rss()[0]
        out("imap malformed answers: VmRSS %s -> %s KiB" % (rss0, rss1))
        if not self.sanitized:
            self.assertLess(rss1 - rss0, 64 << 10, "memory grew by %d KiB" % (rss1 - rss0))


# ---------------------------------------------------------------------------
# hostile IMAP clients (POP3: test_pop3_robustness)

class HostileImapClients(FaultCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_mm("hostile", [("imap", cls.imap_up), ("pop3", cls.up)])
        cls.ip, cls.op = cls.proxy.ports

    def tearDown(self):
        self.assertSane(self.proxy)

    def test_malformed_commands(self):
        """Each gets BAD/NO/BYE or a closed connection within seconds, no
        flood; a session that was answered goes on (NOOP works)."""
        user, pw = self.other
        login = ("a0 LOGIN %s %s\r\n" % (mh.imap_quote(user), mh.imap_quote(pw))).encode()
        cases = [
            ("overlong line", False, b"a1 NOOP " + b"A" * (1 << 20) + b"\r\n"),
            ("overlong line, logged in", True, b"a1 NOOP " + b"A" * (1 << 20) + b"\r\n"),
            ("overlong tag", False, b"T" * 100000 + b" NOOP\r\n"),
            ("NUL in a command", True, b"a1 SELECT IN\x00BOX\r\n"),
            ("binary junk", False, bytes(range(256)) * 64 + b"\r\n"),
            ("binary junk, logged in", True, os.urandom(8192) + b"\r\n"),
            ("many empty lines", True, b"\r\n" * 20000),
            ("unbalanced FETCH", True, b"a1 FETCH 1 (BODY[HEADER.FIELDS (FROM (((((\r\n"),
            ("deep parentheses", True, b"a1 FETCH 1 " + b"(" * 5000 + b"\r\n"),
            ("absurd sequence set", True, b"a1 FETCH 1:99999999999999999999 (FLAGS)\r\n"),
            ("APPEND literal beyond any limit", True,
             b"a1 APPEND INBOX {4000000000+}\r\n" + b"x" * 65536),
            ("AUTHENTICATE junk", False, b"a1 AUTHENTICATE PLAIN\r\n" + b"!!!" * 30000 + b"\r\n"),
            ("a literal then nothing", False, b"a1 LOGIN {5}\r\n"),
            ("bare CR line ends", True, b"a1 NOOP\ra2 NOOP\r"),
        ]
        with self.others(self.op, self.ip, rounds=2):
            for what, log_in, payload in cases:
                with self.subTest(what):
                    s = socket.create_connection((mh.HOST, self.ip), timeout=DEADLINE)
                    try:
                        read_until(s, lambda d: b"\r\n" in d)
                        if log_in:
                            s.sendall(login + b"a00 EXAMINE INBOX\r\n")
                            d, _, _ = read_until(s, lambda d: b"a00 " in d)
                            self.assertIn(b"a00 OK", d)
                        try:
                            s.sendall(payload)
                        except OSError:
                            pass           # closed while we were still writing: fine
                        data, closed, _ = read_until(
                            s, lambda d: b"a1 " in d or b"* BYE" in d or len(d) > (1 << 20),
                            seconds=4)
                        self.assertLess(len(data), 1 << 20, "%s: a flood" % what)
                        if not closed and (b"BAD" in data or b"NO" in data):
                            try:
                                s.sendall(b"\r\nz9 NOOP\r\n")
                                more, closed, _ = read_until(s, lambda d: b"z9 " in d, seconds=10)
                            except OSError:
                                more, closed = b"", True
                            self.assertTrue(closed or b"z9 " in more,
                                            "%s: no answer to NOOP afterwards: %r" % (what, more[-100:]))
                        elif not closed:
                            # a command still waiting for more (a literal): the
                            # session holds, and closing it is harmless
                            pass
                    finally:
                        s.close()
                    self.assertSane(self.proxy)


# ---------------------------------------------------------------------------
# clients that leave during a scan and during the quarantine write

class ClientLeaves(FaultCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = cls.class_mm("leaves", [("pop3", cls.up), ("imap", cls.imap_up)])
        cls.op, cls.oi = cls.proxy.ports

    def settle(self, seconds=DEADLINE):
        """Waits until no scan job of the left sessions is in flight: no
        half-written quarantine file, and the entries stable for 2 s."""
        deadline = time.monotonic() + seconds
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            names = sorted(os.listdir(self.proxy.quarantine_dir)) \
                if os.path.isdir(self.proxy.quarantine_dir) else []
            if names != last:
                last, since = names, time.monotonic()
            elif time.monotonic() - since > 2 and not any(n.endswith(".tmp") for n in names):
                return
            time.sleep(0.2)

    def leave_at(self, start, delays):
        """start() opens a session and sends the command; each delay: a
        session left after that many seconds."""
        for d in delays:
            s = start()
            time.sleep(d)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def test_pop3_leave_during_scan_and_quarantine(self):
        """RETR 6 (6 MiB, EICAR at its end) and the client leaves after
        0.1 ... 3 s: during the transfer from the upstream, the scan, the
        quarantine write. Every entry is complete and the original's, the
        message stays on the server, and a whole session afterwards gets
        the notice for it."""
        user, pw = self.victim

        def start():
            c = mh.RawPop3(self.op, timeout=DEADLINE)
            c.login(user, pw)
            c.send(b"RETR 6\r\n")
            return c.sock
        with self.others(self.op, self.oi):
            self.leave_at(start, (0.2, 0.7, 1.4, 2.4))
        self.settle()
        self.assertSane(self.proxy)
        self.assertQuarantineWhole(self.proxy)
        self.assertVictimIntact()
        with mh.RawPop3(self.op, timeout=60) as c:
            c.login(user, pw)
            st, body = c.cmd_multi("RETR 6")
            self.assertTrue(st.startswith(b"+OK"), st)
            notice = mh.unstuff(body)
            self.assertIn(NOTICE_MARK.encode(), notice)
            qid = mh.header_of(notice, "X-Mailmoat-Quarantine-Id")
        self.assertEqual(self.assertQuarantineWhole(self.proxy).get(qid), 6,
                         "the notice names no entry holding message 6")

    def test_imap_leave_during_scan_and_quarantine(self):
        user, pw = self.victim

        def start():
            c = mh.RawImap(self.oi, timeout=DEADLINE)
            c.login(user, pw)
            c.command("EXAMINE INBOX")
            c.send(b"f1 UID FETCH 6 (BODY.PEEK[])\r\n")
            return c.sock
        with self.others(self.op, self.oi):
            self.leave_at(start, (0.2, 0.7, 1.4, 2.4))
        self.settle()
        self.assertSane(self.proxy)
        self.assertQuarantineWhole(self.proxy)
        self.assertVictimIntact()
        with mh.RawImap(self.oi, timeout=60) as c:
            c.login(user, pw)
            c.command("EXAMINE INBOX")
            st, unt = c.command("UID FETCH 6 (BODY.PEEK[])")
            self.assertEqual(mh.imap_status(st), "OK", st)
            notice = mh.fetch_by_uid(unt)[6]["BODY[]"]
            self.assertIn(NOTICE_MARK.encode(), notice)
            qid = mh.header_of(notice, "X-Mailmoat-Quarantine-Id")
        self.assertEqual(self.assertQuarantineWhole(self.proxy).get(qid), 6)


# ---------------------------------------------------------------------------
# the scanner gives up on a pathological archive

class PathologicalArchives(FaultCase):
    """scanner.clamav max_scantime: 1 (and max_files high, so that the time
    limit is what stops the 20,000-member zip); on_scan_error: quarantine.
    The deep zip hits max_recursion. Both are scan errors: the policy's
    action for them, and the session goes on."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        p = mh.Mailmoat(os.path.join(cls._tmp, "patho"), [("pop3", cls.up), ("imap", cls.imap_up)],
                        on_scan_error="quarantine")
        with open(p.config_path) as f:
            text = f.read()
        db = "    database: %s\n" % mh._yaml_str(mh.testsigs_dir())
        assert db in text
        text = text.replace(db, db + "    max_scantime: 1\n    max_files: 1000000\n")
        with open(p.config_path, "w") as f:
            f.write(text)
        p.start()
        cls._class_proxies.append(p)
        cls.proxy = p
        cls.op, cls.oi = p.ports

    def test_pop3(self):
        user, pw = self.victim
        with self.others(self.op, self.oi):
            with mh.RawPop3(self.op, timeout=60) as c:
                c.login(user, pw)
                for num in (4, 5):
                    t0 = time.monotonic()
                    st, body = c.cmd_multi("RETR %d" % num)
                    took = time.monotonic() - t0
                    self.assertTrue(st.startswith(b"+OK"), st)
                    notice = mh.unstuff(body)
                    self.assertIn(NOTICE_MARK.encode(), notice, "message %d: no notice" % num)
                    qid = mh.header_of(notice, "X-Mailmoat-Quarantine-Id")
                    self.assertEqual(self.assertQuarantineWhole(self.proxy).get(qid), num)
                    out("pop3 RETR %d (pathological): notice %s after %.1f s" % (num, qid, took))
                # the session goes on
                st, body = c.cmd_multi("RETR 3")
                self.assertEqual(body, self.victim_ref["RETR"][2][1])
                self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        ev = [e for e in self.proxy.log_events() if e.get("user") == user and "verdict" in e]
        why = {e.get("msg"): (e["verdict"], e.get("signature", "")) for e in ev}
        out("verdicts: %s" % why)
        self.assertEqual(why.get("4", ("",))[0], "error")
        self.assertRegex(why["4"][1], r"(?i)time")
        self.assertEqual(why.get("5", ("",))[0], "error")
        self.assertSane(self.proxy)
        self.assertVictimIntact()

    def test_imap(self):
        user, pw = self.victim
        with self.others(self.op, self.oi):
            with mh.RawImap(self.oi, timeout=60) as c:
                c.login(user, pw)
                c.command("EXAMINE INBOX")
                for uid in (4, 5):
                    st, unt = c.command("UID FETCH %d (BODY.PEEK[])" % uid)
                    self.assertEqual(mh.imap_status(st), "OK", st)
                    notice = mh.fetch_by_uid(unt)[uid]["BODY[]"]
                    self.assertIn(NOTICE_MARK.encode(), notice)
                    qid = mh.header_of(notice, "X-Mailmoat-Quarantine-Id")
                    self.assertEqual(self.assertQuarantineWhole(self.proxy).get(qid), uid)
                st, unt = c.command("UID FETCH 3 (BODY.PEEK[])")
                self.assertEqual(mh.fetch_by_uid(unt)[3]["BODY[]"], self.victim_msgs[2])
        self.assertSane(self.proxy)


# ---------------------------------------------------------------------------
# the quarantine disk full or read-only

class QuarantineDisk(FaultCase):
    """The quarantine directory on a 4 MiB tmpfs in the daemon's own mount
    namespace. Full (ENOSPC) or read-only (EROFS): the infected message is
    held back with a temporary error, no notice is sent, the original stays
    on the server, and the session goes on; once the disk is back the same
    message is quarantined and replaced."""

    @classmethod
    def setUpClass(cls):
        if not fl.mount_namespaces_work():
            raise unittest.SkipTest("no private mount namespace with tmpfs here (unshare -m)")
        super().setUpClass()

    def start_ns(self):
        p = self.mm([("pop3", self.up), ("imap", self.imap_up)], cls_=fl.NsMailmoat)
        return p, p.ports[0], p.ports[1]

    def break_disk(self, p, how):
        if how == "full":
            filler = p.fill()
            return lambda: os.unlink(filler)
        # a read-only bind mount over the directory (a remount of the tmpfs
        # itself fails while the index is open for writing)
        q = p.quarantine_dir
        r = p.ns_run("sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"', q)
        self.assertEqual(r.returncode, 0, r.stdout)
        return lambda: self.assertEqual(p.ns_run("umount", q).returncode, 0)

    def check_pop3(self, how):
        p, pp, ip = self.start_ns()
        user, pw = self.victim
        repair = self.break_disk(p, how)
        with self.others(pp, ip):
            with mh.RawPop3(pp, timeout=60) as c:
                c.login(user, pw)
                st, body = c.cmd_multi("RETR 2")
                self.assertTrue(st.startswith(b"-ERR [SYS/TEMP]"), st)
                self.assertIsNone(body)
                # the session goes on: a clean message, and the listing
                st, body = c.cmd_multi("RETR 1")
                self.assertEqual(body, self.victim_ref["RETR"][0][1])
                self.assertEqual(c.cmd_multi("UIDL"), self.victim_ref["UIDL"])
                self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        self.assertEqual([e for e in os.listdir(p.qpath) if e.endswith((".eml", ".json", ".tmp"))],
                         [], "files left in a failed quarantine")
        self.assertVictimIntact()
        self.assertTrue(any("quarantine failed" in e["_line"] for e in p.log_events()))
        repair()
        with mh.RawPop3(pp, timeout=60) as c:
            c.login(user, pw)
            st, body = c.cmd_multi("RETR 2")
            notice = mh.unstuff(body)
            self.assertIn(NOTICE_MARK.encode(), notice)
            qid = mh.header_of(notice, "X-Mailmoat-Quarantine-Id")
        self.assertEqual(self.assertQuarantineWhole(p, p.qpath).get(qid), 2)
        self.assertSane(p)

    def check_imap(self, how):
        p, pp, ip = self.start_ns()
        user, pw = self.victim
        repair = self.break_disk(p, how)
        with self.others(pp, ip):
            with mh.RawImap(ip, timeout=60) as c:
                c.login(user, pw)
                c.command("EXAMINE INBOX")
                st, unt = c.command("UID FETCH 2 (BODY.PEEK[])")
                got = b"".join(b"".join(r) for r in unt)
                self.assertNotIn(mh.EICAR, got)
                self.assertNotIn(self.victim_msgs[1], got, "the malware was delivered")
                self.assertNotIn(NOTICE_MARK.encode(), got, "a notice without a quarantine copy")
                # a temporary error: the content withheld (NIL), and NO for
                # the command, never the server's OK
                self.assertIsNone(mh.fetch_by_uid(unt).get(2, {}).get("BODY[]", b""),
                                  "content not withheld")
                self.assertEqual(mh.imap_status(st), "NO", st)
                self.assertIn(b"[UNAVAILABLE]", st)
                out("imap, quarantine %s: %r %r" % (how, st, got[:120]))
                # the session goes on
                st, unt = c.command("UID FETCH 1 (BODY.PEEK[])")
                self.assertEqual(mh.fetch_by_uid(unt)[1]["BODY[]"], self.victim_msgs[0])
        self.assertEqual([e for e in os.listdir(p.qpath) if e.endswith((".eml", ".json", ".tmp"))],
                         [], "files left in a failed quarantine")
        self.assertVictimIntact()
        repair()
        with mh.RawImap(ip, timeout=60) as c:
            c.login(user, pw)
            c.command("EXAMINE INBOX")
            st, unt = c.command("UID FETCH 2 (BODY.PEEK[])")
            self.assertEqual(mh.imap_status(st), "OK", st)
            notice = mh.fetch_by_uid(unt)[2]["BODY[]"]
            self.assertIn(NOTICE_MARK.encode(), notice)
            qid = mh.header_of(notice, "X-Mailmoat-Quarantine-Id")
        self.assertEqual(self.assertQuarantineWhole(p, p.qpath).get(qid), 2)
        self.assertSane(p)

    def test_pop3_disk_full(self):
        self.check_pop3("full")

    def test_pop3_read_only(self):
        self.check_pop3("ro")

    def test_imap_disk_full(self):
        self.check_imap("full")

    def test_imap_read_only(self):
        self.check_imap("ro")


# ---------------------------------------------------------------------------
# out of file descriptors

class FdExhaustion(FaultCase):

    def test_accept_backs_off_and_recovers(self):
        """RLIMIT_NOFILE lowered to what the daemon has open plus 12, then
        80 clients at once: no crash, no busy loop (CPU well under one core
        while it lasts), a bounded log; once they are gone a new session
        works byte for byte."""
        p = self.mm([("pop3", self.up), ("imap", self.imap_up)])
        pp, ip = p.ports
        base = fl.open_fds(p.pid)
        limit = base + 12
        r = subprocess.run(["prlimit", "--pid", str(p.pid), "--nofile=%d:%d" % (limit, limit)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.addCleanup(subprocess.run, ["prlimit", "--pid", str(p.pid), "--nofile=4096:4096"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        socks = []
        user, pw = self.other
        try:
            for i in range(80):
                s = socket.socket()
                s.settimeout(5)
                try:
                    s.connect((mh.HOST, pp if i % 2 == 0 else ip))
                except OSError:
                    s.close()
                    continue
                socks.append(s)
                if i % 4 == 0:
                    try:
                        s.sendall(b"USER %s\r\n" % user.encode())
                    except OSError:
                        pass
            time.sleep(1)
            cpu0, t0 = fl.cpu_seconds(p.pid), time.monotonic()
            time.sleep(3)
            cpu = (fl.cpu_seconds(p.pid) - cpu0) / (time.monotonic() - t0)
            self.assertSane(p)
            out("fd exhaustion: base %d fds, limit %d, %d clients connected, %d open in the daemon, "
                "CPU %.0f%% of a core" % (base, limit, len(socks), fl.open_fds(p.pid), cpu * 100))
            self.assertLess(cpu, 0.5, "a busy loop while out of descriptors")
        finally:
            for s in socks:
                s.close()
        warn = [e["_line"] for e in p.log_events() if e["_words"][1:2] in (["warn"], ["error"])]
        emfile = [l for l in warn if "too many open files" in l.lower()]
        out("%d warnings, %d of them EMFILE; first: %s" % (len(warn), len(emfile), emfile[:1]))
        self.assertTrue(emfile, "the daemon never ran out of descriptors: the test tested nothing")
        self.assertLess(len(warn), 2000, "the log floods: %d warnings" % len(warn))
        # recovered: sessions work again, still under the low limit
        deadline = time.monotonic() + DEADLINE
        while fl.open_fds(p.pid) > base + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        with self.others(pp, ip, rounds=2):
            pass
        self.assertSane(p)


# ---------------------------------------------------------------------------
# handshake garbage on the TLS listeners

def client_hello_bytes():
    """A real ClientHello (the first flight of Python's TLS client)."""
    ctx = ssl.create_default_context()
    inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    o = ctx.wrap_bio(inc, outb, server_hostname="mail.test.example")
    try:
        o.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outb.read()


class TlsGarbage(TlsMixin, FaultCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls_setup()
        keys = cls.tls_listener_keys()
        # timeouts.connect also bounds the client's handshake: a peer that
        # never completes one is closed after 5 s
        cls.proxy = cls.class_mm("tlsjunk", [("pop3", cls.up, keys), ("imap", cls.imap_up, keys),
                                             ("pop3", cls.up), ("imap", cls.imap_up)],
                                 timeouts={"connect": 5})
        cls.tp, cls.ti, cls.op, cls.oi = cls.proxy.ports

    def test_handshake_garbage(self):
        """Random bytes, a cut ClientHello, one with absurd lengths, an SSLv2
        hello, HTTP, an alert, a flood of empty records, garbage after a
        good handshake, on the POP3S and IMAPS listeners: each connection
        closed within seconds, the daemon fine, TLS and plain sessions
        complete meanwhile."""
        hello = client_hello_bytes()
        cases = [
            ("random bytes", os.urandom(4096)),
            ("cut ClientHello", hello[:len(hello) // 2]),
            ("ClientHello, record length 0xffff", hello[:3] + b"\xff\xff" + hello[5:]),
            ("ClientHello, handshake length 2^24-1", hello[:6] + b"\xff\xff\xff" + hello[9:]),
            ("ClientHello, then junk records", hello + os.urandom(2048)),
            ("SSLv2 hello", b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + os.urandom(37)),
            ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("an alert", b"\x15\x03\x03\x00\x02\x02\x28"),
            ("empty records", b"\x16\x03\x01\x00\x00" * 20000),
            ("NULs", b"\x00" * 65536),
        ]
        u, pw = self.other
        with self.others(self.op, self.oi, rounds=2):
            # all at once (each alone would wait out its own close)
            conns = []
            for what, payload in cases:
                for port in (self.tp, self.ti):
                    s = socket.create_connection((mh.HOST, port), timeout=DEADLINE)
                    try:
                        s.sendall(payload)
                    except OSError:
                        pass
                    conns.append((what, port, s, time.monotonic()))
            slow = []
            for what, port, s, t0 in conns:
                with self.subTest(what, port=port):
                    try:
                        data, closed = read_until_close(s, timeout=DEADLINE)
                    finally:
                        s.close()
                    self.assertTrue(closed, "%s: the connection stays open" % what)
                    self.assertNotIn(b"+OK", data)
                    self.assertNotIn(b"* OK", data)
                    slow.append((time.monotonic() - t0, what))
            out("TLS garbage: slowest close %.1f s (%s)" % max(slow))
            self.assertSane(self.proxy)
            # garbage records after a good handshake
            for port in (self.tp, self.ti):
                t = self.proxy_tls(port)
                t.recv(512)
                sock = socket.socket(fileno=os.dup(t.fileno()))
                try:
                    sock.sendall(b"\x17\x03\x03\x00\x40" + os.urandom(64))
                    data, closed = recv_for(sock, DEADLINE)
                    self.assertTrue(closed, "garbage records after the handshake: still open")
                finally:
                    sock.close()
                    t.close()
            # TLS sessions are fine
            got = mh.fetch_all_raw(self.tp, u, pw, tls=self.client_ctx,
                                   server_hostname=mh.TLS_PROXY_NAME)
            self.assertEqual(got["RETR"], self.other_pop3)
            with mh.RawImap(self.ti, timeout=60, tls=self.client_ctx,
                            server_hostname=mh.TLS_PROXY_NAME) as c:
                c.login(u, pw)
                c.command("EXAMINE INBOX")
                st, unt = c.command("UID FETCH 1:* (UID BODY.PEEK[])")
                got = {k: v["BODY[]"] for k, v in mh.fetch_by_uid(unt).items()}
                self.assertEqual(got, self.other_imap)
        self.assertSane(self.proxy)


if __name__ == "__main__":
    unittest.main()
